"""Sequence -> vector: SequencePool(mode="mean" | "last" | "first") and GlobalAveragePooling1D.

Input (N, T, F), output (N, F): the mean over time, or the last / first timestep (the first is
a [CLS]-style readout after attention layers; the last suits causal models)."""

from __future__ import annotations

from ..errors import ShapeError
from .base import Layer

MODES = ("mean", "last", "first")


class SequencePool(Layer):
    """SequencePool(mode="mean"): (N, T, F) -> (N, F), the mean over time ("mean"), or the last
    ("last") or first ("first") timestep's features; the readout that turns a sequence model's
    per-position outputs into one vector per sample (e.g. before a classifier Dense). No
    parameters."""

    def __init__(self, mode: str = "mean", name: str | None = None):
        super().__init__(name)
        if mode not in MODES:
            raise ValueError(f"{type(self).__name__} {self.name!r}: mode must be one of "
                             f"{', '.join(MODES)}, got {mode!r}")
        self.mode = mode

    def call(self, x, training):
        if x.ndim != 3 or x.shape[1] < 1:
            raise ShapeError(f"{type(self).__name__} {self.name!r}: expected input of shape "
                             f"(batch, time, features) with time >= 1, got shape "
                             f"{tuple(x.shape)}")
        shape = tuple(x.shape)

        def backprop(dy, need_dx=True):
            return self.ops.sequence_pool_backward(dy, shape, self.mode) if need_dx else None

        return self.ops.sequence_pool_forward(x, self.mode), backprop

    def output_shape(self, input_shape):
        return tuple(input_shape[1:])

    def get_config(self):
        return {"mode": self.mode, "name": self.name}


class GlobalAveragePooling1D(SequencePool):
    """The mean over time: (N, T, F) -> (N, F) (Keras's name for SequencePool("mean"))."""

    def __init__(self, name: str | None = None):
        super().__init__("mean", name)

    def get_config(self):
        return {"name": self.name}
