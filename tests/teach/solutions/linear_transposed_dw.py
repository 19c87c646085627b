# ∂L/∂W as xᵀ dy: the transpose of the right value, shaped (I, O) instead of W's (O, I).
# expect: WRONG +linear\.dweight +∂L/∂W: transposed: yours is \(4, 3\), the right value is its transpose \(3, 4\)
# expect: dweight +WRONG: shape \(4, 3\), expected \(3, 4\)
# expect: dx +right
# expect-json: "kind": "transposed"
from linear_correct import *  # noqa: F401,F403


def dweight(dy, x):
    return x.T @ dy
