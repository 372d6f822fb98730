"""Reshape(target_shape): (batch, ...) -> (batch, *target_shape); one -1 is inferred."""

from __future__ import annotations

import math

from ..errors import ShapeError
from .base import Layer


class Reshape(Layer):
    """Reshapes each sample to `target_shape` (without the batch axis; one entry may be -1).
    E.g. `Reshape((1, 28, 28))` turns flat MNIST rows into images. No parameters."""

    def __init__(self, target_shape, name: str | None = None):
        super().__init__(name)
        if isinstance(target_shape, int) and not isinstance(target_shape, bool):
            target_shape = (target_shape,)
        ok = isinstance(target_shape, (tuple, list)) and all(
            isinstance(d, int) and not isinstance(d, bool) and (d >= 1 or d == -1)
            for d in target_shape)
        if not ok or list(target_shape).count(-1) > 1:
            raise ValueError(f"Reshape {self.name!r}: target_shape must be a tuple of positive "
                             f"ints with at most one -1, got {target_shape!r}")
        self.target_shape = tuple(int(d) for d in target_shape)

    def _resolve(self, sample_shape: tuple) -> tuple:
        size = math.prod(sample_shape)
        known = math.prod(d for d in self.target_shape if d != -1)
        if -1 in self.target_shape:
            ok = size % known == 0
            out = tuple(size // known if d == -1 else d for d in self.target_shape)
        else:
            ok = size == known
            out = self.target_shape
        if not ok:
            want = (f"a multiple of {known}" if -1 in self.target_shape else f"{known}")
            raise ShapeError(
                f"Reshape {self.name!r}: expected input of shape (batch, ...) with {want} "
                f"elements per sample (target shape {self.target_shape}), got shape "
                f"{(None, *sample_shape)} ({size} elements per sample)")
        return out

    def call(self, x, training):
        if x.ndim < 1:
            raise ShapeError(f"Reshape {self.name!r}: expected input of shape (batch, ...), "
                             f"got shape {tuple(x.shape)}")
        shape = tuple(x.shape)

        def backprop(dy, need_dx=True):
            return dy.reshape(shape) if need_dx else None

        return x.reshape((x.shape[0], *self._resolve(shape[1:]))), backprop

    def output_shape(self, input_shape):
        return self._resolve(tuple(input_shape))

    def get_config(self):
        return {"target_shape": list(self.target_shape), "name": self.name}
