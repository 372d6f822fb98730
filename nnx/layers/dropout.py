"""Dropout(rate): inverted dropout in training, the identity at inference."""

from __future__ import annotations

from .base import Layer
from .decode import PositionwiseDecode


class Dropout(PositionwiseDecode, Layer):
    """Dropout(rate): in training, zeroes each element with probability `rate` (drawn from the
    model's seeded generator) and scales the others by 1 / (1 - rate), so inference is the
    identity and needs no rescaling; the output has the input's shape. rate in [0, 1). No
    parameters. As Keras's Dropout and PyTorch's nn.Dropout."""

    def __init__(self, rate: float, name: str | None = None):
        super().__init__(name)
        if not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
            raise ValueError(f"Dropout {self.name!r}: rate must be in [0, 1), got {rate!r}")
        self.rate = float(rate)

    def call(self, x, training):
        if not training or self.rate == 0.0:
            return x, _identity_backprop
        y, mask = self.ops.dropout_forward(x, self.rate)

        def backprop(dy, need_dx=True):
            return self.ops.backprop_dropout(dy, mask) if need_dx else None

        return y, backprop

    def get_config(self):
        return {"rate": self.rate, "name": self.name}


def _identity_backprop(dy, need_dx=True):
    return dy if need_dx else None
