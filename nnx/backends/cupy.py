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


def devices() -> list[dict]:
    """The CUDA devices CuPy sees: [{"id", "name", "total_bytes", "compute_capability"}]
    (empty without CuPy or a GPU)."""
    if not compat.has_cupy_gpu():
        return []
    cupy = compat.cupy
    out = []
    for i in range(compat.cuda_device_count()):
        props = cupy.cuda.runtime.getDeviceProperties(i)
        name = props.get("name", b"")
        out.append({
            "id": i,
            "name": name.decode(errors="replace") if isinstance(name, bytes) else str(name),
            "total_bytes": int(props.get("totalGlobalMem", 0)),
            "compute_capability": f"{props.get('major', '?')}.{props.get('minor', '?')}",
        })
    return out


def memory_info(device: int | None = None) -> dict:
    """Memory of one GPU for `nnx info`: device name, total/free bytes, and CuPy's memory
    pool (bytes in use by arrays, bytes held in all). Without a GPU: {"available": False,
    "reason": ...}. Creates a CUDA context on the device if none exists yet."""
    if not compat.has_cupy_gpu():
        return {"available": False, "reason": compat.cupy_unavailable_reason()}
    cupy = compat.cupy
    dev = int(cupy.cuda.runtime.getDevice()) if device is None else int(device)
    with cupy.cuda.Device(dev):
        free, total = cupy.cuda.runtime.memGetInfo()
        pool = cupy.get_default_memory_pool()
        used, held = int(pool.used_bytes()), int(pool.total_bytes())
    info = next((d for d in devices() if d["id"] == dev), {"name": "?", "compute_capability": "?"})
    return {
        "available": True,
        "device": dev,
        "name": info["name"],
        "compute_capability": info["compute_capability"],
        "total_bytes": int(total),
        "free_bytes": int(free),
        "pool_used_bytes": used,
        "pool_total_bytes": held,
        "cupy_version": compat.cupy_version,
    }
