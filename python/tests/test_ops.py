"""Every bound op: forward against a NumPy reference (float64), backward against differences of
that reference, float32 against float64, and the layout of what comes back."""
import math

import numpy as np
import pytest

import gradproof
from conftest import away_from_zero, vjp_matches_differences

erf = np.vectorize(math.erf)


def _norm(x, axes, eps):
    mu = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    return (x - mu) / np.sqrt(var + eps)


def bn_ref(input, weight, bias, eps=1e-5):
    y = _norm(input, (0, 2), eps)
    return y * weight[None, :, None] + bias[None, :, None]


def ln_ref(input, weight, bias, eps=1e-5):
    return _norm(input, (-2, -1), eps) * weight + bias


def gn_ref(input, weight, bias, groups=2, eps=1e-5):
    N, C, L = input.shape
    y = _norm(input.reshape(N, groups, -1), (2,), eps).reshape(N, C, L)
    return y * weight[None, :, None] + bias[None, :, None]


def in_ref(input, weight, bias, eps=1e-5):
    return _norm(input, (2,), eps) * weight[None, :, None] + bias[None, :, None]


def rms_ref(input, weight, eps=1e-6):
    return input / np.sqrt((input * input).mean(axis=-1, keepdims=True) + eps) * weight


def softmax_ref(input, dim=1):
    e = np.exp(input - input.max(axis=dim, keepdims=True))
    return e / e.sum(axis=dim, keepdims=True)


def log_softmax_ref(input, dim=-1):
    z = input - input.max(axis=dim, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=dim, keepdims=True))


TARGET = np.array([0, 3, 1, 4, 2, 3])
CLASS_W = np.array([0.5, 1.0, 1.5, 0.8, 1.2])


def nll_ref(input):
    w = CLASS_W[TARGET]
    return -(w * input[np.arange(len(TARGET)), TARGET]).sum() / w.sum()


def ce_ref(input):
    return nll_ref(log_softmax_ref(input, dim=1))


def ce_smooth_ref(input, eps=0.1):
    logp = log_softmax_ref(input, dim=1)
    per = -(1 - eps) * logp[np.arange(len(TARGET)), TARGET] - eps * logp.mean(axis=1)
    return per.mean()


PROBS = softmax_ref(np.random.default_rng(3).standard_normal((6, 5)))


def ce_prob_ref(input):
    return -(PROBS * log_softmax_ref(input, dim=1)).sum(axis=1).mean()


def linear_ref(input, weight, bias):
    return input @ weight.T + bias


def matmul_ref(input, other):
    return np.matmul(input, other)


def gelu_ref(input):
    return input * 0.5 * (1 + erf(input / math.sqrt(2)))


def gelu_tanh_ref(input):
    return 0.5 * input * (1 + np.tanh(math.sqrt(2 / math.pi) * (input + 0.044715 * input**3)))


def softplus_ref(input, beta=2.0, threshold=3.0):
    return np.where(beta * input > threshold, input, np.log1p(np.exp(beta * input)) / beta)


def bce_ref(input, target, weight, pos_weight):
    log_sig = -np.logaddexp(0, -input)
    log_one_minus = -np.logaddexp(0, input)
    return (-weight * (pos_weight * target * log_sig + (1 - target) * log_one_minus)).mean()


def huber_ref(input, target, delta=0.7):
    d = np.abs(input - target)
    return np.where(d <= delta, 0.5 * d * d, delta * (d - 0.5 * delta)).mean()


def smooth_l1_ref(input, target, beta=0.7):
    d = np.abs(input - target)
    return np.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta).sum()


def _x(rng, *shape):
    return rng.standard_normal(shape) * 1.5 + 0.5


