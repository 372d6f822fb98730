"""The `(y, backprop)` layer contract for the core layers (activations, Dense, Dropout, Flatten,
Reshape, Embedding, LayerNorm, BatchNorm1d/2d, Conv2D, pooling):

- a call leaves nothing on the layer: `vars(layer)` has the same keys and the same objects
  before and after an inference forward and a training step (batch norm's running statistics
  are updated in place: the same arrays);
- calls are reentrant: two interleaved training calls give each closure the gradients of an
  un-interleaved call on its own input;
- `need_dx=False` returns None and writes the same parameter gradients;
- batch norm's unfused training path (`fused_training()` False) computes what the fused kernels
  do, and a subclass that only overrides `reduce_sums` normalizes several "processes" as one
  batch (what a synchronized batch norm does).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import nnx
from nnx.layers.avg_pool import AvgPool2D
from nnx.layers.batchnorm import BatchNorm1d, BatchNorm2d
from nnx.layers.conv2d import Conv2D
from nnx.layers.embedding import Embedding
from nnx.layers.global_avg_pool import GlobalAvgPool2D
from nnx.layers.layernorm import LayerNorm
from nnx.layers.max_pool import MaxPool2D
from nnx.layers.reshape import Reshape
from nnx.testing import build

# `backend` (each available backend's name) comes from tests/conftest.py.


@pytest.fixture
def rng():
    return np.random.default_rng(11)


def _floats(shape):
    return lambda rng, batch: rng.standard_normal((batch, *shape)) * 1.5 + 0.5


def _ids(shape, vocab):
    return lambda rng, batch: rng.integers(0, vocab, (batch, *shape))


# name -> (factory, input maker(rng, batch))
LAYERS = {
    **{f"activation_{a}": (lambda a=a: nnx.Activation(a), _floats((5,)))
       for a in ("relu", "leaky_relu", "sigmoid", "tanh", "softmax", "gelu", "identity")},
    "relu_class": (nnx.ReLU, _floats((2, 3))),
    "dense": (lambda: nnx.Dense(5, 4, activation="tanh"), _floats((5,))),
    "dense_3d_no_bias": (lambda: nnx.Dense(5, 3, use_bias=False), _floats((2, 5))),
    "dropout": (lambda: nnx.Dropout(0.4), _floats((6,))),
    "flatten": (nnx.Flatten, _floats((2, 3, 2))),
    "reshape": (lambda: Reshape((3, -1)), _floats((12,))),
    "embedding": (lambda: Embedding(7, 3), _ids((4,), 7)),
    "layernorm": (lambda: LayerNorm((3, 4)), _floats((3, 4))),
    "batchnorm1d": (lambda: BatchNorm1d(3), _floats((3,))),
    "batchnorm1d_3d": (lambda: BatchNorm1d(3), _floats((3, 4))),
    "batchnorm2d": (lambda: BatchNorm2d(2), _floats((2, 3, 3))),
    "conv2d": (lambda: Conv2D(2, 3, 3, padding="same", activation="relu"), _floats((2, 5, 4))),
    "conv2d_strided": (lambda: Conv2D(2, 2, 2, stride=2, dilation=(1, 2)), _floats((2, 6, 7))),
    "maxpool2d": (lambda: MaxPool2D(2), _floats((2, 4, 6))),
    "maxpool2d_overlap": (lambda: MaxPool2D(3, stride=2, padding=1), _floats((2, 5, 5))),
    "avgpool2d": (lambda: AvgPool2D(2), _floats((2, 4, 6))),
    "avgpool2d_pad": (lambda: AvgPool2D(3, 2, 1, count_include_pad=False), _floats((2, 5, 5))),
    "global_avgpool2d": (GlobalAvgPool2D, _floats((3, 2, 4))),
}


def _snapshot(layer):
    """Keys and object identities of the layer's attributes (and of its params/grads/buffers
    dicts' entries)."""
    state = dict(vars(layer))
    inner = {f"{d}.{k}": v for d in ("params", "grads", "buffers")
             for k, v in getattr(layer, d).items()}
    return state, inner


def _assert_same_state(layer, before, when):
    state, inner = _snapshot(layer)
    for old, new, what in ((before[0], state, "attribute"), (before[1], inner, "entry")):
        assert set(new) == set(old), f"{when}: {what}s {set(new) ^ set(old)} appeared/vanished"
        for k, v in old.items():
            assert new[k] is v, f"{when}: {what} {k!r} of {layer.describe()} was reassigned"


def _host(ops, a):
    return None if a is None else ops.to_host(a).astype(np.float64)


def _grads(ops, layer):
    """The layer's parameter gradients, flattened and joined, on the host."""
    return np.concatenate([ops.to_host(g).ravel() for g in layer.grads.values()] + [[]])


