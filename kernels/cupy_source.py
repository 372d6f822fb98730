"""The CUDA sources of the CuPy backend: reading `cuda/*.cu` (with nnx_common.cuh inlined),
parsing their kernel signatures, compiling each module lazily with `cupy.RawModule`, and the
launch geometry of the kernels.

Kept apart from the overrides so the sources can be read, parsed and checked without CuPy or a
GPU (tests, tooling): nothing here imports CuPy; what needs it takes the CuPy module as `xp`.
"""

from __future__ import annotations

import os
import re
import threading

import numpy

CUDA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cuda")
COMMON_HEADER = "nnx_common.cuh"
MODULE_FILES = {"dense": "dense.cu", "loss": "loss.cu", "optim": "optim.cu"}
NVRTC_OPTIONS: tuple[str, ...] = ()  # CuPy picks the C++ standard; the sources need C++11

BLOCK = 256  # threads per block of the elementwise kernels
MAX_ROW_THREADS = 256  # NNX_MAX_ROW_THREADS in nnx_common.cuh
_INT32_MAX = 2**31 - 1


# -- CUDA sources: reading, signatures, lazy compilation ------------------------------------

_KERNEL_RE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)', re.S)
_SCALAR_TYPES = {
    "int": numpy.int32,
    "long long": numpy.int64,
    "float": numpy.float32,
    "double": numpy.float64,
}
_POINTER_DTYPES = {
    "float": numpy.dtype(numpy.float32),
    "double": numpy.dtype(numpy.float64),
    "nnx_half_t": numpy.dtype(numpy.float16),
    "int": numpy.dtype(numpy.int32),
    "long long": numpy.dtype(numpy.int64),
}


def read_source(module: str) -> str:
    """The CUDA source of `module` ("dense", "loss", "optim") with nnx_common.cuh inlined, as
    it goes to NVRTC (inlined rather than included so CuPy's cache key covers the header)."""
    with open(os.path.join(CUDA_DIR, MODULE_FILES[module]), encoding="utf-8") as f:
        text = f.read()
    with open(os.path.join(CUDA_DIR, COMMON_HEADER), encoding="utf-8") as f:
        common = f.read()
    return text.replace(f'#include "{COMMON_HEADER}"', common, 1)


def parse_signatures(source: str) -> dict[str, tuple[tuple[bool, str, str], ...]]:
    """{kernel name: ((is_pointer, C type, parameter name), ...)} for every
    `extern "C" __global__ void` kernel in `source`."""
    kernels = {}
    for m in _KERNEL_RE.finditer(source):
        params = []
        for raw in m.group(2).split(","):
            raw = " ".join(raw.replace("*", " * ").split())
            if not raw:
                continue
            words = [w for w in raw.split() if w not in ("const", "__restrict__")]
            pname = words[-1]
            is_ptr = "*" in words
            ctype = " ".join(w for w in words[:-1] if w != "*")
            known = _POINTER_DTYPES if is_ptr else _SCALAR_TYPES
            if ctype not in known:
                raise ValueError(f"kernel {m.group(1)}: unsupported parameter type {raw!r}")
            params.append((is_ptr, ctype, pname))
        kernels[m.group(1)] = tuple(params)
    return kernels


_index_lock = threading.Lock()
_kernel_index: dict[str, tuple[str, tuple]] | None = None  # name -> (module, params)
_modules: dict[tuple[int, str], object] = {}  # (id(xp), module) -> RawModule
_kernels: dict[tuple[int, str], _Kernel] = {}  # (id(xp), kernel) -> _Kernel


def kernel_index() -> dict[str, tuple[str, tuple]]:
    """Every kernel of every module: {name: (module, parameters)} (parsed once, no GPU)."""
    global _kernel_index
    if _kernel_index is None:
        index = {}
        for module in MODULE_FILES:
            for name, params in parse_signatures(read_source(module)).items():
                index[name] = (module, params)
        _kernel_index = index
    return _kernel_index


def kernel_names() -> list[str]:
    """Every fused CUDA kernel (parsed from the sources; no GPU needed)."""
    return sorted(kernel_index())


class _Kernel:
    """A RawKernel plus its parsed signature: checks array arguments (dtype, C order) and
    converts scalars to the exact C types, so a Python int never lands in a `float` slot."""

    __slots__ = ("name", "params", "raw")

    def __init__(self, name, params, raw):
        self.name = name
        self.params = params
        self.raw = raw

    def __call__(self, grid: int, block: int, *args):
        if len(args) != len(self.params):
            raise TypeError(f"{self.name} takes {len(self.params)} arguments, got {len(args)}")
        conv = []
        for (is_ptr, ctype, pname), a in zip(self.params, args, strict=True):
            if is_ptr:
                want = _POINTER_DTYPES[ctype]
                if a.dtype != want or not a.flags.c_contiguous:
                    raise TypeError(
                        f"{self.name}: argument {pname!r} must be a C-contiguous {want} array, "
                        f"got {a.dtype} (C-contiguous: {a.flags.c_contiguous})"
                    )
                conv.append(a)
            else:
                conv.append(_SCALAR_TYPES[ctype](a))
        self.raw((int(grid),), (int(block),), tuple(conv))

    def load(self) -> None:
        """Compile (first use) and load the kernel on the current device."""
        kernel = getattr(self.raw, "kernel", None)  # RawKernel.kernel compiles and loads
        del kernel


def get_kernel(xp, name: str) -> _Kernel:
    """The kernel `name`, compiling its module with NVRTC on first use. CuPy caches compiled
    binaries on disk (~/.cupy/kernel_cache) and loaded kernels per device."""
    key = (id(xp), name)
    k = _kernels.get(key)
    if k is not None:
        return k
    index = kernel_index()
    if name not in index:
        raise KeyError(f"no CUDA kernel {name!r}; known: {', '.join(sorted(index))}")
    module, params = index[name]
    with _index_lock:
        mod = _modules.get((id(xp), module))
        if mod is None:
            mod = xp.RawModule(code=read_source(module), options=NVRTC_OPTIONS)
            _modules[(id(xp), module)] = mod
    k = _Kernel(name, params, mod.get_function(name))
    _kernels[key] = k
    return k


# -- launch geometry -------------------------------------------------------------------------


def _grid(n: int, max_grid: int) -> int:
    return max(1, min((n + BLOCK - 1) // BLOCK, max_grid))


def _row_threads(cols: int) -> int:
    t = 32
    while t < cols and t < MAX_ROW_THREADS:
        t <<= 1
    return t
