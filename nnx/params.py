"""One flat buffer for all parameters and one for all gradients; layers hold views.

With the parameters contiguous, an optimizer update is one kernel launch over one array and a
distributed allreduce is one call, whatever the number of layers."""

from __future__ import annotations

import numpy as np

from . import initializers

ALIGN = 16  # elements: each parameter starts on a 64-byte boundary (float32) for SIMD loads


class ParameterStore:
    """Allocates the flat buffers for the leaves of `root`, binds views, and initializes them."""

    def __init__(self, root, ops, seed: int | None = 0):
        self.ops = ops
        self.entries = []  # (layer, spec, offset, size)
        offset = 0
        for layer in root.leaves():
            for spec in layer.param_specs():
                size = int(np.prod(spec.shape, dtype=np.int64))
                self.entries.append((layer, spec, offset, size))
                offset += -(-size // ALIGN) * ALIGN
        self.size = offset
        self.params = ops.zeros(max(self.size, 1))
        self.grads = ops.zeros(max(self.size, 1))
        for layer, spec, off, size in self.entries:
            layer.params[spec.name] = self.params[off : off + size].reshape(spec.shape)
            layer.grads[spec.name] = self.grads[off : off + size].reshape(spec.shape)
        self._regularized = [
            (layer, spec) for layer, spec, _o, _s in self.entries if spec.regularizer
        ]
        root.bind(ops)
        self.initialize(seed)

    def initialize(self, seed: int | None) -> None:
        rng = np.random.default_rng(seed)
        for layer, spec, _off, _size in self.entries:
            layer.params[spec.name][...] = self.ops.asarray(initializers.initialize(spec, rng))

    @property
    def count(self) -> int:
        """Number of trainable scalars (without alignment padding)."""
        return sum(e[3] for e in self.entries)

    def views(self):
        """(layer, name) pairs in get_weights() order."""
        return [(layer, spec.name) for layer, spec, _o, _s in self.entries]

    def regularized(self):
        """(layer, spec) of every parameter with a regularizer (computed once)."""
        return self._regularized
