"""Composition: `Residual(block)` and `Parallel(*branches, merge=...)`.

Both are containers (layers with `sublayers()`), so they nest with each other and with
`Chain` to any depth, their parameters live in the model's flat buffer like any leaf's, they
serialize through `get_config` / `from_config` (checkpoints rebuild them), and a user builds a
model from them directly:

    block = Residual(Chain([LayerNorm(64), Dense(64, 256, "gelu"), Dense(256, 64)]))
    heads = Parallel(Dense(64, 10), Chain([Dense(64, 32, "relu"), Dense(32, 10)]), merge="add")
    model = nnx.Model(Chain([block, heads]), backend="numba")

Backward contract: the input gradient is the sum over every path from the input to the output
(the skip path of a Residual, each branch of a Parallel); parameter gradients are written by
the leaves as usual. A container's `need_dx=False` is passed down (branches of a first layer
compute no input gradient).
"""

from __future__ import annotations

from ..errors import ShapeError
from . import decode
from .base import Layer, layer_from_dict, layer_to_dict
from .container import Chain

MERGES = ("concat", "add")


def _as_layer(owner: str, block) -> Layer:
    if isinstance(block, (list, tuple)):
        return Chain(block)
    if not isinstance(block, Layer):
        raise TypeError(f"{owner}: expected an nnx layer (or a list of layers), got "
                        f"{type(block).__name__}")
    return block


class Residual(Layer):
    """Residual(block): y = x + block(x). `block` is any layer or container whose output has
    the input's shape; a list of layers is wrapped in a Chain."""

    def __init__(self, block, name: str | None = None):
        super().__init__(name)
        self.block = _as_layer(f"Residual {self.name!r}", block)

    def sublayers(self):
        return [self.block]

    def call(self, x, training):
        y, block_backprop = self.block.begin_update(x, training)
        if tuple(y.shape) != tuple(x.shape):
            raise ShapeError(f"Residual {self.name!r}: block {self.block.name!r} must keep the "
                             f"input's shape; expected output shape {tuple(x.shape)}, got "
                             f"{tuple(y.shape)}")

        def backprop(dy, need_dx=True):
            dx = block_backprop(dy, need_dx)
            if not need_dx:
                return None
            return dy if dx is None else dx + dy

        return x + y, backprop

    def init_decode_state(self, batch, capacity):
        """Incremental decoding: the block's state (see nnx.layers.decode)."""
        return decode.init_state(self.block, batch, capacity)

    def decode_step(self, x, state):
        """One decoding step of the block on `x` with `state`; returns (x + y, the block's new
        state)."""
        y, state = decode.step(self.block, x, state)
        return x + y, state

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def infer(self, input_shape):
        """The block's sizes from the input shape; its output must keep that shape."""
        shape = tuple(input_shape)
        out = tuple(self.block.infer(shape))
        if out != shape:
            raise ShapeError(f"Residual {self.name!r}: block {self.block.name!r} must keep the "
                             f"input's shape; expected output shape {(None, *shape)}, got "
                             f"{(None, *out)}")
        return shape

    def get_config(self):
        return {"block": layer_to_dict(self.block), "name": self.name}

    @classmethod
    def from_config(cls, config, builder=None):
        return cls(layer_from_dict(config.pop("block", None), builder), **config)


