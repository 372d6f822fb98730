"""Dense: y = act(x @ W + b), W of shape (in_features, out_features), b of shape (out,)."""

from __future__ import annotations

from .. import regularizers
from ..initializers import get as get_initializer
from .activations import check_activation
from .base import Layer, ParamSpec
from .decode import PositionwiseDecode


class Dense(PositionwiseDecode, Layer):
    """Dense(in_features, out_features, activation=None, use_bias=True, ...): y = act(x @ W + b)
    over the last axis; inputs (batch, ..., in_features) give (batch, ..., out_features).

    - `in_features=None`: inferred from the input shape when the model is built (its
      `input_shape=`, `model.build(shape)` or the first batch), as Keras's Dense(units).
    - W of shape (in_features, out_features), b (out_features,); `get_weights()` order: W then
      b (b only with `use_bias`). PyTorch's nn.Linear stores W.T.
    - The activation is fused into the backend's dense kernel (bias and activation applied in
      one pass over the GEMM output). With softmax or sigmoid, a loss that takes probabilities
      is computed from the values before the activation (`begin_update_logits`)."""

    inferable = "in_features"

    def __init__(
        self,
        in_features: int | None,
        out_features: int,
        activation: str | None = None,
        use_bias: bool = True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        name: str | None = None,
    ):
        super().__init__(name)
        if in_features is not None:
            self._check_positive_ints(in_features=in_features)
        self._check_positive_ints(out_features=out_features)
        self.in_features, self.out_features = in_features, out_features
        self.activation = check_activation(activation, f"activation of Dense {self.name!r}")
        self.use_bias = bool(use_bias)
        if isinstance(kernel_initializer, str) or kernel_initializer is None:
            get_initializer(kernel_initializer or "glorot_uniform")  # fail early on a bad name
        self.kernel_initializer = kernel_initializer or "glorot_uniform"
        self.bias_initializer = bias_initializer
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)

    def param_specs(self):
        self._require_sizes()
        specs = [
            ParamSpec(
                "W",
                (self.in_features, self.out_features),
                self.kernel_initializer,
                self.kernel_regularizer,
            )
        ]
        if self.use_bias:
            specs.append(
                ParamSpec("b", (self.out_features,), self.bias_initializer, self.bias_regularizer)
            )
        return specs

    def call(self, x, training):
        return self._dense(x, self.activation)

    def call_logits(self, x, training):
        """x @ W + b, before the activation."""
        return self._dense(x, "identity")

    def output_activation(self):
        return self.activation

    def _dense(self, x, activation):
        self._check_last_dim(x, self.in_features)
        W = self.params["W"]
        y, saved = self.ops.dense_forward(x, W, self.params.get("b"), activation)

        def backprop(dy, need_dx=True):
            dx, _dW, _db = self.ops.dense_backward(
                dy,
                x,
                W,
                saved,
                activation,
                need_dx,
                self.grads["W"],
                self.grads.get("b"),
            )
            return dx

        return y, backprop

    def output_shape(self, input_shape):
        return (*input_shape[:-1], self.out_features)

    def size_from_input(self, input_shape):
        if len(input_shape) < 1:
            raise self._expect("input of shape", "(batch, ..., features)",
                               f"shape {(None, *input_shape)}")
        return int(input_shape[-1])

    def set_input_size(self, value):
        self.in_features = value

    def get_config(self):
        init = self.kernel_initializer
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "activation": self.activation,
            "use_bias": self.use_bias,
            "kernel_initializer": init if isinstance(init, str) else "glorot_uniform",
            "bias_initializer": self.bias_initializer
            if isinstance(self.bias_initializer, str)
            else "zeros",
            "kernel_regularizer": regularizers.to_config(self.kernel_regularizer),
            "bias_regularizer": regularizers.to_config(self.bias_regularizer),
            "name": self.name,
        }
