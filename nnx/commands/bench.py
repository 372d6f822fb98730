"""`nnx bench`: run the benchmark suites on every backend (and PyTorch as a yardstick, in a
worker process of its own), print the table, write JSON, tables and PNG plots; or compare two
earlier runs.

    nnx bench                              # every suite, every available backend + torch
    nnx bench --suite gemm mlp --quick     # small sizes, few repeats (a smoke test)
    nnx bench --crossover                  # batch x width sweep: which backend wins where
    nnx bench --compare old.json new.json  # what got faster / slower beyond noise
"""

from __future__ import annotations

import argparse
import json
import os

from nnx import bench
from nnx.bench import machine, report
from nnx.bench import plots as plots_mod
from nnx.bench.crossover import format_crossover, plot_crossover
from nnx.commands._args import NON_NEGATIVE, POSITIVE, POSITIVE_INT, UsageError, dir_destination


def suite_name(text: str) -> str:
    """Type: a suite of the default registry."""
    names = bench.default_registry().names()
    if text not in names:
        raise argparse.ArgumentTypeError(
            f"unknown suite {text!r}; expected one of: {', '.join(names)}"
        )
    return text


def target_name(text: str) -> str:
    """Type: an nnx backend or torch target that can run here (an unavailable one is refused,
    not skipped: a benchmark of nothing would exit 0 with no results)."""
    from nnx import compat
    from nnx.backend import backend_module, backend_names
    from nnx.bench.registry import TORCH_TARGETS

    known = [*backend_names(), *TORCH_TARGETS]
    if text not in known:
        raise argparse.ArgumentTypeError(
            f"unknown target {text!r}; expected one of: {', '.join(known)}"
        )
    if text in TORCH_TARGETS:
        if not compat.has_torch:
            raise argparse.ArgumentTypeError(
                f"target {text!r} is not available: PyTorch is not installed (pip install torch)"
            )
        # asked of a child process: nnx bench never imports torch (it runs in a worker)
        info = machine.torch_info()
        if "error" in info:
            raise argparse.ArgumentTypeError(
                f"target {text!r} is not available: PyTorch does not import: {info['error']}"
            )
        if text == "torch-cuda" and not info.get("cuda"):
            raise argparse.ArgumentTypeError(
                "target 'torch-cuda' is not available: torch sees no CUDA device"
            )
        return text
    mod = backend_module(text)
    if not mod.is_available():
        raise argparse.ArgumentTypeError(
            f"backend {text!r} is not available here: {mod.unavailable_reason()}"
        )
    return text


def add_parser(sub, help_text):
    p = sub.add_parser("bench", help=help_text, description=help_text)
    p.add_argument("--suite", nargs="+", metavar="NAME", default=None, type=suite_name,
                   help="suites to run (default: all; see --list)")
    p.add_argument("--backends", nargs="+", metavar="NAME", default=None, type=target_name,
                   help="targets: nnx backends and/or torch, torch-cuda (default: every "
                        "available backend plus torch)")
    p.add_argument("--quick", action="store_true",
                   help="small sizes and few repeats: checks the harness, not the speed")
    p.add_argument("--out", default="bench-out", metavar="DIR",
                   help="where bench.json, table.txt/.md and the PNGs go (default ./bench-out; "
                        "created, and checked writable, before anything runs)")
    p.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"), default=None,
                   help="compare two bench.json files instead of running")
    p.add_argument("--merge", nargs="+", metavar="RUN.json", default=None,
                   help="merge earlier runs (later ones win per case and target) into --out, "
                        "rewriting the tables and plots, instead of running")
    p.add_argument("--threshold", type=NON_NEGATIVE, default=0.05,
                   help="--compare: relative change that counts, besides disjoint IQRs (0.05)")
    p.add_argument("--crossover", action="store_true",
                   help="run the batch x width crossover sweep (alone, unless --suite is given)")
    p.add_argument("--repeats", type=POSITIVE_INT, default=None, metavar="N",
                   help="interleaved rounds per case, >= 1 (default 15; quick 3)")
    p.add_argument("--threads", type=POSITIVE_INT, default=None, metavar="N",
                   help="threads for Numba, BLAS and torch alike (default: as configured)")
    p.add_argument("--wait-quiet", type=NON_NEGATIVE, default=0.0, metavar="SECONDS",
                   help="first wait up to SECONDS for other processes to leave the CPUs idle")
    p.add_argument("--busy-threshold", type=NON_NEGATIVE, default=None, metavar="CPUS",
                   help="redo a round when other processes used more than CPUS cores during it, "
                        "after waiting for them (default 0.5; quick: off; 0: off)")
    p.add_argument("--max-wait", type=POSITIVE, default=None, metavar="SECONDS",
                   help="with --busy-threshold: wait at most this long per case (default 90)")
    p.add_argument("--remote-gap", type=NON_NEGATIVE, default=None, metavar="SECONDS",
                   help="sleep before each sample of a target in a worker process (torch) and "
                        "before the next one here, so the last one's thread pools go idle "
                        "(default 0.1; quick 0.02)")
    p.add_argument("--no-torch", action="store_true", help="leave the PyTorch yardstick out")
    p.add_argument("--no-plots", action="store_true", help="write no PNG files")
    p.add_argument("--list", action="store_true", help="list the suites and exit")
    p.set_defaults(command="bench")
    return p


