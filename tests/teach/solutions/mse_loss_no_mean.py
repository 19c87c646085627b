# The mean's 1/n forgotten (n = 12 elements in the graded problem).
# expect: WRONG +mse_loss\.dl_dd +∂L/∂d, d = x − t: off by a factor 12: yours is 12 × the right value
from mse_loss_correct import *  # noqa: F401,F403


def dl_dd(dy, x, target):
    return dy * 2 * (x - target)
