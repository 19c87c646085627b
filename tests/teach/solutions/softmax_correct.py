# A right solution of the softmax exercise (rows of (R, M)).
# expect: score: 6 of 6 terms; gradients: all right \(full marks\)
# expect-rc: 0


def dl_de(dy, s):
    return dy / s[:, None]


def dl_ds(dy, e, s):
    return -(dy * e).sum(1) / s**2


def dl_dz(e, dl_de, dl_ds):
    return e * (dl_de + dl_ds[:, None])


def dshift(dl_dz):
    return -dl_dz.sum(1)


def dx(dl_dz, dshift, is_max):
    return dl_dz + dshift[:, None] * is_max


def dx_fused(dy, y):
    return y * (dy - (dy * y).sum(1, keepdims=True))
