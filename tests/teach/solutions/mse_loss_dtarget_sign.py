# dtarget with the sign of dx: ∂d/∂t = −1 forgotten.
# expect: WRONG +mse_loss\.dtarget +∂L/∂t: off by a factor −1 \(a sign error\)
from mse_loss_correct import *  # noqa: F401,F403


def dtarget(dl_dd):
    return dl_dd
