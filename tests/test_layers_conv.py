"""Conv2D, pooling, Reshape, BatchNorm and LayerNorm: float64 gradient checks on every backend,
backends against the numpy reference, kernels against naive loops, PyTorch's semantics by hand,
bad-input errors, JSON configs, checkpoints with running statistics, and a small CNN that learns.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import nnx
from nnx.errors import ShapeError
from nnx.layers import AvgPool2D, GlobalAvgPool2D, MaxPool2D
from nnx.layers.base import layer_from_dict, layer_to_dict
from nnx.layers.batchnorm import BatchNorm1d, BatchNorm2d
from nnx.layers.conv2d import Conv2D
from nnx.layers.layernorm import LayerNorm
from nnx.layers.reshape import Reshape
from nnx.testing import assert_backends_agree, build, gradcheck

# `backend` (each available backend's name) comes from tests/conftest.py.


@pytest.fixture
def rng():
    return np.random.default_rng(7)


# ---------------------------------------------------------------- naive references (loops)

def naive_conv2d(x, W, b, stride, pads, dilation):
    (sh, sw), ((pt, pb), (pl, pr)), (dh, dw) = stride, pads, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    N, C, Hp, Wp = xp.shape
    O, _, kh, kw = W.shape
    Ho = (Hp - dh * (kh - 1) - 1) // sh + 1
    Wo = (Wp - dw * (kw - 1) - 1) // sw + 1
    y = np.zeros((N, O, Ho, Wo))
    for n in range(N):
        for o in range(O):
            for i in range(Ho):
                for j in range(Wo):
                    acc = 0.0 if b is None else b[o]
                    for c in range(C):
                        for a in range(kh):
                            for e in range(kw):
                                acc += xp[n, c, i * sh + a * dh, j * sw + e * dw] * W[o, c, a, e]
                    y[n, o, i, j] = acc
    return y


def naive_pool(x, k, s, p, mode, dy=None, count_include_pad=True):
    """Forward (and, with dy, the input gradient) of max/avg pooling by explicit windows."""
    (kh, kw), (sh, sw), ((pt, pb), (pl, pr)) = k, s, p
    N, C, H, W = x.shape
    Ho = (H + pt + pb - kh) // sh + 1
    Wo = (W + pl + pr - kw) // sw + 1
    y = np.zeros((N, C, Ho, Wo))
    dx = np.zeros_like(x, dtype=np.float64)
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    cells = [(i * sh + a - pt, j * sw + e - pl) for a in range(kh)
                             for e in range(kw)]
                    real = [(r, q) for r, q in cells if 0 <= r < H and 0 <= q < W]
                    if mode == "max":
                        vals = [x[n, c, r, q] for r, q in real]
                        best = int(np.argmax(vals))  # first maximum, row-major
                        y[n, c, i, j] = vals[best]
                        if dy is not None:
                            r, q = real[best]
                            dx[n, c, r, q] += dy[n, c, i, j]
                    else:
                        div = kh * kw if count_include_pad else len(real)
                        y[n, c, i, j] = sum(x[n, c, r, q] for r, q in real) / div
                        if dy is not None:
                            for r, q in real:
                                dx[n, c, r, q] += dy[n, c, i, j] / div
    return y, dx


def naive_batchnorm_train(x, gamma, beta, eps):
    y = np.empty_like(x, dtype=np.float64)
    for c in range(x.shape[1]):
        v = x[:, c]
        mu = v.mean()
        var = ((v - mu) ** 2).mean()
        y[:, c] = (v - mu) / math.sqrt(var + eps) * gamma[c] + beta[c]
    return y


def run_layer(layer, x, backend="numpy", dtype="float64", training=False, seed=0):
    ops, store = build(layer, backend, dtype, seed)
    y = layer.forward(ops.asarray(x), training=training)
    return ops, store, y


def begin_layer(layer, x, backend="numpy", dtype="float64", training=False, seed=0):
    """Build `layer` and start one update: (ops, store, y, backprop)."""
    ops, store = build(layer, backend, dtype, seed)
    y, backprop = layer.begin_update(ops.asarray(x), training=training)
    return ops, store, y, backprop


# ---------------------------------------------------------------- gradient checks

CONV_CASES = {
    "valid_3x3": (dict(in_channels=3, out_channels=4, kernel_size=3), (2, 3, 6, 5)),
    "stride2_same": (dict(in_channels=2, out_channels=3, kernel_size=3, stride=2,
                          padding="same"), (2, 2, 7, 6)),
    "dilation2_pad": (dict(in_channels=2, out_channels=3, kernel_size=3, dilation=2,
                           padding=(2, 1)), (2, 2, 7, 6)),
    "odd_kernel_asym_pad": (dict(in_channels=3, out_channels=2, kernel_size=(3, 2),
                                 padding=((1, 0), (2, 1)), stride=(2, 1)), (2, 3, 5, 7)),
    "even_kernel_same": (dict(in_channels=2, out_channels=2, kernel_size=2, padding="same",
                              use_bias=False), (2, 2, 5, 5)),
    "pointwise_1x1": (dict(in_channels=4, out_channels=3, kernel_size=1), (3, 4, 3, 2)),
    "fused_tanh": (dict(in_channels=2, out_channels=3, kernel_size=3, padding=1,
                        activation="tanh"), (2, 2, 5, 4)),
    "fused_gelu_stride_dil": (dict(in_channels=2, out_channels=2, kernel_size=2, stride=2,
                                   dilation=(1, 2), activation="gelu"), (1, 2, 7, 8)),
}


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv2d_gradcheck(backend, case, rng):
    kwargs, shape = CONV_CASES[case]
    gradcheck(Conv2D(**kwargs), rng.standard_normal(shape), backend)


def test_conv2d_gradcheck_non_contiguous_inputs(backend, rng):
    big = rng.standard_normal((2, 3, 6, 10))
    x = big[..., ::2]  # strided last axis
    assert not x.flags.c_contiguous
    gradcheck(Conv2D(3, 2, 3, padding="same", activation="sigmoid"), x, backend)
    xt = rng.standard_normal((5, 6, 3, 2)).transpose(3, 2, 0, 1)  # (2, 3, 5, 6) transposed view
    assert not xt.flags.c_contiguous
    gradcheck(Conv2D(3, 2, (2, 3), stride=2), xt, backend)


POOL_CASES = {
    "max_2x2": (lambda: MaxPool2D(2), (2, 3, 6, 6)),
    "max_odd_size_floor": (lambda: MaxPool2D(2), (2, 2, 7, 5)),
    "max_overlap_3s2p1": (lambda: MaxPool2D(3, stride=2, padding=1), (2, 2, 7, 6)),
    "max_overlap_3s1": (lambda: MaxPool2D((3, 2), stride=1), (1, 2, 5, 5)),
    "avg_2x2": (lambda: AvgPool2D(2), (2, 3, 6, 6)),
    "avg_overlap_pad_incl": (lambda: AvgPool2D(3, stride=2, padding=1), (2, 2, 7, 6)),
    "avg_overlap_pad_excl": (lambda: AvgPool2D(3, 2, 1, count_include_pad=False), (2, 2, 7, 6)),
    "global_avg": (lambda: GlobalAvgPool2D(), (2, 3, 4, 5)),
}


@pytest.mark.parametrize("case", list(POOL_CASES))
def test_pooling_gradcheck(backend, case, rng):
    make, shape = POOL_CASES[case]
    gradcheck(make(), rng.standard_normal(shape), backend)  # random data: no max ties


def test_pooling_gradcheck_non_contiguous(backend, rng):
    x = rng.standard_normal((2, 2, 6, 12))[..., 1::2]
    gradcheck(MaxPool2D(2, stride=1), x, backend)
    gradcheck(AvgPool2D(2), x.transpose(0, 1, 3, 2), backend)


def test_reshape_gradcheck(backend, rng):
    gradcheck(Reshape((2, -1)), rng.standard_normal((3, 4, 3)), backend)
    gradcheck(Reshape((1, 3, 4)), rng.standard_normal((2, 12))[:, ::-1], backend)


@pytest.mark.parametrize("shape,cls", [((6, 4), BatchNorm1d), ((4, 3, 5), BatchNorm1d),
                                       ((3, 2, 4, 3), BatchNorm2d)])
def test_batchnorm_gradcheck_training(backend, shape, cls, rng):
    x = rng.standard_normal(shape) * 2 + 1
    gradcheck(cls(shape[1]), x, backend, training=True)
    gradcheck(cls(shape[1]), np.swapaxes(rng.standard_normal(shape[::-1]), 0, -1)
              if len(shape) == 2 else x[:, :, ::-1], backend, training=True)  # strided input


class _PresetStats(BatchNorm2d):
    """BatchNorm2d whose running statistics start away from (0, 1), for eval-mode checks."""

    def init_buffers(self):
        super().init_buffers()
        self.buffers["running_mean"][...] = self.ops.asarray(np.array([0.5, -1.0, 2.0]))
        self.buffers["running_var"][...] = self.ops.asarray(np.array([0.3, 2.0, 1.5]))


def test_batchnorm_gradcheck_eval(backend, rng):
    x = rng.standard_normal((3, 3, 2, 4))
    gradcheck(_PresetStats(3), x, backend, training=False)
    gradcheck(BatchNorm1d(5), rng.standard_normal((4, 5)), backend, training=False)


@pytest.mark.parametrize("shape,norm", [((4, 6), 6), ((2, 3, 5), 5), ((2, 3, 4), (3, 4))])
def test_layernorm_gradcheck(backend, shape, norm, rng):
    x = rng.standard_normal(shape) * 3 - 1
    gradcheck(LayerNorm(norm), x, backend)
    gradcheck(LayerNorm(norm), x[::-1], backend)


def test_small_cnn_gradcheck(backend, rng):
    net = nnx.Chain([Conv2D(1, 3, 3, padding="same", use_bias=False), BatchNorm2d(3),
                     nnx.Tanh(), MaxPool2D(2), Conv2D(3, 4, 2, activation="sigmoid"),
                     GlobalAvgPool2D(), LayerNorm(4), nnx.Dense(4, 3)])
    gradcheck(net, rng.standard_normal((3, 1, 6, 6)), backend, training=True)


# ---------------------------------------------------------------- backends agree

AGREE_LAYERS = [
    lambda: Conv2D(3, 4, 3, stride=2, padding="same", activation="relu"),
    lambda: Conv2D(3, 2, 2, dilation=2, use_bias=False),
    lambda: MaxPool2D(3, stride=2, padding=1),
    lambda: AvgPool2D(2),
    lambda: GlobalAvgPool2D(),
    lambda: BatchNorm2d(3),
    lambda: LayerNorm(9),
    lambda: Reshape((-1,)),
]


@pytest.mark.parametrize("make", AGREE_LAYERS)
@pytest.mark.parametrize("training", [False, True])
def test_backends_agree(make, training, rng):
    x = rng.standard_normal((2, 3, 9, 9))
    report = assert_backends_agree(make(), x, training=training)
    assert set(report) == set(nnx.available_backends()) - {"numpy"}


def test_backends_agree_batchnorm1d_float32(rng):
    x = rng.standard_normal((16, 5)).astype(np.float32)
    assert_backends_agree(BatchNorm1d(5), x, training=True, dtype="float32", rtol=1e-5,
                          atol=1e-5)


# ---------------------------------------------------------------- kernels against loops

@pytest.mark.parametrize("stride,pads,dilation", [
    ((1, 1), ((0, 0), (0, 0)), (1, 1)),
    ((2, 1), ((1, 2), (0, 1)), (1, 1)),
    ((1, 2), ((2, 2), (1, 1)), (2, 1)),
    ((3, 2), ((1, 1), (1, 1)), (2, 2)),
])
def test_conv2d_kernel_matches_loops(stride, pads, dilation, rng):
    ops = nnx.get_ops("numpy", dtype="float64")
    x = rng.standard_normal((2, 3, 7, 6))
    W = rng.standard_normal((4, 3, 3, 2))
    b = rng.standard_normal(4)
    y, saved = ops.conv2d_forward(x, W, b, stride, pads, dilation)
    want = naive_conv2d(x, W, b, stride, pads, dilation)
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    assert y.flags.c_contiguous
    # backward against the loops' adjoint: <conv(x), dy> is linear in x and W
    dy = rng.standard_normal(y.shape)
    dW_out, db_out = np.full_like(W, np.nan), np.full_like(b, np.nan)
    dx, dW, db = ops.conv2d_backward(dy, x, W, saved, stride, pads, dilation, True,
                                     dW_out, db_out)
    assert dW is dW_out and db is db_out  # written into the given views
    np.testing.assert_allclose(db, dy.sum(axis=(0, 2, 3)))
    for k in [(0, 0, 0, 0), (3, 2, 1, 1), (1, 1, 2, 0)]:
        E = np.zeros_like(W)
        E[k] = 1.0
        np.testing.assert_allclose(dW[k], (naive_conv2d(x, E, None, stride, pads, dilation)
                                           * dy).sum(), rtol=1e-10)
    for k in [(0, 0, 0, 0), (1, 2, 3, 4), (1, 1, 6, 5)]:
        E = np.zeros_like(x)
        E[k] = 1.0
        np.testing.assert_allclose(dx[k], (naive_conv2d(E, W, None, stride, pads, dilation)
                                           * dy).sum(), rtol=1e-10, atol=1e-12)
    _, _, _ = ops.conv2d_backward(dy, x, W, saved, stride, pads, dilation, False, None, None)
    assert ops.conv2d_backward(dy, x, W, saved, stride, pads, dilation, False)[0] is None


@pytest.mark.parametrize("k,s,p", [((2, 2), (2, 2), ((0, 0), (0, 0))),
                                   ((3, 3), (2, 2), ((1, 1), (1, 1))),
                                   ((3, 2), (1, 2), ((1, 0), (0, 1))),
                                   ((2, 2), (3, 3), ((0, 0), (0, 0)))])
@pytest.mark.parametrize("ties", [False, True])
def test_maxpool_kernel_matches_loops(k, s, p, ties, rng):
    ops = nnx.get_ops("numpy", dtype="float64")
    x = rng.standard_normal((2, 2, 7, 6))
    if ties:  # many equal values: the first maximum of each window (row-major) gets dy
        x = np.round(x)
    y, saved = ops.maxpool2d_forward(x, k, s, p)
    dy = rng.standard_normal(y.shape)
    want_y, want_dx = naive_pool(x, k, s, p, "max", dy)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_allclose(ops.maxpool2d_backward(dy, saved), want_dx, rtol=1e-12)


@pytest.mark.parametrize("k,s,p", [((2, 2), (2, 2), ((0, 0), (0, 0))),
                                   ((3, 3), (2, 2), ((1, 1), (1, 1))),
                                   ((3, 2), (1, 2), ((1, 0), (0, 1)))])
@pytest.mark.parametrize("include", [True, False])
def test_avgpool_kernel_matches_loops(k, s, p, include, rng):
    ops = nnx.get_ops("numpy", dtype="float64")
    x = rng.standard_normal((2, 2, 7, 6))
    y, saved = ops.avgpool2d_forward(x, k, s, p, include)
    dy = rng.standard_normal(y.shape)
    want_y, want_dx = naive_pool(x, k, s, p, "avg", dy, include)
    np.testing.assert_allclose(y, want_y, rtol=1e-12)
    np.testing.assert_allclose(ops.avgpool2d_backward(dy, saved), want_dx, rtol=1e-12)


def test_batchnorm_and_layernorm_kernels_match_loops(rng):
    ops = nnx.get_ops("numpy", dtype="float64")
    x = rng.standard_normal((4, 3, 2, 5)) * 3 + 2
    gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
    y, _ = ops.batchnorm_forward(x, gamma, beta, np.zeros(3), np.ones(3), 0.1, 1e-5, True,
                                 (0, 2, 3))
    np.testing.assert_allclose(y, naive_batchnorm_train(x, gamma, beta, 1e-5), rtol=1e-12)
    g2, b2 = rng.standard_normal((2, 5)), rng.standard_normal((2, 5))
    y, _ = ops.layernorm_forward(x, g2, b2, 1e-5)
    for idx in np.ndindex(4, 3):
        v = x[idx]
        want = (v - v.mean()) / math.sqrt(v.var() + 1e-5) * g2 + b2
        np.testing.assert_allclose(y[idx], want, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- semantics (PyTorch's, by hand)

def test_batchnorm_running_stats_pytorch_rule(backend, rng):
    bn = BatchNorm2d(2, momentum=0.2, eps=1e-3)
    x1 = rng.standard_normal((3, 2, 2, 2)) * 2 + 5
    ops, store, y1 = run_layer(bn, x1, backend, training=True)
    n = 3 * 2 * 2
    mean = x1.mean(axis=(0, 2, 3))
    var_b = x1.var(axis=(0, 2, 3))
    var_u = var_b * n / (n - 1)
    rm = ops.to_host(bn.buffers["running_mean"]).copy()
    rv = ops.to_host(bn.buffers["running_var"]).copy()
    np.testing.assert_allclose(rm, 0.8 * 0 + 0.2 * mean, rtol=1e-12)
    np.testing.assert_allclose(rv, 0.8 * 1 + 0.2 * var_u, rtol=1e-12)
    # training output uses the batch statistics (biased variance)
    want = (x1 - mean[None, :, None, None]) / np.sqrt(var_b[None, :, None, None] + 1e-3)
    np.testing.assert_allclose(ops.to_host(y1), want, rtol=1e-10)
    # a second step compounds; eval mode uses the running statistics and leaves them alone
    x2 = rng.standard_normal((3, 2, 2, 2))
    bn.forward(ops.asarray(x2), training=True)
    rm2 = 0.8 * rm + 0.2 * x2.mean(axis=(0, 2, 3))
    rv2 = 0.8 * rv + 0.2 * x2.var(axis=(0, 2, 3)) * n / (n - 1)
    np.testing.assert_allclose(ops.to_host(bn.buffers["running_mean"]), rm2, rtol=1e-12)
    np.testing.assert_allclose(ops.to_host(bn.buffers["running_var"]), rv2, rtol=1e-12)
    y3 = ops.to_host(bn.forward(ops.asarray(x1), training=False))
    want = (x1 - rm2[None, :, None, None]) / np.sqrt(rv2[None, :, None, None] + 1e-3)
    np.testing.assert_allclose(y3, want, rtol=1e-10)
    np.testing.assert_allclose(ops.to_host(bn.buffers["running_mean"]), rm2, rtol=1e-12)


def _against_torch(layer, x, torch_fn, names, rng, training=False):
    """Forward, input gradient and parameter gradients of `layer` (float64, numpy backend;
    built here unless already bound) against `torch_fn(x, *params)` under PyTorch autograd."""
    import torch

    if layer.ops is None:
        build(layer, "numpy", "float64")
    y, backprop = layer.begin_update(x, training=training)
    dy = rng.standard_normal(y.shape)
    dx = backprop(dy)
    tx = torch.tensor(np.ascontiguousarray(x), dtype=torch.float64, requires_grad=True)
    tp = [torch.tensor(np.array(layer.params[n]), dtype=torch.float64, requires_grad=True)
          for n in names]
    ty = torch_fn(tx, *tp)
    ty.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-9, atol=1e-11)
    for n, t in zip(names, tp, strict=True):
        np.testing.assert_allclose(layer.grads[n], t.grad.numpy(), rtol=1e-9, atol=1e-11)


def test_layers_match_pytorch(rng):
    """Where PyTorch is installed: the same numbers as torch.nn.functional, option by option."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = rng.standard_normal((2, 3, 7, 6))
    _against_torch(Conv2D(3, 4, (3, 2), stride=(2, 1), padding=((1, 0), (2, 1)),
                          dilation=(1, 2), activation="relu"), x,
                   lambda t, W, b: torch.relu(F.conv2d(F.pad(t, (2, 1, 1, 0)), W, b, (2, 1),
                                                       dilation=(1, 2))), ["W", "b"], rng)
    _against_torch(Conv2D(3, 2, 4, padding="same", dilation=2, use_bias=False), x,
                   lambda t, W: F.conv2d(t, W, padding="same", dilation=2), ["W"], rng)
    _against_torch(MaxPool2D(3, 2, 1), x, lambda t: F.max_pool2d(t, 3, 2, 1), [], rng)
    _against_torch(AvgPool2D((3, 2), (2, 1), (1, 1), count_include_pad=False), x,
                   lambda t: F.avg_pool2d(t, (3, 2), (2, 1), (1, 1), count_include_pad=False),
                   [], rng)
    _against_torch(AvgPool2D(2, padding=1), x, lambda t: F.avg_pool2d(t, 2, 2, 1), [], rng)
    _against_torch(GlobalAvgPool2D(), x, lambda t: t.mean(dim=(2, 3)), [], rng)
    _against_torch(LayerNorm((7, 6), eps=1e-3), x,
                   lambda t, g, b: F.layer_norm(t, (7, 6), g, b, 1e-3), ["gamma", "beta"], rng)
    for layer, xb, tbn in [(BatchNorm2d(3, momentum=0.2, eps=1e-3), x,
                            torch.nn.BatchNorm2d(3, eps=1e-3, momentum=0.2)),
                           (BatchNorm1d(3), rng.standard_normal((4, 3, 5)),
                            torch.nn.BatchNorm1d(3))]:
        tbn = tbn.double()
        for training in (True, False):  # eval after one training step
            _against_torch(layer, xb, lambda t, g, b, m=tbn, tr=training: F.batch_norm(
                t, m.running_mean, m.running_var, g, b, tr, m.momentum, m.eps),
                ["gamma", "beta"], rng, training=training)
            np.testing.assert_allclose(layer.buffers["running_mean"], tbn.running_mean.numpy(),
                                       rtol=1e-12)
            np.testing.assert_allclose(layer.buffers["running_var"], tbn.running_var.numpy(),
                                       rtol=1e-12)