def _one_step(layer, ops, store, x, dy, seed, need_dx=True):
    """(y, dx, grads) of one un-interleaved training call (the gradients start as NaN)."""
    ops.seed(seed)
    y, backprop = layer.begin_update(ops.asarray(x), training=True)
    store.grads[...] = np.nan
    dx = backprop(ops.asarray(dy), need_dx)
    return _host(ops, y), _host(ops, dx), _grads(ops, layer)


@pytest.mark.parametrize("name", list(LAYERS))
def test_calls_leave_no_state_on_the_layer(backend, name, rng):
    make, inputs = LAYERS[name]
    layer = make()
    ops, store = build(layer, backend, "float64")
    x = ops.asarray(inputs(rng, 4))
    before = _snapshot(layer)
    y = layer.forward(x, training=False)
    _assert_same_state(layer, before, "inference forward")
    y, backprop = layer.begin_update(x, training=True)
    _assert_same_state(layer, before, "training forward")
    backprop(ops.asarray(rng.standard_normal(tuple(y.shape))))
    _assert_same_state(layer, before, "backprop")


@pytest.mark.parametrize("name", list(LAYERS))
def test_interleaved_calls_are_reentrant(backend, name, rng):
    make, inputs = LAYERS[name]
    layer = make()
    ops, store = build(layer, backend, "float64")
    x1, x2 = inputs(rng, 4), inputs(rng, 3)
    y1_shape = layer.forward(ops.asarray(x1)).shape
    y2_shape = layer.forward(ops.asarray(x2)).shape
    dy1 = rng.standard_normal(tuple(y1_shape))
    dy2 = rng.standard_normal(tuple(y2_shape))
    want1 = _one_step(layer, ops, store, x1, dy1, seed=1)
    want2 = _one_step(layer, ops, store, x2, dy2, seed=2)

    ops.seed(1)  # the same dropout mask as the un-interleaved calls
    y1, b1 = layer.begin_update(ops.asarray(x1), training=True)
    ops.seed(2)
    y2, b2 = layer.begin_update(ops.asarray(x2), training=True)
    layer.forward(ops.asarray(inputs(rng, 5)), training=False)  # a predict in between
    store.grads[...] = np.nan
    dx1 = b1(ops.asarray(dy1))
    got1 = (_host(ops, y1), _host(ops, dx1), _grads(ops, layer))
    store.grads[...] = np.nan
    dx2 = b2(ops.asarray(dy2))
    got2 = (_host(ops, y2), _host(ops, dx2), _grads(ops, layer))
    for got, want in ((got1, want1), (got2, want2)):
        for what, g, w in zip(("y", "dx", "grads"), got, want, strict=True):
            if w is None:
                assert g is None, what
            else:
                np.testing.assert_allclose(g, w, rtol=1e-13, atol=1e-15, err_msg=f"{name}: {what}")
    assert not np.isnan(got1[2]).any() and not np.isnan(got2[2]).any()  # all written


@pytest.mark.parametrize("name", list(LAYERS))
def test_need_dx_false_returns_none_and_writes_the_same_gradients(backend, name, rng):
    make, inputs = LAYERS[name]
    layer = make()
    ops, store = build(layer, backend, "float64")
    x = inputs(rng, 4)
    dy = rng.standard_normal(tuple(layer.forward(ops.asarray(x)).shape))
    _, _, grads = _one_step(layer, ops, store, x, dy, seed=3)
    _, dx, grads_no_dx = _one_step(layer, ops, store, x, dy, seed=3, need_dx=False)
    assert dx is None
    assert not np.isnan(grads_no_dx).any()
    np.testing.assert_allclose(grads_no_dx, grads, rtol=1e-13, atol=1e-15)


def test_backprop_frees_saved_tensors_and_refuses_a_second_call(rng):
    for layer, x in ((Conv2D(2, 2, 3), rng.standard_normal((2, 2, 4, 4))),
                     (MaxPool2D(2), rng.standard_normal((2, 2, 4, 4))),
                     (BatchNorm2d(2), rng.standard_normal((2, 2, 4, 4))),
                     (LayerNorm(4), rng.standard_normal((2, 4)))):
        ops, _ = build(layer, "numpy", "float64")
        y, backprop = layer.begin_update(x, training=True)
        backprop(np.ones_like(y))
        with pytest.raises(RuntimeError, match=f"{layer.name}.*called twice"):
            backprop(np.ones_like(y))


# ---------------------------------------------------------------- batch norm from sums

class _UnfusedBatchNorm2d(BatchNorm2d):
    def fused_training(self):
        return False


