"""What nnx sees on this machine: versions, the BLAS NumPy links, the backends and why some are
unavailable, thread settings (the counts in force, who chose them, and the OpenMP runtime of
Numba's kernels: `nnx.threads`), GPU devices. A library module: `nnx info` prints `collect()`,
and the benchmark harness (`nnx.bench.machine.describe`) records it with every run."""

from __future__ import annotations

import os
import platform
import sys

from . import __version__, compat, threads
from .backend import available_backends, backend_module, backend_names


def blas_info() -> dict:
    """The BLAS NumPy links and its thread count: the count in force (asked from the loaded
    library, threadpoolctl-free) and where it comes from (the user's variable, nnx's plan, or
    the library's default)."""
    import numpy as np

    info = {"name": "unknown", "threads": None}
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg.get("Build Dependencies", {}).get("blas", {})
        info["name"] = f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:
        pass
    now = threads.blas_threads()
    source = threads.status().get("blas", {}).get("source")
    if now is None:
        now = next((f"{os.environ[v]}" for v in threads.BLAS_VARS if os.environ.get(v)),
                   f"{os.cpu_count()}")
    info["threads"] = f"{now} ({source})" if source else f"{now}"
    return info


def thread_info() -> dict:
    """The thread plan of this process, one line per item (see `nnx.threads`)."""
    st = threads.status()
    if "error" in st and "numba" not in st:
        return {"error": st["error"]}
    now, omp = st.get("now", {}), st.get("openmp", {})
    out = {"cores": f"{st['cores']} ({st['cores_source']})",
           "local_ranks": f"{st['local_ranks'] or 'unknown'} ({st['ranks_source']})"}
    for lib in ("numba", "blas"):
        n = now.get(lib) if now.get(lib) is not None else st[lib]["threads"]
        out[lib] = f"{n if n is not None else '?'} ({st[lib]['source']})"
    if st.get("applied"):
        out["applied"] = "; ".join(f"{k}: {v}" for k, v in st["applied"].items())
    if st.get("oversubscribed"):
        out["warning"] = "more local ranks than cores: the host is oversubscribed"
    out["numba_openmp"] = f"{omp.get('state', '?')}" + (f" ({omp['detail']})"
                                                         if omp.get("detail") else "")
    if omp.get("foreign"):
        out["openmp_loaded_before_nnx"] = ", ".join(omp["foreign"])
    if compat.has_numba:
        from nnx.kernels import numba_blas  # imports Numba: only where it is installed

        out["numba_calls_blas"] = (f"{numba_blas.describe()} (LSTM and conv2d with 2+ Numba "
                                   "threads: a block of rows / group of samples per thread, "
                                   "BLAS 1 thread per call)")
    if compat.blas_restarted:
        out["blas_workers"] = ("restarted by nnx with OPENBLAS_THREAD_TIMEOUT="
                               f"{os.environ.get('OPENBLAS_THREAD_TIMEOUT')} (NumPy's OpenBLAS "
                               "loaded before nnx; NNX_BLAS_RESTART=0 to leave it)")
    if compat.blas_spins:
        out["numba_kernels"] = ("serial: NumPy's OpenBLAS loaded before nnx and spins after "
                                "each GEMM (import nnx before NumPy, or set "
                                "OPENBLAS_THREAD_TIMEOUT=4 and leave NNX_BLAS_RESTART unset, "
                                "for parallel Numba kernels)")
    return out


def collect() -> dict:
    """Versions, BLAS, backends (available and why not), thread settings, GPU devices."""
    import numpy as np

    out = {
        "nnx": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "numpy": np.__version__,
        "numba": compat.numba_version or "not installed",
        "cupy": compat.cupy_version or "not installed",
        "blas": blas_info(),
        "threads": thread_info(),
        "available_backends": available_backends(),
        "unavailable": {n: backend_module(n).unavailable_reason()
                        for n in backend_names() if n not in available_backends()},
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "NNX_BACKEND": os.environ.get("NNX_BACKEND"),
    }
    if compat.has_numba:
        out["numba_threads"] = compat.numba.config.NUMBA_NUM_THREADS
        out["numba_threading_layer"] = compat.numba.config.THREADING_LAYER
    if compat.has_cupy_gpu():
        mod = backend_module("cupy")
        for fn in ("devices", "memory_info"):
            if hasattr(mod, fn):
                try:
                    out[fn] = getattr(mod, fn)()
                except Exception as exc:  # a broken driver must not break `nnx info`
                    out[fn] = f"error: {exc}"
    return out
