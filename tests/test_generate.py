"""Text generation (`nnx.generate`) and incremental decoding (`nnx.layers.decode`).

1. The key/value cache and carried recurrent states are exact: greedy decoding with the cache
   gives the same tokens as re-running the whole window through `forward` at every step, token
   for token (past the positional table's length too, where the window slides), and every
   decode step's logits equal `forward`'s at the same positions.
2. Incremental means incremental: after the prompt, each step feeds one position through the
   layers (counted in the kernels, not timed).
3. Sampling: seeded calls repeat, top_k / top_p restrict the support, top_k=1 is greedy.
4. Models that cannot generate, and bad arguments, get errors naming the layer or argument.
5. Nothing is stored on the layers; a checkpoint round trip generates the same tokens.
"""

from __future__ import annotations

import numpy as np
import pytest
from nnx.kernels.reference import Ops

import nnx
from nnx.errors import InputError, ShapeError
from nnx.generate import _sample, generate
from nnx.layers import decode
from nnx.layers.decode import DecodeError
from nnx.layers.transformer import TransformerEncoderBlock
from nnx.testing import build

CPU = [b for b in ("numpy", "numba") if b in nnx.available_backends()]
V = 13  # vocabulary


def transformer(backend="numpy", dtype="float64", max_len=12, seed=1, dropout=0.25):
    """Two causal blocks (pre-LN and post-LN), dropout inside (identity when decoding)."""
    return nnx.Sequential([
        nnx.Embedding(V, 8), nnx.PositionalEmbedding(max_len, 8),
        TransformerEncoderBlock(8, 2, 16, dropout=dropout, causal=True),
        TransformerEncoderBlock(8, 2, 16, causal=True, norm_first=False),
        nnx.LayerNorm(8), nnx.Dense(8, V),
    ], backend=backend, dtype=dtype, seed=seed)


def recurrent(backend="numpy", dtype="float64", seed=1):
    """LSTM, GRU and SimpleRNN stacked, with a Residual and a Parallel in between."""
    return nnx.Sequential([
        nnx.Embedding(V, 6), nnx.LSTM(6, 10, return_sequences=True),
        nnx.Residual(nnx.Chain([nnx.GRU(10, 10, return_sequences=True), nnx.Activation("tanh")])),
        nnx.Parallel(nnx.SimpleRNN(10, 4, return_sequences=True), nnx.Dense(10, 3, "relu")),
        nnx.Dropout(0.5), nnx.Dense(7, V),
    ], backend=backend, dtype=dtype, seed=seed)


def sharpen(model, scale=3.0):
    """Larger weights: an untrained model's greedy output otherwise repeats one token, which
    would make a token-for-token comparison weak."""
    model.set_weights([w * scale for w in model.get_weights()])
    return model


PROMPTS = np.array([[1, 5, 2, 7], [3, 3, 0, 12]])


# -- 1. the cache is exact ------------------------------------------------------------------------
@pytest.mark.parametrize("backend", CPU)
@pytest.mark.parametrize("make", [transformer, recurrent], ids=["transformer", "recurrent"])
def test_greedy_with_cache_equals_full_rerun_token_for_token(backend, make):
    model = sharpen(make(backend))
    # 30 new tokens: the transformer's window (12 positions) slides several times
    cached = generate(model, PROMPTS, 30, top_k=1)
    full = generate(model, PROMPTS, 30, top_k=1, use_cache=False)
    assert cached.shape == (2, 34) and cached.dtype == np.int64
    np.testing.assert_array_equal(cached[:, :4], PROMPTS)
    np.testing.assert_array_equal(cached, full)
    assert len(set(cached[:, 4:].ravel().tolist())) > 2  # not one repeated token


@pytest.mark.parametrize("backend", CPU)
@pytest.mark.parametrize("make", [transformer, recurrent], ids=["transformer", "recurrent"])
def test_seeded_sampling_with_cache_equals_full_rerun(backend, make):
    model = sharpen(make(backend), 2.0)
    kw = dict(temperature=0.8, top_k=8, top_p=0.95, seed=5)
    np.testing.assert_array_equal(generate(model, PROMPTS, 25, **kw),
                                  generate(model, PROMPTS, 25, use_cache=False, **kw))


@pytest.mark.parametrize("make", [transformer, recurrent], ids=["transformer", "recurrent"])
def test_decode_steps_equal_forward_at_every_position(make):
    model = sharpen(make())
    ids = np.random.default_rng(0).integers(0, V, size=(2, 11))
    ref = model.ops.to_host(model.net.forward(model.ops.asarray(ids)))
    state = decode.init_state(model.net, 2, 11)
    outs = []
    # a chunk from position 0, single positions, then a chunk after cached positions
    for lo, hi in ((0, 3), (3, 4), (4, 5), (5, 9), (9, 11)):
        y, state = decode.step(model.net, model.ops.asarray(ids[:, lo:hi]), state)
        outs.append(model.ops.to_host(y))
    np.testing.assert_allclose(np.concatenate(outs, axis=1), ref, rtol=1e-10, atol=1e-12)


