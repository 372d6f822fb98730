"""Embedding: integer ids (any shape) -> rows of a learned table, (*ids.shape, embedding_dim)."""

from __future__ import annotations

from ..errors import InputError
from .base import Layer, ParamSpec
from .decode import PositionwiseDecode


def embedding_uniform(rng, shape, fan):
    """U(-0.05, 0.05), Keras's default for embedding tables (the fans of a lookup table mean
    nothing; a small symmetric range keeps the first layers' inputs near zero)."""
    return rng.uniform(-0.05, 0.05, size=shape)


class Embedding(PositionwiseDecode, Layer):
    """Embedding(num_embeddings, embedding_dim): y[..., :] = W[ids[...], :].

    Input: integer ids (floats holding whole numbers are accepted) in [0, num_embeddings);
    an id out of range raises InputError naming the layer, the offending id and
    num_embeddings (the check reads the ids' min and max back to the host, one small sync on
    a GPU). The ids get no gradient: `backprop` returns None, so Embedding is a first layer.
    Weights (get_weights order): W (num_embeddings, embedding_dim), initialized U(-0.05, 0.05);
    PyTorch's nn.Embedding.weight is the same matrix (no transpose)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, name: str | None = None):
        super().__init__(name)
        self._check_positive_ints(num_embeddings=num_embeddings, embedding_dim=embedding_dim)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim

    def param_specs(self):
        return [ParamSpec("W", (self.num_embeddings, self.embedding_dim), embedding_uniform)]

    def _check_ids(self, ids):
        if ids.dtype.kind == "f":
            as_int = ids.astype("int64")
            if ids.size and not bool((as_int == ids).all()):
                raise InputError(f"Embedding {self.name!r}: ids must be whole numbers, got "
                                 f"dtype {ids.dtype} with fractional values")
            ids = as_int
        elif ids.dtype.kind not in "iu":
            raise InputError(f"Embedding {self.name!r}: ids must be integers, got dtype "
                             f"{ids.dtype}")
        if ids.size:
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= self.num_embeddings:
                bad = hi if hi >= self.num_embeddings else lo
                raise InputError(
                    f"Embedding {self.name!r}: id {bad} out of range: max id {hi}, min id {lo}, "
                    f"but num_embeddings={self.num_embeddings} (expected 0 <= id < "
                    f"{self.num_embeddings})"
                )
        return ids

    def call(self, x, training):
        ids = self._check_ids(x)
        W = self.params["W"]

        def backprop(dy, need_dx=True):
            self.ops.embedding_backward(dy, ids, tuple(W.shape), self.grads["W"])
            return None

        return self.ops.embedding_forward(ids, W), backprop

    def output_shape(self, input_shape):
        return (*input_shape, self.embedding_dim)

    def get_config(self):
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim,
                "name": self.name}
