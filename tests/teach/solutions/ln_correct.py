# A right solution of the layer-norm exercise (x (N, D), statistics per row).
# expect: score: 9 of 9 terms; gradients: all right \(full marks\)
# expect-rc: 0
import numpy as np


def dgamma(dy, xhat):
    return (dy * xhat).sum(0)


def dbeta(dy):
    return dy.sum(0)


def dl_dxhat(dy, gamma):
    return dy * gamma


def dl_dvar(dl_dxhat, x, mu, invstd):
    return (dl_dxhat * (x - mu[:, None])).sum(1) * -0.5 * invstd**3


def dvar_dmu(x, mu):
    return -2.0 * (x - mu[:, None]).sum(1) / x.shape[1]


def dl_dmu(dl_dxhat, invstd, dl_dvar, dvar_dmu):
    return -dl_dxhat.sum(1) * invstd + dl_dvar * dvar_dmu


def dvar_dx(x, mu):
    return 2.0 * (x - mu[:, None]) / x.shape[1]


def dmu_dx(x):
    return np.full(x.shape[0], 1.0 / x.shape[1])


def dx(dl_dxhat, invstd, dl_dvar, dvar_dx, dl_dmu, dmu_dx):
    return dl_dxhat * invstd[:, None] + dl_dvar[:, None] * dvar_dx + (dl_dmu * dmu_dx)[:, None]