def test_attention_cache_is_preallocated_to_the_context_length():
    model = transformer(max_len=12)
    assert decode.context_length(model.net) == 12
    state = decode.init_state(model.net, 3, 12)
    caches = [s for s in _flatten(state) if isinstance(s, decode.KVCache)]
    assert len(caches) == 2  # one per attention layer
    for c in caches:
        assert c.k.shape == c.v.shape == (3, 2, 12, 4) and c.length == 0
    y, state = decode.step(model.net, model.ops.asarray(PROMPTS[:, :3].repeat(2, 0)[:3]), state)
    assert [c.length for c in _flatten(state) if isinstance(c, decode.KVCache)] == [3, 3]
    with pytest.raises(ShapeError, match="position 3 \\+ t <= max_len 12"):
        decode.step(model.net, model.ops.zeros((3, 10), dtype="int64"), state)
    attn = nnx.MultiHeadSelfAttention(8, 2, causal=True, name="attn")
    ops, _ = build(attn)
    cache = decode.init_state(attn, 1, 4)
    _, cache = decode.step(attn, ops.zeros((1, 3, 8)), cache)
    with pytest.raises(ShapeError, match="'attn'.* 3 cached positions \\+ t <= capacity 4"):
        decode.step(attn, ops.zeros((1, 2, 8)), cache)


def _flatten(state):
    if isinstance(state, tuple):
        for s in state:
            yield from _flatten(s)
    else:
        yield state


