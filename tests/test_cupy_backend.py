"""Tests of the CuPy/CUDA backend (nnx/kernels/cupy_gpu.py + kernels/cuda/*.cu).

Three layers:

1. Structure, no GPU, no compiler (run everywhere): the module imports without CuPy, the
   backend refuses clearly, the CUDA sources ship as package data, every kernel the Python
   side uses exists with a signature it can marshal, overrides keep the base signatures.
2. Kernel tests against the NumPy reference, run twice through one `make_ops` fixture:
   - "gpu" (`@pytest.mark.gpu`): real CuPy on a CUDA device; skipped with "no CUDA GPU".
   - "emu": the SAME test bodies on the CPU. The .cu sources are compiled with the host C++
     compiler against a small CUDA shim (grid/block indices, `__syncthreads` as a barrier of
     ucontext coroutines, `__shared__` as block-shared statics) and driven through a fake
     `cupy` module backed by NumPy. This checks the kernels' arithmetic, indexing and
     reductions and the Python orchestration (launch geometry, argument types, dtypes, mixed
     precision, loss scaling) without a GPU. It cannot check NVRTC, the PTX half conversions,
     cuBLAS, the memory model or performance: those are what the "gpu" runs are for.
   Outputs are poisoned with NaN before each call (emu: every `empty` is NaN-filled; gpu: a
   NaN-memsetting allocator) so an element a kernel forgets to write shows up as NaN.
3. An NVCC compile check of the sources (skipped where nvcc is missing).
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib
import importlib.resources
import inspect
import os
import re
import shutil
import subprocess
import types

import numpy
import pytest
from nnx.kernels import cupy_gpu
from nnx.kernels.cupy_gpu import CupyOps, DeviceOutOfMemoryError
from nnx.kernels.reference import ACTIVATIONS, Ops

from nnx import compat
from nnx.errors import BackendUnavailableError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = (1, 3, 33, 257, 1025)
FUSED_ACTS = ("identity", "relu", "leaky_relu", "sigmoid", "tanh", "gelu", "softmax")


# =============================================================================================
# 1. structure (no GPU)
# =============================================================================================


def test_module_imports_without_cupy_and_class_exists():
    mod = importlib.import_module("nnx.kernels.cupy_gpu")
    assert mod.CupyOps.xp is compat.cupy  # None where CuPy is missing
    assert mod.CupyOps.name == "cupy" and mod.CupyOps.on_host is False
    assert issubclass(mod.CupyOps, Ops)


@pytest.mark.skipif(compat.has_cupy_gpu(), reason="a CUDA GPU is available here")
def test_creating_cupy_ops_without_gpu_raises_backend_unavailable():
    with pytest.raises(BackendUnavailableError, match="cupy"):
        CupyOps()


@pytest.mark.skipif(compat.has_cupy_gpu(), reason="a CUDA GPU is available here")
def test_get_ops_cupy_names_available_backends_and_pip_extra():
    from nnx.backend import get_ops

    with pytest.raises(BackendUnavailableError) as info:
        get_ops("cupy")
    msg = str(info.value)
    assert "numpy" in msg  # the available backends are listed
    assert "nnx-framework[gpu]" in msg  # and how to install this one


def test_backend_module_helpers_work_without_gpu():
    from nnx.backends import cupy as backend

    info = backend.memory_info()
    assert isinstance(info, dict)
    if not compat.has_cupy_gpu():
        assert info["available"] is False and info["reason"]
        assert backend.devices() == []


def test_cuda_sources_are_package_data():
    root = importlib.resources.files("nnx.kernels.cuda")
    names = {p.name for p in root.iterdir()}
    for f in (*cupy_gpu.MODULE_FILES.values(), cupy_gpu.COMMON_HEADER):
        assert f in names, f"{f} missing from nnx.kernels.cuda"
        assert (root / f).read_text(encoding="utf-8").strip()
    with open(os.path.join(REPO, "pyproject.toml"), encoding="utf-8") as fh:
        pyproject = fh.read()
    assert re.search(r'"nnx\.kernels\.cuda"\s*=\s*\[[^\]]*"\*\.cu"', pyproject)
    assert re.search(r'"nnx\.kernels\.cuda"\s*=\s*\[[^\]]*"\*\.cuh"', pyproject)


def test_sources_parse_and_every_kernel_has_marshallable_signature():
    index = cupy_gpu.kernel_index()
    assert len(index) >= 30
    for module in cupy_gpu.MODULE_FILES:
        src = cupy_gpu.read_source(module)
        assert src.count("{") == src.count("}")
        # nnx_common.cuh is inlined and nothing else is included: nothing for NVRTC to find
        assert not re.search(r"^\s*#\s*include", src, re.M)
    for name, (_module, params) in index.items():
        assert params, name
        for is_ptr, ctype, _pname in params:
            table = cupy_gpu._POINTER_DTYPES if is_ptr else cupy_gpu._SCALAR_TYPES
            assert ctype in table, (name, ctype)


def test_every_kernel_referenced_in_cupy_gpu_exists_in_the_sources():
    index = cupy_gpu.kernel_index()
    with open(cupy_gpu.__file__, encoding="utf-8") as fh:
        text = fh.read()
    literals = set(re.findall(r'"(nnx_\w+)"', text)) | set(re.findall(r'f"(nnx_[\w{}]+)"', text))
    literals -= set(cupy_gpu._POINTER_DTYPES)  # the C type name nnx_half_t
    assert literals, "no kernel names found in cupy_gpu.py"
    variants = ("f32", "f64", "f16", "bf16")
    for lit in literals:
        if lit in index:
            continue
        if "{" in lit:  # f"nnx_softmax_ce_{kind}_{variant}"
            pattern = re.sub(r"\{\w+\}", r"\\w+", lit) + "$"
            assert any(re.match(pattern, n) for n in index), lit
        else:  # a family prefix completed with a variant suffix at run time
            assert lit.endswith("_"), f"{lit} is neither a kernel nor a family prefix"
            present = [v for v in variants if lit + v in index]
            assert present, f"no kernel {lit}<variant> in the sources"
    # every extern "C" kernel is used from Python
    for name in index:
        used = name in literals or any(
            name.startswith(lit) and lit.endswith("_") for lit in literals
        ) or any("{" in lit and re.match(re.sub(r"\{\w+\}", r"\\w+", lit) + "$", name)
                 for lit in literals)
        assert used, f"kernel {name} is never launched"


def test_variant_families_have_consistent_signatures():
    index = cupy_gpu.kernel_index()
    families: dict[str, list] = {}
    for name, (_m, params) in index.items():
        base = re.sub(r"_(f32|f64|f16|bf16)$", "", name)
        families.setdefault(base, []).append(tuple(p[2] for p in params))
    for base, sigs in families.items():
        assert len(set(sigs)) == 1, f"{base}: parameter names differ between variants"


def test_overrides_keep_the_base_signatures():
    checked = 0
    for name, member in vars(CupyOps).items():
        if name.startswith("_") or not callable(member) or not hasattr(Ops, name):
            continue
        base = getattr(Ops, name)
        assert inspect.signature(member) == inspect.signature(base), name
        checked += 1
    assert checked >= 15


def test_launch_helpers():
    assert cupy_gpu._row_threads(1) == 32
    assert cupy_gpu._row_threads(33) == 64
    assert cupy_gpu._row_threads(100000) == cupy_gpu.MAX_ROW_THREADS
    assert cupy_gpu._grid(0, 10) == 1 and cupy_gpu._grid(257, 10) == 2
    assert cupy_gpu._grid(10**9, 10) == 10


def test_kernel_wrapper_checks_argument_types():
    calls = []
    k = cupy_gpu._Kernel(
        "k", ((True, "float", "x"), (False, "long long", "n"), (False, "float", "a")),
        lambda grid, block, args: calls.append((grid, block, args)),
    )
    x = numpy.zeros(4, numpy.float32)
    k(2, 64, x, 4, 0.5)
    (grid, block, args), = calls
    assert grid == (2,) and block == (64,)
    assert type(args[1]) is numpy.int64 and type(args[2]) is numpy.float32
    with pytest.raises(TypeError, match="float32"):
        k(1, 32, numpy.zeros(4, numpy.float64), 4, 0.5)
    with pytest.raises(TypeError, match="C-contiguous"):
        k(1, 32, numpy.zeros((4, 4), numpy.float32).T, 4, 0.5)
    with pytest.raises(TypeError, match="takes 3"):
        k(1, 32, x, 4)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
@pytest.mark.parametrize("module", sorted(cupy_gpu.MODULE_FILES))
def test_sources_compile_with_nvcc(module, tmp_path):
    src = tmp_path / f"{module}.cu"
    src.write_text(cupy_gpu.read_source(module), encoding="utf-8")
    proc = subprocess.run(
        ["nvcc", "-ptx", "-arch=compute_75", "-std=c++14", "-Werror", "all-warnings",
         str(src), "-o", str(tmp_path / f"{module}.ptx")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ptx = (tmp_path / f"{module}.ptx").read_text()
    for name, (mod, _params) in cupy_gpu.kernel_index().items():
        if mod == module:
            assert f".entry {name}(" in ptx, name


# =============================================================================================
# 2a. the CPU emulation of the CUDA kernels (for the "emu" runs)
# =============================================================================================

_EMU_SHIM = r"""
// CUDA shim for running nnx's kernels on the CPU (tests only).
#include <math.h>
#include <stdio.h>
#include <ucontext.h>
#include <functional>
#include <vector>
struct nnx_emu_dim3 { unsigned int x, y, z; };
volatile nnx_emu_dim3 threadIdx = {0, 0, 0}, blockIdx = {0, 0, 0};
volatile nnx_emu_dim3 blockDim = {1, 1, 1}, gridDim = {1, 1, 1};
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __restrict__
namespace nnx_emu {
struct Thread { ucontext_t ctx; int state; };  // 0 runnable, 1 at barrier, 2 done
static ucontext_t sched;
static std::vector<Thread> threads;
static std::vector<char> stacks;
static const size_t kStack = 256 * 1024;
static unsigned cur = 0;
static std::function<void()>* body = nullptr;
static void trampoline() { (*body)(); threads[cur].state = 2; }
}
inline void __syncthreads() {
    nnx_emu::threads[nnx_emu::cur].state = 1;
    swapcontext(&nnx_emu::threads[nnx_emu::cur].ctx, &nnx_emu::sched);
}
inline int atomicOr(int* a, int v) { int o = *a; *a = o | v; return o; }
// Runs the blocks one after another; the threads of a block as coroutines that switch at
// __syncthreads. Returns -1 when some threads of a block finish while others wait at a barrier.
static int nnx_emu_launch(unsigned gx, unsigned bx, std::function<void()> fn) {
    using namespace nnx_emu;
    if (gx == 0 || bx == 0 || bx > 1024) return -2;
    gridDim.x = gx;
    blockDim.x = bx;
    threads.assign(bx, Thread());
    if (stacks.size() < bx * kStack) stacks.resize(bx * kStack);
    body = &fn;
    for (unsigned b = 0; b < gx; ++b) {
        blockIdx.x = b;
        for (unsigned t = 0; t < bx; ++t) {
            getcontext(&threads[t].ctx);
            threads[t].ctx.uc_stack.ss_sp = &stacks[t * kStack];
            threads[t].ctx.uc_stack.ss_size = kStack;
            threads[t].ctx.uc_link = &sched;
            makecontext(&threads[t].ctx, trampoline, 0);
            threads[t].state = 0;
        }
        for (;;) {
            for (unsigned t = 0; t < bx; ++t) {
                if (threads[t].state != 0) continue;
                cur = t;
                threadIdx.x = t;
                swapcontext(&sched, &threads[t].ctx);
            }
            unsigned done = 0;
            for (unsigned t = 0; t < bx; ++t) done += threads[t].state == 2;
            if (done == bx) break;
            if (done) return -1;
            for (unsigned t = 0; t < bx; ++t) threads[t].state = 0;
        }
    }
    return 0;
}
"""

_CTYPES = {"int": ctypes.c_int32, "long long": ctypes.c_int64, "float": ctypes.c_float,
           "double": ctypes.c_double}


class _EmuCompiler:
    """Compiles CUDA source (as CupyOps hands it to cupy.RawModule) into a shared library of
    `emu_<kernel>(grid, block, args...)` launchers."""

    def __init__(self, workdir, cxx):
        self.workdir = workdir
        self.cxx = cxx
        self.libs = {}

    def build(self, code: str):
        key = hashlib.sha256(code.encode()).hexdigest()[:16]
        if key in self.libs:
            return self.libs[key]
        sigs = cupy_gpu.parse_signatures(code)
        launchers = []
        for name, params in sigs.items():
            decl = ", ".join(
                f"{'nnx_half_t' if c == 'nnx_half_t' else c}{'*' if p else ''} a{i}"
                for i, (p, c, _n) in enumerate(params)
            )
            call = ", ".join(f"a{i}" for i in range(len(params)))
            launchers.append(
                f'extern "C" int emu_{name}(unsigned gx, unsigned bx, {decl}) '
                f"{{ return nnx_emu_launch(gx, bx, [=]() {{ {name}({call}); }}); }}"
            )
        src = os.path.join(self.workdir, f"emu_{key}.cpp")
        lib = os.path.join(self.workdir, f"emu_{key}.so")
        with open(src, "w", encoding="utf-8") as fh:
            fh.write(_EMU_SHIM + code + "\n" + "\n".join(launchers) + "\n")
        # -O0: the shim's barriers are invisible to an optimizer reasoning about statics
        proc = subprocess.run(
            [self.cxx, "-std=c++17", "-O0", "-fPIC", "-shared", "-w", src, "-o", lib],
            capture_output=True, text=True, timeout=600,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"emulation build failed:\n{proc.stderr[-6000:]}")
        dll = ctypes.CDLL(lib)
        funcs = {}
        for name, params in sigs.items():
            f = getattr(dll, f"emu_{name}")
            f.restype = ctypes.c_int
            f.argtypes = [ctypes.c_uint, ctypes.c_uint] + [
                ctypes.c_void_p if p else _CTYPES[c] for p, c, _n in params
            ]
            funcs[name] = (f, params)
        self.libs[key] = (dll, funcs)
        return self.libs[key]


class EmuArray(numpy.ndarray):
    """A 'device' array of the fake cupy: NumPy memory, CuPy's host/device distinctions."""

    @property
    def device(self):
        return _EmuDevice(0)

    def get(self, stream=None):
        return numpy.array(self, copy=True).view(numpy.ndarray)


