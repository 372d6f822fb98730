"""MLP for MNIST: Flatten -> Dense+ReLU per hidden size -> Dense(10) logits."""

from __future__ import annotations

LOSS = "softmax_cross_entropy"
INPUT = "flat"
TARGET = "labels"


def build(backend=None, seed=0, hidden=(256, 128), dropout: float = 0.0, dtype="float32"):
    import nnx

    sizes = [784, *hidden]
    layers = [nnx.Flatten()]
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers.append(nnx.Dense(a, b, "relu", kernel_initializer="he_uniform"))
        if dropout:
            layers.append(nnx.Dropout(dropout))
    layers.append(nnx.Dense(sizes[-1], 10))
    return nnx.Sequential(layers, backend=backend, seed=seed, dtype=dtype, name="mlp")
