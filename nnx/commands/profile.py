"""`nnx profile`: train a zoo model under the profiler and print the per-layer / per-kernel report.

    nnx profile                                   # MLP, MNIST sample, 1 epoch, default backend
    nnx profile --backend numba --data mnist --hidden 512,256 --trace trace.json

The run is preceded by a short warm-up (JIT compilation, first-touch allocations) and, unless
--no-baseline, by the same training without the profiler, so that the profiler's overhead is
measured, not guessed: overhead = profiled wall time / unprofiled wall time - 1 (on a host that
migrates vCPUs this difference is within the run-to-run noise of a few percent).
"""

from __future__ import annotations

import json
import time

from nnx.commands._args import (
    POSITIVE_INT,
    SEED,
    backend_name,
    file_destination,
    hidden_sizes,
    model_name,
    model_options,
)


def add_parser(sub, help_text):
    p = sub.add_parser("profile", help=help_text, description=help_text)
    p.add_argument("--model", default="mlp", type=model_name,
                   help="a model of nnx/models/ (default mlp)")
    p.add_argument("--backend", default=None, type=backend_name,
                   help="numpy | numba | cupy (default: NNX_BACKEND or numpy)")
    p.add_argument("--epochs", type=POSITIVE_INT, default=1, help="an integer >= 1 (default 1)")
    p.add_argument("--data", choices=["sample", "mnist"], default="sample",
                   help="sample: the MNIST sample inside nnx (6000 images); mnist: the full set "
                        "(NNX_DATA_DIR or the cache)")
    p.add_argument("--batch-size", type=POSITIVE_INT, default=128, help="(default 128)")
    p.add_argument("--hidden", default=None, type=hidden_sizes,
                   help="hidden sizes: one per layer for mlp (e.g. 512,256), one size for cnn, "
                        "lstm and autoencoder")
    p.add_argument("--seed", type=SEED, default=0, help="an integer >= 0 (default 0)")
    p.add_argument("--trace", default=None, metavar="OUT.json",
                   help="write a Chrome trace (chrome://tracing, ui.perfetto.dev); a missing "
                        "directory is created before the run")
    p.add_argument("--json", default=None, metavar="OUT.json",
                   help="write the summary as JSON (a missing directory is created)")
    p.add_argument("--no-baseline", action="store_true",
                   help="skip the unprofiled run (no measured overhead)")
    p.add_argument("--top", type=POSITIVE_INT, default=25,
                   help="kernels listed, an integer >= 1 (default 25)")
    p.set_defaults(command="profile")
    return p


def run(args) -> int:
    import nnx
    from nnx import models
    from nnx.commands.train import load_data
    from nnx.profile import profile

    zoo = models.get(args.model)
    options = model_options(zoo, args.model, args.hidden, None)
    for flag, dest in (("--trace", args.trace), ("--json", args.json)):
        if dest:
            file_destination(flag, dest)
    (xtr, ytr), _ = load_data(args.data, zoo.INPUT)
    model = zoo.build(backend=args.backend, seed=args.seed, **options)
    if zoo.TARGET == "inputs":
        ytr = xtr.reshape(len(xtr), -1)
    model.compile(nnx.Adam(1e-3), zoo.LOSS, ["accuracy"] if zoo.TARGET == "labels" else [])
    bs = args.batch_size
    print(f"nnx profile: model {args.model} ({model.count_params():,} parameters), backend "
          f"{model.backend}, data {args.data} ({len(xtr)} samples), {args.epochs} epoch(s), "
          f"batch {bs}")
    t0 = time.perf_counter()
    n_warm = min(len(xtr), 4 * bs)
    model.fit(xtr[:n_warm], ytr[:n_warm], epochs=1, batch_size=bs, verbose=0)
    print(f"warm-up (JIT compile, first touch) {time.perf_counter() - t0:.2f} s on {n_warm} "
          "samples")
    baseline = None
    if not args.no_baseline:
        t0 = time.perf_counter()
        model.fit(xtr, ytr, epochs=args.epochs, batch_size=bs, verbose=0)
        baseline = time.perf_counter() - t0
    with profile(model) as prof:
        model.fit(xtr, ytr, epochs=args.epochs, batch_size=bs, verbose=0)
    print()
    print(prof.report(top=args.top))
    summary = prof.summary()
    if baseline is not None:
        over = prof.wall_s / baseline - 1
        summary["baseline_wall_s"] = baseline
        summary["measured_overhead"] = over
        print(f"measured: {baseline:.3f} s without the profiler, {prof.wall_s:.3f} s with it "
              f"({over * 100:+.1f}%)")
    if args.trace:
        prof.export_chrome_trace(args.trace)
        print(f"Chrome trace: {args.trace} ({len(prof.events)} events)")
    if args.json:
        summary.update({"model": args.model, "backend": model.backend, "data": args.data,
                        "epochs": args.epochs, "batch_size": bs, "options": options})
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1, default=str)
        print(f"summary: {args.json}")
    return 0
