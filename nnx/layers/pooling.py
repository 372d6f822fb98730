"""Pooling over NCHW inputs: MaxPool2D, AvgPool2D (windows) and GlobalAvgPool2D."""

from __future__ import annotations

from ..errors import ShapeError
from .base import Layer
from .conv2d import check_window, padding_config, padding_spec, positive_pair


class _Pool2D(Layer):
    kind = ""  # "max" or "avg": the kernels ops.<kind>pool2d_forward / _backward

    def __init__(self, pool_size, stride=None, padding=0, name: str | None = None):
        super().__init__(name)
        self.pool_size = positive_pair(self, "pool_size", pool_size)
        self.stride = positive_pair(self, "stride", self.pool_size if stride is None else stride)
        self.padding = padding_spec(self, padding, allow_same=False)
        (kh, kw), ((pt, pb), (pl, pr)) = self.pool_size, self.padding
        if max(pt, pb) > kh // 2 or max(pl, pr) > kw // 2:
            raise ValueError(f"{type(self).__name__} {self.name!r}: padding must be at most half "
                             f"the pool size {self.pool_size}, got {padding_config(self.padding)}")

    def _geometry(self, shape: tuple) -> tuple[int, int]:
        if len(shape) != 4:
            raise ShapeError(f"{type(self).__name__} {self.name!r}: expected input of shape "
                             f"(batch, channels, height, width), got shape {tuple(shape)}")
        return check_window(self, shape, self.pool_size, self.padding, "pool window")

    def output_shape(self, input_shape):
        Ho, Wo = self._geometry((None, *input_shape))
        return (input_shape[0], Ho, Wo)

    def backward(self, dy, need_dx=True):
        dx = getattr(self.ops, f"{self.kind}pool2d_backward")(dy, self._saved)
        self._saved = None
        return dx

    def get_config(self):
        return {"pool_size": list(self.pool_size), "stride": list(self.stride),
                "padding": padding_config(self.padding), "name": self.name}


class MaxPool2D(_Pool2D):
    """Max over (kh, kw) windows of NCHW inputs; `stride` defaults to the pool size, padding
    (at most half the window) is -inf, as PyTorch. With ties, the first maximum of a window
    gets the gradient. No parameters (`get_weights()` contributes nothing)."""

    kind = "max"

    def forward(self, x, training=False):
        self._geometry(tuple(x.shape))
        y, self._saved = self.ops.maxpool2d_forward(x, self.pool_size, self.stride, self.padding)
        return y


class AvgPool2D(_Pool2D):
    """Mean over (kh, kw) windows of NCHW inputs; `stride` defaults to the pool size; zero
    padding, counted in the divisor when `count_include_pad` (PyTorch's default). No
    parameters."""

    kind = "avg"

    def __init__(self, pool_size, stride=None, padding=0, count_include_pad: bool = True,
                 name: str | None = None):
        super().__init__(pool_size, stride, padding, name)
        self.count_include_pad = bool(count_include_pad)

    def forward(self, x, training=False):
        self._geometry(tuple(x.shape))
        y, self._saved = self.ops.avgpool2d_forward(x, self.pool_size, self.stride, self.padding,
                                                    self.count_include_pad)
        return y

    def get_config(self):
        return {**super().get_config(), "count_include_pad": self.count_include_pad}


class GlobalAvgPool2D(Layer):
    """(N, C, H, W) -> (N, C): the mean over the spatial axes. No parameters."""

    def forward(self, x, training=False):
        if x.ndim != 4:
            raise ShapeError(f"GlobalAvgPool2D {self.name!r}: expected input of shape "
                             f"(batch, channels, height, width), got shape {tuple(x.shape)}")
        y, self._saved = self.ops.global_avgpool2d_forward(x)
        return y

    def backward(self, dy, need_dx=True):
        return self.ops.global_avgpool2d_backward(dy, self._saved)

    def output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ShapeError(f"GlobalAvgPool2D {self.name!r}: expected input of shape "
                             f"(batch, channels, height, width), got shape "
                             f"{(None, *input_shape)}")
        return (input_shape[0],)
