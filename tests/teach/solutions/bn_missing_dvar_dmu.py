# ∂σ²/∂μ left out (written as 0) and the σ²-path term of ∂L/∂μ dropped: both vanish at the batch
# mean, so dx is right; the grader says so, and why.
# expect: half +bn\.dvar_dmu +∂σ²/∂μ: right here, not in general: missing: your function returns zero; here it is zero \(μ is the mean of the same values σ² is taken over, so Σᵢ\(xᵢ − μ\) = 0\), so your dx is right anyway; see why: derivations/batchnorm\.html#bn-dvar-dmu
# expect: half +bn\.dl_dmu +∂L/∂μ: right here, not in general: the σ²-path term ∂L/∂σ²·∂σ²/∂μ is missing; here it is zero
# expect: dx +right
# expect: score: 8 of 9 terms; gradients: all right
# expect-json: "id": "bn.dl_dmu", "function": "dl_dmu", "status": "half", "points": 0.5, "kind": "part_missing"
import numpy as np

from bn_correct import *  # noqa: F401,F403


def dvar_dmu(x, mu):
    return np.zeros(x.shape[1])


def dl_dmu(dl_dxhat, invstd, dl_dvar, dvar_dmu):
    return -dl_dxhat.sum(0) * invstd
