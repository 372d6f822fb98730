"""Conv1D, MaxPool1D, AvgPool1D, GlobalAvgPool1D (channels-first sequences on the conv2d/pool
kernels): float64 gradient checks on every backend, backends against numpy, PyTorch's numbers
where it is installed, naive loops elsewhere, shapes, errors, configs, checkpoints, training."""

from __future__ import annotations

import json

import numpy as np
import pytest

import nnx
from nnx.errors import ShapeError
from nnx.layers import AvgPool1D, Conv1D, GlobalAvgPool1D, MaxPool1D
from nnx.layers.base import layer_from_dict, layer_to_dict
from nnx.testing import assert_backends_agree, avoid_kinks, build, gradcheck

# `backend` (each available backend's name) comes from tests/conftest.py.


@pytest.fixture
def rng():
    return np.random.default_rng(11)


CONV_CASES = [
    dict(),
    dict(stride=2, padding=1, activation="tanh"),
    dict(padding="same", dilation=2),
    dict(padding=(2, 0), stride=3, use_bias=False),
    dict(padding="same", stride=2, activation="relu"),
]


@pytest.mark.parametrize("case", range(len(CONV_CASES)))
def test_conv1d_gradcheck(backend, case, rng):
    x = avoid_kinks(rng.standard_normal((2, 3, 10)))
    gradcheck(Conv1D(3, 4, 3, **CONV_CASES[case]), x, backend)


def test_conv1d_gradcheck_non_contiguous_input(backend, rng):
    x = rng.standard_normal((2, 10, 3)).transpose(0, 2, 1)  # a strided (N, C, L) view
    gradcheck(Conv1D(3, 2, 4, stride=2), x, backend)


POOL_CASES = [
    lambda: MaxPool1D(2),
    lambda: MaxPool1D(3, stride=2, padding=1),
    lambda: AvgPool1D(3, stride=1, padding=1),
    lambda: AvgPool1D(3, stride=2, padding=(1, 0), count_include_pad=False),
    lambda: GlobalAvgPool1D(),
]


@pytest.mark.parametrize("case", range(len(POOL_CASES)))
def test_pooling1d_gradcheck(backend, case, rng):
    x = rng.standard_normal((2, 3, 9))  # continuous draws: no ties inside a max window
    gradcheck(POOL_CASES[case](), x, backend)


@pytest.mark.parametrize("make", [
    lambda: Conv1D(3, 4, 3, padding="same", activation="relu"),
    lambda: Conv1D(3, 2, 2, stride=2, dilation=2),
    *POOL_CASES,
])
def test_backends_agree(make, rng):
    assert_backends_agree(make(), avoid_kinks(rng.standard_normal((3, 3, 11))))


def naive_conv1d(x, W, b, stride, pads, dilation):
    N, C, L = x.shape
    O, _, k = W.shape
    xp = np.pad(x, ((0, 0), (0, 0), pads))
    Lo = (L + sum(pads) - dilation * (k - 1) - 1) // stride + 1
    y = np.zeros((N, O, Lo))
    for t in range(Lo):
        window = xp[:, :, t * stride:t * stride + dilation * (k - 1) + 1:dilation]  # (N, C, k)
        y[:, :, t] = np.einsum("nck,ock->no", window, W)
    return y + (0 if b is None else b[None, :, None])


@pytest.mark.parametrize("case", range(len(CONV_CASES)))
def test_conv1d_matches_loops(case, rng):
    kw = CONV_CASES[case]
    layer = Conv1D(3, 4, 3, **kw)
    ops, _ = build(layer)
    x = rng.standard_normal((2, 3, 10))
    y = layer.forward(ops.asarray(x))
    from nnx.layers.conv2d import same_pads

    pads = layer.padding if layer.padding != "same" else same_pads(10, 3, layer.stride,
                                                                    layer.dilation)
    want = naive_conv1d(x, layer.params["W"], layer.params.get("b"), layer.stride, pads,
                        layer.dilation)
    act = {"relu": lambda v: np.maximum(v, 0), "tanh": np.tanh}.get(kw.get("activation"),
                                                                     lambda v: v)
    np.testing.assert_allclose(y, act(want), rtol=1e-12, atol=1e-12)
    assert y.shape[1:] == layer.output_shape(x.shape[1:])


