# The σ edge without the factor x in front of it: dy·σ'(x) instead of dy·x·σ'(x).
# expect: WRONG +silu\.dxsig +∂L/∂x through σ\(x\) .*: the factor x is missing: y = x·σ\(x\)
from silu_correct import *  # noqa: F401,F403


def dxsig(dy, x, s):
    return dy * s * (1 - s)