# name: (make inputs from rng, forward call, NumPy reference, {input: gradient name})
def cases():
    c = {}
    c["batch_norm"] = (
        lambda r: dict(input=_x(r, 5, 3, 4), weight=r.uniform(0.5, 2, 3), bias=r.standard_normal(3)),
        lambda a: gradproof.batch_norm_forward(a["input"], weight=a["weight"], bias=a["bias"], training=True),
        bn_ref, {"input": "dx", "weight": "dgamma", "bias": "dbeta"})
    c["layer_norm"] = (
        lambda r: dict(input=_x(r, 3, 2, 4), weight=r.uniform(0.5, 2, (2, 4)), bias=r.standard_normal((2, 4))),
        lambda a: gradproof.layer_norm_forward(a["input"], (2, 4), a["weight"], a["bias"]),
        ln_ref, {"input": "dx", "weight": "dgamma", "bias": "dbeta"})
    c["group_norm"] = (
        lambda r: dict(input=_x(r, 3, 4, 5), weight=r.uniform(0.5, 2, 4), bias=r.standard_normal(4)),
        lambda a: gradproof.group_norm_forward(a["input"], 2, a["weight"], a["bias"]),
        gn_ref, {"input": "dx", "weight": "dgamma", "bias": "dbeta"})
    c["instance_norm"] = (
        lambda r: dict(input=_x(r, 2, 3, 6), weight=r.uniform(0.5, 2, 3), bias=r.standard_normal(3)),
        lambda a: gradproof.instance_norm_forward(a["input"], weight=a["weight"], bias=a["bias"]),
        in_ref, {"input": "dx", "weight": "dgamma", "bias": "dbeta"})
    c["rms_norm"] = (
        lambda r: dict(input=_x(r, 4, 6), weight=r.uniform(0.5, 2, 6)),
        lambda a: gradproof.rms_norm_forward(a["input"], 6, a["weight"], eps=1e-6),
        rms_ref, {"input": "dx", "weight": "dgamma"})
    c["softmax"] = (
        lambda r: dict(input=_x(r, 3, 5, 2)),
        lambda a: gradproof.softmax_forward(a["input"], dim=1), softmax_ref, {"input": "dx"})
    c["log_softmax"] = (
        lambda r: dict(input=_x(r, 4, 5)),
        lambda a: gradproof.log_softmax_forward(a["input"]), log_softmax_ref, {"input": "dx"})
    c["nll_loss"] = (
        lambda r: dict(input=_x(r, 6, 5)),
        lambda a: gradproof.nll_loss_forward(a["input"], TARGET, weight=CLASS_W.astype(a["input"].dtype)), nll_ref, {"input": "dx"})
    c["cross_entropy"] = (
        lambda r: dict(input=_x(r, 6, 5)),
        lambda a: gradproof.cross_entropy_forward(a["input"], TARGET, weight=CLASS_W.astype(a["input"].dtype)), ce_ref, {"input": "dx"})
    c["cross_entropy_smoothing"] = (
        lambda r: dict(input=_x(r, 6, 5)),
        lambda a: gradproof.cross_entropy_forward(a["input"], TARGET, label_smoothing=0.1), ce_smooth_ref,
        {"input": "dx"})
    c["cross_entropy_probabilities"] = (
        lambda r: dict(input=_x(r, 6, 5)),
        lambda a: gradproof.cross_entropy_forward(a["input"], PROBS.astype(a["input"].dtype)), ce_prob_ref, {"input": "dx"})
    c["linear"] = (
        lambda r: dict(input=_x(r, 2, 3, 4), weight=r.standard_normal((5, 4)), bias=r.standard_normal(5)),
        lambda a: gradproof.linear_forward(a["input"], a["weight"], a["bias"]), linear_ref,
        {"input": "dx", "weight": "dweight", "bias": "dbias"})
    c["matmul"] = (
        lambda r: dict(input=_x(r, 2, 3, 4), other=r.standard_normal((4, 5))),
        lambda a: gradproof.matmul_forward(a["input"], a["other"]), matmul_ref, {"input": "da", "other": "db"})
    acts = {
        "relu": (lambda x: np.maximum(x, 0), {}),
        "sigmoid": (lambda x: 1 / (1 + np.exp(-x)), {}),
        "tanh": (np.tanh, {}),
        "leaky_relu": (lambda x: np.where(x > 0, x, 0.2 * x), {"negative_slope": 0.2}),
        "elu": (lambda x: np.where(x > 0, x, 1.5 * np.expm1(x)), {"alpha": 1.5}),
        "gelu": (gelu_ref, {}),
        "silu": (lambda x: x / (1 + np.exp(-x)), {}),
        "softplus": (softplus_ref, {"beta": 2.0, "threshold": 3.0}),
    }
    for name, (f, kw) in acts.items():
        fwd = getattr(gradproof, name + "_forward")
        c[name] = (lambda r: dict(input=away_from_zero(_x(r, 3, 7))),
                   lambda a, fwd=fwd, kw=kw: fwd(a["input"], **kw),
                   lambda input, f=f: f(input), {"input": "dx"})
    c["gelu_tanh"] = (lambda r: dict(input=_x(r, 3, 7)),
                      lambda a: gradproof.gelu_forward(a["input"], approximate="tanh"),
                      gelu_tanh_ref, {"input": "dx"})
    c["mse_loss"] = (
        lambda r: dict(input=_x(r, 3, 4), target=_x(r, 3, 4)),
        lambda a: gradproof.mse_loss_forward(a["input"], a["target"]),
        lambda input, target: ((input - target) ** 2).mean(), {"input": "dx", "target": "dtarget"})
    c["mse_loss_none"] = (
        lambda r: dict(input=_x(r, 3, 4), target=_x(r, 3, 4)),
        lambda a: gradproof.mse_loss_forward(a["input"], a["target"], reduction="none"),
        lambda input, target: (input - target) ** 2, {"input": "dx", "target": "dtarget"})
    c["binary_cross_entropy_with_logits"] = (
        lambda r: dict(input=_x(r, 3, 4), target=r.uniform(0, 1, (3, 4)), weight=r.uniform(0.5, 1.5, (3, 4)),
                       pos_weight=r.uniform(0.5, 2, 4)),
        lambda a: gradproof.binary_cross_entropy_with_logits_forward(a["input"], a["target"], a["weight"],
                                                                     pos_weight=a["pos_weight"]),
        bce_ref, {"input": "dx", "target": "dtarget"})

    def pair_away(r, delta):
        # |input − target| kept 0.1 away from the kinks at 0 and at delta (or beta)
        t = _x(r, 3, 4)
        d = r.uniform(0.1, 2.0, (3, 4))
        d = np.where(np.abs(d - delta) < 0.1, d + 0.25, d) * np.sign(r.standard_normal((3, 4)))
        return dict(input=t + d, target=t)
    c["huber_loss"] = (
        lambda r: pair_away(r, 0.7),
        lambda a: gradproof.huber_loss_forward(a["input"], a["target"], delta=0.7),
        huber_ref, {"input": "dx", "target": "dtarget"})
    c["smooth_l1_loss"] = (
        lambda r: pair_away(r, 0.7),
        lambda a: gradproof.smooth_l1_loss_forward(a["input"], a["target"], reduction="sum", beta=0.7),
        smooth_l1_ref, {"input": "dx", "target": "dtarget"})
    return c