class Parallel(Layer):
    """Parallel(*branches, merge="concat"): feeds the same input to every branch and merges
    their outputs: `merge="concat"` joins them along the last axis (leading shapes must agree),
    `merge="add"` sums them (shapes must agree). The input gradient is the sum of the
    branches' input gradients."""

    def __init__(self, *branches, merge: str = "concat", name: str | None = None):
        super().__init__(name)
        if len(branches) == 1 and isinstance(branches[0], (list, tuple)) and branches[0] \
                and all(isinstance(b, Layer) for b in branches[0]):
            branches = tuple(branches[0])  # Parallel([a, b]) as well as Parallel(a, b)
        if not branches:
            raise ValueError(f"Parallel {self.name!r}: needs at least one branch")
        if merge not in MERGES:
            raise ValueError(f"Parallel {self.name!r}: merge must be one of "
                             f"{', '.join(MERGES)}, got {merge!r}")
        self.branches = [_as_layer(f"Parallel {self.name!r} branch {i}", b)
                         for i, b in enumerate(branches)]
        self.merge = merge

    def sublayers(self):
        return self.branches

    def call(self, x, training):
        results = [b.begin_update(x, training) for b in self.branches]
        outs = [o for o, _ in results]
        backprops = [bp for _, bp in results]
        y, widths = self._merge(outs)

        def backprop(dy, need_dx=True):
            dx = None
            start = 0
            for i, bp in enumerate(backprops):
                if widths is None:
                    dyi = dy
                else:
                    dyi = dy[..., start:start + widths[i]]
                    start += widths[i]
                dxi = bp(dyi, need_dx)
                if need_dx and dxi is not None:
                    dx = dxi if dx is None else dx + dxi
            return dx

        return y, backprop

    def _merge(self, outs):
        """The branches' outputs merged: (y, the concatenated widths or None for "add")."""
        first = tuple(outs[0].shape)
        if self.merge == "add":
            for b, o in zip(self.branches, outs, strict=True):
                if tuple(o.shape) != first:
                    raise ShapeError(
                        f"Parallel {self.name!r} (merge='add'): expected every branch output "
                        f"to have shape {first} (branch {self.branches[0].name!r}), got "
                        f"{tuple(o.shape)} from branch {b.name!r}")
            y = outs[0] + outs[1] if len(outs) > 1 else outs[0].copy()
            for o in outs[2:]:
                y += o
            widths = None
        else:
            for b, o in zip(self.branches, outs, strict=True):
                if o.ndim != len(first) or tuple(o.shape[:-1]) != first[:-1]:
                    raise ShapeError(
                        f"Parallel {self.name!r} (merge='concat'): expected every branch output "
                        f"to have shape ({', '.join(map(str, first[:-1]))}, *) (branch "
                        f"{self.branches[0].name!r}), got {tuple(o.shape)} from branch {b.name!r}")
            widths = [int(o.shape[-1]) for o in outs]
            y = self.ops.empty((*first[:-1], sum(widths)), dtype=outs[0].dtype)
            start = 0
            for o, w in zip(outs, widths, strict=True):
                y[..., start:start + w] = o
                start += w
        return y, widths

    def init_decode_state(self, batch, capacity):
        """Incremental decoding: a tuple of the branches' states (see nnx.layers.decode)."""
        return tuple(decode.init_state(b, batch, capacity) for b in self.branches)

    def decode_step(self, x, states):
        """One decoding step of every branch on `x` (`states`: their tuple); returns (the merged
        outputs, the new tuple)."""
        outs, new = [], []
        for branch, state in zip(self.branches, states, strict=True):
            y, state = decode.step(branch, x, state)
            outs.append(y)
            new.append(state)
        return self._merge(outs)[0], tuple(new)

    def output_shape(self, input_shape):
        shapes = [tuple(b.output_shape(tuple(input_shape))) for b in self.branches]
        return self._merged_shape(shapes)

    def infer(self, input_shape):
        """Every branch's sizes from the same input shape; the merged output shape."""
        return self._merged_shape([tuple(b.infer(tuple(input_shape))) for b in self.branches])

    def _merged_shape(self, shapes):
        if self.merge == "add":
            return shapes[0]
        return (*shapes[0][:-1], sum(s[-1] for s in shapes))

    def get_config(self):
        return {"branches": [layer_to_dict(b) for b in self.branches], "merge": self.merge,
                "name": self.name}

    @classmethod
    def from_config(cls, config, builder=None):
        branches = config.pop("branches", None)
        if not isinstance(branches, list):
            raise ValueError("Parallel config 'branches' must be a list")
        return cls(*[layer_from_dict(d, builder) for d in branches], **config)
