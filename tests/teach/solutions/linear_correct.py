# A right solution of the linear exercise (y = x Wᵀ + b, W stored (O, I) as in PyTorch).
# expect: score: 3 of 3 terms; gradients: all right \(full marks\)
# expect-rc: 0


def dx(dy, weight):
    return dy @ weight


def dweight(dy, x):
    return dy.T @ x


def dbias(dy):
    return dy.sum(0)
