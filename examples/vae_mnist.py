"""Train a variational autoencoder on MNIST; write a PNG grid of generated digits and a 2-D map
of the latent space.

    python examples/vae_mnist.py --backend numba                 # ~20 s on 2 cores
    NNX_DATA_DIR=/path/to/mnist python examples/vae_mnist.py --data mnist --epochs 30

Model: encoder 784-256-(2 x latent) giving [mean | log-variance] of q(z | x), `nnx.Sampling`
(z = mean + exp(log_var / 2) * eps, and the KL term of q against N(0, I) through
`Layer.add_loss`), decoder latent-256-784 giving pixel logits. Loss: binary cross-entropy from
logits, averaged over the 784 pixels, plus KL with kl_weight = 1/784, so the total is the
negative ELBO per pixel (times 784: nats per image); the history shows the KL part as `kl`.
With --latent 2 (the default) the latent space is a plane: `--out` gets the decoder's digits
over a grid of z (the quantiles of N(0, 1), so the grid covers the prior evenly) and `--map`
the test digits' posterior means coloured by label.
"""

from __future__ import annotations

import numpy as np
from _common import fit_and_report, parser, save_if_asked, warm_up  # examples/_common.py

import nnx
from nnx.datasets import mnist


def build(backend=None, seed=0, latent=2, hidden=256):
    """(model, encoder, decoder): the encoder and decoder are parts of the model (Chains), run
    on their own for the map and the generated grid."""
    encoder = nnx.Chain([nnx.Flatten(), nnx.Dense(784, hidden, "relu", name="enc_hidden"),
                         nnx.Dense(hidden, 2 * latent, name="enc_stats")], name="encoder")
    decoder = nnx.Chain([nnx.Dense(latent, hidden, "relu", name="dec_hidden"),
                         nnx.Dense(hidden, 784, name="dec_logits")], name="decoder")
    net = nnx.Chain([encoder, nnx.Sampling(latent, kl_weight=1 / 784, name="z"), decoder])
    return nnx.Model(net, backend=backend, seed=seed, name="vae"), encoder, decoder


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def decode(model, decoder, z) -> np.ndarray:
    """Pixel probabilities (N, 28, 28) for latent codes z (N, latent)."""
    logits = model.ops.to_host(decoder.forward(model.ops.asarray(z.astype(np.float32))))
    return sigmoid(logits.astype(np.float64)).reshape(-1, 28, 28)


def latent_means(model, encoder, x, latent) -> np.ndarray:
    stats = model.ops.to_host(encoder.forward(model.ops.asarray(x)))
    return stats[:, :latent]


def save_grid(images, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = int(round(len(images) ** 0.5))
    canvas = np.ones((n * 28, n * 28))
    for k, img in enumerate(images[: n * n]):
        i, j = divmod(k, n)
        canvas[i * 28:(i + 1) * 28, j * 28:(j + 1) * 28] = img
    fig, ax = plt.subplots(figsize=(6, 6.3))
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_map(means, labels, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    sc = ax.scatter(means[:, 0], means[:, 1], c=labels, cmap="tab10", s=6, vmin=-0.5, vmax=9.5)
    fig.colorbar(sc, ax=ax, ticks=range(10), label="digit")
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> dict:
    from statistics import NormalDist

    p = parser(__doc__, epochs=30, batch_size=128, lr=2e-3)
    p.add_argument("--latent", type=int, default=2, help="latent dimensions (2 for the plots)")
    p.add_argument("--out", default="vae_digits.png", help="grid of generated digits (PNG)")
    p.add_argument("--map", default="vae_latent.png", help="2-D latent map (PNG; latent 2)")
    p.add_argument("--grid", type=int, default=15, help="digits per side of the grid")
    args = p.parse_args(argv)

    (xtr, _), (xte, yte) = mnist(sample=(args.data == "sample"))
    xtr, xte = xtr.astype(np.float32) / 255.0, xte.astype(np.float32) / 255.0
    ytr, yte_pix = xtr.reshape(len(xtr), -1), xte.reshape(len(xte), -1)  # targets: the pixels
    model, encoder, decoder = build(args.backend, args.seed, args.latent)
    warm_note = warm_up(model)
    model.compile(nnx.Adam(args.lr), "binary_cross_entropy", metrics=[])
    print(f"VAE 784-256-{args.latent}-256-784 ({model.count_params():,} parameters); backend "
          f"{model.backend}, data {args.data}: {len(xtr)} train / {len(xte)} test, batch "
          f"{args.batch_size}, {args.epochs} epochs" + warm_note, flush=True)
    hist, times = fit_and_report(model, (xtr, ytr), (xte, yte_pix), args)
    res = model.evaluate(xte, yte_pix)
    nelbo = res["loss"] * 784
    print(f"test: loss {res['loss']:.4f} per pixel (KL {res['kl']:.4f}); negative ELBO "
          f"{nelbo:.1f} nats per image (reconstruction {(res['loss'] - res['kl']) * 784:.1f}, "
          f"KL {res['kl'] * 784:.2f})")
    if args.out:
        if args.latent == 2:  # the decoder over an even grid of the prior's quantiles
            q = np.array([NormalDist().inv_cdf(u)
                          for u in np.linspace(0.05, 0.95, args.grid)])
            z = np.array([[a, b] for b in q[::-1] for a in q])
        else:  # samples of the prior
            z = np.random.default_rng(args.seed).standard_normal((args.grid**2, args.latent))
        save_grid(decode(model, decoder, z), args.out,
                  f"VAE samples (latent {args.latent}, backend {model.backend}, "
                  f"-ELBO {nelbo:.0f} nats/image)")
        print(f"saved {args.out}")
    if args.map and args.latent == 2:
        means = latent_means(model, encoder, xte, args.latent)
        save_map(means, yte, args.map, "posterior means of the test digits")
        print(f"saved {args.map}")
    save_if_asked(model, args.save)
    return {"test_loss": res["loss"], "test_kl": res["kl"], "nelbo_nats": nelbo,
            "epoch_times": times, "history": hist.history}


if __name__ == "__main__":
    main()
