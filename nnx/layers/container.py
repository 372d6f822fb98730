"""Chain: layers applied one after another; itself a layer, so chains nest."""

from __future__ import annotations

from . import decode
from .base import Layer, layer_from_dict, layer_to_dict


class Chain(Layer):
    """Chain(layers): applies `layers` in order; the output is the last layer's. Backward runs
    in reverse through the closures that forward returned; when the caller needs no input
    gradient, it stops at the first layer with parameters (layers before it, Flatten, Dropout,
    ..., have nothing to learn, and that layer skips its dx GEMM).

    Its output ends in whatever its last layer's ends in (`output_activation`), and its
    pre-activation output is the last layer's (`begin_update_logits`); shapes are inferred
    layer by layer (`infer`)."""

    def __init__(self, layers, name: str | None = None):
        super().__init__(name)
        layers = list(layers)
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(
                    f"Chain {self.name!r}: item {i} is a {type(layer).__name__}, "
                    "expected an nnx layer"
                )
        self.layers = layers
        # backward stops here when no input gradient is needed (the structure is fixed)
        self._first_trainable = next(
            (i for i, layer in enumerate(layers)
             if any(leaf.has_params() for leaf in layer.leaves())),
            len(layers),
        )

    def sublayers(self):
        return self.layers

    def call(self, x, training):
        return self._run(x, training, logits=False)

    def call_logits(self, x, training):
        """The layers in order, the last one's output taken before its activation."""
        return self._run(x, training, logits=True)

    def output_activation(self):
        return self.layers[-1].output_activation() if self.layers else None

    def _run(self, x, training, logits):
        backprops = []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            if logits and i == last:
                x, bp, _activation = layer.begin_update_logits(x, training)
            else:
                x, bp = layer.begin_update(x, training)
            backprops.append(bp)
        first = self._first_trainable

        def backprop(dy, need_dx=True):
            stop = 0 if need_dx else first
            for i in range(len(backprops) - 1, stop - 1, -1):
                dy = backprops[i](dy, need_dx or i > stop)
            return dy if stop == 0 else None

        return x, backprop

    # -- incremental decoding (nnx.layers.decode): a tuple of the children's states --------
    def init_decode_state(self, batch, capacity):
        """Incremental decoding: a tuple of the layers' states for `batch` sequences of up to
        `capacity` positions (see nnx.layers.decode)."""
        return tuple(decode.init_state(layer, batch, capacity) for layer in self.layers)

    def decode_step(self, x, states):
        """`x` (the next positions) through each layer's decode step with its state in `states`;
        returns (the output, the new tuple of states)."""
        new = []
        for layer, state in zip(self.layers, states, strict=True):
            x, state = decode.step(layer, x, state)
            new.append(state)
        return x, tuple(new)

    def output_shape(self, input_shape):
        for layer in self.layers:
            input_shape = layer.output_shape(input_shape)
        return input_shape

    def infer(self, input_shape):
        """Each layer's sizes from the shape the layers before it output; the last shape."""
        shape = tuple(input_shape)
        for layer in self.layers:
            shape = tuple(layer.infer(shape))
        return shape

    def get_config(self):
        return {"layers": [layer_to_dict(layer) for layer in self.layers], "name": self.name}

    @classmethod
    def from_config(cls, config, builder=None):
        layers = config.pop("layers", None)
        if not isinstance(layers, list):
            raise ValueError("Chain config 'layers' must be a list")
        return cls([layer_from_dict(d, builder) for d in layers], **config)
