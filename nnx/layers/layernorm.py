"""LayerNorm: normalization over the trailing axes of each sample, with gamma and beta."""

from __future__ import annotations

from ..errors import ShapeError
from .base import Layer, ParamSpec
from .decode import DecodeError, PositionwiseDecode


class LayerNorm(PositionwiseDecode, Layer):
    """y = (x - mean) / sqrt(var + eps) * gamma + beta, the statistics (biased variance) taken
    over the last len(normalized_shape) axes, as PyTorch's LayerNorm. `normalized_shape` is an
    int (the last axis) or a tuple.

    `normalized_shape=None`: the last axis, its size inferred from the input shape when the
    model is built (Keras's LayerNormalization()).

    `get_weights()` order: gamma then beta, each of shape `normalized_shape`."""

    inferable = "normalized_shape"

    def __init__(self, normalized_shape=None, eps: float = 1e-5, name: str | None = None):
        super().__init__(name)
        if isinstance(normalized_shape, int) and not isinstance(normalized_shape, bool):
            normalized_shape = (normalized_shape,)
        if normalized_shape is None:
            pass
        elif (not isinstance(normalized_shape, (tuple, list)) or not normalized_shape
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1
                           for d in normalized_shape)):
            raise ValueError(f"LayerNorm {self.name!r}: normalized_shape must be a positive int "
                             f"or a tuple of them, got {normalized_shape!r}")
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
            raise ValueError(f"LayerNorm {self.name!r}: eps must be a positive number, got {eps!r}")
        self.normalized_shape = (None if normalized_shape is None
                                 else tuple(int(d) for d in normalized_shape))
        self.eps = float(eps)

    def param_specs(self):
        self._require_sizes()
        return [ParamSpec("gamma", self.normalized_shape, "ones"),
                ParamSpec("beta", self.normalized_shape, "zeros")]

    def _check(self, shape: tuple) -> None:
        if self.normalized_shape is None:  # not inferred yet: the last axis, any size
            if len(shape) < 2:
                raise self._expect("input of shape", "(batch, ..., features)",
                                   f"shape {tuple(shape)}")
            return
        k = len(self.normalized_shape)
        if len(shape) < k + 1 or tuple(shape[-k:]) != self.normalized_shape:
            raise ShapeError(f"LayerNorm {self.name!r}: expected input of shape "
                             f"(batch, ..., {', '.join(map(str, self.normalized_shape))}) "
                             f"(normalized_shape={self.normalized_shape}), got shape "
                             f"{tuple(shape)}")

    def output_shape(self, input_shape):
        self._check((None, *input_shape))
        return tuple(input_shape)

    def size_from_input(self, input_shape):
        if self.normalized_shape is not None:  # the known axes' sizes in the input
            k = len(self.normalized_shape)
            self._check((None, *input_shape))
            return tuple(int(d) for d in input_shape[-k:])
        if len(input_shape) < 1:
            raise self._expect("input of shape", "(batch, ..., features)",
                               f"shape {(None, *input_shape)}")
        return (int(input_shape[-1]),)

    def set_input_size(self, value):
        self.normalized_shape = None if value is None else tuple(value)

    def call(self, x, training):
        self._check(tuple(x.shape))
        y, saved = self.ops.layernorm_forward(x, self.params["gamma"], self.params["beta"],
                                              self.eps)

        def backprop(dy, need_dx=True):
            nonlocal saved
            if saved is None:
                raise RuntimeError(f"{self.describe()}: backprop called twice; the first call "
                                   "freed what the forward saved")
            dx, _dg, _db = self.ops.layernorm_backward(dy, saved, need_dx,
                                                       self.grads["gamma"], self.grads["beta"])
            saved = None
            return dx

        return y, backprop

    def init_decode_state(self, batch, capacity):
        """Position-wise (decodes token by token) only when it normalizes the last axis."""
        if len(self.normalized_shape) != 1:
            raise DecodeError(f"{self.describe()}: normalized_shape {self.normalized_shape} "
                              "spans more than the feature axis, so a position's output depends "
                              "on other positions; incremental decoding needs normalized_shape "
                              "of one axis")
        return None

    def get_config(self):
        shape = self.normalized_shape
        return {"normalized_shape": None if shape is None else list(shape), "eps": self.eps,
                "name": self.name}
