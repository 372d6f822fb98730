"""MultiHeadSelfAttention and PositionalEmbedding, for (N, T, embed_dim) sequences.

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

PositionalEmbedding(max_len, dim): y[:, t] = x[:, t] + P[t], P (max_len, dim) learned
(initialized N(0, 0.02^2)); a sequence longer than max_len raises ShapeError.
"""

from __future__ import annotations

from ..errors import ShapeError
from .base import Layer, ParamSpec


def _check_positive(layer, arg, v):
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{type(layer).__name__} {layer.name!r}: {arg} must be a positive int, "
                         f"got {v!r}")


class MultiHeadSelfAttention(Layer):
    def __init__(self, embed_dim: int, num_heads: int, causal: bool = False,
                 name: str | None = None):
        super().__init__(name)
        _check_positive(self, "embed_dim", embed_dim)
        _check_positive(self, "num_heads", num_heads)
        if embed_dim % num_heads:
            raise ValueError(f"MultiHeadSelfAttention {self.name!r}: embed_dim ({embed_dim}) "
                             f"must be divisible by num_heads ({num_heads})")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.causal = bool(causal)

    def param_specs(self):
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

    def forward(self, x, training=False):
        d = self.embed_dim
        if x.ndim != 3 or x.shape[-1] != d or x.shape[1] < 1:
            raise ShapeError(f"MultiHeadSelfAttention {self.name!r}: expected input of shape "
                             f"(batch, time, {d}) (embed_dim={d}), got shape {tuple(x.shape)}")
        n, t, _ = x.shape
        p, ops = self.params, self.ops
        self._x = x
        q, _ = ops.dense_forward(x, p["Wq"], p["bq"])
        k, _ = ops.dense_forward(x, p["Wk"], p["bk"])
        v, _ = ops.dense_forward(x, p["Wv"], p["bv"])
        o, self._saved = ops.attention_forward(self._heads(q, n, t), self._heads(k, n, t),
                                               self._heads(v, n, t), self.causal)
        self._o = self._merge(o, n, t)
        y, _ = ops.dense_forward(self._o, p["Wo"], p["bo"])
        return y

    def backward(self, dy, need_dx=True):
        p, g, ops = self.params, self.grads, self.ops
        n, t, _ = self._x.shape
        do, _, _ = ops.dense_backward(dy, self._o, p["Wo"], None, "identity", True,
                                      g["Wo"], g["bo"])
        dq, dk, dv = ops.attention_backward(self._heads(do, n, t), self._saved)
        dx = None
        for name, dh in (("q", dq), ("k", dk), ("v", dv)):
            dxi, _, _ = ops.dense_backward(self._merge(dh, n, t), self._x, p["W" + name], None,
                                           "identity", need_dx, g["W" + name], g["b" + name])
            if need_dx:
                if dx is None:
                    dx = dxi
                else:
                    dx += dxi
        self._saved = self._o = None
        return dx

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {"embed_dim": self.embed_dim, "num_heads": self.num_heads, "causal": self.causal,
                "name": self.name}


def position_init(rng, shape, fan):
    """Small normal N(0, 0.02^2) (GPT-2's choice for learned positions)."""
    return rng.standard_normal(shape) * 0.02


class PositionalEmbedding(Layer):
    """Learned absolute positions: y = x + P[:T] for x of shape (N, T, dim), T <= max_len.
    Weights (get_weights order): P (max_len, dim)."""

    def __init__(self, max_len: int, dim: int, name: str | None = None):
        super().__init__(name)
        _check_positive(self, "max_len", max_len)
        _check_positive(self, "dim", dim)
        self.max_len, self.dim = max_len, dim

    def param_specs(self):
        return [ParamSpec("P", (self.max_len, self.dim), position_init)]

    def forward(self, x, training=False):
        if x.ndim != 3 or x.shape[-1] != self.dim or not 1 <= x.shape[1] <= self.max_len:
            raise ShapeError(f"PositionalEmbedding {self.name!r}: expected input of shape "
                             f"(batch, time <= {self.max_len}, {self.dim}) (max_len="
                             f"{self.max_len}, dim={self.dim}), got shape {tuple(x.shape)}")
        self._t = x.shape[1]
        return x + self.params["P"][:self._t]

    def backward(self, dy, need_dx=True):
        dP = self.grads["P"]
        dy.sum(axis=0, out=dP[:self._t])
        dP[self._t:] = 0
        return dy if need_dx else None

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {"max_len": self.max_len, "dim": self.dim, "name": self.name}
