# A student's batch-norm exercise (terms.py of `gradproof exercise bn DIR --lang python`), with
# two mistakes: the σ²-path term of ∂L/∂μ is left out, and ∂L/∂β averages over the batch.
import numpy as np


def dgamma(dy, xhat):
    return (dy * xhat).sum(0)


def dbeta(dy):
    return dy.mean(0)


def dl_dxhat(dy, gamma):
    return dy * gamma


def dl_dvar(dl_dxhat, x, mu, invstd):
    return (dl_dxhat * (x - mu)).sum(0) * -0.5 * invstd**3


def dvar_dmu(x, mu):
    return -2.0 * (x - mu).sum(0) / x.shape[0]


def dl_dmu(dl_dxhat, invstd, dl_dvar, dvar_dmu):
    return -dl_dxhat.sum(0) * invstd


def dvar_dx(x, mu):
    return 2.0 * (x - mu) / x.shape[0]


def dmu_dx(x):
    return np.full(x.shape[1], 1.0 / x.shape[0])


def dx(dl_dxhat, invstd, dl_dvar, dvar_dx, dl_dmu, dmu_dx):
    return dl_dxhat * invstd + dl_dvar * dvar_dx + dl_dmu * dmu_dx
