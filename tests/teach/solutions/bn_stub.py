# The workspace as `gradproof exercise` writes it: every term not written yet (graded with STUB=ON).
# expect: todo +bn\.dgamma +∂L/∂γ: not written yet
# expect: dx +none: not run
# expect: score: 0 of 9 terms
# expect-json: "status": "todo", "points": 0
