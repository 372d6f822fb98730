"""OpenBLAS loaded before nnx (NumPy or PyTorch imported first) read its thread timeout then and
would spin after every GEMM: nnx has it re-read the environment and restart its workers with the
short timeout (compat.blas_restarted). Where that is declined (NNX_BLAS_RESTART=0, or the user
set a long timeout), nnx detects the spinning (compat.blas_spins) and runs the Numba kernels
serially next to it (numba_dispatch.SERIAL_NEXT_TO_BLAS)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nnx import threads

PROBE = ("from nnx import compat; from nnx.kernels import numba_dispatch as d; "
         "print(compat.blas_spins, d.SERIAL_NEXT_TO_BLAS, d.nchunks(1 << 30))")
# the loaded OpenBLAS's own view of its timeout, and whether nnx restarted its workers
TIMEOUT = ("import ctypes; from nnx import compat, threads; "
           "lib = ctypes.CDLL(threads.mapped_libraries(lambda n: 'openblas' in n)[0]); "
           "print(lib.openblas_thread_timeout(), compat.blas_restarted)")


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
def test_numpy_first_restarts_blas_workers_with_the_short_timeout():
    pytest.importorskip("numba")
    # NumPy first, BLAS workers already running: restarted, so nothing spins and kernels stay
    # parallel
    warm = "import numpy; a = numpy.ones((300, 300), numpy.float32); a @ a; import nnx; "
    spins, serial, chunks = _run(warm + PROBE)
    assert (spins, serial) == ("False", "False") and int(chunks) >= 1
    assert _run(warm + TIMEOUT) == ["4", "True"]
    if _has_torch():  # PyTorch imports NumPy: the same restart
        assert _run("import torch; import nnx; " + TIMEOUT) == ["4", "True"]


@pytest.mark.skipif(not threads.mapped_libraries(lambda n: "openblas" in n),
                    reason="NumPy here does not use OpenBLAS")
def test_numpy_first_without_restart_means_serial_kernels():
    pytest.importorskip("numba")
    spins, serial, chunks = _run("import numpy, nnx; " + PROBE, NNX_BLAS_RESTART="0")
    assert (spins, serial, chunks) == ("True", "True", "1")
    assert _run("import numpy, nnx; " + TIMEOUT, NNX_BLAS_RESTART="0") == ["0", "False"]
    # a long timeout the user chose is kept: no restart, serial kernels
    spins, serial, _ = _run("import numpy, nnx; " + PROBE, OPENBLAS_THREAD_TIMEOUT="20")
    assert (spins, serial) == ("True", "True")
    spins, serial, _ = _run("import nnx, numpy; " + PROBE)  # nnx first: short timeout applies
    assert (spins, serial) == ("False", "False")
    spins, _, _ = _run("import numpy, nnx; " + PROBE, OPENBLAS_THREAD_TIMEOUT="4")
    assert spins == "False"  # the user set a short timeout before NumPy loaded


def _has_torch() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def test_restart_declined_without_a_timeout_or_when_disabled():
    assert not threads.restart_blas_workers({"NNX_BLAS_RESTART": "0",
                                             "OPENBLAS_THREAD_TIMEOUT": "4"})
    assert not threads.restart_blas_workers({"OPENBLAS_THREAD_TIMEOUT": "short"})


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


def test_restart_declined_off_the_main_thread():
    import threading

    out = []
    t = threading.Thread(target=lambda: out.append(
        threads.restart_blas_workers({"OPENBLAS_THREAD_TIMEOUT": "4"})))
    t.start()
    t.join()
    assert out == [False]
