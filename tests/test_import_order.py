"""Import order does not matter to Numba's parallel kernels (nnx.threads.isolate_numba_openmp).

The mechanism under test: an OpenMP runtime loaded into the global symbol scope before nnx (as
`import torch` loads its libgomp.so.1) read OMP_WAIT_POLICY before nnx set it to passive; Numba's
OpenMP threading layer used to bind GOMP_parallel to it, and its spinning workers made the numba
MLP step 2.3-3.2x slower. nnx now loads that layer so that it binds to its own runtime. Each
case runs in a fresh subprocess (the order of imports is process-wide), and the binding is read
from the dynamic loader itself (LD_DEBUG=bindings), not inferred from timings. The speed itself
is measured by tools/measure_procs.py import-order.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

from nnx import compat

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"),
                       reason="RTLD_DEEPBIND and /proc/self/maps are Linux-only"),
    pytest.mark.skipif(not compat.has_numba, reason="Numba is not installed"),
]


def _omp_layer_loads() -> bool:
    code = "import numba.np.ufunc.omppool"
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


needs_omp = pytest.mark.skipif(not _omp_layer_loads(),
                               reason="Numba's OpenMP threading layer does not load here "
                                      "(no libgomp)")

# The child: optionally load a runtime before nnx, then run one kernel big enough to go parallel,
# a few training steps, and report what nnx did.
CHILD = textwrap.dedent("""
    import ctypes, json, os, sys
    first = os.environ.get("FIRST", "")
    if first == "torch":
        import torch
    elif first:
        ctypes.CDLL(first, mode=ctypes.RTLD_GLOBAL)
    import numpy as np
    import nnx
    from nnx import compat, threads
    from nnx.kernels.numba_cpu import NumbaOps
    ops = NumbaOps(seed=0)
    n = 1 << 19  # above the serial/parallel crossover: a parallel region runs
    p, g, m, v = (np.full(n, 0.5, np.float32) for _ in range(4))
    ops.adam_update(p, g, m, v, 1, 1e-3, 0.9, 0.999, 1e-8)
    model = nnx.Sequential([nnx.Dense(20, 16, activation="relu"), nnx.Dense(16, 4)],
                           backend="numba", seed=0)
    model.compile(nnx.Adam(1e-2), "softmax_cross_entropy", [])
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((32, 20)).astype(np.float32), rng.integers(0, 4, 32)
    for _ in range(3):
        model.train_step(x, y)
    import numba
    print("RESULT " + json.dumps({
        "state": compat.openmp_state["state"], "runtime": compat.openmp_state["runtime"],
        "foreign": compat.openmp_state["foreign"], "layer": numba.threading_layer(),
        "threads": numba.get_num_threads(),
        "weights": [w.tolist() for w in model.get_weights()]}))
""")


def run_child(tmp_path, first: str = "", extra_env: dict | None = None, bindings=True):
    """Run CHILD; returns (its report, the library omppool's GOMP_parallel bound to)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "LD_DEBUG")}
    env.update(FIRST=first, **(extra_env or {}))
    log = tmp_path / "ld"
    if bindings:
        env.update(LD_DEBUG="bindings", LD_DEBUG_OUTPUT=str(log))
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("RESULT "))
    report = json.loads(line[len("RESULT "):])
    target = None
    for path in glob.glob(str(log) + ".*"):
        with open(path, errors="replace") as f:
            for ln in f:
                if "omppool" in ln and "`GOMP_parallel'" in ln and " to " in ln:
                    target = ln.split(" to ", 1)[1].split(" [")[0].strip()
        os.remove(path)
    return report, target


def _system_libgomp() -> str:
    """The libgomp Numba's OpenMP layer is linked against (as loaded in a fresh process)."""
    code = ("import numba.np.ufunc.omppool, nnx.threads as t; "
            "print(t.openmp_libraries()[0])")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def foreign_libgomp(tmp_path_factory):
    """A second copy of libgomp under another file name: a runtime that is not Numba's, loaded
    globally before nnx, as PyTorch's libgomp.so.1 is (without needing torch)."""
    src = _system_libgomp()
    dst = tmp_path_factory.mktemp("omp") / "libgomp-foreign.so.1"
    dst.write_bytes(open(src, "rb").read())
    ctypes.CDLL(str(dst))  # loadable at all
    return str(dst)


@needs_omp
def test_nothing_loaded_first_needs_nothing(tmp_path):
    report, target = run_child(tmp_path)
    assert report["state"] == "not needed" and report["layer"] == "omp"
    assert target is not None and "foreign" not in target


@needs_omp
def test_a_runtime_loaded_first_is_not_numbas(tmp_path, foreign_libgomp):
    report, target = run_child(tmp_path, first=foreign_libgomp)
    assert report["state"] == "isolated", report
    assert report["foreign"] == [foreign_libgomp]
    assert target is not None and target != foreign_libgomp, target  # Numba's own runtime
    assert os.path.realpath(target) == os.path.realpath(report["runtime"])
    assert report["threads"] >= 1 and report["layer"] == "omp"
    # and the same training steps give the same weights as in a process without it
    plain, _ = run_child(tmp_path, bindings=False)
    assert report["weights"] == plain["weights"]


@needs_omp
def test_without_the_fix_numba_binds_to_the_runtime_loaded_first(tmp_path, foreign_libgomp):
    """What happened before (NNX_OPENMP_ISOLATE=0 restores it): the regression this guards."""
    report, target = run_child(tmp_path, first=foreign_libgomp,
                               extra_env={"NNX_OPENMP_ISOLATE": "0"})
    assert report["state"] == "off"
    assert target == foreign_libgomp


@needs_omp
def test_one_shared_runtime_makes_numba_kernels_serial(tmp_path):
    """When the runtime loaded first *is* the one Numba links (one libgomp for everything, as
    in conda), there is nothing else to bind to: Numba's kernels run serially instead."""
    report, target = run_child(tmp_path, first=_system_libgomp())
    assert report["state"] == "serial", report
    assert report["threads"] == 1


@needs_omp
@pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                    reason="PyTorch is not installed (pip install nnx-framework[torch])")
def test_torch_imported_first(tmp_path):
    report, target = run_child(tmp_path, first="torch")
    assert report["state"] in ("isolated", "serial"), report
    if report["state"] == "isolated":  # the wheel's libgomp.so.1 is torch's own copy
        assert target is not None and "torch" not in target, target
        assert any("torch" in p for p in report["foreign"])
    else:
        assert report["threads"] == 1
    plain, _ = run_child(tmp_path, bindings=False)
    assert report["weights"] == plain["weights"]
