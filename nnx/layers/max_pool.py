"""MaxPool2D: the max over windows of NCHW inputs."""

from __future__ import annotations

from .pool_base import Pool2DBase


class MaxPool2D(Pool2DBase):
    """Max over (kh, kw) windows of NCHW inputs; `stride` defaults to the pool size, padding
    (at most half the window) is -inf, as PyTorch. With ties, the first maximum of a window
    gets the gradient. No parameters (`get_weights()` contributes nothing)."""

    kind = "max"

    def pool(self, x):
        return self.ops.maxpool2d_forward(x, self.pool_size, self.stride, self.padding)