def test_batchnorm1d_three_dims_reduces_over_length(rng):
    x = rng.standard_normal((4, 3, 5))
    ops, _, y = run_layer(BatchNorm1d(3, momentum=1.0), x, training=True)
    np.testing.assert_allclose(y.mean(axis=(0, 2)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2)), 1, rtol=1e-4)
    layer = BatchNorm1d(3, momentum=1.0)
    ops, _, _ = run_layer(layer, x, training=True)  # momentum 1: running = batch statistics
    np.testing.assert_allclose(layer.buffers["running_mean"], x.mean(axis=(0, 2)))
    np.testing.assert_allclose(layer.buffers["running_var"], x.var(axis=(0, 2), ddof=1))


def test_layernorm_biased_variance_over_last_axis(rng):
    x = rng.standard_normal((3, 8)) * 4 + 1
    _, _, y = run_layer(LayerNorm(8, eps=1e-5), x)
    want = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(y, want, rtol=1e-10)


@pytest.mark.parametrize("size,k,s,d", [(7, 3, 2, 1), (8, 3, 2, 1), (5, 2, 1, 1), (9, 3, 3, 2),
                                        (6, 4, 1, 1), (1, 3, 2, 1)])
def test_conv_same_padding_output_size(size, k, s, d, rng):
    layer = Conv2D(1, 1, k, stride=s, dilation=d, padding="same")
    x = rng.standard_normal((1, 1, size, size + 1))
    _, _, y = run_layer(layer, x)
    assert y.shape == (1, 1, -(-size // s), -(-(size + 1) // s))
    assert layer.output_shape((1, size, size + 1)) == y.shape[1:]


def test_conv_same_stride1_matches_explicit_symmetric_padding(rng):
    x = rng.standard_normal((2, 2, 5, 6))
    a, b = Conv2D(2, 3, 3, padding="same"), Conv2D(2, 3, 3, padding=1)
    _, _, ya = run_layer(a, x)
    _, _, yb = run_layer(b, x)
    np.testing.assert_allclose(ya, yb)


def test_maxpool_tie_gradient_goes_to_first_max():
    x = np.ones((1, 1, 2, 2))
    layer = MaxPool2D(2)
    ops, _, y, backprop = begin_layer(layer, x)
    dx = ops.to_host(backprop(ops.asarray(np.full((1, 1, 1, 1), 3.0))))
    np.testing.assert_array_equal(dx[0, 0], [[3.0, 0.0], [0.0, 0.0]])


def test_float32_stays_float32(backend, rng):
    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    net = nnx.Chain([Conv2D(3, 4, 3, padding="same", activation="relu"), BatchNorm2d(4),
                     MaxPool2D(2), AvgPool2D(2, padding=1, count_include_pad=False),
                     LayerNorm(3), GlobalAvgPool2D(), Reshape((2, 2)), BatchNorm1d(2)])
    ops, store, y, backprop = begin_layer(net, x, backend, "float32", training=True)
    assert y.dtype == np.float32 and y.shape == (4, 2, 2)
    dx = backprop(ops.asarray(np.ones((4, 2, 2), np.float32)))
    assert dx.dtype == np.float32 and dx.shape == x.shape
    assert store.grads.dtype == np.float32
    assert all(b.dtype == np.float32 for leaf in net.leaves() for b in leaf.buffers.values())


def test_backward_writes_not_accumulates(rng):
    x = rng.standard_normal((2, 2, 5, 5))
    for layer in (Conv2D(2, 3, 3), BatchNorm2d(2), LayerNorm(5)):
        ops, store, y, backprop = begin_layer(layer, x, training=True)
        dy = rng.standard_normal(y.shape)
        backprop(dy)
        first = store.grads.copy()
        _, backprop = layer.begin_update(x, training=True)
        backprop(dy)
        np.testing.assert_allclose(store.grads, first)


def test_output_shape_matches_forward(rng):
    cases = [(Conv2D(3, 5, (3, 2), stride=(2, 1), padding=((1, 0), (2, 1)), dilation=(1, 2)),
              (3, 9, 8)),
             (MaxPool2D(3, 2, 1), (3, 9, 8)), (AvgPool2D((2, 3)), (3, 9, 8)),
             (GlobalAvgPool2D(), (3, 9, 8)), (BatchNorm2d(3), (3, 9, 8)),
             (BatchNorm1d(3), (3, 9)), (LayerNorm((9, 8)), (3, 9, 8)),
             (Reshape((-1, 4)), (3, 9, 8))]
    for layer, shape in cases:
        _, _, y = run_layer(layer, rng.standard_normal((2, *shape)))
        assert layer.output_shape(shape) == tuple(y.shape[1:]), layer


# ---------------------------------------------------------------- errors, configs

def _raises_shape(layer, x, *fragments, training=False):
    build(layer, "numpy", "float64")
    with pytest.raises(ShapeError) as info:
        layer.forward(layer.ops.asarray(x), training=training)
    msg = str(info.value)
    for f in (layer.name, *fragments):
        assert f in msg, (f, msg)
    return msg


def test_bad_inputs_name_layer_and_shapes():
    _raises_shape(Conv2D(3, 4, 3, name="c1"), np.zeros((2, 4, 8, 8)),
                  "(batch, 3, height, width)", "(2, 4, 8, 8)")
    _raises_shape(Conv2D(3, 4, 3, name="c2"), np.zeros((2, 3, 8)),
                  "(batch, 3, height, width)", "(2, 3, 8)")
    _raises_shape(Conv2D(1, 1, 5, padding=1, name="c3"), np.zeros((2, 1, 2, 9)),
                  "kernel 5x5", "padded input 4x11", "expected height >= 3", "(2, 1, 2, 9)")
    _raises_shape(Conv2D(1, 1, 3, dilation=3, name="c4"), np.zeros((1, 1, 6, 6)),
                  "dilated kernel extent 7x7", "(1, 1, 6, 6)")
    _raises_shape(MaxPool2D(3, name="p1"), np.zeros((1, 2, 2, 5)), "pool window 3x3",
                  "(1, 2, 2, 5)")
    _raises_shape(AvgPool2D(2, name="p2"), np.zeros((2, 8, 8)),
                  "(batch, channels, height, width)", "(2, 8, 8)")
    _raises_shape(GlobalAvgPool2D(name="g1"), np.zeros((2, 8)), "(2, 8)")
    _raises_shape(BatchNorm2d(3, name="bn1"), np.zeros((2, 4, 5, 5)),
                  "(batch, 3, height, width)", "(2, 4, 5, 5)")
    _raises_shape(BatchNorm1d(3, name="bn2"), np.zeros((2, 3, 4, 4)),
                  "(batch, 3) or (batch, 3, length)", "(2, 3, 4, 4)")
    _raises_shape(BatchNorm1d(3, name="bn3"), np.zeros((1, 3)), "more than one value",
                  "(1, 3)", training=True)
    _raises_shape(LayerNorm(6, name="ln1"), np.zeros((2, 5)), "(batch, ..., 6)", "(2, 5)")
    _raises_shape(Reshape((4, 4), name="r1"), np.zeros((2, 15)), "16 elements",
                  "(None, 15)")
    _raises_shape(Reshape((4, -1), name="r2"), np.zeros((2, 6)), "a multiple of 4",
                  "(None, 6)")
    with pytest.raises(ShapeError, match="c5"):
        Conv2D(3, 4, 3, name="c5").output_shape((2, 8, 8))


def test_bad_arguments():
    for make in (lambda: Conv2D(0, 3, 3), lambda: Conv2D(3, 3, 0), lambda: Conv2D(3, 3, 3, 0),
                 lambda: Conv2D(3, 3, 3, padding="full"), lambda: Conv2D(3, 3, 3, padding=-1),
                 lambda: Conv2D(3, 3, (3, 3, 3)), lambda: MaxPool2D(2, padding=2),
                 lambda: MaxPool2D(2, padding="same"), lambda: BatchNorm2d(0),
                 lambda: BatchNorm1d(3, momentum=2.0), lambda: LayerNorm(()),
                 lambda: Reshape((-1, -1)), lambda: Reshape((0, 2))):
        with pytest.raises(ValueError):
            make()
    with pytest.raises(nnx.UnknownNameError):
        Conv2D(3, 3, 3, activation="swish")


@pytest.mark.parametrize("layer", [
    Conv2D(3, 8, (3, 2), stride=2, padding="same", dilation=(2, 1), use_bias=False,
           activation="relu", kernel_regularizer=nnx.L2(1e-4)),
    Conv2D(3, 8, 3, padding=((1, 0), (2, 2))),
    MaxPool2D(3, 2, 1), AvgPool2D(2, count_include_pad=False), GlobalAvgPool2D(),
    BatchNorm1d(4, momentum=0.05, eps=1e-3), BatchNorm2d(4), LayerNorm((3, 4)),
    Reshape((2, -1)),
], ids=lambda layer: type(layer).__name__)
def test_config_round_trips_through_json(layer):
    d = json.loads(json.dumps(layer_to_dict(layer)))
    again = layer_from_dict(d)
    assert type(again) is type(layer)
    assert again.get_config() == layer.get_config()
    assert [(s.name, tuple(s.shape)) for s in again.param_specs()] == \
        [(s.name, tuple(s.shape)) for s in layer.param_specs()]


# ---------------------------------------------------------------- models

def _tiny_model(backend="numpy", seed=0):
    return nnx.Sequential([
        Conv2D(1, 4, 3, padding="same", use_bias=False), BatchNorm2d(4), nnx.ReLU(),
        MaxPool2D(2), Reshape((-1,)), nnx.Dense(4 * 4 * 4, 8), BatchNorm1d(8), nnx.ReLU(),
        LayerNorm(8), nnx.Dense(8, 3)], backend=backend, seed=seed)


def test_checkpoint_round_trip_restores_running_stats(tmp_path, backend, rng):
    x = rng.random((40, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    model = _tiny_model(backend)
    model.compile(nnx.Adam(1e-2), "softmax_cross_entropy", ["accuracy"])
    assert [n for _, n in model.store.views()] == ["W", "gamma", "beta", "W", "b", "gamma",
                                                   "beta", "gamma", "beta", "W", "b"]
    model.fit(x, y, epochs=2, batch_size=10, verbose=0)
    bufs = model.get_buffers()
    assert len(bufs) == 4
    assert not np.allclose(bufs[f"{model.layers[1].name}/running_mean"], 0)
    path = tmp_path / "cnn.npz"
    model.save(path)
    loaded = nnx.load(path, backend=backend)
    for k, v in loaded.get_buffers().items():
        np.testing.assert_array_equal(v, bufs[k])
    for a, b in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(loaded.predict(x), model.predict(x), rtol=1e-6, atol=1e-6)
    # training resumes identically (optimizer state and running statistics restored)
    model.fit(x, y, epochs=1, batch_size=10, verbose=0, shuffle=False)
    loaded.fit(x, y, epochs=1, batch_size=10, verbose=0, shuffle=False)
    for k, v in loaded.get_buffers().items():
        np.testing.assert_allclose(v, model.get_buffers()[k], rtol=1e-5, atol=1e-6)


def test_cnn_zoo_model_learns_on_sample(backend):
    from nnx.datasets import mnist
    from nnx.models import cnn

    (xtr, ytr), _ = mnist(sample=True)
    x = (xtr[:256].astype(np.float32) / 255.0)[:, None]
    y = ytr[:256].astype(np.int64)
    assert nnx.models.get("cnn") is cnn and cnn.INPUT == "image" and cnn.TARGET == "labels"
    model = cnn.build(backend=backend, seed=0, channels=(8, 16), hidden=32)
    model.compile(nnx.Adam(3e-3), cnn.LOSS, ["accuracy"])
    assert model.net.output_shape((1, 28, 28)) == (10,)
    before = model.evaluate(x, y)["loss"]
    hist = model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    after = model.evaluate(x, y)["loss"]
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    assert after < 0.6 * before
    assert hist.history["accuracy"][-1] > 0.4


def test_cnn_zoo_batchnorm_variant_learns(rng):
    from nnx.models import cnn

    model = cnn.build(seed=1, channels=(4,), hidden=16, batchnorm=True, image_size=8,
                      num_classes=2)
    x = rng.standard_normal((64, 1, 8, 8)).astype(np.float32)
    y = (x[:, 0, :4].mean(axis=(1, 2)) > x[:, 0, 4:].mean(axis=(1, 2))).astype(np.int64)
    model.compile(nnx.Adam(1e-2), cnn.LOSS, ["accuracy"])
    hist = model.fit(x, y, epochs=8, batch_size=16, verbose=0)
    assert hist.history["loss"][-1] < 0.7 * hist.history["loss"][0]
    assert any("BatchNorm2d" == type(layer).__name__ for layer in model.layers)
