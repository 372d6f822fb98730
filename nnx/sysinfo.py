"""What nnx sees on this machine: versions, the BLAS NumPy links, the backends and why some are
unavailable, thread settings, GPU devices. A library module: `nnx info` prints `collect()`, and
the benchmark harness (`nnx.bench.machine.describe`) records it with every run."""

from __future__ import annotations

import os
import platform
import sys

from . import __version__, compat
from .backend import available_backends, backend_module, backend_names


def blas_info() -> dict:
    """The BLAS NumPy links and its thread count (threadpoolctl-free: from numpy's config)."""
    import numpy as np

    info = {"name": "unknown", "threads": None}
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg.get("Build Dependencies", {}).get("blas", {})
        info["name"] = f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:
        pass
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if os.environ.get(var):
            info["threads"] = f"{os.environ[var]} ({var})"
            break
    if info["threads"] is None:
        info["threads"] = f"{os.cpu_count()} (default: one per CPU)"
    return info


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
