# The collapsed form with the weights of ⟨dy, y⟩ lost: y·(dy − Σₖ dyₖ).
# expect: WRONG +softmax\.dx_fused +∂L/∂x, collapsed: the collapse of ∂L/∂s lost its weights: ⟨dy, y⟩ = Σₖ dyₖ yₖ, not Σₖ dyₖ
# expect: dx +right
# expect: score: 5 of 6 terms; gradients: all right
from softmax_correct import *  # noqa: F401,F403


def dx_fused(dy, y):
    return y * (dy - dy.sum(1, keepdims=True))
