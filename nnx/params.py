"""One flat buffer for all parameters and one for all gradients; layers hold views.

With the parameters contiguous, an optimizer update is one kernel launch over one array and a
distributed allreduce is one call, whatever the number of layers.

The store is also where a model takes ownership of its layers (see `nnx.layers.base`): every
layer of the tree is checked before anything is bound, so a layer that belongs to another live
model raises and that model is left as it was; a layer object that occurs twice is tied (one
set of parameters, counted and saved once, gradients summed over its uses); two different layer
objects with the same name are refused (checkpoints key arrays by name)."""

from __future__ import annotations

import weakref

import numpy as np

from . import initializers
from .layers.base import NotBuiltError

ALIGN = 16  # elements: each parameter starts on a 64-byte boundary (float32) for SIMD loads


def _describe(owner) -> str:
    describe = getattr(owner, "describe", None)
    return describe() if callable(describe) else f"{type(owner).__name__} at {id(owner):#x}"


def claim(root, owner) -> tuple[list, dict]:
    """Check that `owner` may take every layer of `root`; returns (unique layers in first-use
    order, uses by id). Raises ValueError before changing anything."""
    unique, uses, names = [], {}, {}
    for layer in root.nodes():
        key = id(layer)
        if key in uses:
            uses[key] += 1
            continue
        uses[key] = 1
        unique.append(layer)
        other = names.setdefault(layer.name, layer)
        if other is not layer:
            raise ValueError(
                f"two different layers are named {layer.name!r} ({type(other).__name__} and "
                f"{type(layer).__name__}) in {_describe(owner)}: layer names must be unique "
                "within a model (checkpoints key weights by name); rename one, or use the same "
                "layer object twice to tie weights"
            )
        current = layer.owner
        if current is not None and current is not owner:
            raise ValueError(
                f"{layer.describe()} already belongs to {_describe(current)}; a layer belongs "
                f"to one model, so it cannot also be used by {_describe(owner)}. Build a new "
                "layer, or copy it: nnx.layers.layer_from_dict(nnx.layers.layer_to_dict(layer))"
            )
    return unique, uses


class ParameterStore:
    """Allocates the flat buffers for the leaves of `root`, binds views, and initializes them.

    `owner` is the model the layers belong to (the store itself when None, as for a layer built
    standalone by `nnx.testing.build`); ownership is held weakly, so layers of a model that was
    garbage-collected can be built into a new one."""

    def __init__(self, root, ops, seed: int | None = 0, owner=None):
        missing = root.missing_sizes()
        if missing:
            raise NotBuiltError(
                f"{root.describe()} cannot be built yet: {', '.join(missing)} is None and not "
                "inferred; infer the sizes from an input shape first (root.infer(input_shape), "
                "or build a model with input_shape=)")
        owner = self if owner is None else owner
        unique, uses = claim(root, owner)
        self.ops = ops
        self.root = root
        self.entries = []  # (layer, spec, offset, size), each parameter once
        offset = 0
        for layer in unique:
            if layer.sublayers():
                continue
            for spec in layer.param_specs():
                size = int(np.prod(spec.shape, dtype=np.int64))
                self.entries.append((layer, spec, offset, size))
                offset += -(-size // ALIGN) * ALIGN
        self.size = offset
        self.params = ops.zeros(max(self.size, 1))
        self.grads = ops.zeros(max(self.size, 1))
        ref = weakref.ref(owner)
        for layer in unique:
            layer._owner = ref
            layer._uses = uses[id(layer)]
            layer.ops = ops
            layer.params, layer.grads = {}, {}
        for layer, spec, off, size in self.entries:
            layer.params[spec.name] = self.params[off : off + size].reshape(spec.shape)
            layer.grads[spec.name] = self.grads[off : off + size].reshape(spec.shape)
        for layer in unique:
            layer.buffers = {}
            layer.init_buffers()
        self.layers = unique  # every layer object once, containers included
        self.tied = [layer for layer in unique if layer._uses > 1 and layer.grads]
        self._regularized = [
            (layer, spec) for layer, spec, _o, _s in self.entries if spec.regularizer
        ]
        self.initialize(seed)

    def describe(self) -> str:
        """How error messages name a store that owns layers without a model."""
        return f"the standalone build of {self.root.describe()}"

    def initialize(self, seed: int | None) -> None:
        """Draw every parameter from its initializer with a generator seeded by `seed`, in store
        order, on the host (the same values on every backend)."""
        rng = np.random.default_rng(seed)
        for layer, spec, _off, _size in self.entries:
            layer.params[spec.name][...] = self.ops.asarray(initializers.initialize(spec, rng))

    def rebind(self, ops) -> None:
        """Point every layer at `ops` (same device and dtype; e.g. a profiling wrapper) without
        touching parameters or buffers."""
        for layer in self.layers:
            layer.ops = ops
        self.ops = ops

    def zero_tied_grads(self) -> None:
        """Tied layers add each use's gradient; they start a backward pass from zero."""
        for layer in self.tied:
            for g in layer.grads.values():
                g[...] = 0

    @property
    def count(self) -> int:
        """Number of trainable scalars (without alignment padding; tied parameters once)."""
        return sum(e[3] for e in self.entries)

    def views(self):
        """(layer, name) pairs in get_weights() order."""
        return [(layer, spec.name) for layer, spec, _o, _s in self.entries]

    def regularized(self):
        """(layer, spec) of every parameter with a regularizer (computed once)."""
        return self._regularized
