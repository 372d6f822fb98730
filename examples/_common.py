"""What the example scripts share: kernel warm-up, fit with per-epoch timing, saving."""

from __future__ import annotations

import argparse
import time

from nnx.backend import backend_module


def parser(doc: str, *, epochs: int, batch_size: int, lr: float, data: bool = True):
    """The flags every example takes, with its own defaults; the caller adds the rest."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument(
        "--backend", default=None, help="numpy | numba | cupy (default: NNX_BACKEND or numpy)"
    )
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int, default=batch_size)
    if data:
        p.add_argument("--data", choices=["sample", "mnist"], default="sample")
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", default=None, metavar="PATH", help="save the trained model here")
    return p


def warm_up(model) -> str:
    """Compile the backend's kernels before timing (JIT, if any); a note for the header line."""
    t0 = time.perf_counter()
    compiled = backend_module(model.backend).warmup(model.ops)
    seconds = time.perf_counter() - t0
    return f" (warm-up {seconds:.1f}s for {len(compiled)} kernels)" if compiled else ""


def fit_and_report(model, train, test, args, callbacks=()):
    """fit (validating on `test` each epoch unless --no-eval-each-epoch), then print the epoch
    times; returns (history, epoch times)."""
    val = None if getattr(args, "no_eval_each_epoch", False) else test
    hist = model.fit(
        *train,
        epochs=args.epochs,
        batch_size=args.batch_size,
        validation_data=val,
        verbose=1,
        callbacks=list(callbacks),
    )
    times = list(hist.history.get("time", []))
    if times:
        mean = sum(times) / len(times)
        print(
            "epoch times (s): "
            + ", ".join(f"{t:.1f}" for t in times)
            + f"  (mean {mean:.1f}s, {len(train[0]) / mean:,.0f} samples/s)"
        )
    return hist, times


def save_if_asked(model, path) -> None:
    if path:
        model.save(path)
        print(f"saved to {path}")
