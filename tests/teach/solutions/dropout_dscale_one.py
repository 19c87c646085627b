# ∂v/∂x taken as 1: the forward's scale 1/(1 − p) forgotten in the scale term itself.
# expect: WRONG +dropout\.dscale +∂v/∂x: the scale 1/\(1 − p\) is forgotten: the forward divides
from dropout_correct import *  # noqa: F401,F403


def dscale(p):
    return 1.0
