"""`nnx train`: train a zoo model (nnx/models/) on MNIST and report the test metric.

The default, an MLP on the MNIST sample shipped inside nnx, runs offline on a fresh machine.

Every value is checked before any work: invalid numbers while the command line is parsed, then
the model's options (--hidden, --dropout: refused for a model without them, never ignored) and
the --save destination. A --save path in a directory that does not exist yet creates that
directory before training, so a trained model is never lost to a missing folder.
"""

from __future__ import annotations

import sys
import time

from nnx.commands import train_text
from nnx.commands._args import (
    DROPOUT,
    LEARNING_RATE,
    POSITIVE_INT,
    SEED,
    backend_name,
    file_destination,
    hidden_sizes,
    model_options,
    zoo_model_name,
)


def add_parser(sub, help_text):
    p = sub.add_parser("train", help=help_text, description=help_text)
    p.add_argument(
        "--model",
        default="mlp",
        type=zoo_model_name,
        help="a model of nnx/models/: mlp (default), cnn, lstm, autoencoder, transformer",
    )
    p.add_argument(
        "--data",
        choices=["sample", "mnist"],
        default="sample",
        help="sample: the MNIST sample shipped inside nnx (offline); mnist: the full set "
        "from NNX_DATA_DIR or the cache (downloaded if missing)",
    )
    p.add_argument(
        "--backend",
        default=None,
        type=backend_name,
        help="numpy | numba | cupy (default: NNX_BACKEND or numpy)",
    )
    p.add_argument("--epochs", type=POSITIVE_INT, default=5, help="an integer >= 1 (default 5)")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=128, help="(default 128)")
    p.add_argument("--lr", type=LEARNING_RATE, default=1e-3, help="> 0, finite (default 1e-3)")
    p.add_argument("--optimizer", default="adam", choices=["adam", "adamw", "sgd"])
    p.add_argument("--seed", type=SEED, default=0, help="an integer >= 0 (default 0)")
    p.add_argument(
        "--hidden",
        default=None,
        type=hidden_sizes,
        help="hidden sizes: one per layer for mlp (e.g. 512,256), one size for cnn, lstm and "
        "autoencoder (default: the model's)",
    )
    p.add_argument(
        "--dropout",
        type=DROPOUT,
        default=None,
        help="dropout rate in [0, 1) (mlp, cnn, lstm, autoencoder, transformer; refused for a "
        "model without dropout; default: the model's, 0.25 for cnn and 0 for the others)",
    )
    p.add_argument(
        "--save",
        default=None,
        metavar="PATH",
        help="save the trained model here (a missing directory is created before training)",
    )
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    p.add_argument(
        "--distributed",
        action="store_true",
        help="data-parallel over the ranks "
        "of mpiexec (mpiexec -n 4 nnx train --distributed); one process without it",
    )
    train_text.add_arguments(p)
    p.set_defaults(command="train")
    return p


def load_data(which: str, input_kind: str):
    """MNIST scaled to [0, 1] as float32: (N, 28, 28), or (N, 1, 28, 28) for image models."""
    import numpy as np

    from nnx.datasets import mnist

    (xtr, ytr), (xte, yte) = mnist(sample=(which == "sample"))
    xtr = xtr.astype(np.float32) / 255.0
    xte = xte.astype(np.float32) / 255.0
    if input_kind == "image":
        xtr, xte = xtr[:, None], xte[:, None]
    return (xtr, ytr.astype(np.int64)), (xte, yte.astype(np.int64))


def run(args) -> int:
    import nnx
    from nnx import models

    zoo = models.get(args.model)
    if train_text.is_text_model(zoo):
        return train_text.run(args, zoo)
    train_text.refuse_text_flags(args, args.model)
    options = model_options(zoo, args.model, args.hidden, args.dropout)
    if args.save:
        file_destination("--save", args.save)
    (xtr, ytr), (xte, yte) = load_data(args.data, zoo.INPUT)  # missing files: fail first
    model = zoo.build(backend=args.backend, seed=args.seed, **options)
    if zoo.TARGET == "inputs":
        ytr, yte = xtr.reshape(len(xtr), -1), xte.reshape(len(xte), -1)
    opt = {"adam": nnx.Adam, "adamw": nnx.AdamW, "sgd": nnx.SGD}[args.optimizer](lr=args.lr)
    if args.distributed:  # every rank: the same data, its share of each batch; rank 0 reports
        import nnx.distributed

        opt = nnx.distributed.DistributedOptimizer(opt, nnx.distributed.init())
    model.compile(opt, zoo.LOSS, ["accuracy"] if zoo.TARGET == "labels" else [])
    if not model.is_chief:  # known once compile has added the data-parallel strategy
        import os

        sys.stdout = open(os.devnull, "w")
    print(
        f"nnx train: model {args.model} ({model.count_params():,} parameters), backend "
        f"{model.backend}, data {args.data} ({len(xtr)} train / {len(xte)} test), "
        f"{args.epochs} epochs, batch {args.batch_size}"
    )
    t0 = time.perf_counter()
    model.fit(
        xtr, ytr, epochs=args.epochs, batch_size=args.batch_size, verbose=0 if args.quiet else 1
    )
    train_s = time.perf_counter() - t0
    result = model.evaluate(xte, yte)
    metrics = "  ".join(f"test {k} {v:.4f}" for k, v in result.items())
    print(
        f"{metrics}  (training {train_s:.1f}s, "
        f"{args.epochs * len(xtr) / max(train_s, 1e-9):,.0f} samples/s)"
    )
    if args.save:
        model.save(args.save)
        print(f"saved to {args.save}")
    return 0
