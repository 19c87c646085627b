"""Bad input to the ops: a ValueError whose message names the argument (the C++ message, with
the Python name of each C++ argument it mentions)."""
import numpy as np
import pytest

import gradproof

FORWARDS = {  # name: a valid call's arguments (input first)
    "batch_norm": lambda x: dict(input=x, training=True),
    "layer_norm": lambda x: dict(input=x, normalized_shape=4),
    "group_norm": lambda x: dict(input=x, num_groups=3),
    "instance_norm": lambda x: dict(input=x),
    "rms_norm": lambda x: dict(input=x, normalized_shape=4),
    "softmax": lambda x: dict(input=x),
    "log_softmax": lambda x: dict(input=x),
    "nll_loss": lambda x: dict(input=x[:, :, 0], target=np.array([0, 1])),
    "cross_entropy": lambda x: dict(input=x[:, :, 0], target=np.array([0, 1])),
    "linear": lambda x: dict(input=x, weight=np.ones((2, 4), x.dtype)),
    "matmul": lambda x: dict(input=x, other=np.ones((4, 2), x.dtype)),
    "relu": lambda x: dict(input=x), "sigmoid": lambda x: dict(input=x), "tanh": lambda x: dict(input=x),
    "leaky_relu": lambda x: dict(input=x), "elu": lambda x: dict(input=x), "gelu": lambda x: dict(input=x),
    "silu": lambda x: dict(input=x), "softplus": lambda x: dict(input=x),
    "mse_loss": lambda x: dict(input=x, target=x.copy()),
    "binary_cross_entropy_with_logits": lambda x: dict(input=x, target=x.copy()),
    "huber_loss": lambda x: dict(input=x, target=x.copy()),
    "smooth_l1_loss": lambda x: dict(input=x, target=x.copy()),
    "dropout": lambda x: dict(input=x),
}

X = np.arange(24, dtype=np.float64).reshape(2, 3, 4) / 10


@pytest.mark.parametrize("name", sorted(FORWARDS))
def test_an_integer_input_is_refused(name):
    args = FORWARDS[name](X)
    args["input"] = np.ones(args["input"].shape, np.int32)
    with pytest.raises(ValueError, match=name + r"_forward\(\): input must be a float32 or float64 array; got dtype int32"):
        getattr(gradproof, name + "_forward")(**args)


@pytest.mark.parametrize("name", sorted(FORWARDS))
def test_a_valid_call_runs_and_its_backward_checks_dy(name):
    y, cache = getattr(gradproof, name + "_forward")(**FORWARDS[name](X))
    backward = getattr(gradproof, name + "_backward")
    backward(np.ones(y.shape), cache)  # the right dy is accepted
    with pytest.raises(ValueError, match=name + r"_backward\(\): .*dy \(must match"):
        backward(np.ones(y.shape + (2,)), cache)  # a dy of another shape names dy
    with pytest.raises(ValueError, match=r"dy has dtype float32 but the forward ran in float64"):
        backward(np.ones(y.shape, np.float32), cache)
    with pytest.raises(ValueError, match=r"dy must be a float32 or float64 array; got dtype int64"):
        backward(np.ones(y.shape, np.int64), cache)


def test_a_cache_of_another_op_is_refused():
    _, cache = gradproof.relu_forward(X)
    with pytest.raises(ValueError, match=r"softmax_backward\(\): cache was made by relu_forward, not softmax_forward"):
        gradproof.softmax_backward(X, cache)
    assert repr(cache) == "<gradproof.Cache of relu_forward, float64>"


def test_mixed_dtypes_are_refused_naming_the_argument():
    with pytest.raises(ValueError, match=r"layer_norm_forward\(\): weight has dtype float32 but input has dtype float64"):
        gradproof.layer_norm_forward(X, 4, np.ones(4, np.float32))
    with pytest.raises(ValueError, match=r"matmul_forward\(\): other has dtype float32"):
        gradproof.matmul_forward(X, np.ones((4, 2), np.float32))


def test_a_wrong_shape_names_the_cpp_and_the_python_argument():
    with pytest.raises(ValueError, match=r"layer_norm_forward\(\): .*gamma.* \(gamma is the argument weight\)"):
        gradproof.layer_norm_forward(X, 4, np.ones(5))
    with pytest.raises(ValueError, match=r"batch_norm_forward\(\): .*beta.*\(beta is the argument bias\)"):
        gradproof.batch_norm_forward(X, bias=np.ones(5), training=True)
    with pytest.raises(ValueError, match=r"linear_forward\(\): .*weight"):
        gradproof.linear_forward(X, np.ones((2, 5)))
    with pytest.raises(ValueError, match=r"mse_loss_forward\(\): .*target"):
        gradproof.mse_loss_forward(X, np.ones(3))


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match=r"group_norm_forward\(\): .*must be divisible by num_groups = 2"):
        gradproof.group_norm_forward(X, 2)  # 3 channels are not divisible into 2 groups
    with pytest.raises(ValueError, match=r"mse_loss_forward\(\): mse_loss: reduction must be \"none\", \"mean\" or \"sum\"; got \"average\""):
        gradproof.mse_loss_forward(X, X, reduction="average")
    with pytest.raises(ValueError, match=r"nll_loss_forward\(\): reduction must be 'none', 'mean' or 'sum'; got 'all'"):
        gradproof.nll_loss_forward(X[:, :, 0], np.array([0, 1]), reduction="all")
    with pytest.raises(ValueError, match=r"gelu_forward\(\): gelu: approximate must be 'none' or 'tanh'"):
        gradproof.gelu_forward(X, approximate="fast")
    with pytest.raises(ValueError, match=r"dropout_forward\(\): dropout: p \(the drop probability\) must be in \[0, 1\]; got 1.5"):
        gradproof.dropout_forward(X, p=1.5)
    with pytest.raises(ValueError, match=r"batch_norm_forward\(\): training=False needs running_mean and running_var"):
        gradproof.batch_norm_forward(X)
    with pytest.raises(ValueError, match=r"give both running_mean and running_var, or neither"):
        gradproof.batch_norm_forward(X, np.zeros(3), training=True)
    with pytest.raises(ValueError, match=r"layer_norm_forward\(\): normalized_shape must be an int or a sequence of ints"):
        gradproof.layer_norm_forward(X, "4")


def test_integer_targets_and_indices_are_checked():
    with pytest.raises(ValueError, match=r"nll_loss_forward\(\): target must be an integer array; got dtype float64"):
        gradproof.nll_loss_forward(X[:, :, 0], np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"embedding_forward\(\): input must be an integer array"):
        gradproof.embedding_forward(np.array([0.5]), np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"embedding_forward\(\): .*index 7 .*out of range"):
        gradproof.embedding_forward(np.array([7]), np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"embedding_forward\(\): weight must have rank 2"):
        gradproof.embedding_forward(np.array([0]), np.ones(3))


def test_running_statistics_that_cannot_be_updated_are_refused():
    rm = np.zeros(3)
    rm.flags.writeable = False
    with pytest.raises(ValueError, match=r"running_mean must be a writable C-contiguous float64 array"):
        gradproof.batch_norm_forward(X, rm, np.ones(3), training=True)
