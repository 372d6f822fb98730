"""Recurrent, embedding, attention, pooling and composition layers.

Gradients against float64 central differences on every available backend (the `backend`
fixture), forward passes against straightforward NumPy transcriptions of PyTorch's equations,
the causal mask, error messages, config / checkpoint round trips and tiny training runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

import nnx
from nnx.errors import InputError, ShapeError
from nnx.layers.attention import MultiHeadSelfAttention
from nnx.layers.base import layer_from_dict, layer_to_dict
from nnx.layers.compose import Parallel, Residual
from nnx.layers.container import Chain
from nnx.layers.dense import Dense
from nnx.layers.dropout import Dropout
from nnx.layers.embedding import Embedding
from nnx.layers.flatten import Flatten
from nnx.layers.gru import GRU
from nnx.layers.layernorm import LayerNorm
from nnx.layers.lstm import LSTM
from nnx.layers.positional import PositionalEmbedding
from nnx.layers.sequence_pool import GlobalAveragePooling1D, SequencePool
from nnx.layers.simple_rnn import SimpleRNN
from nnx.layers.transformer import TransformerEncoderBlock
from nnx.testing import assert_backends_agree, build, gradcheck

N, T, F, H = 2, 4, 3, 5  # tiny shapes: the whole file runs in seconds


def seq(rng, n=N, t=T, f=F):
    return rng.standard_normal((n, t, f))


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


# ============================================================================================
# Gradients (float64 central differences), every backend
# ============================================================================================
RECURRENT = [SimpleRNN, LSTM, GRU]


@pytest.mark.parametrize("cls", RECURRENT, ids=lambda c: c.__name__)
@pytest.mark.parametrize("return_sequences", [False, True], ids=["last", "sequences"])
def test_recurrent_gradcheck(backend, rng, cls, return_sequences):
    gradcheck(cls(F, H, return_sequences=return_sequences), seq(rng), backend)


@pytest.mark.parametrize("cls", RECURRENT, ids=lambda c: c.__name__)
def test_recurrent_gradcheck_single_step_and_strided_input(backend, rng, cls):
    gradcheck(cls(F, H), seq(rng, t=1), backend)
    x = rng.standard_normal((N, T, 2 * F))[:, :, ::2]  # non-contiguous input
    gradcheck(cls(F, H, return_sequences=True), x, backend)


def _states(rng, cls, batch=N):
    k = 2 if cls is LSTM else 1
    return tuple(rng.standard_normal((batch, H)) for _ in range(k))


@pytest.mark.parametrize("cls", RECURRENT, ids=lambda c: c.__name__)
def test_recurrent_gradcheck_with_initial_state(backend, rng, cls):
    """x and weight gradients with a given initial state, then the initial-state gradients
    themselves (the backprop of `begin_update_with_state`) against central differences."""
    states = _states(rng, cls)
    layer = cls(F, H, return_sequences=True)
    layer.set_initial_state(*states)
    x = seq(rng)
    gradcheck(layer, x, backend)

    ops, _ = build(layer, backend, "float64")
    dy = rng.standard_normal((N, T, H))
    _, _, backprop = layer.begin_update_with_state(ops.asarray(x))  # from set_initial_state
    dx, state_grads = backprop(ops.asarray(dy))
    assert dx.shape == (N, T, F) and len(state_grads) == len(states)
    analytic = [ops.to_host(g) for g in state_grads]
    eps = 1e-6
    for k, s in enumerate(states):
        num = np.zeros_like(s)
        for idx in np.ndindex(s.shape):
            vals = []
            for sign in (1, -1):
                pert = [st.copy() for st in states]
                pert[k][idx] += sign * eps
                y, _ = layer.forward_with_state(ops.asarray(x), initial_state=tuple(pert))
                vals.append(float((ops.to_host(y) * dy).sum()))
            num[idx] = (vals[0] - vals[1]) / (2 * eps)
        np.testing.assert_allclose(analytic[k], num, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("cls", RECURRENT, ids=lambda c: c.__name__)
def test_initial_state_api(rng, cls):
    """initial_state=... beats set_initial_state; (H,) states broadcast over the batch and get
    batch-summed gradients; the returned final state continues a split sequence exactly (given
    per call, or through set_initial_state); nothing is written on the layer per call."""
    layer = cls(F, H, return_sequences=True)
    ops, _ = build(layer, "numpy", "float64")
    x = ops.asarray(seq(rng, t=6))
    full, full_state = layer.forward_with_state(x)
    np.testing.assert_array_equal(layer.forward(x), full)
    assert len(full_state) == len(layer.state_names)
    np.testing.assert_array_equal(full_state[0], full[:, -1])
    first, state = layer.forward_with_state(x[:, :3])
    second, state2 = layer.forward_with_state(x[:, 3:], initial_state=state)
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), full, atol=1e-12)
    for a, b in zip(state2, full_state, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-12)
    layer.set_initial_state(*state)
    second = layer.forward(x[:, 3:])
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), full, atol=1e-12)
    assert not hasattr(layer, "final_state") and not hasattr(layer, "initial_state_grads")

    vec = tuple(rng.standard_normal(H) for _ in _states(rng, cls))
    a, _ = layer.forward_with_state(x, initial_state=vec)  # beats the state set above
    layer.set_initial_state(*(np.broadcast_to(v, (N, H)).copy() for v in vec))
    b = layer.forward(x)
    np.testing.assert_allclose(a, b, atol=1e-12)
    _, _, backprop = layer.begin_update_with_state(x, initial_state=vec)
    _, state_grads = backprop(np.ones((N, 6, H)))
    assert all(g.shape == (H,) for g in state_grads)
    _, _, backprop_full = layer.begin_update_with_state(x)  # the (N, H) states set above
    _, full_grads = backprop_full(np.ones((N, 6, H)))
    for g, g_full in zip(state_grads, full_grads, strict=True):
        assert g_full.shape == (N, H)
        np.testing.assert_allclose(g, g_full.sum(axis=0), atol=1e-12)
    layer.reset_initial_state()
    np.testing.assert_allclose(layer.forward(x), full, atol=1e-12)
    _, _, backprop = layer.begin_update_with_state(x)
    dx, state_grads = backprop(np.ones((N, 6, H)))
    assert state_grads is None and dx.shape == (N, 6, F)
    assert backprop(np.ones((N, 6, H)), need_dx=False) == (None, None)


def test_attention_gradcheck(backend, rng):
    x = rng.standard_normal((N, T, 4))
    gradcheck(MultiHeadSelfAttention(4, 2), x, backend)
    gradcheck(MultiHeadSelfAttention(4, 2, causal=True), x, backend)
    gradcheck(MultiHeadSelfAttention(4, 1, causal=True), x[:, :1], backend)


def test_positional_embedding_and_pooling_gradcheck(backend, rng):
    x = rng.standard_normal((N, T, 4))
    gradcheck(PositionalEmbedding(T + 2, 4), x, backend)
    for mode in ("mean", "last", "first"):
        gradcheck(SequencePool(mode), x, backend)
    gradcheck(GlobalAveragePooling1D(), x, backend)


def test_embedding_gradient(backend, rng):
    """Repeated ids accumulate (scatter-add); the table gradient is written, not accumulated."""
    layer = Embedding(6, 3)
    ops, store = build(layer, backend, "float64")
    ids = np.array([[0, 2, 2], [5, 2, 0]])
    y, backprop = layer.begin_update(ops.asarray(ids))
    W = ops.to_host(layer.params["W"])
    np.testing.assert_array_equal(ops.to_host(y), W[ids])
    dy = rng.standard_normal((2, 3, 3))
    expected = np.zeros((6, 3))
    np.add.at(expected, ids, dy)
    for _ in range(2):  # twice: the second call must not add onto the first
        assert backprop(ops.asarray(dy)) is None
        np.testing.assert_allclose(ops.to_host(layer.grads["W"]), expected, atol=1e-12)
    # float ids holding whole numbers are accepted
    np.testing.assert_array_equal(ops.to_host(layer.forward(ops.asarray(ids.astype(float)))),
                                  W[ids])


@pytest.mark.parametrize("kind", ["residual", "residual_nested", "parallel_concat",
                                  "parallel_add", "residual_of_parallel"])
def test_composition_gradcheck(backend, rng, kind):
    x = rng.standard_normal((N, T, 4))
    if kind == "residual":
        net = Residual(Dense(4, 4, "tanh"))
    elif kind == "residual_nested":
        net = Residual(Chain([LayerNorm(4), Dense(4, 6, "gelu"), Residual([Dense(6, 6, "tanh")]),
                              Dense(6, 4)]))
    elif kind == "parallel_concat":
        net = Parallel(Dense(4, 3, "tanh"), GRU(4, 2, return_sequences=True),
                       Chain([Dense(4, 2), Dense(2, 1, "sigmoid")]))
    elif kind == "parallel_add":
        net = Parallel(Dense(4, 4, "tanh"), MultiHeadSelfAttention(4, 2, causal=True),
                       merge="add")
    else:
        net = Chain([Residual(Parallel(Dense(4, 2, "tanh"), Dense(4, 2))),
                     LSTM(4, 3), Dense(3, 2)])
    gradcheck(net, x, backend)


@pytest.mark.parametrize("norm_first", [True, False], ids=["pre_ln", "post_ln"])
def test_transformer_block_gradcheck(backend, rng, norm_first):
    x = rng.standard_normal((N, T, 4))
    gradcheck(TransformerEncoderBlock(4, 2, 6, causal=not norm_first, norm_first=norm_first),
              x, backend, max_checks=16)
    # with dropout in training mode (gradcheck reseeds: the same mask in every evaluation)
    gradcheck(TransformerEncoderBlock(4, 2, 6, dropout=0.25), x, backend, max_checks=8)


def test_backends_agree(rng):
    """Each backend from the same weights matches numpy (outputs and every gradient)."""
    x = rng.standard_normal((N, T, 4))
    for layer in (LSTM(4, 3, return_sequences=True), GRU(4, 3), SimpleRNN(4, 3),
                  TransformerEncoderBlock(4, 2, 8, causal=True)):
        assert_backends_agree(layer, x)


# ============================================================================================
# Forward passes against PyTorch's equations (NumPy transcriptions, PyTorch weight layout)
# ============================================================================================
def torch_lstm(x, w_ih, w_hh, b_ih, b_hh, h, c):
    """torch.nn.LSTM, one layer, batch_first; weights in PyTorch's (4H, in) layout."""
    hid = w_hh.shape[1]
    out = []
    for t in range(x.shape[1]):
        gates = x[:, t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh
        i, f, g, o = (gates[:, k * hid:(k + 1) * hid] for k in range(4))
        i, f, g, o = sigmoid(i), sigmoid(f), np.tanh(g), sigmoid(o)
        c = f * c + i * g
        h = o * np.tanh(c)
        out.append(h)
    return np.stack(out, axis=1), h, c


def torch_gru(x, w_ih, w_hh, b_ih, b_hh, h):
    """torch.nn.GRU, one layer, batch_first; weights in PyTorch's (3H, in) layout."""
    hid = w_hh.shape[1]
    out = []
    for t in range(x.shape[1]):
        gi = x[:, t] @ w_ih.T + b_ih
        gh = h @ w_hh.T + b_hh
        r = sigmoid(gi[:, :hid] + gh[:, :hid])
        z = sigmoid(gi[:, hid:2 * hid] + gh[:, hid:2 * hid])
        n = np.tanh(gi[:, 2 * hid:] + r * gh[:, 2 * hid:])
        h = (1 - z) * n + z * h
        out.append(h)
    return np.stack(out, axis=1), h


def torch_rnn(x, w_ih, w_hh, b_ih, b_hh, h):
    out = []
    for t in range(x.shape[1]):
        h = np.tanh(x[:, t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh)
        out.append(h)
    return np.stack(out, axis=1), h


def test_lstm_matches_pytorch_equations(backend, rng):
    x = seq(rng, t=6)
    w_ih, w_hh = rng.standard_normal((4 * H, F)), rng.standard_normal((4 * H, H))
    b_ih, b_hh = rng.standard_normal(4 * H), rng.standard_normal(4 * H)
    h0, c0 = rng.standard_normal((N, H)), rng.standard_normal((N, H))
    model = nnx.Model(LSTM(F, H, return_sequences=True), backend=backend, dtype="float64")
    model.set_weights([w_ih.T, w_hh.T, b_ih + b_hh])  # the documented mapping
    layer = model.net
    for state in ((None, None), (h0, c0)):
        hs_ref, h_ref, c_ref = torch_lstm(x, w_ih, w_hh, b_ih, b_hh,
                                          *(s if s is not None else np.zeros((N, H))
                                            for s in state))
        layer.set_initial_state(*state) if state[0] is not None else layer.reset_initial_state()
        hs = model.ops.to_host(model(x))
        np.testing.assert_allclose(hs, hs_ref, rtol=1e-10, atol=1e-12)
        hs2, (h_t, c_t) = layer.forward_with_state(model.ops.asarray(x))
        np.testing.assert_allclose(model.ops.to_host(hs2), hs_ref, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(model.ops.to_host(h_t), h_ref, atol=1e-12)
        np.testing.assert_allclose(model.ops.to_host(c_t), c_ref, atol=1e-12)
    last = nnx.Model(LSTM(F, H), backend=backend, dtype="float64")
    last.set_weights([w_ih.T, w_hh.T, b_ih + b_hh])
    np.testing.assert_allclose(last.predict(x), torch_lstm(x, w_ih, w_hh, b_ih, b_hh,
                                                           np.zeros((N, H)),
                                                           np.zeros((N, H)))[1], atol=1e-12)


def test_gru_and_rnn_match_pytorch_equations(backend, rng):
    x = seq(rng, t=6)
    h0 = rng.standard_normal((N, H))
    w_ih, w_hh = rng.standard_normal((3 * H, F)), rng.standard_normal((3 * H, H))
    b_ih, b_hh = rng.standard_normal(3 * H), rng.standard_normal(3 * H)
    model = nnx.Model(GRU(F, H, return_sequences=True), backend=backend, dtype="float64")
    model.set_weights([w_ih.T, w_hh.T, b_ih, b_hh])
    np.testing.assert_allclose(model.predict(x),
                               torch_gru(x, w_ih, w_hh, b_ih, b_hh, np.zeros((N, H)))[0],
                               rtol=1e-10, atol=1e-12)
    model.net.set_initial_state(h0)
    np.testing.assert_allclose(model.predict(x), torch_gru(x, w_ih, w_hh, b_ih, b_hh, h0)[0],
                               rtol=1e-10, atol=1e-12)

    w_ih, w_hh = rng.standard_normal((H, F)), rng.standard_normal((H, H))
    b_ih, b_hh = rng.standard_normal(H), rng.standard_normal(H)
    model = nnx.Model(SimpleRNN(F, H), backend=backend, dtype="float64")
    model.set_weights([w_ih.T, w_hh.T, b_ih + b_hh])
    np.testing.assert_allclose(model.predict(x),
                               torch_rnn(x, w_ih, w_hh, b_ih, b_hh, np.zeros((N, H)))[1],
                               rtol=1e-10, atol=1e-12)


def test_lstm_default_init():
    layer = LSTM(F, H)
    build(layer, "numpy", "float64")
    b = layer.params["b"]
    np.testing.assert_array_equal(b[H:2 * H], 1.0)  # unit forget bias
    np.testing.assert_array_equal(np.delete(b, np.s_[H:2 * H]), 0.0)
    assert [s.name for s in layer.param_specs()] == ["W_ih", "W_hh", "b"]
    assert [s.name for s in GRU(F, H).param_specs()] == ["W_ih", "W_hh", "b_ih", "b_hh"]


def test_attention_matches_reference(backend, rng):
    """MHSA against a direct NumPy transcription (per head softmax(q k^T / sqrt(d)) v)."""
    d, heads = 6, 3
    x = rng.standard_normal((N, T, d))
    layer = MultiHeadSelfAttention(d, heads, causal=True)
    ops, _ = build(layer, backend, "float64")
    y = ops.to_host(layer.forward(ops.asarray(x)))
    p = {k: ops.to_host(v) for k, v in layer.params.items()}
    q, k, v = (x @ p["W" + n] + p["b" + n] for n in "qkv")
    hd = d // heads
    out = np.zeros_like(q)
    for h in range(heads):
        sl = slice(h * hd, (h + 1) * hd)
        s = q[..., sl] @ k[..., sl].transpose(0, 2, 1) / np.sqrt(hd)
        s = np.where(np.triu(np.ones((T, T), bool), 1), -np.inf, s)
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        out[..., sl] = a @ v[..., sl]
    np.testing.assert_allclose(y, out @ p["Wo"] + p["bo"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("make", [
    lambda: MultiHeadSelfAttention(4, 2, causal=True),
    lambda: TransformerEncoderBlock(4, 2, 8, causal=True),
    lambda: LSTM(4, 3, return_sequences=True),
], ids=["attention", "transformer_block", "lstm"])
def test_causal_outputs_ignore_the_future(backend, rng, make):
    """The output at t is unchanged when inputs after t change; the gradient of output t
    w.r.t. inputs after t is exactly zero."""
    layer = make()
    ops, store = build(layer, backend, "float64")
    x = rng.standard_normal((N, 5, 4))
    y = ops.to_host(layer.forward(ops.asarray(x)))
    for t in range(5):
        x2 = x.copy()
        x2[:, t + 1:] += rng.standard_normal(x2[:, t + 1:].shape) * 10
        y2 = ops.to_host(layer.forward(ops.asarray(x2)))
        np.testing.assert_allclose(y2[:, :t + 1], y[:, :t + 1], rtol=1e-10, atol=1e-12)
        if t < 4:
            assert np.abs(y2[:, t + 1:] - y[:, t + 1:]).max() > 1e-6
    _, backprop = layer.begin_update(ops.asarray(x))
    dy = np.zeros((N, 5, layer_out(layer)))
    dy[:, 2] = 1.0
    dx = ops.to_host(backprop(ops.asarray(dy)))
    assert np.all(dx[:, 3:] == 0)
    assert np.abs(dx[:, :3]).max() > 0


def layer_out(layer):
    return getattr(layer, "hidden_size", None) or 4


def test_non_causal_attention_sees_the_future(rng):
    layer = MultiHeadSelfAttention(4, 2)
    ops, _ = build(layer, "numpy", "float64")
    x = rng.standard_normal((N, 5, 4))
    y = layer.forward(ops.asarray(x)).copy()
    x[:, -1] += 1.0
    assert np.abs(layer.forward(ops.asarray(x))[:, 0] - y[:, 0]).max() > 1e-6


# ============================================================================================
# Errors: the message names the layer, the expected and the actual shape
# ============================================================================================
@pytest.mark.parametrize("cls", RECURRENT, ids=lambda c: c.__name__)
def test_recurrent_bad_input(cls):
    layer = cls(F, H, name="enc")
    build(layer, "numpy", "float64")
    with pytest.raises(ShapeError, match=r"enc.*\(batch, time, 3\).*got shape \(2, 3\)"):
        layer.forward(np.zeros((2, 3)))
    with pytest.raises(ShapeError, match=r"enc.*\(batch, time, 3\).*got shape \(2, 4, 7\)"):
        layer.forward(np.zeros((2, 4, 7)))
    with pytest.raises(ShapeError, match=rf"enc.*initial state h0 of shape \(2, {H}\).*"
                                         rf"got shape \(3, {H}\)"):
        layer.forward_with_state(np.zeros((2, 4, F)),
                                 initial_state=tuple(np.zeros((3, H)) for _ in layer.state_names))
    with pytest.raises(ShapeError, match=rf"enc.*\(batch, {H}\) or \({H},\).*got shape \(2, 9\)"):
        layer.set_initial_state(*(np.zeros((2, 9)) for _ in layer.state_names))
    with pytest.raises(ValueError, match="enc.*initial state takes"):
        layer.set_initial_state(*(np.zeros(H) for _ in range(len(layer.state_names) + 1)))
    with pytest.raises(ValueError, match="hidden_size must be a positive int"):
        cls(F, 0)


def test_other_bad_inputs():
    att = MultiHeadSelfAttention(8, 2, name="att")
    build(att, "numpy", "float64")
    with pytest.raises(ShapeError, match=r"att.*\(batch, time, 8\).*got shape \(2, 5, 6\)"):
        att.forward(np.zeros((2, 5, 6)))
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadSelfAttention(8, 3)
    pos = PositionalEmbedding(4, 8, name="pos")
    build(pos, "numpy", "float64")
    with pytest.raises(ShapeError, match=r"pos.*time <= 4.*max_len=4.*got shape \(2, 5, 8\)"):
        pos.forward(np.zeros((2, 5, 8)))
    emb = Embedding(10, 4, name="emb")
    build(emb, "numpy", "float64")
    with pytest.raises(InputError, match=r"emb.*id 12.*max id 12.*num_embeddings=10"):
        emb.forward(np.array([[1, 12], [3, 4]]))
    with pytest.raises(InputError, match=r"emb.*id -1.*num_embeddings=10"):
        emb.forward(np.array([[1, -1]]))
    with pytest.raises(InputError, match="emb.*whole numbers"):
        emb.forward(np.array([[1.5, 2.0]]))
    res = Residual(Dense(8, 4), name="res")
    build(res, "numpy", "float64")
    with pytest.raises(ShapeError, match=r"res.*expected output shape \(2, 8\), got \(2, 4\)"):
        res.forward(np.zeros((2, 8)))
    par = Parallel(Dense(8, 4), Dense(8, 3), merge="add", name="par")
    build(par, "numpy", "float64")
    with pytest.raises(ShapeError, match=r"par.*shape \(2, 4\).*got \(2, 3\)"):
        par.forward(np.zeros((2, 8)))
    with pytest.raises(ValueError, match="merge must be one of"):
        Parallel(Dense(8, 4), merge="mul")
    pool = SequencePool("last", name="pool")
    build(pool, "numpy", "float64")
    with pytest.raises(ShapeError, match=r"pool.*\(batch, time, features\).*got shape \(2, 3\)"):
        pool.forward(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="mode must be one of"):
        SequencePool("max")


# ============================================================================================
# Configs, checkpoints, model API
# ============================================================================================
def all_layers():
    return [
        SimpleRNN(3, 4, return_sequences=True), LSTM(3, 4, unit_forget_bias=False), GRU(3, 4),
        Embedding(7, 3), MultiHeadSelfAttention(4, 2, causal=True), PositionalEmbedding(9, 4),
        SequencePool("first"), GlobalAveragePooling1D(),
        TransformerEncoderBlock(8, 2, 16, dropout=0.1, causal=True, norm_first=False),
        Residual(Chain([Dense(4, 4), Dropout(0.5)])),
        Parallel(Dense(4, 2), Residual(Dense(4, 4)), merge="concat"),
    ]


@pytest.mark.parametrize("layer", all_layers(), ids=lambda l: type(l).__name__)
def test_config_json_round_trip(layer):
    d = json.loads(json.dumps(layer_to_dict(layer)))
    again = layer_from_dict(d)
    assert type(again) is type(layer)
    assert layer_to_dict(again) == layer_to_dict(layer)
    assert [s.shape for leaf in again.leaves() for s in leaf.param_specs()] == \
           [s.shape for leaf in layer.leaves() for s in leaf.param_specs()]


def test_checkpoint_round_trip(tmp_path, backend, rng):
    """A model of Residual / Parallel / LSTM / attention saves and loads (on any backend) with
    the same predictions and optimizer state."""
    net = Chain([
        Residual(Parallel(Dense(4, 2, "tanh"), LSTM(4, 2, return_sequences=True))),
        TransformerEncoderBlock(4, 2, 8),
        LSTM(4, 3),
        Dense(3, 2),
    ])
    model = nnx.Model(net, backend=backend, seed=1)
    model.compile(nnx.Adam(1e-2), "softmax_cross_entropy", ["accuracy"])
    x = rng.standard_normal((8, 5, 4)).astype(np.float32)
    y = rng.integers(0, 2, 8)
    model.fit(x, y, epochs=2, batch_size=4, verbose=0)
    path = tmp_path / "model.nnx"
    model.save(path)
    for target in ("numpy", backend):
        loaded = nnx.load(path, backend=target)
        assert type(loaded.net) is Chain
        np.testing.assert_allclose(loaded.predict(x), model.predict(x), rtol=1e-5, atol=1e-6)
        assert loaded.optimizer.step == model.optimizer.step
        for a, b in zip(loaded.get_weights(), model.get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)


def test_model_with_composed_root(tmp_path, backend, rng):
    """A Residual / Parallel block is a model root by itself (nnx.Model(block)): trains, its
    parameters are in the flat buffer, and it survives a checkpoint."""
    root = Residual(Parallel(Chain([Dense(3, 4, "tanh"), Dense(4, 2)]),
                             SimpleRNN(3, 1, return_sequences=True), merge="concat"))
    model = nnx.Model(root, backend=backend)
    assert model.count_params() == (3 * 4 + 4 + 4 * 2 + 2) + (3 + 1 + 1)
    model.compile(nnx.SGD(0.1), "mse", metrics=[])
    x = rng.standard_normal((6, 4, 3)).astype(np.float32)
    loss0 = model.train_step(x, np.zeros_like(x))
    for _ in range(5):
        loss = model.train_step(x, np.zeros_like(x))
    assert loss < loss0
    model.save(tmp_path / "root.nnx")
    np.testing.assert_allclose(nnx.load(tmp_path / "root.nnx").predict(x), model.predict(x),
                               rtol=1e-5, atol=1e-6)


def test_sequential_with_embedding_and_int_inputs(backend):
    """Integer token inputs go through Model.fit/predict untouched (ids stay integers)."""
    from nnx.models import transformer

    x, y = transformer.synthetic_repeat_task(32, seq_len=6, vocab_size=5, seed=3)
    assert ((x[:, 1:] == x[:, :1]).any(axis=1) == y.astype(bool)).all()
    model = transformer.build(backend=backend, vocab_size=5, seq_len=6, embed_dim=8,
                              num_heads=2, mlp_dim=8, depth=1, num_classes=2)
    model.compile(nnx.Adam(1e-2), "softmax_cross_entropy", ["accuracy"])
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert model.predict(x).shape == (32, 2)


# ============================================================================================
# Training smoke tests (tiny data, the loss must go down)
# ============================================================================================
def _losses(model, x, y, epochs, batch_size):
    hist = model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0, shuffle=True)
    return hist.history["loss"]


def test_lstm_learns(backend):
    """Classify whether a noisy sequence's first value is positive (needs memory over T)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 8, 2)).astype(np.float32) * 0.3
    y = (rng.random(128) > 0.5).astype(np.int64)
    x[:, 0, 0] = np.where(y == 1, 1.0, -1.0)
    model = nnx.Sequential([LSTM(2, 8), Dense(8, 2)], backend=backend, seed=0)
    model.compile(nnx.Adam(3e-2), "softmax_cross_entropy", ["accuracy"])
    losses = _losses(model, x, y, 8, 32)
    assert losses[-1] < 0.5 * losses[0], losses
    assert model.evaluate(x, y)["accuracy"] > 0.9


def test_transformer_learns(backend):
    from nnx.models import transformer

    x, y = transformer.synthetic_repeat_task(256, seq_len=6, vocab_size=4, seed=0)
    model = transformer.build(backend=backend, vocab_size=4, seq_len=6, embed_dim=16,
                              num_heads=2, mlp_dim=16, depth=1, num_classes=2)
    model.compile(nnx.Adam(1e-2), "softmax_cross_entropy", ["accuracy"])
    losses = _losses(model, x, y, 6, 32)
    assert losses[-1] < 0.8 * losses[0], losses


def test_zoo_models_build():
    from nnx.models import autoencoder, lstm, transformer

    m = lstm.build(seed=0)
    assert m.predict(np.zeros((2, 28, 28), np.float32)).shape == (2, 10)
    assert (lstm.INPUT, lstm.TARGET, lstm.LOSS) == ("rows", "labels", "softmax_cross_entropy")
    ae = autoencoder.build(seed=0)
    out = ae.predict(np.zeros((2, 28, 28), np.float32))
    assert out.shape == (2, 784) and (out >= 0).all() and (out <= 1).all()
    assert (autoencoder.INPUT, autoencoder.TARGET) == ("flat", "inputs")
    tr = transformer.build(seed=0, embed_dim=8, num_heads=2, mlp_dim=8, depth=1)
    assert tr.predict(np.zeros((2, 28, 28), np.float32)).shape == (2, 10)
    assert isinstance(tr.net.layers[0], Dense) and not isinstance(tr.net.layers[0], Flatten)
