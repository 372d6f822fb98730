"""Activation layers: `Activation("relu")`, or the named classes ReLU, Sigmoid, ..."""

from __future__ import annotations

from ..errors import unknown
from ..kernels.reference import ACTIVATIONS
from .base import Layer
from .decode import PositionwiseDecode


def check_activation(name, owner: str = "activation"):
    name = "identity" if name in (None, "linear") else name
    if name not in ACTIVATIONS:
        raise unknown(owner, name, ACTIVATIONS)
    return name


class Activation(PositionwiseDecode, Layer):
    """Applies an activation elementwise (softmax over the last axis)."""

    fixed: str | None = None  # set by the named subclasses (ReLU, ...)

    def __init__(self, activation: str | None = None, name: str | None = None):
        super().__init__(name)
        self.activation = check_activation(self.fixed or activation)

    def call(self, x, training):
        y, saved = self.ops.activation_forward(x, self.activation)

        def backprop(dy, need_dx=True):
            return self.ops.activation_backward(dy, saved, self.activation) if need_dx else None

        return y, backprop

    def get_config(self):
        if self.fixed:
            return {"name": self.name}
        return {"activation": self.activation, "name": self.name}


class ReLU(Activation):
    """max(x, 0)"""

    fixed = "relu"


class LeakyReLU(Activation):
    """x if x > 0 else 0.01 x"""

    fixed = "leaky_relu"


class Sigmoid(Activation):
    """1 / (1 + exp(-x))"""

    fixed = "sigmoid"


class Tanh(Activation):
    fixed = "tanh"


class Softmax(Activation):
    """softmax over the last axis"""

    fixed = "softmax"


class GELU(Activation):
    """GELU, tanh approximation"""

    fixed = "gelu"


class Identity(Activation):
    fixed = "identity"
