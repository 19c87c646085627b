"""gradproof.check: the verdicts and the diagnosis of `gradproof check`, on arrays in memory; the
same report as the command prints for the same arrays written as .npy files."""
import os
import subprocess

import numpy as np
import pytest

import gradproof

EPS = 1e-5


def bn_problem(rng, dtype=np.float64):
    x = rng.standard_normal((6, 3, 5)) * 1.5 + 2
    dy = rng.standard_normal(x.shape)
    gamma = np.array([0.5, 0.9, 1.3])
    return x.astype(dtype), dy.astype(dtype), gamma.astype(dtype)


def broken_bn_dx(x, dy, gamma, bug):
    """The textbook staged batch-norm backward (dx̂, dσ², dμ, then dx), with one bug."""
    M = x.shape[0] * x.shape[2]
    mu = x.mean(axis=(0, 2), keepdims=True)
    var = ((x - mu) ** 2).sum(axis=(0, 2), keepdims=True) / (M - 1 if bug == "unbiased" else M)
    invstd = 1 / np.sqrt(var + EPS)
    g = 1.0 if bug == "gamma_missing" else gamma[None, :, None]
    dxhat = dy * g
    dvar = (dxhat * (x - mu) * -0.5 * (var + EPS) ** -1.5).sum(axis=(0, 2), keepdims=True)
    dmu = (-dxhat * invstd).sum(axis=(0, 2), keepdims=True)
    v = dxhat * invstd
    if bug != "stats_constant":
        v = v + (-1 if bug == "variance_path" else 1) * dvar * 2 * (x - mu) / M
        v = v + (0.5 if bug == "mean_path" else 1) * dmu / M
    return -v if bug == "sign" else v


def test_right_gradients_pass(rng):
    x, dy, gamma = bn_problem(rng)
    _, cache = gradproof.batch_norm_forward(x, weight=gamma, bias=np.zeros(3), training=True)
    g = gradproof.batch_norm_backward(dy, cache)
    r = gradproof.check("bn", x=x, dy=dy, gamma=gamma, beta=np.zeros(3), dx=g.dx, dgamma=g.dgamma, dbeta=g.dbeta)
    assert r.passed and [o.name for o in r.outputs] == ["dx", "dgamma", "dbeta"]
    assert all(o.passed and o.fraction_of_allowance < 1 for o in r.outputs)
    assert r.diagnosis is None and r.dtype == "float64"


def test_the_textbook_backward_without_a_bug_passes(rng):
    x, dy, gamma = bn_problem(rng)
    assert gradproof.check("bn", x=x, dy=dy, gamma=gamma, dx=broken_bn_dx(x, dy, gamma, None)).passed


@pytest.mark.parametrize("bug,kind", [
    ("stats_constant", "stats_constant"),
    ("sign", "sign"),
    ("gamma_missing", "gamma_missing"),
    ("unbiased", "variance_bias"),
    ("mean_path", "mean_path"),
    ("variance_path", "variance_path"),
])
def test_each_broken_backward_fails_with_its_diagnosis(rng, bug, kind):
    x, dy, gamma = bn_problem(rng)
    r = gradproof.check("bn", x=x, dy=dy, gamma=gamma, dx=broken_bn_dx(x, dy, gamma, bug))
    assert not r.passed and not r.outputs[0].passed
    assert r.outputs[0].fraction_of_allowance > 1
    assert r.diagnosis is not None and r.diagnosis.kind == kind, r.diagnosis.text
    assert "diagnosis of dx:" in str(r)


def test_float32_arrays_get_the_float32_policy(rng):
    x, dy, gamma = bn_problem(rng, np.float32)
    _, cache = gradproof.batch_norm_forward(x, weight=gamma, training=True)
    g = gradproof.batch_norm_backward(dy, cache)
    r = gradproof.check("bn", x=x, dy=dy, gamma=gamma, dx=g.dx, dgamma=g.dgamma)
    assert r.passed and r.dtype == "float32"
    wrong = broken_bn_dx(x.astype(np.float64), dy.astype(np.float64), gamma.astype(np.float64), "stats_constant")
    r = gradproof.check("bn", x=x, dy=dy, gamma=gamma, dx=wrong.astype(np.float32))
    assert not r.passed and r.diagnosis.kind == "stats_constant"


def test_eval_mode_has_no_diagnosis(rng):
    x, dy, gamma = bn_problem(rng)
    rm, rv = np.zeros(3), np.ones(3)
    r = gradproof.check("bn", x=x, dy=dy, gamma=gamma, running_mean=rm, running_var=rv, training=False,
                        dx=dy * gamma[None, :, None] / np.sqrt(1 + EPS))
    assert r.passed and "eval mode" in r.diagnosis_note


def test_the_other_ops_pass_on_their_own_gradients(rng):
    x = rng.standard_normal((4, 6)) + 1
    dy = rng.standard_normal(x.shape)
    w = rng.uniform(0.5, 1.5, 6)
    _, c = gradproof.layer_norm_forward(x, 6, w)
    g = gradproof.layer_norm_backward(dy, c)
    assert gradproof.check("ln", x=x, dy=dy, gamma=w, dx=g.dx, dgamma=g.dgamma, normalized_shape=6).passed
    x3 = x.reshape(2, 4, 3)
    dy3 = dy.reshape(2, 4, 3)
    _, c = gradproof.group_norm_forward(x3, 2)
    assert gradproof.check("gn", x=x3, dy=dy3, dx=gradproof.group_norm_backward(dy3, c).dx, num_groups=2).passed
    _, c = gradproof.instance_norm_forward(x3)
    assert gradproof.check("in", x=x3, dy=dy3, dx=gradproof.instance_norm_backward(dy3, c).dx).passed
    _, c = gradproof.rms_norm_forward(x, 6, w, eps=1e-6)
    g = gradproof.rms_norm_backward(dy, c)
    assert gradproof.check("rms", x=x, dy=dy, gamma=w, dx=g.dx, dgamma=g.dgamma, eps=1e-6).passed
    _, c = gradproof.softmax_forward(x, dim=0)
    dx = gradproof.softmax_backward(dy, c).dx
    assert gradproof.check("softmax", x=x, dy=dy, dx=dx, dim=0).passed
    r = gradproof.check("softmax", x=x, dy=dy, dx=dx, dim=1)  # the gradient of the other axis
    assert not r.passed and r.diagnosis is None


