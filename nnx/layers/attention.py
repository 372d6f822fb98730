"""MultiHeadSelfAttention, for (N, T, embed_dim) sequences.

MultiHeadSelfAttention(embed_dim, num_heads, causal=False):

    q, k, v = x Wq + bq, x Wk + bk, x Wv + bv              (N, T, D) each, one Dense kernel each
    split into heads: (N, heads, T, D / heads)
    o_h = softmax(q_h k_h^T / sqrt(D / heads) [+ causal mask]) v_h   (ops.attention_forward)
    y = concat_h(o_h) Wo + bo

With `causal=True` position t attends to positions <= t only, so the output at t does not
depend on inputs after t. Weights (get_weights order): Wq, bq, Wk, bk, Wv, bv, Wo, bo; each W is
(D, D) in the Dense convention (in, out). PyTorch's nn.MultiheadAttention packs the first three
as in_proj_weight = concat([Wq.T, Wk.T, Wv.T]) (3D, D) and in_proj_bias = concat([bq, bk, bv]);
out_proj.weight = Wo.T, out_proj.bias = bo.

The computation is three steps, each returning its result and its own backward (`call` chains
them), with per-head tensors (N, heads, T, head_dim) in between: the input projections
(`_project`: x -> q, k, v), the attention core (`_attend`: q, k, v -> o; it takes keys and
values as arrays, so earlier positions' could be prepended from a cache) and the output
projection (`_output`: o -> y).

Incremental decoding (`nnx.layers.decode`, causal only): `init_decode_state` preallocates a
`KVCache` (N, heads, capacity, head_dim); `decode_step` projects only the new positions,
appends their keys and values, and attends over the cache.

(PositionalEmbedding, formerly here, is in `nnx.layers.positional`.)
"""

from __future__ import annotations

from ..errors import ShapeError
from .base import Layer, ParamSpec
from .decode import DecodeError, KVCache


