"""nnx.bench: the benchmark harness behind `nnx bench` and `benchmarks/` (pytest-benchmark).

    from nnx import bench
    run = bench.run(suites=["gemm", "mlp"], quick=True)      # dict, as written to JSON
    print(bench.format_table(run["results"]))
    bench.compare("old.json", "new.json")                    # what got faster / slower

Modules: `registry` (cases, suite registries, targets), `suites` (the built-in suites, one
module per family), `timing` (clocks, medians and IQRs), `runner` (warm-up, calibration,
interleaved rounds, per-round speed-up ratios), `remote` and `worker` (targets in a process of
their own: PyTorch always), `machine` (description, thread control, measured peaks), `report`
(JSON, tables, compare), `plots` and `crossover`.

Suites are registered explicitly: `default_registry()` is a `SuiteRegistry` that
`nnx.bench.suites.register_all` filled with the built-in suites (built on first use);
`cases()`, `suite_names()` and `run()` read it. A suite of one's own:

    @bench.suite("mine", "what it measures")
    def mine(quick): return [bench.Case(...)]
    bench.default_registry().add(mine)
"""

from __future__ import annotations

import functools
import time

from nnx import threads as thread_plan
from nnx.backend import backend_module

from . import machine
from .crossover import sweep
from .registry import (
    TORCH_TARGETS,
    Case,
    Skip,
    SuiteRegistry,
    Target,
    available_targets,
    suite,
)
from .remote import RemoteError, RemoteTarget, worker_threads
from .report import (
    compare,
    format_compare,
    format_peaks,
    format_table,
    load_json,
    make_run,
    write_json,
)
from .runner import RunConfig, run_case, run_cases
from .suites import register_all
from .timing import Stats, quantile

__all__ = [
    "Case", "RemoteTarget", "RunConfig", "Skip", "Stats", "SuiteRegistry", "Target",
    "available_targets",
    "cases", "compare", "default_registry", "format_compare", "format_table", "load_json",
    "make_run", "quantile", "run", "run_case", "run_cases", "suite", "suite_help",
    "suite_names", "write_json",
]


@functools.lru_cache(maxsize=1)
def default_registry() -> SuiteRegistry:
    """The registry of `nnx bench`, the pytest benchmarks and `cases()`: the built-in suites."""
    return register_all(SuiteRegistry())


def cases(names=None, quick: bool = False) -> list[Case]:
    """The cases of the named suites (all when None) of the default registry, in its order."""
    return default_registry().cases(names, quick=quick)


def suite_names() -> list[str]:
    return default_registry().names()


def suite_help(name: str) -> str:
    return default_registry().help(name)


def run(suites=None, backends=None, quick: bool = False, repeats: int | None = None,
        torch: bool = True, threads: int | None = None, crossover: bool = False,
        warmup_backends: bool | None = None, wait_quiet: float = 0.0,
        busy_threshold: float | None = None, max_wait: float | None = None, log=print,
        argv=None, remote=None, remote_gap: float | None = None) -> dict:
    """Run suites (all when None) on every available target; returns the run as a dict
    (the JSON `nnx bench` writes). `wait_quiet`: wait up to that many seconds for the CPUs to
    go idle (other processes) before measuring. `remote`: the targets that run in a worker
    process of their own (default: the torch targets; this process never imports torch);
    `remote_gap`: the sleep before a remote sample and before the next local one (s)."""
    quiet = None
    if wait_quiet:
        quiet = machine.wait_quiet(wait_quiet, log=log)
        if log and not quiet:
            log(f"the machine did not go quiet within {wait_quiet:.0f} s; measuring anyway")
    t_start = time.perf_counter()
    selected = cases(suites, quick=quick) if (suites or not crossover) else []  # names checked
    names, skipped = available_targets(backends, torch=torch)
    remote = set(TORCH_TARGETS if remote is None else remote) | set(TORCH_TARGETS)
    counts = machine.set_threads(threads, torch_too=False)
    warm = warmup_backends if warmup_backends is not None else not quick
    n_worker = worker_threads(threads, counts)
    targets = [RemoteTarget(n, n_worker, suites=suites, quick=quick, warmup=warm)
               if n in remote else Target(n) for n in names]
    try:
        return _run(targets, selected, skipped, counts, quick, repeats, crossover, warm, quiet,
                    busy_threshold, max_wait, remote_gap, suites, t_start, log, argv)
    finally:
        for t in targets:
            if t.remote:
                t.close()


