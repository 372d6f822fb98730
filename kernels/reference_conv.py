"""Reference kernels: conv2d, pooling, batch norm and layer norm; written against `self.xp`."""

from __future__ import annotations


class ConvKernels:
    """Mixin of `Ops` (conv2d, pooling, batch norm and layer norm)."""