class MultiHeadSelfAttention(Layer):
    """MultiHeadSelfAttention(embed_dim, num_heads, causal=False): self-attention over
    (N, T, embed_dim) sequences with `num_heads` heads of embed_dim / num_heads each; the output
    has the input's shape. `causal=True` lets position t attend to positions <= t only.
    `embed_dim=None` is inferred from the input shape when the model is built (it must be
    divisible by num_heads). Weights (get_weights order): Wq, bq, Wk, bk, Wv, bv, Wo, bo (see
    the module docstring for PyTorch's layout)."""

    inferable = "embed_dim"

    def __init__(self, embed_dim: int | None, num_heads: int, causal: bool = False,
                 name: str | None = None):
        super().__init__(name)
        self._check_positive_ints(num_heads=num_heads)
        self.num_heads = num_heads
        self.embed_dim = self.head_dim = None
        if embed_dim is not None:
            self._check_positive_ints(embed_dim=embed_dim)
            self.set_input_size(embed_dim)
        self.causal = bool(causal)

    def set_input_size(self, value):
        if value is not None and value % self.num_heads:
            raise ValueError(f"MultiHeadSelfAttention {self.name!r}: embed_dim ({value}) "
                             f"must be divisible by num_heads ({self.num_heads})")
        self.embed_dim = value
        self.head_dim = None if value is None else value // self.num_heads

    def size_from_input(self, input_shape):
        if len(input_shape) != 2:
            raise self._expect("input of shape", "(batch, time, embed_dim)",
                               f"shape {(None, *input_shape)}")
        d = int(input_shape[-1])
        if d % self.num_heads:
            raise ShapeError(f"MultiHeadSelfAttention {self.name!r}: expected an input feature "
                             f"size divisible by num_heads ({self.num_heads}), got input shape "
                             f"{(None, *input_shape)}")
        return d

    def param_specs(self):
        self._require_sizes()
        d = self.embed_dim
        specs = []
        for p in ("q", "k", "v", "o"):
            specs.append(ParamSpec("W" + p, (d, d), "glorot_uniform"))
            specs.append(ParamSpec("b" + p, (d,), "zeros"))
        return specs

    def _heads(self, a, n, t):
        """(N, T, D) -> (N, heads, T, head_dim) (a view)."""
        return a.reshape(n, t, self.num_heads, self.head_dim).transpose(0, 2, 1, 3)

    def _merge(self, a, n, t):
        """(N, heads, T, head_dim) -> (N, T, D) (a copy)."""
        return a.transpose(0, 2, 1, 3).reshape(n, t, self.embed_dim)

    def call(self, x, training):
        d = self.embed_dim
        if x.ndim != 3 or x.shape[-1] != d or x.shape[1] < 1:
            raise ShapeError(f"MultiHeadSelfAttention {self.name!r}: expected input of shape "
                             f"(batch, time, {d}) (embed_dim={d}), got shape {tuple(x.shape)}")
        (q, k, v), backprop_project = self._project(x)
        o, backprop_attend = self._attend(q, k, v)
        y, backprop_output = self._output(o)

        def backprop(dy, need_dx=True):
            do = backprop_output(dy)
            dq, dk, dv = backprop_attend(do)
            return backprop_project(dq, dk, dv, need_dx)

        return y, backprop

    # -- the three steps ------------------------------------------------------------------
    # Each returns its result and its backward; in between, tensors are per head
    # (N, heads, T, head_dim).
    def _project(self, x):
        """x (N, T, D) -> ((q, k, v) per head, backprop(dq, dk, dv, need_dx) -> dx)."""
        n, t, _ = x.shape
        p, ops = self.params, self.ops
        q, _ = ops.dense_forward(x, p["Wq"], p["bq"])
        k, _ = ops.dense_forward(x, p["Wk"], p["bk"])
        v, _ = ops.dense_forward(x, p["Wv"], p["bv"])

        def backprop(dq, dk, dv, need_dx):
            p, g, ops = self.params, self.grads, self.ops
            dx = None
            for name, dh in (("q", dq), ("k", dk), ("v", dv)):
                dxi, _, _ = ops.dense_backward(self._merge(dh, n, t), x, p["W" + name], None,
                                               "identity", need_dx, g["W" + name],
                                               g["b" + name])
                if need_dx:
                    if dx is None:
                        dx = dxi
                    else:
                        dx += dxi
            return dx

        heads = (self._heads(q, n, t), self._heads(k, n, t), self._heads(v, n, t))
        return heads, backprop

    def _attend(self, q, k, v):
        """Scaled dot-product attention per head (causal if configured): q (N, heads, Tq, hd),
        k, v (N, heads, Tk, hd) -> (o (N, heads, Tq, hd), backprop(do) -> (dq, dk, dv))."""
        o, saved = self.ops.attention_forward(q, k, v, self.causal)

        def backprop(do):
            return self.ops.attention_backward(do, saved)

        return o, backprop

    def _output(self, o):
        """o per head -> (y (N, T, D), backprop(dy) -> do per head): the heads concatenated,
        then Wo, bo."""
        n, _, t, _ = o.shape
        o = self._merge(o, n, t)
        y, _ = self.ops.dense_forward(o, self.params["Wo"], self.params["bo"])

        def backprop(dy):
            do, _, _ = self.ops.dense_backward(dy, o, self.params["Wo"], None, "identity", True,
                                               self.grads["Wo"], self.grads["bo"])
            return self._heads(do, n, t)

        return y, backprop

    # -- incremental decoding (nnx.layers.decode): a key/value cache per call --------------
    def init_decode_state(self, batch, capacity):
        """An empty KVCache for `batch` sequences of up to `capacity` positions (causal only:
        without the mask a position's output depends on later positions)."""
        if not self.causal:
            raise DecodeError(f"{self.describe()} is not causal (causal=False: every position "
                              "attends to later ones), so it cannot decode one token at a time; "
                              "build it with causal=True")
        shape = (batch, self.num_heads, capacity, self.head_dim)
        return KVCache(self.ops.zeros(shape), self.ops.zeros(shape), 0)

    def decode_step(self, x, cache):
        """x (N, t, D), the next t positions -> (y (N, t, D), the cache with them appended).
        Their keys and values are written into the cache; each query attends to every cached
        position up to its own, so y equals the causal `forward` of the whole sequence at
        those positions, at a cost per token that does not grow with the projections."""
        d = self.embed_dim
        n, t = (x.shape[0], x.shape[1]) if x.ndim == 3 else (0, 0)
        start, end = cache.length, cache.length + t
        if x.ndim != 3 or x.shape[-1] != d or t < 1 or n != cache.k.shape[0] \
                or end > cache.capacity:
            raise ShapeError(f"MultiHeadSelfAttention {self.name!r}: expected a chunk of shape "
                             f"({cache.k.shape[0]}, t, {d}) with {start} cached positions + t <= "
                             f"capacity {cache.capacity}, got shape {tuple(x.shape)}")
        (q, k, v), _ = self._project(x)
        cache.k[:, :, start:end] = k
        cache.v[:, :, start:end] = v
        attend = self.ops.attention_forward
        if start == 0 or t == 1:  # the mask is top-left aligned: right for these two cases
            o, _ = attend(q, cache.k[:, :, :end], cache.v[:, :, :end], t > 1)
        else:  # a chunk after cached positions: one query at a time
            o = self.ops.empty((n, self.num_heads, t, self.head_dim), dtype=q.dtype)
            for i in range(t):
                stop = start + i + 1
                o[:, :, i:i + 1] = attend(q[:, :, i:i + 1], cache.k[:, :, :stop],
                                          cache.v[:, :, :stop], False)[0]
        y, _ = self._output(o)
        return y, KVCache(cache.k, cache.v, end)

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {"embed_dim": self.embed_dim, "num_heads": self.num_heads, "causal": self.causal,
                "name": self.name}