class _EmuDevice:
    compute_capability = "80"

    def __init__(self, device_id=0):
        self.id = int(device_id)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def synchronize(self):
        pass


class _EmuOOM(MemoryError):
    def __init__(self, size, total, limit=0):
        super().__init__(
            f"Out of memory allocating {size:,} bytes (allocated so far: {total:,} bytes)."
        )
        self._size = size


def _poisoned(shape, dtype):
    a = numpy.empty(shape, dtype=dtype)
    if a.dtype.kind == "f":
        a.fill(numpy.nan)
    elif a.dtype.kind in "iu":
        a.fill(-7)
    return a.view(EmuArray)


def _to_emu(r):
    return r.view(EmuArray) if isinstance(r, numpy.ndarray) and not isinstance(r, EmuArray) else r


def _emu_wrap(f):
    return lambda *a, **k: _to_emu(f(*a, **k))


def make_emu_cupy(compiler) -> types.ModuleType:
    """A fake `cupy` module: NumPy underneath, EmuArray as the device array type, RawModule
    compiled by `compiler`, and 'GEMMs' that accumulate half precision in float32 like cuBLAS."""
    xp = types.ModuleType("emu_cupy")
    xp.ndarray = EmuArray
    for t in ("float16", "float32", "float64", "int32", "int64", "dtype", "nan"):
        setattr(xp, t, getattr(numpy, t))

    def asarray(a, dtype=None):
        if isinstance(a, EmuArray) and (dtype is None or numpy.dtype(dtype) == a.dtype):
            return a
        if isinstance(a, EmuArray):
            return a.astype(dtype)
        return numpy.array(a, dtype=dtype, copy=True).view(EmuArray)  # host -> device: a copy

    def ascontiguousarray(a, dtype=None):
        return numpy.ascontiguousarray(a, dtype=dtype).view(EmuArray)

    def matmul(a, b, out=None):
        if a.dtype == numpy.float16 and b.dtype == numpy.float16:
            r = (numpy.asarray(a, numpy.float32) @ numpy.asarray(b, numpy.float32))
            with numpy.errstate(over="ignore"):
                r = r.astype(numpy.float16)
        else:
            r = numpy.matmul(numpy.asarray(a), numpy.asarray(b))
        if out is not None:
            numpy.copyto(out, r, casting="unsafe")
            return out
        return r.view(EmuArray)

    xp.asarray = asarray
    xp.array = asarray
    xp.ascontiguousarray = ascontiguousarray
    xp.matmul = matmul
    xp.empty = lambda shape, dtype=numpy.float32: _poisoned(shape, dtype)
    xp.empty_like = lambda a, dtype=None: _poisoned(a.shape, dtype or a.dtype)
    xp.zeros = lambda shape, dtype=numpy.float32: numpy.zeros(shape, dtype).view(EmuArray)
    xp.full = lambda shape, v, dtype=None: numpy.full(shape, v, dtype).view(EmuArray)
    xp.copyto = numpy.copyto
    xp.asnumpy = lambda a: numpy.array(a).view(numpy.ndarray)
    for fname in ("argsort", "sign", "isfinite", "maximum", "where", "exp", "log", "log1p",
                  "abs", "tanh", "sqrt", "arange"):
        f = getattr(numpy, fname)
        setattr(xp, fname, _emu_wrap(f))

    class _Rng:
        def __init__(self, seed):
            self.g = numpy.random.default_rng(seed)

        def __getattr__(self, name):
            f = getattr(self.g, name)
            return lambda *a, **k: _to_emu(f(*a, **k))

    xp.random = types.SimpleNamespace(default_rng=_Rng)

    class RawModule:
        def __init__(self, *, code=None, options=()):
            self.code = code
            self.options = options

        def get_function(self, name):
            _dll, funcs = compiler.build(self.code)
            f, params = funcs[name]
            return _EmuKernel(name, f, params)

    xp.RawModule = RawModule

    class _Pool:
        def used_bytes(self):
            return 0

        def free_bytes(self):
            return 0

        def total_bytes(self):
            return 0

        malloc = None

    runtime = types.SimpleNamespace(
        getDevice=lambda: 0, getDeviceCount=lambda: 1, memGetInfo=lambda: (8 << 30, 16 << 30),
        getDeviceProperties=lambda i: {"name": b"emulated", "totalGlobalMem": 0},
    )
    xp.cuda = types.SimpleNamespace(
        Device=_EmuDevice, runtime=runtime, memory=types.SimpleNamespace(OutOfMemoryError=_EmuOOM),
        MemoryPool=_Pool,
    )
    xp.get_default_memory_pool = _Pool
    return xp


