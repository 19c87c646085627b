"""The oracles on a user's NumPy function: central differences, Richardson, the complex step."""
import math

import numpy as np
import pytest

import gradproof

EPS = np.finfo(np.float64).eps


def loss(x):  # analytic: the complex step applies (no abs, no comparisons)
    return np.sum(np.sin(x) * np.exp(0.3 * x))


def dloss(x):
    return (np.cos(x) + 0.3 * np.sin(x)) * np.exp(0.3 * x)


# Each oracle's error at the step policy's h on this smooth function, as in the C++ policy:
# central ~ eps^(2/3) ≈ 4e-11, Richardson ~ eps^(4/5) ≈ 3e-13, complex step ~ eps (no
# subtraction). The bounds are those error levels with a factor of 100 (relative to max(1, |g|)).
BOUNDS = {"central": 100 * EPS ** (2 / 3), "richardson": 100 * EPS ** 0.8, "complex_step": 100 * EPS}


@pytest.mark.parametrize("oracle", sorted(BOUNDS))
def test_gradient_of_a_known_function(oracle):
    x = np.linspace(-2, 3, 12).reshape(3, 4)
    g = gradproof.gradient(loss, x, oracle=oracle)
    assert g.shape == x.shape
    assert np.max(np.abs(g - dloss(x))) <= BOUNDS[oracle] * max(1, np.max(np.abs(dloss(x))))


@pytest.mark.parametrize("oracle", sorted(BOUNDS))
def test_jacobian_of_a_linear_map_is_its_matrix(oracle, rng):
    A = rng.standard_normal((3, 5))
    J = gradproof.jacobian(lambda v: A @ v, rng.standard_normal(5), oracle=oracle)
    assert J.shape == (3, 5)
    np.testing.assert_allclose(J, A, rtol=0, atol=BOUNDS[oracle] * np.max(np.abs(A)))


@pytest.mark.parametrize("oracle", sorted(BOUNDS))
def test_jvp_of_an_elementwise_function(oracle, rng):
    x = rng.standard_normal(6)
    u = rng.standard_normal(6)
    jv = gradproof.jvp(np.exp, x, u, oracle=oracle)
    np.testing.assert_allclose(jv, np.exp(x) * u, rtol=0, atol=BOUNDS[oracle] * np.max(np.abs(np.exp(x) * u)))


def test_the_oracles_check_an_op_s_backward(rng):
    # What a student does: an op's dx against the oracle on the op's own forward.
    x = rng.standard_normal((4, 5))
    dy = rng.standard_normal(x.shape)
    _, cache = gradproof.softmax_forward(x)
    dx = gradproof.softmax_backward(dy, cache).dx
    numeric = gradproof.gradient(lambda v: np.sum(dy * gradproof.softmax_forward(v)[0]), x, oracle="richardson")
    np.testing.assert_allclose(dx, numeric, rtol=0, atol=BOUNDS["richardson"])


def test_step_is_the_cpp_policy(rng):
    x = np.array([0.5, -40.0, 3.0])
    u = np.array([1.0, 0.0, -2.0])  # |x_j| counts only where u_j != 0: max(1, 0.5, 3) = 3
    for oracle, base in (("central", EPS ** (1 / 3)), ("richardson", EPS ** 0.2)):
        assert gradproof.step(x, u, oracle) == 2.0 ** round(math.log2(base * 3 / 2))
    assert gradproof.step(x, u, "complex_step") == 1e-20


def test_an_explicit_step_is_used():
    # f = x³ at 1: central differences with h give 3 + h² exactly (in exact arithmetic)
    g = gradproof.gradient(lambda v: np.sum(v ** 3), np.array([1.0]), oracle="central", h=0.5)
    assert g[0] == pytest.approx(3.25, rel=1e-15)


def test_complex_step_refuses_a_function_that_drops_the_imaginary_part():
    with pytest.raises(ValueError, match="the complex step needs a function that accepts complex arrays"):
        gradproof.gradient(lambda v: np.sum(np.real(v) ** 2), np.ones(3), oracle="complex_step")


def test_a_complex_result_for_a_real_input_is_refused():
    with pytest.raises(ValueError, match="returned a complex array for a real input"):
        gradproof.gradient(lambda v: np.sum(v + 1j), np.ones(3))


def test_gradient_needs_a_scalar_function():
    with pytest.raises(ValueError, match="gradient\\(\\): f must return one value .* it returned 3"):
        gradproof.gradient(np.sin, np.ones(3))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="oracle must be 'central', 'richardson' or 'complex_step'; got 'dual'"):
        gradproof.gradient(loss, np.ones(3), oracle="dual")
    with pytest.raises(ValueError, match=r"jvp\(\): u must have the size of x \(3\); got 2"):
        gradproof.jvp(np.sin, np.ones(3), np.ones(2))
    with pytest.raises(ValueError, match="the direction u is zero"):
        gradproof.jvp(np.sin, np.ones(3), np.zeros(3))
    with pytest.raises(ValueError, match="h must be a positive finite step"):
        gradproof.jvp(np.sin, np.ones(3), np.ones(3), h=-1.0)
    with pytest.raises(ValueError, match=r"jacobian\(\): x must be a real array; got dtype complex128"):
        gradproof.jacobian(np.sin, np.ones(3) + 0j)
    with pytest.raises(ValueError, match=r"gradient\(\): x is empty"):
        gradproof.gradient(loss, np.ones(0))


def test_an_exception_in_the_function_propagates():
    def f(v):
        raise ZeroDivisionError("from the user's function")
    with pytest.raises(ZeroDivisionError, match="from the user's function"):
        gradproof.gradient(f, np.ones(2))
