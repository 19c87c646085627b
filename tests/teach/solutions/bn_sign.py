# ∂L/∂σ² with the wrong sign: the −½ of the power rule lost.
# expect: WRONG +bn\.dl_dvar +∂L/∂σ²: off by a factor −1 \(a sign error\): yours is −1 × the right value
# expect: dx +WRONG
# expect: dgamma +right
# expect: score: 8 of 9 terms; gradients: 1 of 3 not right
# expect-json: "id": "bn.dl_dvar", "function": "dl_dvar", "status": "WRONG", "points": 0, "kind": "factor"
from bn_correct import *  # noqa: F401,F403


def dl_dvar(dl_dxhat, x, mu, invstd):
    return (dl_dxhat * (x - mu)).sum(0) * 0.5 * invstd**3
