"""GlobalAvgPool2D: (N, C, H, W) -> (N, C), the mean over the spatial axes."""

from __future__ import annotations

from ..errors import ShapeError
from .base import Layer


class GlobalAvgPool2D(Layer):
    """(N, C, H, W) -> (N, C): the mean over the spatial axes. No parameters."""

    def call(self, x, training):
        if x.ndim != 4:
            raise ShapeError(f"GlobalAvgPool2D {self.name!r}: expected input of shape "
                             f"(batch, channels, height, width), got shape {tuple(x.shape)}")
        y, saved = self.ops.global_avgpool2d_forward(x)

        def backprop(dy, need_dx=True):
            return self.ops.global_avgpool2d_backward(dy, saved) if need_dx else None

        return y, backprop

    def output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ShapeError(f"GlobalAvgPool2D {self.name!r}: expected input of shape "
                             f"(batch, channels, height, width), got shape "
                             f"{(None, *input_shape)}")
        return (input_shape[0],)
