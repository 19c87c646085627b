# A right solution of the mse_loss exercise (reduction 'mean', dy the upstream scalar).
# expect: score: 3 of 3 terms; gradients: all right \(full marks\)
# expect-rc: 0


def dl_dd(dy, x, target):
    return dy * 2 * (x - target) / x.size


def dx(dl_dd):
    return dl_dd


def dtarget(dl_dd):
    return -dl_dd
