# A right solution of the silu exercise (y = x·σ(x), s = σ(x) given).
# expect: score: 3 of 3 terms; gradients: all right \(full marks\)
# expect-rc: 0


def dsig(dy, s):
    return dy * s


def dxsig(dy, x, s):
    return dy * x * s * (1 - s)


def dx(dsig, dxsig):
    return dsig + dxsig
