"""The cupy backend: CuPy arrays on an NVIDIA GPU, with fused CUDA kernels on the hot paths."""

from nnx import compat

NAME = "cupy"
INSTALL_HINT = (
    "pip install 'nnx-framework[gpu]' (CUDA 12: cupy-cuda12x) or "
    "'nnx-framework[gpu-cuda13]' (CUDA 13: cupy-cuda13x), on a machine with an NVIDIA GPU"
)


def is_available() -> bool:
    return compat.has_cupy_gpu()


def unavailable_reason() -> str:
    return compat.cupy_unavailable_reason()


def create_ops(seed=None, dtype="float32", **options):
    from nnx.kernels.cupy_gpu import CupyOps

    return CupyOps(seed=seed, dtype=dtype, **options)


def warmup(ops=None) -> dict:
    from nnx.kernels.cupy_gpu import warmup as _warmup

    return _warmup(ops)
