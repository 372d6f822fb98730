"""ConvBase: what Conv1D and Conv2D share: argument checks, parameters, the fused activation
and its logits seam, the inferable input channels and the common config. A subclass parses its
own geometry (`_parse_geometry`), says its kernel's shape (`_kernel_shape`) and convolves
(`_conv(x, activation) -> (y, backprop)`)."""

from __future__ import annotations

from .. import regularizers
from ..initializers import get as get_initializer
from .activations import check_activation
from .base import Layer, ParamSpec


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class ConvBase(Layer, abstract=True):
    """Base of Conv1D and Conv2D (not a layer of its own)."""

    inferable = "in_channels"

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation,
                 use_bias, activation, kernel_initializer, bias_initializer, kernel_regularizer,
                 bias_regularizer, name):
        super().__init__(name)
        kind = type(self).__name__
        for arg, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if (v is not None or arg == "out_channels") and (not is_int(v) or v < 1):
                raise ValueError(f"{kind} {self.name!r}: {arg} must be a positive int, got {v!r}"
                                 + (" (or None: inferred)" if arg == "in_channels" else ""))
        self.in_channels, self.out_channels = in_channels, out_channels
        self._parse_geometry(kernel_size, stride, padding, dilation)
        self.use_bias = bool(use_bias)
        self.activation = check_activation(activation, f"activation of {kind} {self.name!r}")
        if isinstance(kernel_initializer, str) or kernel_initializer is None:
            get_initializer(kernel_initializer or "he_uniform")  # fail early on a bad name
        self.kernel_initializer = kernel_initializer or "he_uniform"
        self.bias_initializer = bias_initializer
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)

    def _parse_geometry(self, kernel_size, stride, padding, dilation) -> None:
        """Validate and set kernel_size, stride, padding and dilation (subclasses)."""
        raise NotImplementedError

    def _kernel_shape(self) -> tuple:
        """The spatial shape of the kernel: (k,) or (kh, kw) (subclasses)."""
        raise NotImplementedError

    def _conv(self, x, activation):
        """(act(conv(x, W) + b), backprop) (subclasses)."""
        raise NotImplementedError

    def param_specs(self):
        self._require_sizes()
        specs = [ParamSpec("W", (self.out_channels, self.in_channels, *self._kernel_shape()),
                           self.kernel_initializer, self.kernel_regularizer)]
        if self.use_bias:
            specs.append(ParamSpec("b", (self.out_channels,), self.bias_initializer,
                                   self.bias_regularizer))
        return specs

    def set_input_size(self, value):
        self.in_channels = value

    def output_activation(self):
        return self.activation

    def call(self, x, training):
        return self._conv(x, self.activation)

    def call_logits(self, x, training):
        """conv(x, W) + b, before the activation."""
        return self._conv(x, "identity")

    def _common_config(self) -> dict:
        init = self.kernel_initializer
        return {
            "use_bias": self.use_bias,
            "activation": self.activation,
            "kernel_initializer": init if isinstance(init, str) else "he_uniform",
            "bias_initializer": self.bias_initializer
            if isinstance(self.bias_initializer, str) else "zeros",
            "kernel_regularizer": regularizers.to_config(self.kernel_regularizer),
            "bias_regularizer": regularizers.to_config(self.bias_regularizer),
            "name": self.name,
        }
