"""Reference kernels of the layers beyond dense networks (conv, pooling, normalization,
recurrent, attention), written against `xp` like `reference.py`. Mixed into `Ops`."""

from __future__ import annotations


class LayerKernels:
    """Mixin: conv2d, pooling, batch/layer norm, recurrent cells, attention."""
