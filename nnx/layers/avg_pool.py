"""AvgPool2D: the mean over windows of NCHW inputs."""

from __future__ import annotations

from .pool_base import Pool2DBase


class AvgPool2D(Pool2DBase):
    """Mean over (kh, kw) windows of NCHW inputs; `stride` defaults to the pool size; zero
    padding, counted in the divisor when `count_include_pad` (PyTorch's default). No
    parameters."""

    kind = "avg"

    def __init__(self, pool_size, stride=None, padding=0, count_include_pad: bool = True,
                 name: str | None = None):
        super().__init__(pool_size, stride, padding, name)
        self.count_include_pad = bool(count_include_pad)

    def pool(self, x):
        return self.ops.avgpool2d_forward(x, self.pool_size, self.stride, self.padding,
                                          self.count_include_pad)

    def get_config(self):
        return {**super().get_config(), "count_include_pad": self.count_include_pad}
