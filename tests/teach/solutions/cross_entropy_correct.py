# A right solution of the cross-entropy exercise (class-index targets as one-hot q, reduction 'mean').
# expect: score: 7 of 7 terms; gradients: all right \(full marks\)
# expect-rc: 0
import numpy as np


def dreduce(dy, q):
    return np.full(q.shape[0], dy / q.shape[0])


def dlogp(dreduce, q):
    return -dreduce[:, None] * q


def dlse(dlogp):
    return -dlogp.sum(1)


def dz(dlogp, p, dlse):
    return dlogp + p * dlse[:, None]


def dshift(dz):
    return -dz.sum(1)


def dx(dz, dshift, is_max):
    return dz + dshift[:, None] * is_max


def dx_fused(dy, p, q):
    return dy / p.shape[0] * (p - q)
