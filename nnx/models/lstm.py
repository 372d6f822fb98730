"""LSTM over image rows for MNIST: each 28x28 image is a sequence of 28 rows (timesteps) of 28
pixels; LSTM(28, hidden) reads it and Dense(hidden, 10) classifies its last hidden state.
`dropout` > 0 puts a Dropout on that last hidden state (`nnx train --model lstm --dropout R`)."""

from __future__ import annotations

LOSS = "softmax_cross_entropy"
INPUT = "rows"
TARGET = "labels"


def build(backend=None, seed=0, dtype="float32", hidden: int = 128, dropout: float = 0.0):
    import nnx
    from nnx.layers.lstm import LSTM

    layers = [LSTM(28, hidden)]
    if dropout:
        layers.append(nnx.Dropout(dropout))
    layers.append(nnx.Dense(hidden, 10))
    return nnx.Sequential(layers, backend=backend, seed=seed, dtype=dtype, name="lstm")
