# A right solution of the embedding exercise (padding_idx None; the indices repeat).
# expect: score: 1 of 1 terms; gradients: all right \(full marks\)
# expect-rc: 0
import numpy as np


def dweight(weight, indices, dy):
    dw = np.zeros_like(weight)
    np.add.at(dw, indices.astype(int), dy)
    return dw
