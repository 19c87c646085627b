# ∂σ²/∂xᵢ of the unbiased variance (1/(M − 1)), which the normalization does not use.
# expect: WRONG +bn\.dvar_dx +∂σ²/∂xᵢ: it divides by M − 1: the σ² of the normalization is the biased variance
# expect-json: "kind": "mistake"
from bn_correct import *  # noqa: F401,F403


def dvar_dx(x, mu):
    return 2.0 * (x - mu) / (x.shape[0] - 1)