CASES = cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_matches_numpy_and_backward_matches_differences(name, rng):
    make, forward, ref, grads = CASES[name]
    a = make(rng)
    y, cache = forward(a)
    np.testing.assert_allclose(y, ref(**a), rtol=1e-12, atol=1e-12)  # both float64, the same formula
    assert y.dtype == np.float64 and y.flags.c_contiguous
    dy = rng.standard_normal(y.shape)  # L = <dy, y> with a random dy, never all ones
    g = getattr(gradproof, cache.op + "_backward")(dy, cache)
    for key, gname in grads.items():
        grad = getattr(g, gname)
        assert grad.shape == a[key].shape and grad.flags.c_contiguous
        vjp_matches_differences(ref, a, key, dy, grad, rng)


@pytest.mark.parametrize("name", sorted(CASES))
def test_float32_agrees_with_float64(name, rng):
    make, forward, ref, grads = CASES[name]
    a = make(rng)
    y64, c64 = forward(a)
    y32, c32 = forward({k: v.astype(np.float32) for k, v in a.items()})
    assert y32.dtype == np.float32 and c32.dtype == "float32"
    dy = rng.standard_normal(y64.shape)
    g64 = getattr(gradproof, c64.op + "_backward")(dy, c64)
    g32 = getattr(gradproof, c32.op + "_backward")(dy.astype(np.float32), c32)
    # float32 rounds each input and each step to 6e-8 relative; these small problems chain at most
    # tens of steps, and the norms divide by σ ~ 1: 1e-4 of the largest magnitude is a bound with
    # two orders of headroom, and a wrong term (O(1) of it) is far outside.
    def close(a32, a64):
        assert np.max(np.abs(a32 - a64)) <= 1e-4 * max(1.0, np.max(np.abs(a64)))
    close(y32, y64)
    for gname in grads.values():
        r = getattr(g32, gname)
        assert r.dtype == np.float32
        close(r, getattr(g64, gname))


def test_inputs_in_any_layout_give_the_same_result(rng):
    x = _x(rng, 4, 6)
    y, _ = gradproof.softmax_forward(x)
    yf, _ = gradproof.softmax_forward(np.asfortranarray(x))
    ys, _ = gradproof.softmax_forward(np.ascontiguousarray(x[:, ::-1])[:, ::-1])  # a negative-stride view
    np.testing.assert_array_equal(y, yf)
    np.testing.assert_array_equal(y, ys)


def test_outputs_own_their_memory_through_the_tensor(rng):
    y, _ = gradproof.relu_forward(_x(rng, 3, 3))
    assert y.base is not None and not y.flags.owndata  # the capsule holding the C++ tensor
    y[0, 0] = 7.0  # writable
    assert y[0, 0] == 7.0


