"""Train the zoo dense autoencoder (nnx/models/autoencoder.py, 784-128-32-128-784) on MNIST;
report per-epoch time and test reconstruction MSE, and save a PNG grid of test digits (top row)
above their reconstructions (bottom row).

    python examples/autoencoder.py --backend numpy --epochs 5 --out autoencoder.png
    NNX_DATA_DIR=/path/to/mnist python examples/autoencoder.py --data mnist

The bundled sample (6000 train / 1000 test images) needs no files or network; `--data mnist`
reads the four MNIST IDX files from NNX_DATA_DIR (or downloads them). The loss is the mean
squared error per pixel (pixels in [0, 1], sigmoid outputs).
"""

from __future__ import annotations

import numpy as np
from _common import fit_and_report, parser, save_if_asked, warm_up  # examples/_common.py

import nnx
from nnx.datasets import mnist
from nnx.models import autoencoder


def load(which: str):
    """MNIST as float32 images in [0, 1], shape (N, 28, 28) (the model flattens them)."""
    (xtr, _), (xte, _) = mnist(sample=(which == "sample"))
    return xtr.astype(np.float32) / 255.0, xte.astype(np.float32) / 255.0


def save_grid(originals, reconstructions, path: str, title: str = "") -> None:
    """Originals in the top row, their reconstructions below, one column per digit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(originals)
    fig, axes = plt.subplots(2, n, figsize=(1.2 * n, 2.8))
    axes = np.asarray(axes).reshape(2, n)
    for j in range(n):
        for row, imgs in enumerate((originals, reconstructions)):
            ax = axes[row, j]
            ax.imshow(imgs[j].reshape(28, 28), cmap="gray", vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
        if j == 0:
            axes[0, 0].set_ylabel("input")
            axes[1, 0].set_ylabel("output")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> dict:
    p = parser(__doc__, epochs=10, batch_size=128, lr=1e-3)
    p.add_argument("--out", default="autoencoder.png", help="PNG grid path (default: %(default)s)")
    p.add_argument("--digits", type=int, default=10, help="columns in the PNG grid")
    args = p.parse_args(argv)

    xtr, xte = load(args.data)
    ytr, yte = xtr.reshape(len(xtr), -1), xte.reshape(len(xte), -1)  # targets: the inputs
    model = autoencoder.build(backend=args.backend, seed=args.seed)
    warm_note = warm_up(model)
    model.compile(nnx.Adam(args.lr), autoencoder.LOSS, metrics=[])
    print(f"autoencoder 784-128-32-128-784 ({model.count_params():,} parameters); backend "
          f"{model.backend}, data {args.data}: {len(xtr)} train / {len(xte)} test, batch "
          f"{args.batch_size}, {args.epochs} epochs"
          + warm_note,
          flush=True)
    hist, times = fit_and_report(model, (xtr, ytr), (xte, yte), args)
    mse = model.evaluate(xte, yte)["loss"]
    print(f"final test reconstruction MSE {mse:.5f}")
    if args.out:
        k = min(args.digits, len(xte))
        recon = model.predict(xte[:k])
        save_grid(xte[:k], recon, args.out, f"top: test digits, bottom: reconstructions "
                                             f"(test MSE {mse:.4f}, backend {model.backend})")
        print(f"saved {args.out}")
    save_if_asked(model, args.save)
    return {"test_mse": mse, "epoch_times": times}


if __name__ == "__main__":
    main()