class _EmuKernel:
    def __init__(self, name, func, params):
        self.name, self.func, self.params = name, func, params

    @property
    def kernel(self):
        return self

    def __call__(self, grid, block, args, shared_mem=0):
        assert isinstance(grid, tuple) and len(grid) == 1 and grid[0] >= 1, grid
        assert isinstance(block, tuple) and len(block) == 1 and 1 <= block[0] <= 1024, block
        conv = []
        for (is_ptr, ctype, pname), a in zip(self.params, args, strict=True):
            if is_ptr:
                if not isinstance(a, EmuArray):
                    raise TypeError(
                        f"{self.name}: {pname} is a host {type(a).__name__}, not a device array"
                    )
                conv.append(a.ctypes.data)
            else:
                want = cupy_gpu._SCALAR_TYPES[ctype]
                if type(a) is not want:
                    raise TypeError(
                        f"{self.name}: {pname} passed as {type(a).__name__}, kernel wants {ctype}"
                    )
                conv.append(a.item())
        rc = self.func(grid[0], block[0], *conv)
        if rc == -1:
            raise RuntimeError(f"{self.name}: divergent __syncthreads (some threads exited)")
        if rc != 0:
            raise RuntimeError(f"{self.name}: bad launch {grid} x {block}")


@pytest.fixture(scope="session")
def emu_cupy(tmp_path_factory):
    cxx = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler for the CUDA emulation")
    return make_emu_cupy(_EmuCompiler(str(tmp_path_factory.mktemp("cuda_emu")), cxx))


