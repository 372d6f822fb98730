"""Dense autoencoder for MNIST: Flatten -> 784-128-32-128-784, trained to reproduce its input.

Encoder Dense(784, 128, relu) -> Dense(128, 32) (a linear 32-d code); decoder
Dense(32, 128, relu) -> Dense(128, 784, sigmoid), so reconstructions lie in [0, 1] like the
pixels. Loss: mean squared error between the reconstruction and the flattened input
(LOSS = "mse"; the reported test loss is the reconstruction MSE per pixel). `dropout` > 0 puts a
Dropout after each hidden ReLU layer (encoder_1 and decoder_1).
"""

from __future__ import annotations

LOSS = "mse"
INPUT = "flat"
TARGET = "inputs"


def build(backend=None, seed=0, dtype="float32", hidden: int = 128, code: int = 32,
          dropout: float = 0.0):
    import nnx

    def drop(name):
        return [nnx.Dropout(dropout, name=name)] if dropout else []

    layers = [
        nnx.Flatten(),
        nnx.Dense(784, hidden, "relu", kernel_initializer="he_uniform", name="encoder_1"),
        *drop("encoder_dropout"),
        nnx.Dense(hidden, code, name="code"),
        nnx.Dense(code, hidden, "relu", kernel_initializer="he_uniform", name="decoder_1"),
        *drop("decoder_dropout"),
        nnx.Dense(hidden, 784, "sigmoid", name="reconstruction"),
    ]
    return nnx.Sequential(layers, backend=backend, seed=seed, dtype=dtype, name="autoencoder")
