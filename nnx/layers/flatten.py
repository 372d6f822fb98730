"""Flatten: (batch, d1, d2, ...) -> (batch, d1*d2*...)."""

from __future__ import annotations

import math

from .base import Layer


class Flatten(Layer):
    def forward(self, x, training=False):
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy, need_dx=True):
        return dy.reshape(self._shape)

    def output_shape(self, input_shape):
        return (math.prod(input_shape),)
