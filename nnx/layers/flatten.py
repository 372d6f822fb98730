"""Flatten: (batch, d1, d2, ...) -> (batch, d1*d2*...)."""

from __future__ import annotations

import math

from .base import Layer


class Flatten(Layer):
    """Flatten(): (batch, d1, d2, ...) -> (batch, d1 * d2 * ...), e.g. a conv stack's (N, C, H, W)
    to (N, C*H*W) for a Dense head (NCHW order, as PyTorch's nn.Flatten; a Keras model ported
    from NHWC flattens in another order). No parameters."""

    def call(self, x, training):
        shape = x.shape

        def backprop(dy, need_dx=True):
            return dy.reshape(shape) if need_dx else None

        return x.reshape(x.shape[0], -1), backprop

    def output_shape(self, input_shape):
        return (math.prod(input_shape),)
