"""Activation layers: `Activation("relu")`, or the named classes ReLU, Sigmoid, ..."""

from __future__ import annotations

from ..errors import unknown
from ..kernels.reference import ALL_ACTIVATIONS
from .base import Layer
from .decode import PositionwiseDecode


def check_activation(name, owner: str = "activation"):
    """The activation name (None and "linear" mean "identity"); UnknownNameError naming `owner`
    and listing the accepted names otherwise."""
    name = "identity" if name in (None, "linear") else name
    if name not in ALL_ACTIVATIONS:
        raise unknown(owner, name, ALL_ACTIVATIONS)
    return name


def _pass_through(dy, need_dx=True):
    return dy if need_dx else None


class Activation(PositionwiseDecode, Layer):
    """Activation(activation): applies an activation elementwise (softmax and log_softmax over
    the last axis); the output has the input's shape. No parameters.

    `output_activation()` is the activation, so a loss that takes probabilities is computed
    from this layer's input when the activation is softmax / sigmoid (see
    `Layer.begin_update_logits`)."""

    fixed: str | None = None  # set by the named subclasses (ReLU, ...)

    def __init__(self, activation: str | None = None, name: str | None = None):
        super().__init__(name)
        self.activation = check_activation(self.fixed or activation)

    def call(self, x, training):
        y, saved = self.ops.activation_forward(x, self.activation)

        def backprop(dy, need_dx=True):
            return self.ops.activation_backward(dy, saved, self.activation) if need_dx else None

        return y, backprop

    def output_activation(self):
        return self.activation

    def call_logits(self, x, training):
        """The values before the activation are the input itself."""
        return x, _pass_through

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
    """1 / (1 + exp(-x)), stable on both tails."""

    fixed = "sigmoid"


class Tanh(Activation):
    """tanh(x)"""

    fixed = "tanh"


class Softmax(Activation):
    """softmax over the last axis (probabilities: non-negative, summing to 1)."""

    fixed = "softmax"


class LogSoftmax(Activation):
    """log softmax over the last axis (log-probabilities, stable for any input): the input of
    the "nll" loss, as PyTorch's nn.LogSoftmax(dim=-1) before nn.NLLLoss."""

    fixed = "log_softmax"


class GELU(Activation):
    """GELU, tanh approximation"""

    fixed = "gelu"


class Identity(Activation):
    """y = x (a placeholder, e.g. for an optional block)."""

    fixed = "identity"
