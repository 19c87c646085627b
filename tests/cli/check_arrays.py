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
