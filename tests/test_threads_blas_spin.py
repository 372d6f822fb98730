"""OpenBLAS loaded before nnx spins after every GEMM: nnx detects it (compat.blas_spins) and runs
the Numba kernels serially next to it (numba_dispatch.SERIAL_NEXT_TO_BLAS)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nnx import threads

PROBE = ("from nnx import compat; from nnx.kernels import numba_dispatch as d; "
         "print(compat.blas_spins, d.SERIAL_NEXT_TO_BLAS, d.nchunks(1 << 30))")


def _run(code, **env):
    import os

    e = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    e.update(env)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.mark.skipif(not threads.mapped_libraries(lambda n: "openblas" in n),
                    reason="NumPy here does not use OpenBLAS")
def test_numpy_first_means_serial_kernels():
    pytest.importorskip("numba")
    spins, serial, chunks = _run("import numpy, nnx; " + PROBE)
    assert (spins, serial, chunks) == ("True", "True", "1")
    spins, serial, _ = _run("import nnx, numpy; " + PROBE)  # nnx first: short timeout applies
    assert (spins, serial) == ("False", "False")
    spins, _, _ = _run("import numpy, nnx; " + PROBE, OPENBLAS_THREAD_TIMEOUT="4")
    assert spins == "False"  # the user set a short timeout before NumPy loaded


def test_blas_timeout_at_load_reads_the_environment():
    loaded = bool(threads.mapped_libraries(lambda n: "openblas" in n))
    if not loaded:
        assert threads.blas_timeout_at_load({}) is None
        return
    assert threads.blas_timeout_at_load({}) == 28  # OpenBLAS's default
    assert threads.blas_timeout_at_load({"OPENBLAS_THREAD_TIMEOUT": "4"}) == 4
    assert threads.blas_timeout_at_load({"OPENBLAS_THREAD_TIMEOUT": "x"}) is None


def test_nchunks_serial_when_blas_spins(monkeypatch):
    numba_dispatch = pytest.importorskip("nnx.kernels.numba_dispatch")
    monkeypatch.setattr(numba_dispatch, "SERIAL_NEXT_TO_BLAS", True)
    assert numba_dispatch.nchunks(1 << 30) == 1
    monkeypatch.setattr(numba_dispatch, "SERIAL_NEXT_TO_BLAS", False)
    import numba

    assert numba_dispatch.nchunks(1 << 30) == numba.get_num_threads()
