"""Reference kernels of the layers beyond dense networks, written against `xp` like
`reference.py`, one mixin per family, combined here and mixed into `Ops`:
- `reference_conv.py`: conv2d, pooling, batch norm, layer norm (ConvKernels)
- `reference_recurrent.py`: recurrent cells, embedding, attention (RecurrentKernels)
"""

from __future__ import annotations

from .reference_conv import ConvKernels
from .reference_recurrent import RecurrentKernels


class LayerKernels(ConvKernels, RecurrentKernels):
    """Mixin: every layer family's reference kernels."""
