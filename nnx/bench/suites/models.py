"""Whole training steps of zoo models (`mlp`, `cnn`) and one MNIST epoch through model.fit
(`mnist`). The nnx step is `model.trainer.step` on device arrays; the torch yardstick is a
mirror of the same layers with the same optimizer (Adam) and loss."""

from __future__ import annotations

from nnx.optim import Adam

from ..registry import Case, suite
from .zoo import (
    inputs_for,
    mnist_train,
    model_flops,
    nnx_step,
    sample_batch,
    torch_mirror,
    torch_step,
    zoo_model,
)


def train_step_case(model_name, batch, label, options=None) -> Case:
    options = options or {}
    x_all, y_all = sample_batch()

    def setup(t):
        zoo, model = zoo_model(t, model_name, **options)
        xh = inputs_for(zoo, x_all[:batch])
        yh = y_all[:batch]
        if t.kind == "torch":
            step = torch_step(t.torch, torch_mirror(model, t.torch), t.device)
            xb, yb = t.array(xh), t.array(yh)
            return lambda: step(xb, yb)
        return nnx_step(model, zoo, xh, yh)

    # FLOPs from the model's structure (built once on numpy, cheap)
    per_sample, info = model_flops(model_name, x_all, **options)
    return Case(
        name=f"{model_name} train step {label + ' ' if label else ''}b{batch}", suite=model_name,
        setup=setup, flops=per_sample * batch if per_sample else None, bytes=None,
        params={"model": model_name, "batch": batch, "optimizer": "adam",
                "loss": "softmax_cross_entropy", **options, **info,
                "flops_note": "GEMM FLOPs of forward + backward (weight and input gradients)"},
        group="train_step", bound="compute")


@suite("mlp", "MLP 784-512-256-10 training step (Adam, batch 128, softmax cross-entropy)")
def mlp_suite(quick: bool):
    if quick:
        return [train_step_case("mlp", 32, "784-64-32-10", {"hidden": (64, 32)})]
    return [train_step_case("mlp", 128, "784-512-256-10", {"hidden": (512, 256)})]


@suite("cnn", "the zoo's CNN training step (Adam, batch 128) on 28x28 images")
def cnn_suite(quick: bool):
    return [train_step_case("cnn", 16 if quick else 128, "", {})]


def _torch_epoch(t, model, x, y, batch):
    torch = t.torch
    step = torch_step(torch, torch_mirror(model, torch), t.device)
    X, Y = t.array(x.reshape(len(x), -1)), t.array(y)
    n = len(x)
    gen = torch.Generator().manual_seed(0)

    def epoch():
        perm = torch.randperm(n, generator=gen).to(t.device)
        for s in range(0, n, batch):
            idx = perm[s:s + batch]
            step(X[idx], Y[idx])

    return epoch


def epoch_case(quick: bool) -> Case:
    hidden = (512, 256)
    batch = 128

    def setup(t):
        x, y = mnist_train(sample=quick)
        zoo, model = zoo_model(t, "mlp", hidden=hidden)
        if t.kind == "torch":
            return _torch_epoch(t, model, x, y, batch)
        model.compile(Adam(1e-3), zoo.LOSS, metrics=())
        return lambda: model.fit(x, y, epochs=1, batch_size=batch, verbose=0)

    n = 6000 if quick else 60000
    per_sample, _info = model_flops("mlp", sample_batch()[0], hidden=hidden)
    return Case(
        name=f"mnist epoch mlp 784-512-256-10 b{batch} ({'sample ' if quick else ''}{n // 1000}k)",
        suite="mnist", setup=setup, flops=per_sample * n if per_sample else None, bytes=None,
        number=1, repeats=2 if quick else 3,
        params={"samples": n, "batch": batch, "hidden": list(hidden),
                "data": "sample" if quick else "mnist",
                "includes": "model.fit: shuffling, batching, input checks, loss read-back each "
                            "batch"},
        group="epoch", bound="compute")


@suite("mnist", "one MNIST epoch of the MLP through model.fit (60k images, batch 128)")
def mnist_suite(quick: bool):
    return [epoch_case(quick)]


SUITES = (mlp_suite, cnn_suite, mnist_suite)