def _run(targets, selected, skipped, counts, quick, repeats, crossover, warm, quiet,
         busy_threshold, max_wait, remote_gap, suites, t_start, log, argv) -> dict:
    workers = {}
    for t in targets:  # started before the peaks are measured: imports do not overlap them
        if t.remote and selected:
            try:
                info = t.start()
                workers[t.name] = {k: info.get(k) for k in ("pid", "threads", "env_at_start",
                                                             "torch", "warmup_s")}
            except RemoteError as exc:
                workers[t.name] = {"error": str(exc)}
                if log:
                    log(f"target {t.name}: {exc} (its cases will be errors)")
    torch_worker = next((w for w in workers.values() if w.get("torch")), None)
    if torch_worker:
        counts["torch"] = torch_worker["torch"]["threads"]
    desc = machine.describe()
    desc["threads"] = dict(counts)
    if torch_worker:
        desc["torch"] = dict(torch_worker["torch"], process="worker")
    if log:
        log(f"machine: {machine.one_line(desc)}")
        log(thread_plan.summary())  # the counts in force after set_threads, and who chose them
        for name, w in workers.items():
            if "pid" in w:
                log(f"target {name} runs in worker process {w['pid']} "
                    f"(threads {w['threads']}; started with OMP_WAIT_POLICY="
                    f"{(w.get('env_at_start') or {}).get('OMP_WAIT_POLICY')})")
        warn = machine.busy_warning()
        if warn:
            log(f"WARNING: {warn}")
        for t, why in skipped.items():
            log(f"target {t} skipped: {why}")
    config = RunConfig.quick(repeats) if quick else RunConfig(repeats=repeats or 15)
    if busy_threshold is not None:  # 0 turns the busy-host pause off
        config.busy_threshold = busy_threshold or None
    if max_wait is not None:
        config.max_wait_s = max_wait
    if remote_gap is not None:
        config.remote_gap_s = remote_gap
    if config.busy_threshold:  # the peaks are the yardstick of every case: measure them idle
        machine.LoadProbe().wait_idle(config.busy_threshold, config.max_wait_s)
    peaks = machine.measure_peaks(quick=quick)
    if log:
        log(format_peaks(peaks))
    compile_s = {}
    if warm:
        for t in targets:
            if t.kind == "nnx" and not t.remote:
                t0 = time.perf_counter()
                per = backend_module(t.name).warmup(t.ops) or {}
                compile_s[t.name] = {"total_s": time.perf_counter() - t0, "kernels": per}
            elif t.kind == "nnx" and workers.get(t.name, {}).get("warmup_s") is not None:
                compile_s[t.name] = {"total_s": workers[t.name]["warmup_s"], "kernels": {},
                                     "process": "worker"}
    results = run_cases(selected, targets, config, peaks, log=log)
    # the crossover asks which nnx backend to pick: the torch yardstick stays out of it
    sw = None
    if crossover:
        cfg = None if quick else RunConfig(repeats=9, max_case_s=12.0,
                                           busy_threshold=config.busy_threshold,
                                           max_wait_s=config.max_wait_s)
        sw = sweep([t for t in targets if t.kind == "nnx" and not t.remote], quick=quick,
                   config=cfg, peaks=peaks, log=log)
    settings = {
        "mode": "quick" if quick else "full", "repeats": config.repeats,
        "sample_s": config.sample_s, "warmup_calls": config.warmup,
        "max_case_s": config.max_case_s, "threads": counts,
        "busy_threshold_cpus": config.busy_threshold, "max_wait_s": config.max_wait_s,
        "suites": list(suites or ([] if crossover else suite_names())),
        "backend_warmup": compile_s, "wall_s": time.perf_counter() - t_start,
        "interleaved": True,
        "remote_targets": workers, "remote_gap_s": config.remote_gap_s,
        "speedups": "per-round ratio medians (speedup_over)",
        "waited_for_quiet": quiet,
        "loadavg_end": machine._loadavg(),
    }
    return make_run(results, desc, peaks, settings, [t.name for t in targets], skipped, sw,
                    argv)