def _emu_ops_class(xp):
    # max_grid=3: every grid-stride loop and row loop runs several rounds (and emulates fast)
    return type("EmuCupyOps", (CupyOps,), {"xp": xp, "max_grid": 3})


# =============================================================================================
# 2b. kernel tests vs the reference: "gpu" (real CuPy) and "emu" (CPU emulation)
# =============================================================================================


_POISON_POOL = []  # one pool for the session: arrays may outlive a test, never their pool


def _gpu_poison_allocator():
    cp = compat.cupy
    if not _POISON_POOL:
        _POISON_POOL.append(cp.cuda.MemoryPool())
    pool = _POISON_POOL[0]

    def alloc(size):
        mem = pool.malloc(size)
        if size:
            mem.memset_async(0xFF, size)  # all-ones bytes: NaN in float16/32/64
        return mem

    return pool, alloc


@pytest.fixture(params=[pytest.param("gpu", marks=pytest.mark.gpu), "emu"])
def make_ops(request):
    """make_ops(**options) -> a CupyOps (real GPU or CPU emulation), outputs poisoned."""
    if request.param == "gpu":
        if not compat.has_cupy_gpu():
            pytest.skip("no CUDA GPU")
        pool, alloc = _gpu_poison_allocator()
        with compat.cupy.cuda.using_allocator(alloc):
            yield CupyOps
        compat.cupy.cuda.Device().synchronize()
        pool.free_all_blocks()
    else:
        yield _emu_ops_class(request.getfixturevalue("emu_cupy"))


def H(ops, a):
    """Host NumPy copy."""
    return numpy.asarray(ops.to_host(a))


def close(actual, expected, tol):
    actual = numpy.asarray(actual, dtype=numpy.float64)
    expected = numpy.asarray(expected, dtype=numpy.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert not numpy.isnan(actual).any() or numpy.isnan(expected).any(), "unwritten (NaN) output"
    scale = max(1.0, float(numpy.abs(expected).max(initial=0.0)))
    numpy.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale)


TOL = {"float64": 1e-10, "float32": 3e-5, "fp16": 2e-2, "bf16": 4e-2}


def _rounded(a, mode):
    """What the mixed-precision GEMM sees: `a` rounded to the activation precision."""
    if mode not in ("fp16", "bf16"):
        return numpy.asarray(a)
    a = numpy.asarray(a, numpy.float32)
    if mode == "fp16":
        return a.astype(numpy.float16).astype(numpy.float32)
    if mode == "bf16":
        u = a.view(numpy.uint32).astype(numpy.uint64)
        u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
        return u.astype(numpy.uint32).view(numpy.float32)
    return a


def _setup(make_ops, mode, seed=0):
    """(ops, ref, host dtype, tolerance) for a precision mode."""
    if mode in ("fp16", "bf16"):
        ops = make_ops(seed=seed, precision=mode, loss_scale=None)
        return ops, Ops(dtype="float32"), numpy.float32, TOL[mode]
    return make_ops(seed=seed, dtype=mode), Ops(dtype=mode), numpy.dtype(mode), TOL[mode]


