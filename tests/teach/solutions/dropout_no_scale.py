# The scale 1/(1 − p) forgotten: dx = m·dy.
# expect: WRONG +dropout\.dx +∂L/∂x: the scale 1/\(1 − p\) is forgotten
from dropout_correct import *  # noqa: F401,F403


def dx(dmask, dscale):
    return dmask
