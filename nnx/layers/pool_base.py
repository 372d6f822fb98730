"""Pool2DBase: the shared part of MaxPool2D and AvgPool2D (arguments, geometry, backward)."""

from __future__ import annotations

from ..errors import ShapeError
from .base import Layer
from .conv2d import check_window, padding_config, padding_spec, positive_pair


class Pool2DBase(Layer):
    """A (kh, kw) window sliding over NCHW inputs. A subclass sets `kind` ("max" or "avg": the
    kernels `ops.<kind>pool2d_forward` / `_backward`) and implements `pool(x) -> (y, saved)`."""

    kind = ""

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

    def pool(self, x):
        """The forward kernel: (y, saved)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement pool()")

    def call(self, x, training):
        self._geometry(tuple(x.shape))
        y, saved = self.pool(x)

        def backprop(dy, need_dx=True):
            nonlocal saved
            if saved is None:
                raise RuntimeError(f"{self.describe()}: backprop called twice; the first call "
                                   "freed what the forward saved")
            dx = getattr(self.ops, f"{self.kind}pool2d_backward")(dy, saved) if need_dx else None
            saved = None
            return dx

        return y, backprop

    def get_config(self):
        return {"pool_size": list(self.pool_size), "stride": list(self.stride),
                "padding": padding_config(self.padding), "name": self.name}