DENSE_SHAPES = [(1, 1, 1), (3, 33, 3), (33, 3, 257), (257, 17, 33), (5, 8, 1025)]
MODES = ["float32", "float64", "fp16", "bf16"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("activation", FUSED_ACTS)
@pytest.mark.parametrize("shape", DENSE_SHAPES)
def test_dense_forward_backward_matches_reference(make_ops, mode, activation, shape):
    n, k, m = shape
    ops, ref, dt, tol = _setup(make_ops, mode)
    rng = numpy.random.default_rng(n * 1000 + k + m)
    x = rng.standard_normal((n, k)).astype(dt)
    W = (rng.standard_normal((k, m)) / numpy.sqrt(k)).astype(dt)
    b = rng.standard_normal(m).astype(dt)
    dy = rng.standard_normal((n, m)).astype(dt)
    xr, Wr = _rounded(x, mode).astype(dt), _rounded(W, mode).astype(dt)
    dyr = _rounded(dy, mode).astype(dt)

    y, saved = ops.dense_forward(ops.asarray(x), ops.asarray(W), ops.asarray(b), activation)
    y_ref, saved_ref = ref.dense_forward(xr, Wr, b, activation)
    close(H(ops, y), y_ref, tol)
    if saved_ref is None:
        assert saved is None
    else:
        close(H(ops, saved), saved_ref, tol)
    if mode == "fp16":
        assert y.dtype == numpy.float16

    # backward into poisoned views of a flat gradient buffer
    gdt = numpy.float32 if mode in ("fp16", "bf16") else dt
    grads = ops.asarray(numpy.full(k * m + m, numpy.nan, gdt))
    dW_out, db_out = grads[: k * m].reshape(k, m), grads[k * m:]
    dx, dW, db = ops.dense_backward(
        ops.asarray(dyr).astype(y.dtype), ops.asarray(x), ops.asarray(W), saved, activation,
        True, dW_out, db_out,
    )
    # the reference from the same (rounded) saved values the device kept
    saved_h = None if saved is None else H(ops, saved).astype(dt)
    dx_ref, dW_ref, db_ref = ref.dense_backward(dyr, xr, Wr, saved_h, activation)
    close(H(ops, dW_out), dW_ref, tol)
    close(H(ops, db_out), db_ref, tol)
    close(H(ops, dx), dx_ref, tol)
    close(H(ops, dW), dW_ref, tol)  # returned and written into the flat buffer
    _, _, db2 = ops.dense_backward(
        ops.asarray(dyr).astype(y.dtype), ops.asarray(x), ops.asarray(W), saved, activation,
        False,
    )
    close(H(ops, db2), db_ref, tol)


@pytest.mark.parametrize("mode", ["float32", "float64"])
def test_dense_leading_dims_and_no_bias(make_ops, mode):
    ops, ref, dt, tol = _setup(make_ops, mode)
    rng = numpy.random.default_rng(1)
    x = rng.standard_normal((2, 3, 5)).astype(dt)
    W = rng.standard_normal((5, 7)).astype(dt)
    y, saved = ops.dense_forward(ops.asarray(x), ops.asarray(W), None, "relu")
    y_ref, _ = ref.dense_forward(x, W, None, "relu")
    assert y.shape == (2, 3, 7)
    close(H(ops, y), y_ref, tol)
    dy = rng.standard_normal((2, 3, 7)).astype(dt)
    dx, dW, db = ops.dense_backward(ops.asarray(dy), ops.asarray(x), ops.asarray(W), saved, "relu")
    saved_ref = ref.dense_forward(x, W, None, "relu")[1]
    dx_ref, dW_ref, db_ref = ref.dense_backward(dy, x, W, saved_ref, "relu")
    assert dx.shape == x.shape
    close(H(ops, dx), dx_ref, tol)
    close(H(ops, dW), dW_ref, tol)
    close(H(ops, db), db_ref, tol)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("activation", [a for a in ACTIVATIONS if a != "identity"])
@pytest.mark.parametrize("size", SIZES)
def test_activation_forward_backward(make_ops, mode, activation, size):
    ops, ref, dt, tol = _setup(make_ops, mode)
    rng = numpy.random.default_rng(size)
    act_dt = numpy.float16 if mode == "fp16" else dt
    x = (3 * rng.standard_normal((2, size))).astype(act_dt)
    dy = rng.standard_normal((2, size)).astype(act_dt)
    y, saved = ops.activation_forward(ops.asarray(x, dtype=act_dt), activation)
    xr = x.astype(dt)  # bf16 mode rounds outputs, not inputs, of elementwise kernels
    y_ref, saved_ref = ref.activation_forward(xr, activation)
    close(H(ops, y), y_ref, tol)
    dx = ops.activation_backward(ops.asarray(dy, dtype=act_dt), saved, activation)
    dx_ref = ref.activation_backward(
        dy.astype(dt),
        H(ops, saved).astype(dt), activation,
    )
    close(H(ops, dx), dx_ref, tol)


LABEL_KINDS = ["int32", "int64", "onehot", "soft"]
CE_SHAPES = [(1, 1), (3, 3), (33, 257), (3, 1025), (257, 33)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", LABEL_KINDS)
@pytest.mark.parametrize("shape", CE_SHAPES)
def test_softmax_cross_entropy_matches_reference(make_ops, mode, kind, shape):
    n, c = shape
    ops, ref, dt, tol = _setup(make_ops, mode)
    rng = numpy.random.default_rng(n + 7 * c)
    act_dt = numpy.float16 if mode == "fp16" else dt
    logits = (4 * rng.standard_normal((n, c))).astype(act_dt)
    labels = rng.integers(0, c, size=n)
    if kind in ("int32", "int64"):
        target = labels.astype(kind)
    elif kind == "onehot":
        target = numpy.eye(c, dtype=dt)[labels]
    else:
        p = rng.random((n, c))
        target = (p / p.sum(axis=1, keepdims=True)).astype(dt)
    loss, grad = ops.softmax_cross_entropy(ops.asarray(logits, dtype=act_dt), ops.asarray(target))
    lr = logits.astype(numpy.float32) if mode == "fp16" else logits  # bf16: inputs as given
    loss_ref, grad_ref = ref.softmax_cross_entropy(lr, target)
    assert getattr(loss, "ndim", 0) == 0
    if compat.cupy is not None and ops.xp is compat.cupy:
        assert isinstance(loss, compat.cupy.ndarray)  # stays on the device: no sync
    close(ops.to_float(loss), float(loss_ref), tol)
    assert grad.dtype == act_dt
    close(H(ops, grad), grad_ref, tol)


def test_softmax_cross_entropy_bad_label_gives_nan_row(make_ops):
    ops = make_ops(seed=0)
    logits = ops.asarray(numpy.zeros((3, 4), numpy.float32))
    loss, grad = ops.softmax_cross_entropy(logits, ops.asarray(numpy.array([0, 9, 1], numpy.int64)))
    g = H(ops, grad)
    assert numpy.isnan(ops.to_float(loss))
    assert numpy.isnan(g[1]).all() and numpy.isfinite(g[[0, 2]]).all()


@pytest.mark.parametrize("size", (*SIZES, 100003))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "opts",
    [dict(momentum=0.0), dict(momentum=0.9), dict(momentum=0.9, nesterov=True, weight_decay=0.01)],
)
def test_sgd_update_several_steps(make_ops, size, dtype, opts):
    ops, ref = make_ops(seed=0, dtype=dtype), Ops(dtype=dtype)
    rng = numpy.random.default_rng(size)
    p = rng.standard_normal(size).astype(dtype)
    v = numpy.zeros(size, dtype)
    P, V = ops.asarray(p), ops.asarray(v)
    for _ in range(4):
        g = rng.standard_normal(size).astype(dtype)
        ops.sgd_update(P, ops.asarray(g), V, 0.05, **opts)
        ref.sgd_update(p, g, v, 0.05, **opts)
    tol = 1e-12 if dtype == "float64" else 2e-6
    close(H(ops, P), p, tol)
    close(H(ops, V), v, tol)


@pytest.mark.parametrize("size", (*SIZES, 100003))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("wd,decoupled", [(0.0, False), (0.01, False), (0.01, True)])
def test_adam_and_adamw_several_steps(make_ops, size, dtype, wd, decoupled):
    ops, ref = make_ops(seed=0, dtype=dtype), Ops(dtype=dtype)
    rng = numpy.random.default_rng(size + 1)
    p = rng.standard_normal(size).astype(dtype)
    m, v = numpy.zeros(size, dtype), numpy.zeros(size, dtype)
    P, M, Vd = ops.asarray(p), ops.asarray(m), ops.asarray(v)
    for step in range(1, 6):
        g = rng.standard_normal(size).astype(dtype)
        ops.adam_update(P, ops.asarray(g), M, Vd, step, 1e-2, 0.9, 0.999, 1e-8, wd, decoupled)
        ref.adam_update(p, g, m, v, step, 1e-2, 0.9, 0.999, 1e-8, wd, decoupled)
    tol = 1e-12 if dtype == "float64" else 2e-5
    close(H(ops, P), p, tol)
    close(H(ops, M), m, tol)
    close(H(ops, Vd), v, tol)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("rate", [0.0, 0.3, 0.75])
def test_dropout_rate_and_mask_semantics(make_ops, mode, rate):
    ops, _ref, dt, _tol = _setup(make_ops, mode, seed=123)
    act_dt = numpy.float16 if mode == "fp16" else dt
    n = 200_000
    x = ops.asarray(numpy.ones((n // 100, 100), act_dt), dtype=act_dt)
    y, mask = ops.dropout_forward(x, rate)
    yh, mh = H(ops, y), H(ops, mask)
    assert y.dtype == act_dt and mask.dtype == act_dt
    keep = numpy.asarray(numpy.dtype(act_dt).type(1.0 / (1.0 - rate)), numpy.float64)
    if mode == "bf16":
        keep = _rounded(numpy.float32(1.0 / (1.0 - rate)), "bf16").astype(numpy.float64)
    assert set(numpy.unique(mh.astype(numpy.float64))) <= {0.0, float(keep)}
    dropped = float((mh == 0).mean())
    assert abs(dropped - rate) < 0.01, dropped  # ~7 sigma at n=2e5
    numpy.testing.assert_array_equal(yh, mh)  # x == 1
    dx = ops.backprop_dropout(y, mask)
    numpy.testing.assert_allclose(
        H(ops, dx).astype(numpy.float64), mh.astype(numpy.float64) ** 2, rtol=1e-2
    )
    # different draws each call, same draws after reseeding
    _, mask2 = ops.dropout_forward(x, 0.5)
    ops.seed(123)
    _, mask3 = ops.dropout_forward(x, rate)
    if rate:
        assert not numpy.array_equal(H(ops, mask2), mh)
    numpy.testing.assert_array_equal(H(ops, mask3), mh)


def test_half_conversion_rounding_matches_numpy(make_ops):
    """z (0 in fp16) + bias (arbitrary float32) is rounded to fp16 by the epilogue: compare
    with NumPy's float32 -> float16 rounding on ties, subnormals, overflow and specials."""
    ops = make_ops(seed=0, precision="fp16", loss_scale=None)
    specials = numpy.array(
        [0.0, -0.0, 1.0, 65504.0, 65519.99, 65520.0, 1e6, -1e6, numpy.inf, -numpy.inf,
         5.960464477539063e-08, 2.9802322387695312e-08, 2.98023259e-08, 8.940696716308594e-08,
         6.097555160522461e-05, 6.103515625e-05, 1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11,
         1.0 + 2.0**-11 + 2.0**-20, 3.14159265, -2.71828, 1e-7, 1e-5],
        numpy.float32,
    )
    rnd = numpy.random.default_rng(0).standard_normal(4000).astype(numpy.float32)
    bias = numpy.concatenate([specials, rnd * numpy.float32(1e-4), rnd * 1000])
    bias = bias.astype(numpy.float32)
    x = ops.asarray(numpy.zeros((1, 1), numpy.float16), dtype=numpy.float16)
    W = ops.asarray(numpy.zeros((1, bias.size), numpy.float32))
    with numpy.errstate(over="ignore"):
        want = (numpy.float32(0.0) + bias).astype(numpy.float16)  # 0 + -0 = +0
    y, _ = ops.dense_forward(x, W, ops.asarray(bias), "identity")
    got = H(ops, y)[0]
    numpy.testing.assert_array_equal(got.view(numpy.uint16), want.view(numpy.uint16))


def test_bf16_rounding_matches_round_to_nearest_even(make_ops):
    ops = make_ops(seed=0, precision="bf16")
    vals = numpy.array(
        [1.0, 1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, 1.0 + 2.0**-8 + 2.0**-20, -3.3, 3.3e38,
         3.4e38, 1e-40, numpy.inf, -numpy.inf, 0.0],
        numpy.float32,
    )
    got = H(ops, ops._round_bf16(ops.asarray(vals)))
    with numpy.errstate(over="ignore"):
        numpy.testing.assert_array_equal(got, _rounded(vals, "bf16"))
    nan = ops.asarray(numpy.array([numpy.nan], numpy.float32))
    assert numpy.isnan(H(ops, ops._round_bf16(nan))).all()


def test_loss_scaling_skips_nonfinite_steps_and_adjusts_the_scale(make_ops):
    ops = make_ops(seed=0, precision="fp16", init_scale=1024.0, growth_interval=2)
    assert ops.amp_state()["scale"] == 1024.0
    p0 = numpy.linspace(-1, 1, 1025).astype(numpy.float32)
    P, V = ops.asarray(p0), ops.asarray(numpy.zeros_like(p0))
    M = ops.asarray(numpy.zeros_like(p0))
    # 1. an overflowed gradient: nothing changes, the scale halves
    g = numpy.ones_like(p0) * 1024
    g[500] = numpy.inf
    ops.adam_update(P, ops.asarray(g), M, V, 1, 0.1, 0.9, 0.999, 1e-8)
    st = ops.amp_state()
    assert st["found_inf"] and st["skipped_steps"] == 1 and st["scale"] == 512.0
    numpy.testing.assert_array_equal(H(ops, P), p0)
    numpy.testing.assert_array_equal(H(ops, M), 0)
    g[500] = numpy.nan
    ops.sgd_update(P, ops.asarray(g), V, 0.1, momentum=0.9)
    assert ops.amp_state()["scale"] == 256.0
    numpy.testing.assert_array_equal(H(ops, P), p0)
    # 2. finite (scaled) gradients: unscaled updates, then the scale doubles after 2 good steps
    ref = Ops()
    p, v = p0.copy(), numpy.zeros_like(p0)
    for _ in range(2):
        scale = ops.amp_state()["scale"]
        gs = numpy.linspace(0, 1, p0.size).astype(numpy.float32)
        ops.sgd_update(P, ops.asarray(gs * numpy.float32(scale)), V, 0.1, momentum=0.9)
        ref.sgd_update(p, gs, v, 0.1, momentum=0.9)
    st = ops.amp_state()
    assert not st["found_inf"] and st["scale"] == 512.0 and st["good_steps"] == 0
    close(H(ops, P), p, 1e-6)


def test_loss_kernels_scale_the_gradient(make_ops):
    ops = make_ops(seed=0, precision="fp16", init_scale=256.0)
    logits = numpy.random.default_rng(0).standard_normal((4, 5)).astype(numpy.float16)
    labels = numpy.array([0, 1, 2, 3], numpy.int32)
    d_logits = ops.asarray(logits, dtype=numpy.float16)
    loss, g = ops.softmax_cross_entropy(d_logits, ops.asarray(labels))
    loss_ref, g_ref = Ops().softmax_cross_entropy(logits.astype(numpy.float32), labels)
    close(ops.to_float(loss), float(loss_ref), 2e-2)  # the loss itself is not scaled
    close(H(ops, g) / 256.0, g_ref, 2e-2)
    _, gm = ops.mse(ops.asarray(logits, dtype=numpy.float16), ops.asarray(numpy.zeros((4, 5))))
    _, gm_ref = Ops().mse(logits.astype(numpy.float32), numpy.zeros((4, 5), numpy.float32))
    close(H(ops, gm) / 256.0, gm_ref, 2e-2)
    gg = ops.asarray(numpy.zeros(3, numpy.float32))
    ops.add_l1_l2_grad(gg, ops.asarray(numpy.array([1.0, -2.0, 0.0], numpy.float32)), 0.5, 0.25)
    close(H(ops, gg), numpy.array([1.0, -1.5, 0.0]) * 256.0, 1e-6)


@pytest.mark.parametrize("mode", ["float32", "fp16", "bf16"])
def test_tiny_mlp_trains(make_ops, mode):
    """A two-layer MLP on separable data: the loss must fall (end to end through the ops)."""
    ops = make_ops(seed=0, precision=None if mode == "float32" else mode)
    rng = numpy.random.default_rng(0)
    X = rng.standard_normal((64, 10)).astype(numpy.float32)
    yl = (X[:, 0] + X[:, 1] > 0).astype(numpy.int64)
    sizes = [(10, 16), (16,), (16, 2), (2,)]
    flat = ops.asarray(numpy.concatenate([
        (rng.standard_normal(s) * (0.3 if len(s) == 2 else 0.0)).ravel() for s in sizes
    ]).astype(numpy.float32))
    grads = ops.zeros(flat.size)
    m, v = ops.zeros(flat.size), ops.zeros(flat.size)
    views, gviews, off = [], [], 0
    for s in sizes:
        k = int(numpy.prod(s))
        views.append(flat[off: off + k].reshape(s))
        gviews.append(grads[off: off + k].reshape(s))
        off += k
    W1, b1, W2, b2 = views
    gW1, gb1, gW2, gb2 = gviews
    Xd, yd = ops.asarray(X), ops.asarray(yl)
    losses = []
    for step in range(1, 61):
        h, s1 = ops.dense_forward(Xd, W1, b1, "relu")
        out, _ = ops.dense_forward(h, W2, b2, "identity")
        loss, dout = ops.softmax_cross_entropy(out, yd)
        dh, _, _ = ops.dense_backward(dout, h, W2, None, "identity", True, gW2, gb2)
        ops.dense_backward(dh, Xd, W1, s1, "relu", False, gW1, gb1)
        ops.adam_update(flat, grads, m, v, step, 0.05, 0.9, 0.999, 1e-7)
        losses.append(ops.to_float(loss))
    assert numpy.isfinite(losses).all()
    assert losses[-1] < 0.5 * losses[0], losses[::10]


def test_conversions_round_trip(make_ops):
    ops = make_ops(seed=0)
    a = numpy.arange(12, dtype=numpy.float64).reshape(3, 4)
    d = ops.asarray(a)
    assert isinstance(d, ops.xp.ndarray) and d.dtype == numpy.float32
    back = ops.to_host(d)
    assert type(back) is numpy.ndarray
    numpy.testing.assert_array_equal(back, a)
    labels = ops.asarray(numpy.array([1, 2, 3], numpy.int64))
    assert labels.dtype == numpy.int64
    assert ops.asarray([[1.5, 2.5]]).dtype == numpy.float32
    assert ops.asarray(d) is d or ops.to_host(ops.asarray(d)).tolist() == a.tolist()
    assert ops.asarray(a, dtype="float64").dtype == numpy.float64
    with pytest.raises(TypeError, match=r"numpy\.ndarray.*cupy\.ndarray"):
        ops.asarray(object())
    with pytest.raises(TypeError, match="cupy.ndarray"):
        ops.asarray({"a": 1})
    assert ops.to_float(ops.asarray(numpy.float32(2.5))) == 2.5
    p = H(ops, ops.permutation(10))
    assert sorted(p.tolist()) == list(range(10))


def test_device_dataset_and_take_batch(make_ops):
    ops = make_ops(seed=0)
    X = numpy.arange(40, dtype=numpy.float64).reshape(10, 4)
    y = numpy.arange(10, dtype=numpy.int64)
    Xd, yd = ops.device_dataset(X), ops.device_dataset(y)
    assert isinstance(Xd, ops.xp.ndarray) and Xd.dtype == numpy.float32
    assert isinstance(yd, ops.xp.ndarray) and yd.dtype == numpy.int64
    idx = numpy.array([7, 2, 5])
    xb, yb = ops.take_batch(Xd, idx), ops.take_batch(yd, idx)
    assert isinstance(xb, ops.xp.ndarray)
    numpy.testing.assert_array_equal(H(ops, xb), X[idx])
    numpy.testing.assert_array_equal(H(ops, yb), y[idx])
    # a host-resident dataset (too big to move) still yields device batches
    numpy.testing.assert_array_equal(H(ops, ops.take_batch(X, idx)), X[idx])
    assert ops.device_dataset(Xd) is Xd


def test_device_option(make_ops):
    ops = make_ops(seed=0, device=0)
    assert ops.device == 0
    assert "device=0" in repr(ops)
    count = int(ops.xp.cuda.runtime.getDeviceCount())
    with pytest.raises(ValueError, match="does not exist"):
        make_ops(device=count)
    with pytest.raises(TypeError):
        make_ops(device=1.5)
    assert make_ops(device="cuda:0").device == 0
    if count >= 2 and ops.xp is compat.cupy:
        ops1 = make_ops(seed=0, device=1)
        a = ops1.asarray(numpy.ones(3))
        assert a.device.id == 1
        y, _ = ops1.dense_forward(a.reshape(1, 3), ops1.asarray(numpy.ones((3, 2))), None, "relu")
        assert y.device.id == 1
        moved = ops.asarray(a)  # device 1 -> device 0: copied
        assert moved.device.id == 0
        numpy.testing.assert_array_equal(ops.to_host(moved), numpy.ones(3))


def test_options_are_validated(make_ops):
    with pytest.raises(ValueError, match="precision"):
        make_ops(precision="fp8")
    with pytest.raises(ValueError, match="float32"):
        make_ops(dtype="float64", precision="fp16")
    with pytest.raises(ValueError, match="loss_scale"):
        make_ops(loss_scale="dynamic")
    ops = make_ops(precision="bf16")
    assert ops.amp_state()["scale"] == 1.0 and not ops.amp_state()["dynamic"]
    assert make_ops(precision="fp16", loss_scale=128.0).amp_state()["scale"] == 128.0


def test_out_of_memory_is_translated(make_ops):
    ops = make_ops(seed=0)
    oom = ops.xp.cuda.memory.OutOfMemoryError
    with pytest.raises(DeviceOutOfMemoryError, match=r"4,096 bytes.*smaller batch") as info:
        with ops.oom_guard():
            raise oom(4096, 0)
    assert isinstance(info.value, MemoryError) and info.value.requested_bytes == 4096
    if ops.xp is compat.cupy:  # a real failed allocation (32 TiB)
        with pytest.raises(DeviceOutOfMemoryError, match="smaller batch"):
            ops.zeros((2**43,))


def test_warmup_compiles_every_kernel(make_ops):
    ops = make_ops(seed=0)
    times = cupy_gpu.warmup(ops)
    assert set(times) == set(cupy_gpu.kernel_names())
    assert all(t >= 0 for t in times.values())


# =============================================================================================
# 2c. real-GPU only
# =============================================================================================

gpu_only = pytest.mark.skipif(not compat.has_cupy_gpu(), reason="no CUDA GPU")


@pytest.mark.gpu
@gpu_only
@pytest.mark.parametrize("with_gemm", [False, True])
@pytest.mark.parametrize("precision", [None, "fp16", "bf16"])
def test_hot_paths_never_sync_with_the_host(precision, with_gemm):
    """CUDA stream capture fails on any host synchronization (D2H copy, stream or device sync),
    so capturing a whole train step proves the hot kernels never sync. with_gemm=False leaves
    cuBLAS out, so a cuBLAS limitation under capture cannot hide a sync in our kernels."""
    ops = CupyOps(seed=0, precision=precision)
    rng = numpy.random.default_rng(0)
    x = ops.asarray(rng.standard_normal((64, 32)))
    flat = ops.asarray(rng.standard_normal(32 * 10 + 10) * 0.1)
    grads, m, v = ops.zeros(flat.size), ops.zeros(flat.size), ops.zeros(flat.size)
    W, b = flat[:320].reshape(32, 10), flat[320:]
    gW, gb = grads[:320].reshape(32, 10), grads[320:]
    labels = ops.asarray(rng.integers(0, 10, 64))

    z = ops.asarray(rng.standard_normal((64, 10)))

    def step():
        if with_gemm:
            h, saved = ops.dense_forward(x, W, b, "gelu")
        else:
            h, saved = ops.activation_forward(z, "gelu")
        h, mask = ops.dropout_forward(h, 0.1)
        loss, d = ops.softmax_cross_entropy(h, labels)
        d = ops.backprop_dropout(d, mask)
        if with_gemm:
            ops.dense_backward(d, x, W, saved, "gelu", True, gW, gb)
        else:
            gW[...] = ops.activation_backward(d, saved, "gelu").sum()
        ops.adam_update(flat, grads, m, v, 1, 1e-3, 0.9, 0.999, 1e-8, 0.01, True)
        ops.sgd_update(flat, grads, v, 0.0)
        return loss

    graph = cupy_gpu.capture_graph(step, ops=ops, warmup_runs=1)
    loss = graph.replay(synchronize=True)
    assert numpy.isfinite(ops.to_float(loss))


@pytest.mark.gpu
@gpu_only
def test_tf32_option_changes_only_its_own_gemms():
    cp = compat.cupy
    if int(cp.cuda.Device().compute_capability) < 80:
        with pytest.warns(UserWarning, match="TF32"):
            assert CupyOps(tf32=True).tf32 is False
        return
    from cupy._core import _routines_linalg as rl

    before = rl.get_compute_type(numpy.float32)
    ops = CupyOps(seed=0, tf32=True)
    rng = numpy.random.default_rng(0)
    x, W = rng.standard_normal((256, 512)), rng.standard_normal((512, 256))
    y, _ = ops.dense_forward(ops.asarray(x), ops.asarray(W), None, "identity")
    ref = x @ W
    err = numpy.abs(ops.to_host(y) - ref).max() / numpy.abs(ref).max()
    assert err < 1e-2
    assert rl.get_compute_type(numpy.float32) == before


@pytest.mark.gpu
@gpu_only
def test_memory_info_and_devices():
    from nnx.backends import cupy as backend

    info = backend.memory_info()
    assert info["available"] and info["total_bytes"] > 0 and info["name"]
    assert info["pool_used_bytes"] <= info["pool_total_bytes"]
    devs = backend.devices()
    assert len(devs) == compat.cuda_device_count() and devs[0]["id"] == 0


@pytest.mark.gpu
@gpu_only
def test_capture_graph_replays_an_update_experimental():
    ops = CupyOps(seed=0)
    p = ops.asarray(numpy.zeros(1000))
    g = ops.asarray(numpy.ones(1000))
    vel = ops.zeros(1000)

    def step():
        ops.sgd_update(p, g, vel, 0.5)
        return p

    # the warm-up run executes (p = -0.5); the captured run is only recorded
    graph = cupy_gpu.capture_graph(step, ops=ops, warmup_runs=1)
    graph.replay(synchronize=True)
    graph.replay(synchronize=True)
    numpy.testing.assert_allclose(ops.to_host(p), -1.5)
