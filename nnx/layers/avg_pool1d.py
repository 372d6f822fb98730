"""AvgPool1D: the mean over windows of channels-first sequences (N, C, L)."""

from __future__ import annotations

from .pool1d_base import Pool1DBase


class AvgPool1D(Pool1DBase):
    """AvgPool1D(pool_size=2, stride=None, padding=0, count_include_pad=True): (N, C, L) ->
    (N, C, L_out), the mean over each window, as PyTorch's nn.AvgPool1d: `stride` defaults to
    the pool size; zero padding (at most half the window), counted in the divisor when
    `count_include_pad` (PyTorch's default). No parameters. Runs the backend's avgpool2d
    kernels on an (N, C, 1, L) view."""

    kind = "avg"

    def __init__(self, pool_size=2, stride=None, padding=0, count_include_pad: bool = True,
                 name: str | None = None):
        super().__init__(pool_size, stride, padding, name)
        self.count_include_pad = bool(count_include_pad)

    def pool(self, x4):
        return self.ops.avgpool2d_forward(x4, *self._args(), self.count_include_pad)

    def get_config(self):
        return {**super().get_config(), "count_include_pad": self.count_include_pad}
