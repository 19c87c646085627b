# A file Python cannot import: the grader shows Python's message once, and scores 0.
# expect: your code did not run: Traceback .* SyntaxError
# expect: score: 0 of 9 terms \(it did not run\)
# expect-json: "ran": false, "failure": "did not run"
def dgamma(dy, xhat)
    return (dy * xhat).sum(0)
