# The mask not applied: ∂L/∂v = dy, and so dx = dy/(1 − p) for the dropped elements too.
# expect: WRONG +dropout\.dmask +∂L/∂v, v = x/\(1 − p\): the mask is not applied: a dropped element
from dropout_correct import *  # noqa: F401,F403


def dmask(dy, mask):
    return dy
