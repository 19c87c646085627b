# The 1/R of reduction='mean' forgotten, in the staged form and in the collapsed one.
# expect: WRONG +cross_entropy\.dreduce +g = ∂L/∂ℓ: dy without the 1/R: reduction='mean' divides the sum of the R losses by R
# expect: WRONG +cross_entropy\.dx_fused +∂L/∂x, collapsed: dy·\(p − q\) without the 1/R of reduction='mean'
# expect: dx +WRONG
import numpy as np

from cross_entropy_correct import *  # noqa: F401,F403


def dreduce(dy, q):
    return np.full(q.shape[0], float(dy))


def dx_fused(dy, p, q):
    return dy * (p - q)
