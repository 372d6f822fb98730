"""Batch normalization: BatchNorm1d ((N, F) or (N, F, L)) and BatchNorm2d ((N, C, H, W))."""

from __future__ import annotations

import math

from ..errors import ShapeError
from .base import Layer, ParamSpec


class _BatchNorm(Layer):
    ranks: tuple = ()
    layout = ""

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5,
                 name: str | None = None):
        super().__init__(name)
        kind = type(self).__name__
        if not isinstance(num_features, int) or isinstance(num_features, bool) or num_features < 1:
            raise ValueError(f"{kind} {self.name!r}: num_features must be a positive int, "
                             f"got {num_features!r}")
        if not isinstance(momentum, (int, float)) or isinstance(momentum, bool) \
                or not 0.0 <= momentum <= 1.0:
            raise ValueError(f"{kind} {self.name!r}: momentum must be in [0, 1], got {momentum!r}")
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
            raise ValueError(f"{kind} {self.name!r}: eps must be a positive number, got {eps!r}")
        self.num_features = num_features
        self.momentum = float(momentum)
        self.eps = float(eps)

    def param_specs(self):
        F = self.num_features
        return [ParamSpec("gamma", (F,), "ones"), ParamSpec("beta", (F,), "zeros")]

    def init_buffers(self):
        F = self.num_features
        self.buffers = {"running_mean": self.ops.zeros(F), "running_var": self.ops.zeros(F)}
        self.buffers["running_var"][...] = 1

    def _check(self, shape: tuple) -> None:
        if len(shape) not in self.ranks or shape[1] != self.num_features:
            raise ShapeError(f"{type(self).__name__} {self.name!r}: expected input of shape "
                             f"{self.layout.format(F=self.num_features)} "
                             f"(num_features={self.num_features}), got shape {tuple(shape)}")

    def output_shape(self, input_shape):
        self._check((None, *input_shape))
        return tuple(input_shape)

    def forward(self, x, training=False):
        self._check(tuple(x.shape))
        axes = (0, *range(2, x.ndim))
        if training and math.prod(x.shape[a] for a in axes) < 2:
            raise ShapeError(f"{type(self).__name__} {self.name!r}: expected more than one value "
                             f"per channel in training mode, got input shape {tuple(x.shape)}")
        y, self._saved = self.ops.batchnorm_forward(
            x, self.params["gamma"], self.params["beta"], self.buffers["running_mean"],
            self.buffers["running_var"], self.momentum, self.eps, training, axes)
        return y

    def backward(self, dy, need_dx=True):
        dx, _dg, _db = self.ops.batchnorm_backward(
            dy, self._saved, need_dx, self.grads["gamma"], self.grads["beta"])
        self._saved = None
        return dx

    def get_config(self):
        return {"num_features": self.num_features, "momentum": self.momentum, "eps": self.eps,
                "name": self.name}


class BatchNorm1d(_BatchNorm):
    """Batch norm of (N, F) or (N, F, L) inputs over the batch (and length) axes, PyTorch's
    semantics: training normalizes with the batch statistics (biased variance) and updates
    running_mean / running_var as r = (1 - momentum) r + momentum * stat (unbiased variance);
    inference (training=False) normalizes with the running statistics.

    `get_weights()` order: gamma then beta; running_mean and running_var are buffers (saved in
    checkpoints, `model.get_buffers()`), not weights."""

    ranks = (2, 3)
    layout = "(batch, {F}) or (batch, {F}, length)"


class BatchNorm2d(_BatchNorm):
    """Batch norm of NCHW inputs over (N, H, W) per channel; otherwise as BatchNorm1d.

    `get_weights()` order: gamma then beta; running_mean and running_var are buffers."""

    ranks = (4,)
    layout = "(batch, {F}, height, width)"
