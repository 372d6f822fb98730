"""Keras's "Simple MNIST convnet" (keras.io/examples/vision/mnist_convnet), ported line by line.

    python examples/keras_mnist_convnet.py [--backend numba] [--epochs 4] [--data mnist]

Apart from the import, what changes from the Keras script: nnx is channels-first (NCHW, as
PyTorch), so the images get their channel axis in front (`x[:, None]`), and layers whose input
size Keras infers take None for it (`Conv2D(None, 32, 3)`, `Dense(None, 10)`; inferred from
`input_shape`, as `keras.Input(shape=...)` does). As in Keras, "categorical_crossentropy" takes
probabilities (one-hot labels, a softmax last layer): nnx computes it from the logits with the
fused, stable kernel, so the softmax is applied once. Runs on the MNIST sample bundled with nnx
(6000 train / 1000 test images) unless `--data mnist`.
"""

from __future__ import annotations

import time

import numpy as np
from _common import parser, save_if_asked, warm_up  # examples/_common.py

import nnx as keras  # the only change to the imports
from nnx import layers
from nnx.preprocessing import one_hot


def main(argv=None) -> dict:
    p = parser(__doc__, epochs=4, batch_size=128, lr=1e-3)
    args = p.parse_args(argv)

    # Model / data parameters
    num_classes = 10
    input_shape = (1, 28, 28)  # channels first

    # Load the data and split it between train and test sets
    (x_train, y_train), (x_test, y_test) = keras.datasets.mnist(sample=args.data == "sample")
    # Scale images to the [0, 1] range, and give them their channel axis
    x_train = x_train.astype("float32")[:, None] / 255
    x_test = x_test.astype("float32")[:, None] / 255
    print("x_train shape:", x_train.shape)
    print(x_train.shape[0], "train samples")
    print(x_test.shape[0], "test samples")
    # convert class vectors to binary class matrices
    y_train = one_hot(y_train, num_classes)
    y_test = one_hot(y_test, num_classes)

    model = keras.Sequential(
        [
            layers.Conv2D(None, 32, kernel_size=(3, 3), activation="relu"),
            layers.MaxPool2D(pool_size=(2, 2)),
            layers.Conv2D(None, 64, kernel_size=(3, 3), activation="relu"),
            layers.MaxPool2D(pool_size=(2, 2)),
            layers.Flatten(),
            layers.Dropout(0.5),
            layers.Dense(None, num_classes, activation="softmax"),
        ],
        input_shape=input_shape, backend=args.backend, seed=args.seed,
    )
    model.summary()
    warm_note = warm_up(model)

    batch_size = args.batch_size
    epochs = args.epochs
    model.compile(loss="categorical_crossentropy", optimizer=keras.Adam(args.lr),
                  metrics=["acc"])
    print(f"backend {model.backend}{warm_note}")
    t0 = time.perf_counter()
    history = model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs,
                        validation_split=0.1)
    seconds = time.perf_counter() - t0

    score = model.evaluate(x_test, y_test, verbose=0)
    print("Test loss:", score["loss"])
    print("Test accuracy:", score["acc"])
    print(f"fit: {seconds:.1f}s")
    save_if_asked(model, args.save)
    return {"test_loss": score["loss"], "test_accuracy": score["acc"], "fit_s": seconds,
            "val_acc": history.history["val_acc"][-1],
            "probabilities_sum_to_1": bool(np.allclose(model.predict(x_test[:8]).sum(-1), 1,
                                                       atol=1e-5))}


if __name__ == "__main__":
    main()
