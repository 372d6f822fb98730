"""The numba backend: NumPy arrays, with Numba-JIT kernels on the hot paths."""

from nnx import compat

NAME = "numba"
INSTALL_HINT = "pip install numba"


def is_available() -> bool:
    return compat.has_numba


def unavailable_reason() -> str:
    return "" if compat.has_numba else "Numba is not installed (or llvmlite failed to load)"


def create_ops(seed=None, dtype="float32", **options):
    from nnx.kernels.numba_cpu import NumbaOps

    return NumbaOps(seed=seed, dtype=dtype, **options)


def warmup(ops=None) -> dict:
    """Compile every Numba kernel now (for float32 and float64); returns seconds per kernel."""
    from nnx.kernels.numba_cpu import warmup as _warmup

    return _warmup()
