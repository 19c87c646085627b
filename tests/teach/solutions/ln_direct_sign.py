# ∂L/∂μ with the direct term's sign flipped (∂x̂/∂μ = −1/√(σ² + ε) taken as +).
# expect: WRONG +ln\.dl_dmu +∂L/∂μ: off by a factor −1 \(a sign error\)
# expect: dx +WRONG
from ln_correct import *  # noqa: F401,F403


def dl_dmu(dl_dxhat, invstd, dl_dvar, dvar_dmu):
    return dl_dxhat.sum(1) * invstd + dl_dvar * dvar_dmu
