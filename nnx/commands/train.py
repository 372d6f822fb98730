"""`nnx train`: train a model on MNIST (the embedded sample by default) and report test accuracy.

Models: mlp (784-256-128-10, ReLU). Other model builders register in MODELS."""

from __future__ import annotations

import sys
import time

MODELS = {}


def register(name):
    def deco(fn):
        MODELS[name] = fn
        return fn

    return deco


@register("mlp")
def build_mlp(backend, seed, args):
    import nnx

    hidden = [int(h) for h in args.hidden.split(",")] if args.hidden else [256, 128]
    sizes = [784, *hidden]
    layers = [nnx.Flatten()]
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers.append(nnx.Dense(a, b, "relu", kernel_initializer="he_uniform"))
        if args.dropout:
            layers.append(nnx.Dropout(args.dropout))
    layers.append(nnx.Dense(sizes[-1], 10))
    return nnx.Sequential(layers, backend=backend, seed=seed, name="mlp"), "softmax_cross_entropy"


def add_parser(sub, help_text):
    p = sub.add_parser("train", help=help_text, description=help_text)
    p.add_argument("--model", default="mlp", help="model to train (default: mlp)")
    p.add_argument("--data", choices=["sample", "mnist"], default="sample",
                   help="sample: the MNIST sample shipped inside nnx (offline); mnist: the full set "
                        "from NNX_DATA_DIR or the cache (downloaded if missing)")
    p.add_argument("--backend", default=None, help="numpy | numba | cupy (default: NNX_BACKEND "
                   "or numpy)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--optimizer", default="adam", choices=["adam", "adamw", "sgd"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden", default=None, help="MLP hidden sizes, e.g. 512,256")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--save", default=None, metavar="PATH", help="save the trained model here")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    p.set_defaults(command="train")
    return p


def load_data(which: str, model: str):
    """MNIST scaled to [0, 1] as float32, images kept (N, 28, 28) / (N, 1, 28, 28) for CNNs."""
    import numpy as np

    from nnx.datasets import mnist

    (xtr, ytr), (xte, yte) = mnist(sample=(which == "sample"))
    xtr = xtr.astype(np.float32) / 255.0
    xte = xte.astype(np.float32) / 255.0
    if model == "cnn":
        xtr, xte = xtr[:, None], xte[:, None]
    return (xtr, ytr.astype(np.int64)), (xte, yte.astype(np.int64))


def run(args) -> int:
    import nnx

    if args.model not in MODELS:
        print(f"nnx train: unknown model {args.model!r}; choose one of: {', '.join(MODELS)}",
              file=sys.stderr)
        return 2
    try:
        model, loss = MODELS[args.model](args.backend, args.seed, args)
    except nnx.BackendUnavailableError as exc:
        print(f"nnx train: {exc}", file=sys.stderr)
        return 2
    (xtr, ytr), (xte, yte) = load_data(args.data, args.model)
    opt = {"adam": nnx.Adam, "adamw": nnx.AdamW, "sgd": nnx.SGD}[args.optimizer](lr=args.lr)
    model.compile(opt, loss, ["accuracy"] if loss != "mse" else [])
    print(f"nnx train: model {args.model} ({model.count_params():,} parameters), backend "
          f"{model.backend}, data {args.data} ({len(xtr)} train / {len(xte)} test), "
          f"{args.epochs} epochs, batch {args.batch_size}")
    t0 = time.perf_counter()
    model.fit(xtr, ytr, epochs=args.epochs, batch_size=args.batch_size,
              verbose=0 if args.quiet else 1)
    train_s = time.perf_counter() - t0
    result = model.evaluate(xte, yte)
    metrics = "  ".join(f"test {k} {v:.4f}" for k, v in result.items())
    print(f"{metrics}  (training {train_s:.1f}s, {args.epochs * len(xtr) / train_s:,.0f} samples/s)")
    if args.save:
        model.save(args.save)
        print(f"saved to {args.save}")
    return 0
