# dx without the mean path: μ treated as a constant in the assembly.
# expect: WRONG +bn\.dx +∂L/∂x: the μ path \(the mean path\) ∂L/∂μ·∂μ/∂xᵢ is missing
# expect: dx +WRONG: largest error at
# expect: score: 8 of 9 terms; gradients: 1 of 3 not right
# expect-json: "kind": "part_missing"
from bn_correct import *  # noqa: F401,F403


def dx(dl_dxhat, invstd, dl_dvar, dvar_dx, dl_dmu, dmu_dx):
    return dl_dxhat * invstd + dl_dvar * dvar_dx