def test_a_layer_norm_without_gamma_in_its_dx_is_named(rng):
    x = rng.standard_normal((5, 8)) * 2
    dy = rng.standard_normal(x.shape)
    w = rng.uniform(0.5, 2.0, 8)
    _, c = gradproof.layer_norm_forward(x, 8)
    dx_no_gamma = gradproof.layer_norm_backward(dy, c).dx  # the gradient as if γ = 1
    r = gradproof.check("ln", x=x, dy=dy, gamma=w, dx=dx_no_gamma)
    assert not r.passed and r.diagnosis.kind == "gamma_missing"


def test_check_ops_lists_what_the_command_knows():
    ops = gradproof.check_ops()
    assert {"bn", "ln", "gn", "in", "rms", "softmax"} <= set(ops)


def test_the_report_is_the_commands_output(rng, tmp_path):
    """The same arrays through the command (as .npy files) and through check(): the same text."""
    cli = os.environ.get("GRADPROOF_CLI")
    assert cli, "ctest sets GRADPROOF_CLI to the gradproof command"
    x, dy, gamma = bn_problem(rng, np.float32)
    arrays = dict(x=x, dy=dy, gamma=gamma,
                  dx=broken_bn_dx(x.astype(float), dy.astype(float), gamma.astype(float), "mean_path").astype(np.float32))
    words = [cli, "check", "bn"]
    for name, a in arrays.items():
        np.save(tmp_path / (name + ".npy"), a)
        words += ["--" + name, str(tmp_path / (name + ".npy"))]
    words += ["--eps", "1e-5", "--json", str(tmp_path / "out.json")]
    run = subprocess.run(words, capture_output=True, text=True)
    assert run.returncode == 1, run.stderr
    r = gradproof.check("bn", eps=1e-5, **arrays)
    assert str(r) == run.stdout
    assert r.json() == (tmp_path / "out.json").read_text()


# ---- bad input: ValueError, naming the argument -----------------------------------------------

def test_unknown_op_is_refused():
    with pytest.raises(ValueError, match="check: unknown op 'nope'"):
        gradproof.check("nope", x=np.zeros(3))


def test_missing_x_is_refused(rng):
    x, dy, gamma = bn_problem(rng)
    with pytest.raises(ValueError, match=r"check bn: x= \(an array\) is required"):
        gradproof.check("bn", dy=dy, dx=dy)


def test_no_gradient_is_refused(rng):
    x, dy, gamma = bn_problem(rng)
    with pytest.raises(ValueError, match="no gradient to check: give at least one of dx=, dgamma=, dbeta="):
        gradproof.check("bn", x=x, dy=dy)


def test_a_gradient_of_the_wrong_shape_is_refused(rng):
    x, dy, gamma = bn_problem(rng)
    with pytest.raises(ValueError, match=r"check bn: dx= \(array\) has shape \(3,\); expected \(6, 3, 5\)"):
        gradproof.check("bn", x=x, dy=dy, dx=gamma)


def test_an_integer_array_is_refused(rng):
    x, dy, gamma = bn_problem(rng)
    with pytest.raises(ValueError, match=r"check bn: dx= \(array\) holds int64; expected floating point"):
        gradproof.check("bn", x=x, dy=dy, dx=np.zeros(x.shape, np.int64))


def test_an_unknown_argument_is_refused(rng):
    x, dy, gamma = bn_problem(rng)
    with pytest.raises(ValueError, match="check bn: unknown option 'frob='"):
        gradproof.check("bn", x=x, dy=dy, dx=dy, frob=1)
    with pytest.raises(ValueError, match="check bn: unknown array argument 'frob='"):
        gradproof.check("bn", x=x, dy=dy, dx=dy, frob=dy)


def test_dgamma_without_gamma_is_refused(rng):
    x, dy, gamma = bn_problem(rng)
    with pytest.raises(ValueError, match=r"dgamma= needs gamma= \(the input it is the gradient of\)"):
        gradproof.check("bn", x=x, dy=dy, dgamma=gamma)


def test_a_bad_option_value_is_refused(rng):
    x, dy, gamma = bn_problem(rng)
    with pytest.raises(ValueError, match="check bn: eps= needs a number; got 'small'"):
        gradproof.check("bn", x=x, dy=dy, dx=dy, eps="small")
    with pytest.raises(ValueError, match="eps= takes a number, not a bool"):
        gradproof.check("bn", x=x, dy=dy, dx=dy, eps=True)


def test_the_ops_own_errors_become_value_errors(rng):
    x, dy, gamma = bn_problem(rng)
    with pytest.raises(ValueError, match="check gn: groups= is required"):
        gradproof.check("gn", x=x, dy=dy, dx=dy)
    with pytest.raises(ValueError, match="check bn: .*gamma"):
        gradproof.check("bn", x=x, dy=dy, gamma=np.ones(4), dx=dy)
