"""Incremental decoding: per-call decoding state, threaded explicitly through a layer tree.

Generating a sequence one token at a time should cost the same for every new token. A layer
that takes part keeps what later positions need (a recurrent layer its (h, c), causal
attention its keys and values, a positional table the next position) in a *decoding state*
that belongs to the caller (`nnx.generate`), never on the layer: the layer contract
(`nnx.layers.base`) holds, and two generations with the same model do not interfere.

The protocol, implemented by every layer that can decode:

    state = layer.init_decode_state(batch, capacity)   # fresh state for `batch` sequences
    y, state = layer.decode_step(x, state)             # the next positions of each sequence

`x` holds the next `t >= 1` positions of each sequence, (N, t, ...) (a prompt in one chunk,
then one token at a time); `y` is what `layer.forward` would output at those positions given
everything fed before, and the returned state replaces the old one (it may share, and update,
the old one's buffers: keep only the latest). `capacity` is the most positions the state must
hold in total (a key/value cache is preallocated to it).

- Position-wise layers (Dense, Activation, Dropout, LayerNorm over the last axis, Embedding)
  use `PositionwiseDecode`: no state, the step is the inference call.
- `PositionalEmbedding` keeps the next position; it bounds the context (`decode_context`).
- `MultiHeadSelfAttention(causal=True)` keeps a `KVCache`.
- Recurrent layers (return_sequences=True) keep their last states.
- Containers (Chain, Residual, Parallel, TransformerEncoderBlock) keep a tuple of their
  children's states (a tied layer gets one state per use).

A layer without the protocol (pooling over time, non-causal attention, ...) makes
`init_state` raise `DecodeError` naming it, before anything is computed.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import NNXError


class DecodeError(NNXError, ValueError):
    """A model or layer cannot decode incrementally (not causal, no per-position output, no
    decode step); the message names the layer and says why."""


@dataclass
class KVCache:
    """Keys and values of the positions fed so far, per head: `k`, `v` of shape
    (N, heads, capacity, head_dim), preallocated; positions [0, length) are filled."""

    k: object
    v: object
    length: int = 0

    @property
    def capacity(self) -> int:
        return int(self.k.shape[2])


class PositionwiseDecode:
    """Mixin for layers that act on each position independently: no decoding state, and a
    decode step is the inference call on the chunk (so it costs what `forward` costs)."""

    def init_decode_state(self, batch: int, capacity: int):
        """No state is needed: returns None (`batch`, `capacity` unused)."""
        return None

    def decode_step(self, x, state):
        """The inference call on the chunk `x`; returns (its output, `state` unchanged)."""
        return self.call(x, False)[0], state


_CAN_DECODE = ("position-wise layers, causal attention, recurrent layers with "
               "return_sequences=True, positional tables, and containers of those")


def init_state(layer, batch: int, capacity: int):
    """`layer.init_decode_state(batch, capacity)`; DecodeError naming the layer when it has
    no decode step."""
    fn = getattr(layer, "init_decode_state", None)
    if fn is None or not hasattr(layer, "decode_step"):
        raise DecodeError(f"{layer.describe()} has no decode step (init_decode_state / "
                          "decode_step), so the model cannot decode one position at a time; "
                          f"incremental decoding needs {_CAN_DECODE}")
    if layer.ops is None:
        raise RuntimeError(f"{layer.describe()} is not built into a model: put it in "
                           "nnx.Sequential/Model first")
    return fn(batch, capacity)


def step(layer, x, state):
    """`layer.decode_step(x, state)` -> (y, new state)."""
    return layer.decode_step(x, state)


def context_length(layer) -> int | None:
    """The most positions `layer`'s tree can see at once (the smallest `decode_context()` of
    its nodes, e.g. a positional table's max_len), or None when unbounded (recurrent)."""
    found = [n.decode_context() for n in layer.nodes() if hasattr(n, "decode_context")]
    found = [c for c in found if c is not None]
    return min(found) if found else None