def run(args) -> int:
    if args.list:  # the built-in suites, as nnx.bench.suites.register_all added them
        registry = bench.default_registry()
        for name in registry.names():
            print(f"{name:12s} {registry.help(name)}")
        return 0
    if args.compare:
        try:
            cmp = report.compare(*args.compare, threshold=args.threshold)
        except (OSError, ValueError) as exc:
            raise UsageError(f"argument --compare: {exc}") from exc
        print(report.format_compare(cmp))
        return 0
    if args.no_torch and any(t.startswith("torch") for t in args.backends or ()):
        raise UsageError("argument --no-torch: conflicts with --backends "
                         f"{' '.join(args.backends)} (which names a torch target)")
    dir_destination("--out", args.out)  # before any work: the results must have a place
    plots = not args.no_plots
    if plots and not plots_mod.available():  # before any suite runs, not after all of them
        print(f"nnx bench: {plots_mod.MISSING}")
        plots = False
    if args.merge:
        try:
            res = report.merge_runs(args.merge)
        except (OSError, ValueError) as exc:
            raise UsageError(f"argument --merge: {exc}") from exc
        return write_outputs(res, args.out, plots=plots)
    # an error while benchmarking reaches nnx.cli: one line `nnx: error: ...`, exit code 1
    res = bench.run(suites=args.suite, backends=args.backends, quick=args.quick,
                    repeats=args.repeats, torch=not args.no_torch, threads=args.threads,
                    crossover=args.crossover, wait_quiet=args.wait_quiet,
                    busy_threshold=args.busy_threshold, max_wait=args.max_wait,
                    remote_gap=args.remote_gap, argv=_argv(args))
    return write_outputs(res, args.out, plots=plots)


def _argv(args) -> list[str]:
    """The options as given (for the JSON), reconstructed from the parsed arguments."""
    out = []
    for k, v in sorted(vars(args).items()):
        if k == "command" or v in (None, False):
            continue
        out.append(f"--{k.replace('_', '-')}" + ("" if v is True else f"={v}"))
    return out


def write_outputs(res: dict, out: str, plots: bool = True, log=print) -> int:
    os.makedirs(out, exist_ok=True)
    targets = res["targets"]
    title = (f"nnx bench ({res['settings'].get('mode')}): median time per call ±IQR/median; "
             f"{report.SPEEDUP_HEADER}; %peak = of SGEMM (compute-bound) or memcpy "
             f"(memory-bound)\n{machine.one_line(res['machine'])}\n"
             f"{report.format_peaks(res['peaks'])}")
    text = report.format_table(res["results"], targets, title=title) if res["results"] else title
    md = (report.format_table(res["results"], targets, markdown=True, title="nnx bench results")
          + f"\n\n{report.SPEEDUP_HEADER}.") if res["results"] else ""
    sw = res.get("crossover")
    if sw:
        text += "\n\n" + format_crossover(sw)
        md += "\n\n" + format_crossover(sw, markdown=True)
    log("")
    log(text)
    paths = [report.write_json(res, os.path.join(out, "bench.json"))]
    with open(os.path.join(out, "machine.json"), "w") as f:
        json.dump({"machine": res["machine"], "peaks": res["peaks"],
                   "settings": res["settings"]}, f, indent=1)
    paths.append(os.path.join(out, "machine.json"))
    for name, body in (("table.txt", text), ("table.md", md)):
        with open(os.path.join(out, name), "w") as f:
            f.write(body + "\n")
        paths.append(os.path.join(out, name))
    if plots and not plots_mod.available():
        log(f"nnx bench: {plots_mod.MISSING}")
    elif plots:
        sub = machine.one_line(res["machine"])
        if res["results"]:
            paths += plots_mod.plot_results(res["results"], res["peaks"], targets, out, sub)
        if sw:
            paths += plot_crossover(sw, out)
    log("\nwrote: " + ", ".join(paths))
    return 0
