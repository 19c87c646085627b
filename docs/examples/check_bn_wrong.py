"""A batch-norm backward with a classic mistake, checked by `gradproof check`.

The backward below treats the batch mean and variance as constants: dx = γ·dy/√(σ²+ε), leaving
out the paths through μ and σ². Its dγ and dβ are right. The script writes the arrays as .npy
files in float32, as a framework would dump them:

    /usr/bin/python3 docs/examples/check_bn_wrong.py OUT_DIR
    gradproof check bn --x OUT_DIR/x.npy --dy OUT_DIR/dy.npy --gamma OUT_DIR/gamma.npy \
        --beta OUT_DIR/beta.npy --dx OUT_DIR/dx.npy --dgamma OUT_DIR/dgamma.npy \
        --dbeta OUT_DIR/dbeta.npy
"""
import os
import sys

import numpy as np

out = sys.argv[1] if len(sys.argv) > 1 else "."
os.makedirs(out, exist_ok=True)

rng = np.random.default_rng(2015)  # Ioffe and Szegedy's year
N, C, L = 8, 3, 4
x = (rng.standard_normal((N, C, L)) * 2 + 1).astype(np.float32)
dy = rng.standard_normal((N, C, L)).astype(np.float32)
gamma = np.array([0.5, 1.0, 2.0], np.float32)
beta = np.array([0.1, -0.2, 0.3], np.float32)
eps = np.float32(1e-5)

# The forward, training mode: statistics over (N, L) for each channel.
mu = x.mean(axis=(0, 2), keepdims=True)
var = x.var(axis=(0, 2), keepdims=True)  # biased, as batch norm normalises with
invstd = 1 / np.sqrt(var + eps)
xhat = (x - mu) * invstd

# The backward, wrong: μ and σ² are treated as constants.
dx = dy * gamma[None, :, None] * invstd
dgamma = (dy * xhat).sum(axis=(0, 2))
dbeta = dy.sum(axis=(0, 2))

arrays = dict(x=x, dy=dy, gamma=gamma, beta=beta, dx=dx, dgamma=dgamma, dbeta=dbeta)
for name, a in arrays.items():
    np.save(os.path.join(out, name + ".npy"), a)
