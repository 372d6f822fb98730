"""Train the zoo CNN (nnx/models/cnn.py) on MNIST and report per-epoch time and test accuracy.

    python examples/mnist_cnn.py --backend numpy --epochs 2                # bundled sample
    NNX_DATA_DIR=/path/to/mnist python examples/mnist_cnn.py --data mnist  # full 60k/10k

The bundled sample (6000 train / 1000 test images) needs no files or network; `--data mnist`
reads the four MNIST IDX files from NNX_DATA_DIR (or downloads them). The defaults (5 epochs,
batch 128, Adam 1e-3 with a cosine decay to 0) reach 99.16% test accuracy on full MNIST.
Each epoch line shows the wall time (`time`), the process CPU seconds of its training batches
(`cpu_s`) and the load average (`load`), since wall times on a shared machine mislead.
"""

from __future__ import annotations

import os
import time

import numpy as np
from _common import fit_and_report, parser, save_if_asked, warm_up  # examples/_common.py

import nnx
from nnx.callbacks import Callback
from nnx.datasets import mnist
from nnx.models import cnn


def load(which: str):
    """MNIST as float32 images in [0, 1], shape (N, 1, 28, 28), and int64 labels."""
    (xtr, ytr), (xte, yte) = mnist(sample=(which == "sample"))
    prep = lambda x: (x.astype(np.float32) / 255.0)[:, None]  # noqa: E731
    return (prep(xtr), ytr.astype(np.int64)), (prep(xte), yte.astype(np.int64))


class CpuTime(Callback):
    """Adds to each epoch's logs the process CPU seconds of its training batches (`cpu_s`, all
    threads; wall time is `time`) and the 1-minute load average (`load`): on a shared machine
    the wall time alone says little."""

    def on_train_begin(self, info):
        self.total = info["samples"]

    def on_epoch_begin(self, epoch):
        self.t0, self.cpu = time.process_time(), None

    def on_batch_end(self, batch, state):
        if state["seen"] >= self.total:
            self.cpu = time.process_time() - self.t0

    def on_epoch_end(self, epoch, logs):
        logs["cpu_s"] = self.cpu if self.cpu is not None else time.process_time() - self.t0
        logs["load"] = os.getloadavg()[0]


def main(argv=None) -> dict:
    p = parser(__doc__, epochs=5, batch_size=128, lr=1e-3)
    p.add_argument("--schedule", choices=["cosine", "constant"], default="cosine",
                   help="cosine: decay the learning rate to 0 over the run (default)")
    p.add_argument("--batchnorm", action="store_true",
                   help="Conv -> BatchNorm2d -> MaxPool -> ReLU blocks")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    p.add_argument("--no-eval-each-epoch", action="store_true",
                   help="evaluate on the test set only once, after the last epoch")
    args = p.parse_args(argv)

    (xtr, ytr), (xte, yte) = load(args.data)
    if args.limit:
        xtr, ytr = xtr[:args.limit], ytr[:args.limit]
    model = cnn.build(backend=args.backend, seed=args.seed, batchnorm=args.batchnorm)
    warm_note = warm_up(model)
    lr = args.lr
    if args.schedule == "cosine":
        steps = args.epochs * -(-len(xtr) // args.batch_size)
        lr = nnx.CosineDecay(args.lr, decay_steps=max(steps, 1))
    model.compile(nnx.Adam(lr), cnn.LOSS, ["accuracy"])
    model.summary(input_shape=(1, 28, 28))
    print(f"backend {model.backend}, data {args.data}: {len(xtr)} train / {len(xte)} test, "
          f"batch {args.batch_size}, {args.epochs} epochs, Adam lr {args.lr} ({args.schedule})"
          + warm_note)

    hist, times = fit_and_report(model, (xtr, ytr), (xte, yte), args, [CpuTime()])
    result = model.evaluate(xte, yte)
    print(f"final test accuracy {result['accuracy']:.4f}  test loss {result['loss']:.4f}")
    save_if_asked(model, args.save)
    return {"test": result, "epoch_times": times, "history": hist.history}


if __name__ == "__main__":
    main()
