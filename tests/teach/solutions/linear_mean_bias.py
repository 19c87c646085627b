# ∂L/∂b as the mean over the batch instead of the sum (N = 5 in the graded problem).
# expect: WRONG +linear\.dbias +∂L/∂b: off by a factor 1/5: yours is 1/5 × the right value
from linear_correct import *  # noqa: F401,F403


def dbias(dy):
    return dy.mean(0)
