"""Shared helpers of the Python module's tests (run by ctest python.pytest, /usr/bin/python3)."""
import numpy as np
import pytest

import gradproof


@pytest.fixture
def rng():
    return np.random.default_rng(14)


def away_from_zero(a, margin=0.1):
    """Values moved at least `margin` away from 0: the kinks of ReLU and friends, and of |d| in the
    losses, stay farther from every sample point than the difference oracles' steps reach."""
    return np.where(np.abs(a) < margin, np.sign(a + 1e-300) * margin + a, a)


def vjp_matches_differences(ref, inputs, key, dy, grad, rng):
    """<grad, u> against d/dt <dy, ref(inputs with inputs[key] + t u)> at t = 0 (Richardson, from
    gradproof's oracles, on the NumPy reference forward, not on the op under test)."""
    x = inputs[key]
    u = rng.standard_normal(x.shape)

    def f(v):
        args = dict(inputs)
        args[key] = v
        return np.asarray(ref(**args))

    numeric = float(np.dot(gradproof.jvp(f, x, u, oracle="richardson"), np.ravel(dy)))
    analytic = float(np.sum(grad * u))
    # Richardson's error is near eps^(4/5) ≈ 3e-13 of |f| per output; summed over the outputs
    # against dy and scaled by max(1, |numeric|), 1e-8 leaves four orders of headroom and is far
    # below any missing term (those are O(1) here).
    assert abs(analytic - numeric) <= 1e-8 * max(1.0, abs(numeric)), (key, analytic, numeric)
