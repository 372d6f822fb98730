"""PositionalEmbedding, for (N, T, dim) sequences.

PositionalEmbedding(max_len, dim): y[:, t] = x[:, t] + P[t], P (max_len, dim) learned
(initialized N(0, 0.02^2)); a sequence longer than max_len raises ShapeError.
Incremental decoding (`nnx.layers.decode`): its state is the next position, and max_len is the
model's context (`decode_context`).
"""

from __future__ import annotations

from ..errors import ShapeError
from .base import Layer, ParamSpec


def position_init(rng, shape, fan):
    """Small normal N(0, 0.02^2) (GPT-2's choice for learned positions)."""
    return rng.standard_normal(shape) * 0.02


class PositionalEmbedding(Layer):
    """Learned absolute positions: y = x + P[:T] for x of shape (N, T, dim), T <= max_len.
    `dim=None` is inferred from the input shape when the model is built.
    Weights (get_weights order): P (max_len, dim)."""

    inferable = "dim"

    def __init__(self, max_len: int, dim: int | None = None, name: str | None = None):
        super().__init__(name)
        self._check_positive_ints(max_len=max_len)
        if dim is not None:
            self._check_positive_ints(dim=dim)
        self.max_len, self.dim = max_len, dim

    def size_from_input(self, input_shape):
        if len(input_shape) != 2 or not 1 <= input_shape[0] <= self.max_len:
            raise self._expect("input of shape", f"(batch, time <= {self.max_len}, dim)",
                               f"shape {(None, *input_shape)}")
        return int(input_shape[-1])

    def set_input_size(self, value):
        self.dim = value

    def param_specs(self):
        self._require_sizes()
        return [ParamSpec("P", (self.max_len, self.dim), position_init)]

    def call(self, x, training):
        if x.ndim != 3 or x.shape[-1] != self.dim or not 1 <= x.shape[1] <= self.max_len:
            raise ShapeError(f"PositionalEmbedding {self.name!r}: expected input of shape "
                             f"(batch, time <= {self.max_len}, {self.dim}) (max_len="
                             f"{self.max_len}, dim={self.dim}), got shape {tuple(x.shape)}")
        t = x.shape[1]

        def backprop(dy, need_dx=True):
            dP = self.grads["P"]
            dy.sum(axis=0, out=dP[:t])
            dP[t:] = 0
            return dy if need_dx else None

        return x + self.params["P"][:t], backprop

    # -- incremental decoding (nnx.layers.decode): the state is the next position -----------
    def decode_context(self) -> int:
        """Positions this table can encode: the longest context a model using it sees."""
        return self.max_len

    def init_decode_state(self, batch, capacity):
        """The state is the next position: returns 0."""
        return 0

    def decode_step(self, x, pos):
        """x (N, t, dim) at positions [pos, pos + t) -> (x + P[pos:pos + t], pos + t)."""
        t = x.shape[1] if x.ndim == 3 else 0
        if x.ndim != 3 or x.shape[-1] != self.dim or t < 1 or pos + t > self.max_len:
            raise ShapeError(f"PositionalEmbedding {self.name!r}: expected a chunk of shape "
                             f"(batch, t, {self.dim}) with position {pos} + t <= max_len "
                             f"{self.max_len}, got shape {tuple(x.shape)}")
        return x + self.params["P"][pos:pos + t], pos + t

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {"max_len": self.max_len, "dim": self.dim, "name": self.name}
