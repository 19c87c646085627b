# The rows of dy assigned instead of added: a repeated index keeps only its last position's row.
# expect: WRONG +embedding\.dweight +∂L/∂W: the rows of dy are assigned, not added
import numpy as np

from embedding_correct import *  # noqa: F401,F403


def dweight(weight, indices, dy):
    dw = np.zeros_like(weight)
    dw[indices.astype(int)] = dy
    return dw
