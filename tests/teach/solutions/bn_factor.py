# ∂σ²/∂xᵢ without the 2 of the derivative of a square.
# expect: WRONG +bn\.dvar_dx +∂σ²/∂xᵢ: off by a factor 1/2: yours is 1/2 × the right value
# expect: dx +WRONG
# expect: score: 8 of 9 terms
from bn_correct import *  # noqa: F401,F403


def dvar_dx(x, mu):
    return (x - mu) / x.shape[0]
