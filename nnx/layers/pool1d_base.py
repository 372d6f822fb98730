"""Pool1DBase: the shared part of MaxPool1D and AvgPool1D over channels-first sequences
(N, C, L), computed by the backend's 2-D pooling kernels on an (N, C, 1, L) view."""

from __future__ import annotations

from .base import Layer
from .conv1d import check_sequence, padding1d_config, padding1d_spec, positive_int, window_length


class Pool1DBase(Layer):
    """A window of `pool_size` sliding with `stride` (default: the pool size) over the length
    axis of (N, C, L) inputs, as PyTorch's MaxPool1d / AvgPool1d (kernel_size, stride,
    padding). A subclass sets `kind` ("max" or "avg": the kernels `ops.<kind>pool2d_forward` /
    `_backward`) and implements `pool(x4, pads) -> (y4, saved)` on the (N, C, 1, L) view.

    `padding`: an int or (left, right), at most half the pool size (PyTorch's limit), or
    "valid". L_out = (L + left + right - pool_size) // stride + 1 (floor mode)."""

    kind = ""

    def __init__(self, pool_size=2, stride=None, padding=0, name: str | None = None):
        super().__init__(name)
        self.pool_size = positive_int(self, "pool_size", pool_size)
        self.stride = positive_int(self, "stride", self.pool_size if stride is None else stride)
        self.padding = padding1d_spec(self, padding, allow_same=False)
        if max(self.padding) > self.pool_size // 2:
            raise ValueError(f"{type(self).__name__} {self.name!r}: padding must be at most half "
                             f"the pool size {self.pool_size}, got "
                             f"{padding1d_config(self.padding)}")

    def _geometry(self, shape: tuple) -> int:
        check_sequence(self, shape, None, "channels")
        return window_length(self, shape, self.pool_size, self.padding, self.stride,
                             "pool window")

    def output_shape(self, input_shape):
        return (input_shape[0], self._geometry((None, *input_shape)))

    def _args(self):
        """(pool_size, stride, padding) in the 2-D kernels' form."""
        return (1, self.pool_size), (1, self.stride), ((0, 0), self.padding)

    def pool(self, x4):
        """The forward kernel on the (N, C, 1, L) view: (y4, saved)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement pool()")

    def call(self, x, training):
        self._geometry(tuple(x.shape))
        N, C, L = x.shape
        y4, saved = self.pool(x.reshape(N, C, 1, L))
        backward = getattr(self.ops, f"{self.kind}pool2d_backward")

        def backprop(dy, need_dx=True):
            nonlocal saved
            if saved is None:
                raise RuntimeError(f"{self.describe()}: backprop called twice; the first call "
                                   "freed what the forward saved")
            dx = None
            if need_dx:
                dx = backward(dy.reshape(N, C, 1, dy.shape[2]), saved).reshape(N, C, L)
            saved = None
            return dx

        return y4.reshape(N, C, y4.shape[3]), backprop

    def get_config(self):
        return {"pool_size": self.pool_size, "stride": self.stride,
                "padding": padding1d_config(self.padding), "name": self.name}
