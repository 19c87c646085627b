# The row-sum edge of ∂L/∂z without its eⱼ (∂s/∂zⱼ taken as 1), and the shift path left out of dx
# (it is zero: the grader says so).
# expect: WRONG +softmax\.dl_dz +∂L/∂z: the row-sum edge lost its factor eⱼ: s = Σ exp\(zⱼ\), so ∂s/∂zⱼ = eⱼ, not 1
# expect: half +softmax\.dx +∂L/∂x: right here, not in general: the shift path ∂L/∂m at the argmax is missing; here it is zero \(y does not depend on the shift m
# expect: dx +WRONG
from softmax_correct import *  # noqa: F401,F403


def dl_dz(e, dl_de, dl_ds):
    return e * dl_de + dl_ds[:, None]


def dx(dl_dz, dshift, is_max):
    return dl_dz
