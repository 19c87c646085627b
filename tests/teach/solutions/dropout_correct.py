# A right solution of the dropout exercise (training, p given, the forward's mask given).
# expect: score: 3 of 3 terms; gradients: all right \(full marks\)
# expect-rc: 0


def dmask(dy, mask):
    return mask * dy


def dscale(p):
    return 1 / (1 - p)


def dx(dmask, dscale):
    return dmask * dscale
