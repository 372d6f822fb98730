"""Optional imports live here and only here, so `import nnx` works on any machine.

Everything else asks this module (`has_numba`, `has_cupy`, `has_cupy_gpu()`,
`has_matplotlib()`) instead of importing numba or cupy itself. CUDA probing is lazy: importing
nnx never touches a GPU.

Before Numba is imported, this module also settles the process's threads (`nnx.threads`): the
OpenMP wait policy, per-process thread counts under an MPI launcher (`thread_plan`), and, when
an OpenMP runtime such as PyTorch's was loaded before nnx, an OpenMP runtime of Numba's own
(`openmp_state`), so that the import order does not change the speed of Numba's kernels.
"""

from __future__ import annotations

import functools
import importlib.util
import os

from . import threads

# OpenMP runtimes already in the process before nnx set OMP_WAIT_POLICY (PyTorch's libgomp when
# torch was imported first): they read their settings when they loaded. See nnx.threads.
_OPENMP_BEFORE_NNX = threads.openmp_libraries()

# Numba's OpenMP workers and OpenBLAS's workers spin against each other on small machines
# (8-35x slower steps measured on 2 cores). A passive wait policy makes idle workers sleep.
# It only takes effect if set before the first parallel launch, so set it at import unless
# the user chose a policy themselves.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")
# OpenBLAS's own workers keep spinning ~0.1 s after each GEMM and slow the fused Numba kernels
# that follow (Adam over 535k params: 282 -> 172 us with a short timeout). Read by OpenBLAS at
# load time, so this only helps when nnx is imported before NumPy's BLAS is first loaded.
_BLAS_TIMEOUT_AT_LOAD = threads.blas_timeout_at_load()  # before the default below is set
_USER_BLAS_TIMEOUT = "OPENBLAS_THREAD_TIMEOUT" in os.environ
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
# NumPy's OpenBLAS loaded before nnx (NumPy, or PyTorch, which imports NumPy, imported first)
# with its default timeout: make it re-read the environment and restart its workers, so the
# short timeout applies anyway (nnx.threads.restart_blas_workers; NNX_BLAS_RESTART=0: don't).
_SPINS_AT_LOAD = _BLAS_TIMEOUT_AT_LOAD is not None and _BLAS_TIMEOUT_AT_LOAD > 8
blas_restarted = (_SPINS_AT_LOAD and not _USER_BLAS_TIMEOUT
                  and threads.restart_blas_workers())
# Otherwise (the restart declined, or the user asked for a long timeout) its workers do spin
# after each GEMM, and a parallel Numba kernel that follows a GEMM fights them for the cores:
# the zoo CNN step measured 75 ms (151 ms of CPU) against 48 ms with serial Numba kernels, 2
# threads, NumPy imported first. The Numba kernels then run serially (the GEMMs keep BLAS's
# threads); see numba_dispatch.nchunks.
blas_spins = _SPINS_AT_LOAD and not blas_restarted
# Threads per process: cores / local MPI ranks unless the user set them (nnx.threads). Before
# Numba is imported: it reads NUMBA_NUM_THREADS once, at import.
thread_plan = threads.configure()

try:  # pragma: no cover - depends on the machine
    import numba

    has_numba = True
    numba_version = numba.__version__
except Exception:  # ImportError, or a broken llvmlite
    numba = None
    has_numba = False
    numba_version = None

# With an OpenMP runtime loaded before nnx, Numba's OpenMP layer would bind to it and spin
# against OpenBLAS (2.3-3.2x slower steps with torch imported first): give it its own.
openmp_state = (threads.isolate_numba_openmp(numba, _OPENMP_BEFORE_NNX) if has_numba
                else {"state": "not needed", "detail": "Numba is not installed"})

try:  # pragma: no cover - depends on the machine
    import cupy

    has_cupy = True
    cupy_version = cupy.__version__
except Exception:
    cupy = None
    has_cupy = False
    cupy_version = None

# torch (a benchmark yardstick) and mpi4py (distributed) are looked up, not imported: importing
# torch costs seconds, and importing mpi4py.MPI initializes MPI.
has_torch = importlib.util.find_spec("torch") is not None
has_mpi4py = importlib.util.find_spec("mpi4py") is not None


def has_matplotlib() -> bool:
    """Whether matplotlib can be imported (for `nnx bench`'s plots); looked up, not imported.
    A `sys.modules["matplotlib"] = None` entry (an import blocked on purpose) counts as absent."""
    try:
        return importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):
        return False


@functools.lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """Number of CUDA devices CuPy can see (0 without CuPy, driver or GPU)."""
    if not has_cupy:
        return 0
    try:
        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:
        return 0


def has_cupy_gpu() -> bool:
    return cuda_device_count() > 0


def cupy_unavailable_reason() -> str:
    if not has_cupy:
        return "CuPy is not installed"
    try:
        cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # the driver's own words
        return f"CuPy is installed but CUDA is not usable: {exc}"
    return "CuPy sees no CUDA device"


@functools.lru_cache(maxsize=1)
def nvrtc_library() -> str | None:
    """The path (or loader name) of an NVRTC shared library, for compiling the CUDA sources
    without a GPU (tests/test_nvrtc_compile.py), or None. Looks in NVIDIA's pip wheels
    (`nvidia-cuda-nvrtc-cu12`, `nvidia-cuda-nvrtc` for CUDA 13), then the system loader's
    search path. Never imported at `import nnx`: probed on the first call only."""
    import ctypes.util
    import glob

    for pkg in ("nvidia.cuda_nvrtc", "nvidia.cu13", "nvidia"):
        try:
            spec = importlib.util.find_spec(pkg)
        except (ImportError, ValueError):
            spec = None
        for root in (spec.submodule_search_locations or []) if spec else []:
            hits = sorted(glob.glob(os.path.join(root, "**", "libnvrtc.so*"), recursive=True))
            hits = [h for h in hits if ".alt." not in h and "builtins" not in h]
            if hits:
                return hits[-1]
    return ctypes.util.find_library("nvrtc")
