"""The cases of `gradproof check` (and gradproof.check) for the ops declared through the harness
that came after softmax: activations, losses, nll_loss, cross_entropy, matmul, dropout, embedding.

Each case holds the arrays and options of one call, the right gradients computed here with NumPy
from the op's formula (not by gradproof), gradients broken in one known way (each must fail, with
that output named), and bad inputs (each must be refused, exit status 2, with the message given).
tests/cli/check_declared.py runs them through the command, python/tests/test_check_declared.py
through gradproof.check.
"""
import math

import numpy as np


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


def softplus(v):
    return np.logaddexp(0, v)


def softmax(v, axis):
    e = np.exp(v - v.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


class Case:
    """One call: `arrays` (inputs, dy and the other arrays), `options`, the right `grads`, the
    `broken` gradients (name, array, what is wrong) and the `bad` inputs (what, changes to the
    arrays or options — None removes one —, a regex of the message)."""

    def __init__(self, name, op, arrays, options, grads):
        self.name, self.op, self.arrays, self.options, self.grads = name, op, arrays, options, grads
        self.broken, self.bad = [], []

    def breaks(self, grad, array, what):
        self.broken.append((grad, array, what))
        return self

    def refuses(self, what, changes, message):
        self.bad.append((what, changes, message))
        return self


def activation_cases(rng):
    x = rng.standard_normal((4, 5)) * 2
    x[np.abs(x) < 0.1] += 0.3  # away from the kinks at 0
    dy = rng.standard_normal((4, 5))
    s = sigmoid(x)
    erf = np.vectorize(math.erf)
    Phi, phi = 0.5 * (1 + erf(x / math.sqrt(2))), np.exp(-x * x / 2) / math.sqrt(2 * math.pi)
    k = math.sqrt(2 / math.pi)
    u = k * (x + 0.044715 * x**3)
    th = np.tanh(u)
    gelu_tanh = 0.5 * (1 + th) + 0.5 * x * (1 - th * th) * k * (1 + 3 * 0.044715 * x * x)
    t = np.tanh(x)
    c = []
    a = {"x": x, "dy": dy}
    c.append(Case("relu", "relu", a, {}, {"dx": dy * (x > 0)})
             .breaks("dx", dy * (x >= -1), "the step at -1")
             .refuses("dy of another shape", {"dy": dy[:, :4]},
                      r"relu: dy must have the shape of x \(4, 5\); got \(4, 4\)")
             .refuses("an empty x", {k: np.zeros((0, 5)) for k in ("x", "dy", "dx")},
                      r"relu: x must not be empty; got shape \(0, 5\)"))
    c.append(Case("sigmoid", "sigmoid", a, {}, {"dx": dy * s * (1 - s)})
             .breaks("dx", dy * s, "σ' taken as σ"))
    c.append(Case("tanh", "tanh", a.copy(), {}, {"dx": (dy * (1 - t * t)).astype(np.float32)})
             .breaks("dx", (-dy * (1 - t * t)).astype(np.float32), "the sign"))
    c[-1].arrays = {"x": x.astype(np.float32), "dy": dy.astype(np.float32)}
    c.append(Case("leaky_relu", "leaky_relu", a, {"negative_slope": 0.2},
                  {"dx": dy * np.where(x > 0, 1, 0.2)})
             .breaks("dx", dy * np.where(x > 0, 1, 0.01), "the default slope")
             .refuses("a slope that is not a number", {"negative_slope": "steep"},
                      r"leaky_relu: negative_slope must be a finite number; got 'steep'"))
    c.append(Case("elu", "elu", a, {"alpha": 0.5}, {"dx": dy * np.where(x > 0, 1, 0.5 * np.exp(x))})
             .breaks("dx", dy * np.where(x > 0, 1, np.exp(x)), "alpha forgotten"))
    c.append(Case("gelu", "gelu", a, {}, {"dx": dy * (Phi + x * phi)})
             .breaks("dx", dy * Phi, "the x·φ(x) term missing")
             .refuses("approximate other than none or tanh", {"approximate": "erf"},
                      r"gelu: approximate must be one of 'none', 'tanh'; got 'erf'"))
    c.append(Case("gelu_tanh", "gelu", a, {"approximate": "tanh"}, {"dx": dy * gelu_tanh})
             .breaks("dx", dy * (Phi + x * phi) * 1.01, "the erf form, scaled: not the tanh form"))
    c.append(Case("silu", "silu", a, {}, {"dx": dy * s * (1 + x * (1 - s))})
             .breaks("dx", dy * s, "the x σ' term missing"))
    beta, thr = 2.0, 5.0
    c.append(Case("softplus", "softplus", a, {"beta": beta, "threshold": thr},
                  {"dx": dy * np.where(beta * x > thr, 1, sigmoid(beta * x))})
             .breaks("dx", dy * sigmoid(x), "beta forgotten")
             .refuses("beta 0", {"beta": 0}, r"beta must be finite and nonzero"))
    return c


def loss_cases(rng):
    c = []
    x, t = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    dy = np.array(rng.standard_normal())
    d = x - t
    g = 2 * d / x.size * dy
    c.append(Case("mse_loss", "mse_loss", {"x": x, "target": t, "dy": dy}, {},
                  {"dx": g, "dtarget": -g})
             .breaks("dx", d / x.size * dy, "the factor 2 missing")
             .breaks("dtarget", g, "the sign of dtarget")
             .refuses("dy of a per-element loss for reduction mean", {"dy": np.ones((3, 4))},
                      r"mse_loss: dy must have reduction 'mean': the shape of y \(\); got \(3, 4\)")
             .refuses("a target of another shape", {"target": t[:2]},
                      r"mse_loss: target must have the shape of x \(3, 4\); got \(2, 4\)")
             .refuses("an unknown reduction", {"reduction": "avg"},
                      r"mse_loss: reduction must be one of 'none', 'mean', 'sum'; got 'avg'"))
    # BCE with logits, weight (4) and pos_weight (4), reduction sum
    x, t = rng.standard_normal((3, 4)), rng.uniform(0, 1, (3, 4))
    w, pw = rng.uniform(0.5, 2, 4), rng.uniform(0.5, 3, 4)
    dy = np.array(0.7)
    ell = 1 + (pw - 1) * t
    dx = dy * w * ((1 - t) - ell * sigmoid(-x))
    dt = dy * w * (-x + (pw - 1) * softplus(-x))
    c.append(Case("bce_with_logits", "bce_with_logits",
                  {"x": x, "target": t, "dy": dy, "weight": w, "pos_weight": pw},
                  {"reduction": "sum"}, {"dx": dx, "dtarget": dt})
             .breaks("dx", dy * w * (sigmoid(x) - t), "pos_weight forgotten")
             .breaks("dtarget", -dy * w * x, "pos_weight's term of dtarget missing"))
    # Huber (delta 0.5) and smooth L1 (beta 0.5), reduction none and mean
    x, t = rng.standard_normal((2, 5)), rng.standard_normal((2, 5))
    d = x - t
    dyn = rng.standard_normal((2, 5))
    hub = dyn * np.clip(d, -0.5, 0.5)
    c.append(Case("huber_loss", "huber_loss", {"x": x, "target": t, "dy": dyn},
                  {"reduction": "none", "delta": 0.5},
                  {"dx": hub, "dtarget": -hub})
             .breaks("dx", dyn * np.clip(d / 0.5, -1, 1), "smooth L1's derivative (off by delta)"))
    dy = np.array(1.3)
    sl1 = dy * np.clip(d / 0.5, -1, 1) / d.size
    c.append(Case("smooth_l1_loss", "smooth_l1_loss", {"x": x, "target": t, "dy": dy},
                  {"beta": 0.5},
                  {"dx": sl1, "dtarget": -sl1})
             .breaks("dx", sl1 * d.size, "the mean's 1/n missing")
             .refuses("beta negative", {"beta": -1}, r"smooth_l1_loss: .*beta"))
    return c


def class_cases(rng):
    c = []
    N, C = 6, 5
    logp = np.log(softmax(rng.standard_normal((N, C)), 1))
    tgt = rng.integers(0, C, N).astype(np.int64)
    w = rng.uniform(0.5, 2, C)
    dy = np.array(0.9)
    dx = np.zeros((N, C))
    dx[np.arange(N), tgt] = -w[tgt] * dy / w[tgt].sum()
    wrong = np.zeros((N, C))
    wrong[np.arange(N), tgt] = -w[tgt] * dy / N
    c.append(Case("nll_loss", "nll_loss", {"x": logp, "dy": dy, "target": tgt, "weight": w}, {},
                  {"dx": dx})
             .breaks("dx", wrong, "the mean over N instead of the sum of the weights")
             .refuses("no target", {"target": None},
                      r"nll_loss: target \(class indices as integers\) is required")
             .refuses("a target of floats", {"target": tgt.astype(np.float64)},
                      r"nll_loss: target must be class indices "
                      r"\(an integer array: int64 or int32\); "
                      r"got floating point")
             .refuses("a class out of range", {"target": np.where(np.arange(N) == 3, C, tgt)},
                      r"nll_loss: target must hold class indices in \[0, 5\) or ignore_index -100; "
                      r"got 5 at flat index 3")
             .refuses("a weight per sample, not per class", {"weight": np.ones(N)},
                      r"nll_loss: weight must have one value per class: \(5,\); got \(6,\)")
             .refuses("an ignore_index that is not an integer", {"ignore_index": 1.5},
                      r"nll_loss: ignore_index must be an integer; got 1.5"))
    # nll_loss, reduction none, ignore_index 2, int32 targets, (N, C, d) input
    logp3 = np.log(softmax(rng.standard_normal((3, 4, 2)), 1))
    t3 = rng.integers(0, 4, (3, 2)).astype(np.int32)
    t3[1, 0] = 2
    dy3 = rng.standard_normal((3, 2))
    dx3 = np.zeros((3, 4, 2))
    for n in range(3):
        for k in range(2):
            if t3[n, k] != 2:
                dx3[n, t3[n, k], k] = -dy3[n, k]
    wrong3 = dx3.copy()
    wrong3[1, 2, 0] = -dy3[1, 0]
    c.append(Case("nll_loss_ignore", "nll_loss", {"x": logp3, "dy": dy3, "target": t3},
                  {"reduction": "none", "ignore_index": 2}, {"dx": dx3})
             .breaks("dx", wrong3, "the ignored entries given a gradient")
             .refuses("dy of the reduced shape for reduction none", {"dy": np.array(1.0)},
                      r"nll_loss: dy must have reduction 'none': the shape of the target \(3, 2\); "
                      r"got \(\)"))
    # cross_entropy, class indices, label_smoothing 0.1, mean
    x = rng.standard_normal((N, C))
    eps = 0.1
    q = (1 - eps) * np.eye(C)[tgt] + eps / C
    dx = (softmax(x, 1) - q) / N * dy
    c.append(Case("cross_entropy", "cross_entropy", {"x": x, "dy": dy, "target": tgt},
                  {"label_smoothing": eps},
                  {"dx": dx})
             .breaks("dx", (softmax(x, 1) - np.eye(C)[tgt]) / N * dy, "label smoothing forgotten")
             .refuses("label_smoothing above 1", {"label_smoothing": 2},
                      r"cross_entropy: label_smoothing must be in \[0, 1\]; got 2"))
    # cross_entropy, class probabilities, sum, float32
    p = softmax(rng.standard_normal((N, C)), 1)
    dys = np.array(1.1)
    dx = (softmax(x, 1) - p) * dys
    c.append(Case("cross_entropy_probs", "cross_entropy",
                  {k: v.astype(np.float32) for k, v in (("x", x), ("dy", dys), ("target", p))},
                  {"reduction": "sum"}, {"dx": dx.astype(np.float32)})
             .breaks("dx", (-dx).astype(np.float32), "the sign")
             .refuses("probabilities of another shape", {"target": p[:, :4]},
                      r"cross_entropy: target must have \(class probabilities\) the shape of x "
                      r"\(6, 5\); got \(6, 4\)"))
    return c


def other_cases(rng):
    c = []
    a, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 5))
    dy = rng.standard_normal((2, 3, 5))
    da, db = dy @ b.T, sum(a[t].T @ dy[t] for t in range(2))
    c.append(Case("matmul", "matmul", {"a": a, "b": b, "dy": dy}, {}, {"da": da, "db": db})
             .breaks("db", a[0].T @ dy[0], "the broadcast b's gradient not summed over the batch")
             .refuses("b that does not fit a", {"b": rng.standard_normal((3, 5))}, r"matmul: .*")
             .refuses("dy of another shape", {"dy": dy[:, :, :4]},
                      r"matmul: dy must have the shape of y = a @ b \(2, 3, 5\); got \(2, 3, 4\)"))
    # dropout, p 0.3: the mask from y, or given
    x = rng.standard_normal((4, 6))
    x[x == 0] = 0.5
    m = (rng.uniform(0, 1, x.shape) >= 0.3).astype(np.float64)
    y = m * x / 0.7
    dy = rng.standard_normal(x.shape)
    dx = m * dy / 0.7
    c.append(Case("dropout_y", "dropout", {"x": x, "dy": dy, "y": y}, {"p": 0.3}, {"dx": dx})
             .breaks("dx", m * dy, "the scale 1/(1 − p) missing")
             .refuses("y of another p", {"p": 0.5},
                      r"dropout: y must be 0 or x/\(1 − p\) with p = 0.5 \(is p right\?\)")
             .refuses("x with a zero", {"x": np.where(np.arange(24).reshape(4, 6) == 7, 0.0, x)},
                      r"dropout: y cannot give the mask where x = 0 .*give mask instead; "
                      r"got x = 0 at flat index 7")
             .refuses("both y and mask", {"mask": m},
                      r"dropout: needs exactly one of mask .*; got 2 of them")
             .refuses("neither y nor mask nor seed", {"y": None},
                      r"dropout: needs exactly one of mask .*; got 0 of them")
             .refuses("p above 1", {"p": 1.5}, r"dropout: p must be in \[0, 1\]; got 1.5"))
    c.append(Case("dropout_mask", "dropout",
                  {"x": x.astype(np.float32), "dy": dy.astype(np.float32), "mask": m},
                  {"p": 0.3}, {"dx": dx.astype(np.float32)})
             .breaks("dx", (m * dy / 0.5).astype(np.float32), "scaled by PyTorch's default p")
             .refuses("a mask that is not 0/1", {"mask": m * 2},
                      r"dropout: mask must hold 0 \(dropped\) and 1 \(kept\); got 2 at flat index"))
    # embedding, padding_idx 1
    V, D = 6, 3
    wt = rng.standard_normal((V, D))
    idx = np.array([[0, 1, 3, 3], [5, 1, 0, 3]], dtype=np.int64)
    dy = rng.standard_normal((2, 4, D))
    dw = np.zeros((V, D))
    np.add.at(dw, idx.reshape(-1), dy.reshape(-1, D))
    wrong = dw.copy()
    dw[1] = 0
    c.append(Case("embedding", "embedding", {"weight": wt, "dy": dy, "indices": idx},
                  {"padding_idx": 1}, {"dweight": dw})
             .breaks("dweight", wrong, "the padding row given a gradient")
             .refuses("indices as floats", {"indices": idx.astype(np.float32)},
                      r"embedding: indices must be an integer array \(int64 or int32\); "
                      r"got floating point")
             .refuses("an index out of range", {"indices": np.where(idx == 5, 6, idx)},
                      r"embedding: indices must hold rows of weight, in \[0, 6\); "
                      r"got 6 at flat index 4")
             .refuses("no indices", {"indices": None},
                      r"embedding: indices \(the input of F.embedding, integers\) is required")
             .refuses("a padding_idx out of range", {"padding_idx": 9},
                      r"embedding: padding_idx must be within num_embeddings"))
    return c


def cases():
    rng = np.random.default_rng(1414)
    return activation_cases(rng) + loss_cases(rng) + class_cases(rng) + other_cases(rng)


def call(case, changes=None, grads=None):
    """The arrays and options of one call: the case's, with `changes` applied and `grads` added
    (name → array; the case's right gradients when None)."""
    arrays, options = dict(case.arrays), dict(case.options)
    arrays.update(case.grads if grads is None else grads)
    for k, v in (changes or {}).items():
        arrays.pop(k, None)
        options.pop(k, None)
        if v is not None:
            (arrays if isinstance(v, np.ndarray) else options)[k] = v
    return arrays, options
