"""Glue between the case registry and pytest-benchmark (used by `benchmarks/`)."""

from __future__ import annotations

from . import default_registry
from .registry import Case, Skip, Target


def bench_cases(suites=None, quick: bool = False, registry=None) -> list[Case]:
    """The cases to parametrize over: of the named suites (all when None) of `registry`, by
    default `nnx.bench.default_registry()` (the built-in suites)."""
    return (registry if registry is not None else default_registry()).cases(suites, quick=quick)


def run_benchmark(benchmark, case: Case, target: Target):
    """Set up `case` on `target` (skip with the case's reason) and time it with pytest-benchmark,
    synchronizing the device after each call."""
    import pytest  # only benchmarks/ runs this; nnx itself does not depend on pytest

    try:
        fn = case.setup(target)
    except Skip as exc:
        pytest.skip(str(exc))
    benchmark.group = case.name
    benchmark.extra_info.update({
        "suite": case.suite, "target": target.name, "flops": case.flops, "bytes": case.bytes,
        "bound": case.bound, "params": {k: v for k, v in case.params.items()
                                        if isinstance(v, (int, float, str, bool))},
    })
    sync = target.sync

    def call():
        out = fn()
        sync()
        return out

    if case.number is not None:  # long cases (an epoch): a few fixed rounds
        benchmark.pedantic(call, rounds=case.repeats or 3, iterations=case.number,
                           warmup_rounds=1)
    else:
        benchmark(call)
    stats = benchmark.stats.stats if benchmark.stats else None
    if stats is not None and stats.median > 0:
        if case.flops:
            benchmark.extra_info["gflops"] = case.flops / stats.median / 1e9
        if case.bytes:
            benchmark.extra_info["gbps"] = case.bytes / stats.median / 1e9