def test_batch_norm_updates_running_statistics_in_place(rng):
    x = _x(rng, 6, 3, 2)
    rm, rv = np.zeros(3), np.ones(3)
    gradproof.batch_norm_forward(x, rm, rv, training=True, momentum=0.1)
    mean = x.mean(axis=(0, 2))
    var = x.var(axis=(0, 2), ddof=1)  # the running variance is the unbiased one, as in PyTorch
    np.testing.assert_allclose(rm, 0.1 * mean, rtol=1e-12)
    np.testing.assert_allclose(rv, 0.9 + 0.1 * var, rtol=1e-12)


def test_batch_norm_eval_uses_the_running_statistics(rng):
    x = _x(rng, 4, 3, 2)
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    y, cache = gradproof.batch_norm_forward(x, rm, rv)  # training=False: PyTorch's default
    np.testing.assert_allclose(y, (x - rm[None, :, None]) / np.sqrt(rv[None, :, None] + 1e-5), rtol=1e-12)
    dy = rng.standard_normal(x.shape)
    g = gradproof.batch_norm_backward(dy, cache)
    np.testing.assert_allclose(g.dx, dy / np.sqrt(rv[None, :, None] + 1e-5), rtol=1e-12)
    assert g.dgamma is None and g.dbeta is None


def test_instance_norm_with_running_statistics(rng):
    x = _x(rng, 2, 3, 5)
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    y, _ = gradproof.instance_norm_forward(x, rm, rv, use_input_stats=False)
    np.testing.assert_allclose(y, (x - rm[None, :, None]) / np.sqrt(rv[None, :, None] + 1e-5), rtol=1e-12)


def test_rms_norm_default_eps_is_the_machine_epsilon(rng):
    x = _x(rng, 3, 4)
    y, _ = gradproof.rms_norm_forward(x, 4)
    np.testing.assert_allclose(y, x / np.sqrt((x * x).mean(-1, keepdims=True) + np.finfo(np.float64).eps),
                               rtol=1e-13)


def test_dropout_scales_the_kept_and_zeroes_the_dropped(rng):
    x = away_from_zero(_x(rng, 50, 40))
    y, cache = gradproof.dropout_forward(x, p=0.25, seed=7)
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / 0.75, rtol=1e-15)
    assert 0.2 < 1 - kept.mean() < 0.3  # 2000 draws: σ of the dropped share ≈ 0.0097, so ±0.05 is 5σ
    dy = rng.standard_normal(x.shape)
    dx = gradproof.dropout_backward(dy, cache).dx
    np.testing.assert_allclose(dx, np.where(kept, dy / 0.75, 0), rtol=1e-15)
    y2, _ = gradproof.dropout_forward(x, p=0.25, seed=7)
    np.testing.assert_array_equal(y, y2)  # the mask is a function of the seed
    ye, ce = gradproof.dropout_forward(x, p=0.25, training=False)
    np.testing.assert_array_equal(ye, x)
    np.testing.assert_array_equal(gradproof.dropout_backward(dy, ce).dx, dy)


def test_embedding_gathers_rows_and_scatters_gradients(rng):
    w = rng.standard_normal((6, 3))
    idx = np.array([[1, 4, 1], [0, 5, 2]])
    y, cache = gradproof.embedding_forward(idx, w, padding_idx=2)
    np.testing.assert_array_equal(y, w[idx])
    dy = rng.standard_normal(y.shape)
    dw = gradproof.embedding_backward(dy, cache).dweight
    expected = np.zeros_like(w)
    np.add.at(expected, idx, dy)
    expected[2] = 0  # the padding row gets no gradient
    np.testing.assert_allclose(dw, expected, rtol=1e-15)


def test_nll_loss_ignore_index_and_reductions(rng):
    x = _x(rng, 4, 3)
    t = np.array([0, -100, 2, 1])
    y, _ = gradproof.nll_loss_forward(x, t, reduction="sum")
    assert y.shape == () and y == pytest.approx(-(x[0, 0] + x[2, 2] + x[3, 1]), rel=1e-15)
    yn, cn = gradproof.nll_loss_forward(x, t, reduction="none")
    np.testing.assert_allclose(yn, [-x[0, 0], 0, -x[2, 2], -x[3, 1]], rtol=1e-15)
    dx = gradproof.nll_loss_backward(np.ones(4), cn).dx
    assert dx[1].tolist() == [0, 0, 0] and dx[0, 0] == -1
