"""The layer contract (`nnx.layers.base`) for the sequence layers: recurrent (SimpleRNN, LSTM,
GRU), MultiHeadSelfAttention, PositionalEmbedding, SequencePool / GlobalAveragePooling1D and
TransformerEncoderBlock.

1. A call writes nothing on the layer: `forward(x, training=False)` (and a training call with
   its backprop, and the recurrent layers' stateful calls) leave `vars(layer)` as they were:
   the same keys, the same objects (parameters, gradients and buffers are the same views).
2. Calls are reentrant: `y1, b1 = begin_update(x1); y2, b2 = begin_update(x2)` (another shape),
   then `b1(dy1)` gives exactly the output, input gradient and parameter gradients of an
   un-interleaved call on x1 (and `b2(dy2)` those of one on x2), on numpy and numba.
"""

from __future__ import annotations

import numpy as np
import pytest

import nnx
from nnx.layers.attention import MultiHeadSelfAttention
from nnx.layers.gru import GRU
from nnx.layers.lstm import LSTM
from nnx.layers.positional import PositionalEmbedding
from nnx.layers.recurrent import RecurrentLayer
from nnx.layers.sequence_pool import GlobalAveragePooling1D, SequencePool
from nnx.layers.simple_rnn import SimpleRNN
from nnx.layers.transformer import TransformerEncoderBlock
from nnx.testing import build

D = 4  # feature size of every layer below
BACKENDS = [b for b in ("numpy", "numba") if b in nnx.available_backends()]

LAYERS = {
    "simple_rnn": lambda: SimpleRNN(D, 3),
    "simple_rnn_seq": lambda: SimpleRNN(D, 3, return_sequences=True),
    "lstm": lambda: LSTM(D, 3),
    "lstm_seq": lambda: LSTM(D, 3, return_sequences=True),
    "gru": lambda: GRU(D, 3),
    "gru_seq": lambda: GRU(D, 3, return_sequences=True),
    "attention": lambda: MultiHeadSelfAttention(D, 2),
    "attention_causal": lambda: MultiHeadSelfAttention(D, 2, causal=True),
    "positional": lambda: PositionalEmbedding(8, D),
    "pool_mean": lambda: SequencePool("mean"),
    "pool_last": lambda: SequencePool("last"),
    "pool_first": lambda: SequencePool("first"),
    "global_avg_pool_1d": lambda: GlobalAveragePooling1D(),
    "transformer_pre_ln": lambda: TransformerEncoderBlock(D, 2, 6),
    "transformer_post_ln_causal_dropout": lambda: TransformerEncoderBlock(
        D, 2, 6, dropout=0.25, causal=True, norm_first=False),
}


