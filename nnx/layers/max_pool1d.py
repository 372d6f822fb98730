"""MaxPool1D: the max over windows of channels-first sequences (N, C, L)."""

from __future__ import annotations

from .pool1d_base import Pool1DBase


class MaxPool1D(Pool1DBase):
    """MaxPool1D(pool_size=2, stride=None, padding=0): (N, C, L) -> (N, C, L_out), the max over
    each window, as PyTorch's nn.MaxPool1d(kernel_size, stride, padding): `stride` defaults to
    the pool size, padding (at most half the window) is -inf, L_out = (L + 2p - pool_size) //
    stride + 1. With ties, the first maximum of a window gets the gradient. No parameters.
    Runs the backend's maxpool2d kernels on an (N, C, 1, L) view."""

    kind = "max"

    def pool(self, x4):
        return self.ops.maxpool2d_forward(x4, *self._args())