# -- 2. incremental: one position per step ------------------------------------------------------
class CountingOps(Ops):
    """The numpy backend, recording how many positions each dense_forward call processed."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.rows: list[int] = []

    def dense_forward(self, x, W, b, activation="identity"):
        self.rows.append(int(np.prod(x.shape[:-1])))
        return super().dense_forward(x, W, b, activation)


@pytest.mark.parametrize("make", [transformer, recurrent], ids=["transformer", "recurrent"])
def test_each_new_token_feeds_one_position(make):
    model = make(backend=CountingOps(seed=0, dtype="float64"))
    ops = model.ops
    prompt = np.array([1, 2, 3])
    ops.rows.clear()
    generate(model, prompt, 1)  # the prompt only: what one chunk of 3 costs
    prefill = list(ops.rows)
    assert prefill and all(r == 3 for r in prefill)
    ops.rows.clear()
    generate(model, prompt, 8)  # max_len 12: no slide yet
    steps = ops.rows[len(prefill):]
    assert len(steps) == 7 * len(prefill) and all(r == 1 for r in steps)


def test_window_slides_past_the_context_at_bounded_cost():
    model = transformer(backend=CountingOps(seed=0, dtype="float64"), max_len=12)
    ops = model.ops
    ops.rows.clear()
    out = generate(model, [1, 2, 3], 60, seed=0)
    assert out.shape == (63,)
    per_pass = 2 * 6 + 1  # dense calls per pass: 4 attention + 2 MLP per block, the head
    assert len(ops.rows) % per_pass == 0
    # 60 tokens: one prompt chunk, single steps, and a re-fed window of 6 every 6 tokens
    assert max(ops.rows) == 6
    assert sum(ops.rows) <= per_pass * (3 + 60 + 6 * (60 // 6))


# -- 3. sampling ---------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", CPU)
def test_seeded_sampling_repeats_and_seeds_differ(backend):
    model = sharpen(transformer(backend, "float32"), 1.5)
    a = generate(model, [1, 2], 20, seed=3)
    assert np.array_equal(a, generate(model, [1, 2], 20, seed=3))
    assert not np.array_equal(a, generate(model, [1, 2], 20, seed=4))
    assert a.shape == (22,) and a.min() >= 0 and a.max() < V


def test_top_k_1_and_temperature_0_are_greedy():
    model = sharpen(recurrent())
    greedy = generate(model, [4, 2], 15, temperature=0)
    np.testing.assert_array_equal(generate(model, [4, 2], 15, top_k=1, seed=9), greedy)
    np.testing.assert_array_equal(generate(model, [4, 2], 15, top_p=1e-9, seed=9), greedy)


def test_sampler_respects_top_k_and_top_p():
    rng = np.random.default_rng(0)
    logits = np.log(np.array([[0.5, 0.25, 0.15, 0.07, 0.03]] * 4000))
    draws = _sample(logits, 1.0, None, None, False, rng)
    freq = np.bincount(draws, minlength=5) / len(draws)
    np.testing.assert_allclose(freq, [0.5, 0.25, 0.15, 0.07, 0.03], atol=0.03)
    assert set(_sample(logits, 1.0, 2, None, False, rng).tolist()) == {0, 1}
    # nucleus 0.8: 0.5 + 0.25 < 0.8, so the third token is needed too, the fourth is not
    assert set(_sample(logits, 1.0, None, 0.8, False, rng).tolist()) == {0, 1, 2}
    assert set(_sample(logits, 1.0, None, 0.5, False, rng).tolist()) == {0}
    # low temperature sharpens towards the argmax
    cold = _sample(logits, 0.1, None, None, False, rng)
    assert (cold == 0).mean() > 0.99


# -- 4. errors -----------------------------------------------------------------------------------
def test_models_that_cannot_generate_are_refused_naming_the_layer():
    bidirectional = nnx.Sequential([nnx.Embedding(V, 8),
                                    nnx.MultiHeadSelfAttention(8, 2, name="attn")])
    with pytest.raises(DecodeError, match="MultiHeadSelfAttention 'attn' is not causal"):
        generate(bidirectional, [1, 2], 3)
    last_only = nnx.Sequential([nnx.Embedding(V, 8), nnx.LSTM(8, 8, name="rnn"),
                                nnx.Dense(8, V)])
    with pytest.raises(DecodeError, match="LSTM 'rnn' has return_sequences=False"):
        generate(last_only, [1, 2], 3)
    pooled = nnx.Sequential([nnx.Embedding(V, 8), nnx.SequencePool("last", name="pool"),
                             nnx.Dense(8, V)])
    with pytest.raises(DecodeError, match="SequencePool 'pool' has no decode step"):
        generate(pooled, [1, 2], 3)
    too_wide = nnx.Sequential([nnx.Embedding(V, 8), nnx.Dense(8, V + 3)])
    with pytest.raises(DecodeError, match=f"logits over {V + 3} tokens .* ids < {V}"):
        generate(too_wide, [1, 2], 3)
    not_logits = nnx.Sequential([nnx.Embedding(V, 8), nnx.Dense(8, 1)])
    with pytest.raises(DecodeError, match=r"per-position logits \(N, T, vocab\)"):
        generate(not_logits, [1, 2], 3)


def test_bad_arguments_name_the_argument():
    model = recurrent()
    with pytest.raises(InputError, match="encode it first"):
        generate(model, "hello", 3)
    with pytest.raises(ShapeError, match="prompt must have shape"):
        generate(model, [], 3)
    with pytest.raises(InputError, match="integer token ids"):
        generate(model, [0.5, 1.0], 3)
    with pytest.raises(InputError, match="Embedding .* id 99 out of range"):
        generate(model, [1, 99], 3)
    for kw, arg in (({"max_new_tokens": -1}, "max_new_tokens"), ({"temperature": -1.0},
                    "temperature"), ({"top_k": 0}, "top_k"), ({"top_p": 1.5}, "top_p"),
                    ({"top_p": 0}, "top_p")):
        args = {"max_new_tokens": 3, **kw}
        with pytest.raises(ValueError, match=arg):
            generate(model, [1], **args)
    np.testing.assert_array_equal(generate(model, [1, 2], 0), [1, 2])


# -- 5. no state on layers; checkpoints ----------------------------------------------------------
def _snapshot(layer):
    out = {}
    for k, v in vars(layer).items():
        out[k] = {kk: id(vv) for kk, vv in v.items()} if isinstance(v, dict) else id(v)
    return out


@pytest.mark.parametrize("make", [transformer, recurrent], ids=["transformer", "recurrent"])
def test_generate_stores_nothing_on_layers(make):
    model = make()
    nodes = list(model.net.nodes())
    before = [_snapshot(n) for n in nodes]
    weights = model.get_weights()
    generate(model, PROMPTS, 20, seed=0)
    assert [_snapshot(n) for n in nodes] == before
    for a, b in zip(weights, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("make", [transformer, recurrent], ids=["transformer", "recurrent"])
def test_checkpoint_round_trip_generates_the_same_tokens(make, tmp_path):
    model = sharpen(make(dtype="float32"), 2.0)
    path = tmp_path / "lm.npz"
    model.save(path)
    loaded = nnx.load(path)
    for kw in ({"top_k": 1}, {"seed": 2, "temperature": 0.9}):
        np.testing.assert_array_equal(generate(loaded, PROMPTS, 20, **kw),
                                      generate(model, PROMPTS, 20, **kw))


def test_model_generate_delegates():
    if not hasattr(nnx.Model, "generate"):
        pytest.skip("Model.generate (a one-line delegate to nnx.generate.generate) not added yet")
    model = sharpen(recurrent())
    np.testing.assert_array_equal(model.generate([1, 2], 10, top_k=1),
                                  generate(model, [1, 2], 10, top_k=1))


@pytest.mark.gpu
@pytest.mark.parametrize("make", [transformer, recurrent], ids=["transformer", "recurrent"])
def test_cupy_generates_like_numpy(make):
    """On the GPU: the cache equals the full re-run, and the tokens equal numpy's (float64)."""
    model = sharpen(make("cupy"))
    cached = generate(model, PROMPTS, 30, top_k=1)
    np.testing.assert_array_equal(cached, generate(model, PROMPTS, 30, top_k=1, use_cache=False))
    np.testing.assert_array_equal(cached, generate(sharpen(make("numpy")), PROMPTS, 30, top_k=1))