def _inputs(seed=0):
    """Two inputs of different shapes (batch and time), so that nothing sized by the first
    call can serve the second."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((3, 5, D)), rng.standard_normal((2, 7, D))


def _snapshot(layer):
    """vars(layer), with the items of dict / list attributes (params, grads, buffers,
    sublayers) one level down, as objects (compared by identity)."""
    snap = {}
    for k, v in vars(layer).items():
        if isinstance(v, dict):
            snap[k] = (v, dict(v))
        elif isinstance(v, list):
            snap[k] = (v, list(v))
        else:
            snap[k] = (v, None)
    return snap


def _assert_unchanged(layer, before, what):
    after = _snapshot(layer)
    assert after.keys() == before.keys(), (
        f"{what} changed the attributes of {layer.describe()}: added "
        f"{sorted(after.keys() - before.keys())}, removed {sorted(before.keys() - after.keys())}")
    for k, (obj, items) in before.items():
        assert after[k][0] is obj, f"{what} rebound {layer.describe()}.{k}"
        if isinstance(items, dict):
            now = after[k][1]
            assert now.keys() == items.keys(), f"{what} changed the keys of " \
                                               f"{layer.describe()}.{k}"
            for key, val in items.items():
                assert now[key] is val, f"{what} rebound {layer.describe()}.{k}[{key!r}]"
        elif isinstance(items, list):
            now = after[k][1]
            assert len(now) == len(items) and all(a is b for a, b in zip(now, items)), \
                f"{what} changed {layer.describe()}.{k}"


def _host(ops, a):
    return None if a is None else np.array(ops.to_host(a), dtype=np.float64)


def _grads(ops, store):
    return {f"{lyr.name}.{n}": _host(ops, lyr.grads[n]) for lyr, n in store.views()}


# ============================================================================================
# 1. Nothing is written on the layer per call
# ============================================================================================
@pytest.mark.parametrize("make", LAYERS.values(), ids=LAYERS.keys())
def test_forward_leaves_the_layer_unchanged(make):
    layer = make()
    ops, _ = build(layer, "numpy", "float64")
    x1, x2 = _inputs()
    before = _snapshot(layer)
    layer.forward(ops.asarray(x1), training=False)
    _assert_unchanged(layer, before, "forward(x, training=False)")
    layer.forward(ops.asarray(x2))
    _assert_unchanged(layer, before, "forward(x)")


@pytest.mark.parametrize("make", LAYERS.values(), ids=LAYERS.keys())
def test_training_calls_leave_every_node_unchanged(make):
    """Every layer of the tree (a container's leaves too), through training calls and their
    backprops. One warm-up call first: a Chain memoizes where its trainable layers start."""
    layer = make()
    ops, _ = build(layer, "numpy", "float64")
    x1, x2 = _inputs()
    layer.forward(ops.asarray(x1))
    nodes = list(dict.fromkeys(layer.nodes()))
    before = [_snapshot(n) for n in nodes]
    layer.forward(ops.asarray(x2), training=False)
    y, backprop = layer.begin_update(ops.asarray(x1), training=True)
    backprop(ops.asarray(np.ones(y.shape)), need_dx=True)
    y, backprop = layer.begin_update(ops.asarray(x2), training=True)
    backprop(ops.asarray(np.ones(y.shape)), need_dx=False)
    for node, snap in zip(nodes, before, strict=True):
        _assert_unchanged(node, snap, "a training call")


@pytest.mark.parametrize("cls", [SimpleRNN, LSTM, GRU], ids=lambda c: c.__name__)
def test_stateful_calls_leave_the_layer_unchanged(cls):
    layer = cls(D, 3, return_sequences=True)
    ops, _ = build(layer, "numpy", "float64")
    x1, _ = _inputs()
    states = tuple(np.ones((3, 3)) for _ in layer.state_names)
    layer.set_initial_state(*states)  # configuration: before the snapshot
    before = _snapshot(layer)
    _, state = layer.forward_with_state(ops.asarray(x1))
    layer.forward_with_state(ops.asarray(x1), initial_state=state)
    y, state, backprop = layer.begin_update_with_state(ops.asarray(x1), initial_state=state)
    _, state_grads = backprop(ops.asarray(np.ones(y.shape)))
    assert state_grads is not None
    _assert_unchanged(layer, before, "a stateful call")
    assert layer._initial_state is before["_initial_state"][0]


# ============================================================================================
# 2. Interleaved calls give the gradients of un-interleaved ones
# ============================================================================================
def _one_call(layer, ops, store, x, dy, need_dx=True):
    """(y, dx, parameter gradients) of one training call, alone. Reseeds first (dropout)."""
    ops.seed(7)
    store.grads[...] = 0
    y, backprop = layer.begin_update(ops.asarray(x), training=True)
    dx = backprop(ops.asarray(dy), need_dx=need_dx)
    return _host(ops, y), _host(ops, dx), _grads(ops, store)


def _assert_same(got, ref, what):
    y, dx, grads = got
    y_ref, dx_ref, grads_ref = ref
    np.testing.assert_array_equal(y, y_ref, err_msg=f"{what}: output")
    if dx_ref is None:
        assert dx is None, f"{what}: dx should be None"
    else:
        np.testing.assert_array_equal(dx, dx_ref, err_msg=f"{what}: dx")
    assert grads.keys() == grads_ref.keys()
    for k in grads_ref:
        np.testing.assert_array_equal(grads[k], grads_ref[k], err_msg=f"{what}: gradient {k}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("make", LAYERS.values(), ids=LAYERS.keys())
def test_interleaved_training_calls(backend, make):
    layer = make()
    ops, store = build(layer, backend, "float64")
    x1, x2 = _inputs(1)
    rng = np.random.default_rng(2)
    shape1 = tuple(layer.forward(ops.asarray(x1)).shape)
    shape2 = tuple(layer.forward(ops.asarray(x2)).shape)
    assert shape1 != shape2
    dy1, dy2 = rng.standard_normal(shape1), rng.standard_normal(shape2)
    ref1 = _one_call(layer, ops, store, x1, dy1)
    ref2 = _one_call(layer, ops, store, x2, dy2)
    assert any(np.abs(g).max() > 0 for g in ref1[2].values()) or not ref1[2]

    # x1's forward, then x2's forward, then x1's backward; x2's backward last
    store.grads[...] = 0
    ops.seed(7)
    y1, b1 = layer.begin_update(ops.asarray(x1), training=True)
    ops.seed(7)
    y2, b2 = layer.begin_update(ops.asarray(x2), training=True)
    dx1 = b1(ops.asarray(dy1))
    _assert_same((_host(ops, y1), _host(ops, dx1), _grads(ops, store)), ref1,
                 "x1 backward after x2 forward")
    dx2 = b2(ops.asarray(dy2))
    _assert_same((_host(ops, y2), _host(ops, dx2), _grads(ops, store)), ref2,
                 "x2 backward after x1 backward")

    # the other order of backwards, and an inference forward in between
    ops.seed(7)
    y1, b1 = layer.begin_update(ops.asarray(x1), training=True)
    ops.seed(7)
    y2, b2 = layer.begin_update(ops.asarray(x2), training=True)
    layer.forward(ops.asarray(x2), training=False)
    store.grads[...] = 0
    dx2 = b2(ops.asarray(dy2))
    _assert_same((_host(ops, y2), _host(ops, dx2), _grads(ops, store)), ref2,
                 "x2 backward first")
    dx1 = b1(ops.asarray(dy1))
    _assert_same((_host(ops, y1), _host(ops, dx1), _grads(ops, store)), ref1,
                 "x1 backward after x2 backward")

    # need_dx=False: the same parameter gradients, no dx
    ref1_no_dx = _one_call(layer, ops, store, x1, dy1, need_dx=False)
    ops.seed(7)
    _, b1 = layer.begin_update(ops.asarray(x1), training=True)
    layer.begin_update(ops.asarray(x2), training=True)
    store.grads[...] = 0
    assert b1(ops.asarray(dy1), need_dx=False) is None
    for k, g in ref1_no_dx[2].items():
        np.testing.assert_array_equal(_grads(ops, store)[k], g, err_msg=f"need_dx=False: {k}")
        np.testing.assert_array_equal(g, ref1[2][k], err_msg=f"need_dx=False vs True: {k}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", [SimpleRNN, LSTM, GRU], ids=lambda c: c.__name__)
def test_interleaved_stateful_calls(backend, cls):
    """begin_update_with_state from different initial states, interleaved: each backprop gives
    its own call's dx, parameter gradients and initial-state gradients; final states are those
    of an un-interleaved call."""
    layer = cls(D, 3, return_sequences=True)
    assert isinstance(layer, RecurrentLayer)
    ops, store = build(layer, backend, "float64")
    x1, x2 = _inputs(3)
    rng = np.random.default_rng(4)
    s1 = tuple(rng.standard_normal((3, 3)) for _ in layer.state_names)
    s2 = tuple(rng.standard_normal(3) for _ in layer.state_names)  # broadcast (H,) states
    dy1, dy2 = rng.standard_normal((3, 5, 3)), rng.standard_normal((2, 7, 3))

    def alone(x, s, dy):
        store.grads[...] = 0
        y, state, backprop = layer.begin_update_with_state(ops.asarray(x), initial_state=s)
        dx, sg = backprop(ops.asarray(dy))
        return (_host(ops, y), [_host(ops, a) for a in state], _host(ops, dx),
                [_host(ops, g) for g in sg], _grads(ops, store))

    def check(got, ref, what):
        for a, b, part in zip(got, ref, ("y", "final state", "dx", "state grads", "grads")):
            if isinstance(b, dict):
                for k in b:
                    np.testing.assert_array_equal(a[k], b[k], err_msg=f"{what}: {part} {k}")
            elif isinstance(b, list):
                assert len(a) == len(b)
                for u, v in zip(a, b):
                    np.testing.assert_array_equal(u, v, err_msg=f"{what}: {part}")
            else:
                np.testing.assert_array_equal(a, b, err_msg=f"{what}: {part}")

    ref1, ref2 = alone(x1, s1, dy1), alone(x2, s2, dy2)
    assert all(g.shape == (3,) for g in ref2[3]) and all(g.shape == (3, 3) for g in ref1[3])

    y1, st1, b1 = layer.begin_update_with_state(ops.asarray(x1), initial_state=s1)
    y2, st2, b2 = layer.begin_update_with_state(ops.asarray(x2), initial_state=s2)
    layer.forward_with_state(ops.asarray(x2))  # zeros, inference: must not disturb b1, b2
    store.grads[...] = 0
    dx1, sg1 = b1(ops.asarray(dy1))
    check((_host(ops, y1), [_host(ops, a) for a in st1], _host(ops, dx1),
           [_host(ops, g) for g in sg1], _grads(ops, store)), ref1, "x1 interleaved")
    store.grads[...] = 0
    dx2, sg2 = b2(ops.asarray(dy2))
    check((_host(ops, y2), [_host(ops, a) for a in st2], _host(ops, dx2),
           [_host(ops, g) for g in sg2], _grads(ops, store)), ref2, "x2 interleaved")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["lstm_seq", "attention_causal", "transformer_pre_ln"])
def test_predict_in_another_thread_does_not_disturb_training(backend, name):
    """The bug the contract fixes: inference calls in a second thread, on another shape, while
    the main thread runs training calls; every training step still gets exactly its own
    output and gradients."""
    import threading

    layer = LAYERS[name]()
    ops, store = build(layer, backend, "float64")
    x1, x2 = _inputs(5)
    dy1 = np.random.default_rng(6).standard_normal(tuple(layer.forward(ops.asarray(x1)).shape))
    ref = _one_call(layer, ops, store, x1, dy1)
    y2_ref = _host(ops, layer.forward(ops.asarray(x2)))
    stop, errors = threading.Event(), []

    def predict_loop():
        try:
            while not stop.is_set():
                np.testing.assert_array_equal(_host(ops, layer.forward(ops.asarray(x2))), y2_ref)
        except Exception as exc:  # reported by the main thread
            errors.append(exc)

    thread = threading.Thread(target=predict_loop)
    thread.start()
    try:
        for _ in range(20):
            _assert_same(_one_call(layer, ops, store, x1, dy1), ref, "training step")
    finally:
        stop.set()
        thread.join()
    assert not errors, errors[0]
