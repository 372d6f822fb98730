"""The numpy backend: the reference kernels on NumPy arrays."""

NAME = "numpy"
INSTALL_HINT = "pip install numpy"


def is_available() -> bool:
    return True


def unavailable_reason() -> str:
    return ""


def create_ops(seed=None, dtype="float32", **options):
    from nnx.kernels.reference import Ops

    return Ops(seed=seed, dtype=dtype, **options)


def warmup(ops=None) -> dict:
    """Nothing to compile; returns the per-kernel compile seconds (none)."""
    return {}