class _UnfusedBatchNorm1d(BatchNorm1d):
    def fused_training(self):
        return False


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("fused_cls,unfused_cls,shape", [
    (BatchNorm2d, _UnfusedBatchNorm2d, (4, 3, 5, 2)),
    (BatchNorm1d, _UnfusedBatchNorm1d, (6, 3)),
    (BatchNorm1d, _UnfusedBatchNorm1d, (3, 3, 4)),
])
def test_batchnorm_unfused_path_matches_fused_kernels(backend, dtype, fused_cls, unfused_cls,
                                                      shape, rng):
    x = rng.standard_normal(shape) * 3 + 2
    dy = rng.standard_normal(shape)
    gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
    results = []
    for cls in (fused_cls, unfused_cls):
        layer = cls(3, momentum=0.3)
        ops, store = build(layer, backend, dtype)
        layer.params["gamma"][...] = ops.asarray(gamma)
        layer.params["beta"][...] = ops.asarray(beta)
        out = []
        for need_dx in (True, False):
            y, backprop = layer.begin_update(ops.asarray(x.astype(dtype)), training=True)
            dx = backprop(ops.asarray(dy.astype(dtype)), need_dx)
            assert y.dtype == np.dtype(dtype) and (dx is None or dx.dtype == np.dtype(dtype))
            out += [_host(ops, y), _host(ops, dx), ops.to_host(store.grads).copy()]
        out += [_host(ops, b) for b in layer.buffers.values()]
        out.append(_host(ops, layer.forward(ops.asarray(x.astype(dtype)))))  # eval: same path
        results.append(out)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == "float64" else dict(rtol=2e-4, atol=2e-5)
    for k, (a, b) in enumerate(zip(*results, strict=True)):
        if a is None:
            assert b is None, k
        else:
            np.testing.assert_allclose(b, a, **tol, err_msg=f"result {k}")


class _Allreduce:
    """Sums equal-shaped arrays across `size` threads (an allreduce for the test)."""

    def __init__(self, size):
        self.barrier = threading.Barrier(size, timeout=30)
        self.slots = [None] * size

    def __call__(self, rank, a):
        self.slots[rank] = a.copy()
        self.barrier.wait()
        total = sum(self.slots[1:], self.slots[0].copy())
        self.barrier.wait()  # every rank has read before the next round writes
        return total


class _SyncedBatchNorm2d(BatchNorm2d):
    """Only `fused_training` and `reduce_sums` overridden: what a synchronized batch norm
    needs from the base."""

    comm = None
    rank = 0

    def fused_training(self):
        return False

    def reduce_sums(self, sums, stage):
        return self.comm(self.rank, sums)


def test_batchnorm_reduce_sums_hook_normalizes_ranks_as_one_batch(rng):
    x = rng.standard_normal((6, 2, 3, 3)) * 2 - 1
    dy = rng.standard_normal(x.shape)
    gamma, beta = rng.standard_normal(2), rng.standard_normal(2)
    parts = [slice(0, 2), slice(2, 6)]  # unequal shares

    whole = BatchNorm2d(2, momentum=0.2)
    ops, store = build(whole, "numpy", "float64")
    whole.params["gamma"][...], whole.params["beta"][...] = gamma, beta
    y, backprop = whole.begin_update(x, training=True)
    dx = backprop(dy)

    comm = _Allreduce(len(parts))
    ranks, results, errors = [], [None] * len(parts), []
    for r in range(len(parts)):
        layer = _SyncedBatchNorm2d(2, momentum=0.2)
        build(layer, "numpy", "float64")
        layer.params["gamma"][...], layer.params["beta"][...] = gamma, beta
        layer.comm, layer.rank = comm, r
        ranks.append(layer)

    def run(r):
        try:
            yr, bp = ranks[r].begin_update(x[parts[r]], training=True)
            results[r] = (yr, bp(dy[parts[r]]))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
            comm.barrier.abort()

    threads = [threading.Thread(target=run, args=(r,)) for r in range(len(parts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    np.testing.assert_allclose(np.concatenate([r[0] for r in results]), y, rtol=1e-12,
                               atol=1e-12)
    np.testing.assert_allclose(np.concatenate([r[1] for r in results]), dx, rtol=1e-10,
                               atol=1e-12)
    for name in ("gamma", "beta"):  # each rank's local gradient; their sum is the whole's
        np.testing.assert_allclose(sum(layer.grads[name] for layer in ranks),
                                   whole.grads[name], rtol=1e-12, atol=1e-12)
    for layer in ranks:  # the running statistics of the global batch, on every rank
        for name in ("running_mean", "running_var"):
            np.testing.assert_allclose(layer.buffers[name], whole.buffers[name], rtol=1e-12)
