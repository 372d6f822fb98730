"""Chain: layers applied one after another; itself a layer, so chains nest."""

from __future__ import annotations

from .base import Layer, layer_from_dict, layer_to_dict


class Chain(Layer):
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

    def sublayers(self):
        return self.layers

    def forward(self, x, training=False):
        for layer in self.layers:
            x = layer.forward(x, training)
        return x

    def backward(self, dy, need_dx=True):
        """Backward in reverse order. When the caller needs no input gradient, stop at the
        first layer that has parameters: layers before it (Flatten, Dropout, ...) have nothing
        to learn, and that layer can skip its dx GEMM."""
        stop = 0 if need_dx else self._first_trainable()
        for i in range(len(self.layers) - 1, stop - 1, -1):
            dy = self.layers[i].backward(dy, need_dx or i > stop)
        return dy if stop == 0 else None

    def _first_trainable(self) -> int:
        for i, layer in enumerate(self.layers):
            if any(leaf.param_specs() for leaf in layer.leaves()):
                return i
        return len(self.layers)

    def output_shape(self, input_shape):
        for layer in self.layers:
            input_shape = layer.output_shape(input_shape)
        return input_shape

    def get_config(self):
        return {"layers": [layer_to_dict(layer) for layer in self.layers], "name": self.name}

    @classmethod
    def from_config(cls, config):
        layers = config.pop("layers")
        if not isinstance(layers, list):
            raise ValueError("Chain config 'layers' must be a list")
        return cls([layer_from_dict(d) for d in layers], **config)