def test_maxpool1d_tie_gradient_goes_to_first_max():
    layer = MaxPool1D(2)
    ops, _ = build(layer)
    y, backprop = layer.begin_update(np.array([[[1.0, 1.0, 0.0, 2.0]]]))
    np.testing.assert_array_equal(y, [[[1.0, 2.0]]])
    np.testing.assert_array_equal(backprop(np.array([[[5.0, 7.0]]])), [[[5.0, 0.0, 0.0, 7.0]]])


def _against_torch(layer, x, torch_fn, names, rng):
    import torch

    build(layer, "numpy", "float64")
    y, backprop = layer.begin_update(x, training=False)
    dy = rng.standard_normal(y.shape)
    dx = backprop(dy)
    tx = torch.tensor(np.ascontiguousarray(x), dtype=torch.float64, requires_grad=True)
    tp = [torch.tensor(np.array(layer.params[n]), requires_grad=True) for n in names]
    ty = torch_fn(tx, *tp)
    ty.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-9, atol=1e-11)
    for n, t in zip(names, tp, strict=True):
        np.testing.assert_allclose(layer.grads[n], t.grad.numpy(), rtol=1e-9, atol=1e-11)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_layers_match_pytorch(rng):
    """Where PyTorch is installed: torch.nn.functional's numbers, option by option."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch)")
    F = torch.nn.functional
    x = rng.standard_normal((2, 3, 13))
    _against_torch(Conv1D(3, 4, 3, stride=2, padding=1, dilation=2, activation="relu"), x,
                   lambda t, W, b: torch.relu(F.conv1d(t, W, b, 2, 1, 2)), ["W", "b"], rng)
    _against_torch(Conv1D(3, 2, 4, padding="same", use_bias=False), x,
                   lambda t, W: F.conv1d(t, W, padding="same"), ["W"], rng)
    _against_torch(Conv1D(3, 2, 3, padding=(2, 1)), x,
                   lambda t, W, b: F.conv1d(F.pad(t, (2, 1)), W, b), ["W", "b"], rng)
    _against_torch(MaxPool1D(3, 2, 1), x, lambda t: F.max_pool1d(t, 3, 2, 1), [], rng)
    _against_torch(MaxPool1D(2), x, lambda t: F.max_pool1d(t, 2), [], rng)
    _against_torch(AvgPool1D(3, 2, 1, count_include_pad=False), x,
                   lambda t: F.avg_pool1d(t, 3, 2, 1, count_include_pad=False), [], rng)
    _against_torch(AvgPool1D(4, 1, 2), x, lambda t: F.avg_pool1d(t, 4, 1, 2), [], rng)
    _against_torch(GlobalAvgPool1D(), x,
                   lambda t: F.adaptive_avg_pool1d(t, 1).flatten(1), [], rng)


def test_output_shapes_and_summary(rng):
    layers = [Conv1D(2, 4, 5, padding="same"), MaxPool1D(2), Conv1D(4, 3, 3, stride=2),
              AvgPool1D(2, padding=1), GlobalAvgPool1D(), nnx.Dense(3, 2)]
    model = nnx.Sequential(layers)
    x = rng.standard_normal((3, 2, 20)).astype(np.float32)
    shape = x.shape[1:]
    h = model.ops.asarray(x)
    for layer in layers:
        h = layer.forward(h)
        shape = layer.output_shape(shape)
        assert tuple(h.shape[1:]) == tuple(shape), layer
    assert model.predict(x).shape == (3, 2)
    assert "(None, 4, 20)" in model.summary(input_shape=(2, 20), print_fn=None)


def test_bad_inputs_name_layer_and_shapes():
    conv = Conv1D(3, 4, 5, name="c1")
    ops, _ = build(conv)
    with pytest.raises(ShapeError, match=r"Conv1D 'c1': expected input of shape "
                                         r"\(batch, 3, length\) \(in_channels=3\), got shape "
                                         r"\(2, 2, 9\)"):
        conv.forward(np.zeros((2, 2, 9)))
    with pytest.raises(ShapeError, match=r"Conv1D 'c1'.*got shape \(2, 3, 9, 1\)"):
        conv.forward(np.zeros((2, 3, 9, 1)))
    with pytest.raises(ShapeError, match=r"kernel 5 is longer than the padded input length 4"):
        conv.forward(np.zeros((2, 3, 4)))
    pool = MaxPool1D(4, name="p")
    build(pool)
    with pytest.raises(ShapeError, match=r"MaxPool1D 'p': pool window 4 .* expected length >= 4"):
        pool.forward(np.zeros((1, 2, 3)))
    gap = GlobalAvgPool1D(name="g")
    build(gap)
    with pytest.raises(ShapeError, match=r"GlobalAvgPool1D 'g': expected input of shape "
                                         r"\(batch, channels, length\)"):
        gap.forward(np.zeros((2, 3)))


def test_bad_arguments():
    with pytest.raises(ValueError, match="Conv1D 'x': in_channels must be a positive int"):
        Conv1D(0, 2, 3, name="x")
    with pytest.raises(ValueError, match="kernel_size must be a positive int, got 0"):
        Conv1D(1, 2, 0)
    with pytest.raises(ValueError, match=r"padding must be \"valid\", \"same\", an int >= 0 or "
                                         r"\(left, right\), got 'full'"):
        Conv1D(1, 2, 3, padding="full")
    with pytest.raises(ValueError, match="padding must be at most half the pool size 2, got 2"):
        MaxPool1D(2, padding=2)
    with pytest.raises(ValueError, match=r"MaxPool1D .*padding must be \"valid\", an int"):
        MaxPool1D(2, padding="same")
    assert Conv1D(1, 2, (3,), stride=(2,)).kernel_size == 3  # PyTorch's one-tuples


@pytest.mark.parametrize("layer", [
    Conv1D(3, 4, 3, stride=2, padding=(1, 2), dilation=2, use_bias=False, activation="gelu"),
    Conv1D(3, 4, 3, padding="same"),
    MaxPool1D(3, 2, 1), AvgPool1D(2, count_include_pad=False), GlobalAvgPool1D(),
], ids=lambda layer: type(layer).__name__)
def test_config_round_trips_through_json(layer):
    d = json.loads(json.dumps(layer_to_dict(layer)))
    again = layer_from_dict(d)
    assert type(again) is type(layer) and again.get_config() == layer.get_config()


def test_checkpoint_and_training(tmp_path, backend, rng):
    """A small sequence classifier learns (the sign of the sequence's mean) and survives
    save/load on every backend."""
    x = rng.standard_normal((64, 2, 16)).astype(np.float32)
    y = (x.mean(axis=(1, 2)) > 0).astype(np.int64)
    model = nnx.Sequential([Conv1D(2, 8, 3, padding="same", activation="relu"), MaxPool1D(2),
                            Conv1D(8, 8, 3, activation="relu"), AvgPool1D(2), GlobalAvgPool1D(),
                            nnx.Dense(8, 2)], backend=backend, seed=0)
    model.compile(nnx.Adam(1e-2), "softmax_cross_entropy")
    before = model.evaluate(x, y)["loss"]
    model.fit(x, y, epochs=15, batch_size=16, verbose=0)
    assert model.evaluate(x, y)["loss"] < 0.7 * before
    path = tmp_path / "conv1d.npz"
    model.save(path)
    loaded = nnx.load(path, backend=backend)
    np.testing.assert_allclose(loaded.predict(x), model.predict(x), rtol=1e-6, atol=1e-6)


def test_shared_conv_base_is_not_a_rebuildable_layer():
    """ConvBase holds what Conv1D and Conv2D share; a checkpoint cannot name it."""
    from nnx.layers import LAYER_CLASSES
    from nnx.layers.conv_base import ConvBase

    assert issubclass(nnx.Conv1D, ConvBase) and issubclass(nnx.Conv2D, ConvBase)
    assert "ConvBase" not in LAYER_CLASSES and "Conv1D" in LAYER_CLASSES
