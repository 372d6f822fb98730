"""Train the zoo LSTM (nnx/models/lstm.py) on MNIST read row by row; report per-epoch time and
test accuracy.

Each 28x28 image is a sequence of 28 timesteps (its rows) of 28 features; LSTM(28, 128) reads
the sequence and Dense(128, 10) classifies its last hidden state.

    python examples/mnist_lstm.py --backend numpy --epochs 3                # bundled sample
    NNX_DATA_DIR=/path/to/mnist python examples/mnist_lstm.py --data mnist  # full 60k/10k

The bundled sample (6000 train / 1000 test images) needs no files or network; `--data mnist`
reads the four MNIST IDX files from NNX_DATA_DIR (or downloads them).
"""

from __future__ import annotations

import numpy as np
from _common import fit_and_report, parser, save_if_asked, warm_up  # examples/_common.py

import nnx
from nnx.datasets import mnist
from nnx.models import lstm


def load(which: str):
    """MNIST as float32 row sequences in [0, 1], shape (N, 28, 28), and int64 labels."""
    (xtr, ytr), (xte, yte) = mnist(sample=(which == "sample"))
    prep = lambda x: x.astype(np.float32) / 255.0  # noqa: E731
    return (prep(xtr), ytr.astype(np.int64)), (prep(xte), yte.astype(np.int64))


def main(argv=None) -> dict:
    p = parser(__doc__, epochs=5, batch_size=128, lr=2e-3)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--no-eval-each-epoch", action="store_true",
                   help="evaluate on the test set only once, after the last epoch")
    args = p.parse_args(argv)

    (xtr, ytr), (xte, yte) = load(args.data)
    if args.limit:
        xtr, ytr = xtr[:args.limit], ytr[:args.limit]
    model = lstm.build(backend=args.backend, seed=args.seed, hidden=args.hidden)
    warm_note = warm_up(model)
    model.compile(nnx.Adam(args.lr), lstm.LOSS, ["accuracy"])
    print(f"LSTM({28}, {args.hidden}) -> Dense({args.hidden}, 10): {model.count_params():,} "
          f"parameters; backend {model.backend}, data {args.data}: {len(xtr)} train / "
          f"{len(xte)} test, batch {args.batch_size}, {args.epochs} epochs, lr {args.lr}"
          + warm_note,
          flush=True)

    hist, times = fit_and_report(model, (xtr, ytr), (xte, yte), args)
    result = model.evaluate(xte, yte)
    print(f"final test accuracy {result['accuracy']:.4f}  test loss {result['loss']:.4f}")
    save_if_asked(model, args.save)
    return {"test": result, "epoch_times": times}


if __name__ == "__main__":
    main()
