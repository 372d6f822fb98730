"""pytest-benchmark front end of nnx.bench: the same case registry as `nnx bench`.

    pytest benchmarks/ --benchmark-only                       # full sizes
    NNX_BENCH_QUICK=1 pytest benchmarks/ --benchmark-only     # small sizes (smoke test)
    pytest benchmarks/ --benchmark-only --benchmark-group-by=group -k "mlp or gemm"
    pytest benchmarks/ --benchmark-only --benchmark-json=out.json

Each test is one (case, target) pair; `benchmark.group` is the case, so the backends of one case
sit side by side in pytest-benchmark's table; `extra_info` holds FLOPs, bytes and the suite.
Targets: every available nnx backend; NNX_BENCH_BACKENDS="numpy numba" restricts them. PyTorch
runs here only when NNX_BENCH_BACKENDS names it ("torch", "torch-cuda"), and then in this
process, next to nnx: which runtime a process loads first changes its thread pools (torch
imported before nnx once made the numba step 2.3-3.2x slower), so the comparisons with PyTorch
that the project reports come from `nnx bench`, which runs torch in a worker process of its
own. Unlike `nnx bench`, pytest-benchmark times one target after the other (no
interleaving): on a host that migrates vCPUs, prefer `nnx bench` for speed-ups.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

QUICK = os.environ.get("NNX_BENCH_QUICK", "").strip() not in ("", "0", "false", "no")

_SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
if _SHARED_MNIST.is_dir():
    os.environ.setdefault("NNX_DATA_DIR", str(_SHARED_MNIST))


@functools.lru_cache(maxsize=1)
def _targets():
    from nnx.bench import Target, available_targets, machine

    wanted = os.environ.get("NNX_BENCH_BACKENDS", "").split() or None
    torch = bool(wanted) and any(w.startswith("torch") for w in wanted)
    names, _skipped = available_targets(wanted, torch=torch)
    targets = {n: Target(n) for n in names}
    threads = os.environ.get("NNX_BENCH_THREADS")
    machine.set_threads(int(threads) if threads else None,
                        torch_too=any(t.kind == "torch" for t in targets.values()))
    return targets


def pytest_report_header(config):
    from nnx.bench import machine

    targets = _targets()
    return [f"nnx bench targets: {', '.join(targets)} ({'quick' if QUICK else 'full'} sizes)",
            f"machine: {machine.one_line(machine.describe())}"]


def pytest_generate_tests(metafunc):
    """Parametrize `bench_case` x `target` from the suites the module lists in SUITES."""
    if "bench_case" not in metafunc.fixturenames:
        return
    from nnx.bench.pytest_support import bench_cases

    suites = getattr(metafunc.module, "SUITES", None)
    selected = bench_cases(suites, quick=QUICK)  # nnx.bench.default_registry()
    targets = list(_targets())
    params = [(c, t) for c in selected for t in targets]
    ids = [f"{c.name}[{t}]".replace(" ", "_") for c, t in params]
    metafunc.parametrize(("bench_case", "target_name"), params, ids=ids)


@pytest.fixture
def target(target_name):
    return _targets()[target_name]
