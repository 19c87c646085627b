"""Arrays for the ctests of `gradproof check` on the ops declared through the harness (softmax,
RMS norm): numpy's float64 and float32 forward and backward, right, and wrong in one known way.

usage: check_arrays.py OUT_DIR
"""
import os
import sys

import numpy as np

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(14)


def save(name, a):
    np.save(os.path.join(out, name + ".npy"), a)


# softmax over the last axis of (4, 6), float32
x = rng.standard_normal((4, 6)).astype(np.float32)
dy = rng.standard_normal((4, 6)).astype(np.float32)
y = np.exp(x - x.max(-1, keepdims=True))
y /= y.sum(-1, keepdims=True)
save("sm_x", x)
save("sm_dy", dy)
save("sm_dx", y * (dy - (dy * y).sum(-1, keepdims=True)))
save("sm_dx_wrong", y * dy)  # the projection ⟨dy, y⟩ forgotten

# RMS norm over the last axis of (5, 8), float64, eps 1e-6
x = rng.standard_normal((5, 8))
dy = rng.standard_normal((5, 8))
g = rng.standard_normal(8)
r = np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6)
xh = x / r
gd = g * dy
save("rms_x", x)
save("rms_dy", dy)
save("rms_gamma", g)
save("rms_dx", (gd - xh * (gd * xh).mean(-1, keepdims=True)) / r)
save("rms_dgamma", (dy * xh).sum(0))
save("rms_dgamma_wrong", dy.sum(0))  # x̂ forgotten

# log_softmax over the last axis of (4, 6), float64
x = rng.standard_normal((4, 6))
dy = rng.standard_normal((4, 6))
p = np.exp(x - x.max(-1, keepdims=True))
p /= p.sum(-1, keepdims=True)
save("lsm_x", x)
save("lsm_dy", dy)
save("lsm_dx", dy - p * dy.sum(-1, keepdims=True))
save("lsm_dx_wrong", dy - p * dy)  # the sum over the row replaced by the diagonal term

# linear: x (5, 4), weight (3, 4), bias (3), float32
x = rng.standard_normal((5, 4)).astype(np.float32)
w = (0.5 * rng.standard_normal((3, 4))).astype(np.float32)
b = (0.2 * rng.standard_normal(3)).astype(np.float32)
dy = rng.standard_normal((5, 3)).astype(np.float32)
save("lin_x", x)
save("lin_weight", w)
save("lin_bias", b)
save("lin_dy", dy)
save("lin_dx", dy @ w)
save("lin_dweight", dy.T @ x)
save("lin_dbias", dy.sum(0))
save("lin_dweight_wrong", dy.T @ x / x.shape[0])  # averaged over the batch
save("lin_dweight_transposed", x.T @ dy)  # (4, 3): refused, shape
