"""A strict fake `cupy` for running the CuPy backend on the CPU (tests only).

What it is: NumPy memory underneath, the CUDA sources compiled by the host C++ compiler against
a small CUDA shim (`EmuCompiler`), and CuPy's rules on top, so that code which would fail on a
real GPU fails here too:

- Device arrays (`EmuArray`) are NOT NumPy arrays: `numpy.asarray(a)` raises TypeError (CuPy's
  `__array__` refuses implicit conversion), `isinstance(a, numpy.ndarray)` is False, mixing a
  NumPy array into a device ufunc or function raises ("Unsupported type"), assigning a
  non-scalar NumPy array into a device array raises. Host copies are explicit: `.get()`,
  `cupy.asnumpy`. Reductions return 0-d device arrays, as CuPy's do.
- `empty` memory is poisoned (NaN for floats) so an unwritten output shows up.
- Streams, events and CUDA graph capture are emulated: under `Stream.begin_capture()` device
  work is RECORDED, not run (results are poisoned placeholders that `Graph.launch()` fills),
  and a host synchronization (`.get()`, `float()`, `synchronize()`) or a pageable host-to-device
  copy raises, as CUDA does. `log` records waits, event records, launches and copies per stream
  for the ordering tests.
- cuBLAS GemmEx (the column-major call, arguments as cuBLAS takes them) and CuPy's per-GEMM
  compute-type switch (`_core._routines_linalg`, with CUPY_TF32 latched at the first float32
  GEMM like CuPy) are emulated, and every float32 GEMM logs the compute type it ran with.

What it cannot see: NVRTC and the `__CUDA_ARCH__` branches (tests/test_nvrtc_compile.py),
cuBLAS itself, the memory model and concurrency between blocks, and speed.
"""

from __future__ import annotations

import contextlib
import types

import numpy
from cuda_shim import EmuCompiler
from fake_cuda_runtime import (
    STATE,
    CaptureError,
    EmuDevice,
    Event,
    FakeCublas,
    FakeLinalg,
    MemoryPool,
    OutOfMemoryError,
    Stream,
    _no_sync,
    _poison,
    _run,
    _stream_name,
    current_device,
    current_stream,
    get_elapsed_time,
)
from nnx.kernels import cupy_source
from numpy.lib.mixins import NDArrayOperatorsMixin

_IMPLICIT = (
    "Implicit conversion to a NumPy array is not allowed. "
    "Please use `.get()` to construct a NumPy array explicitly."
)


def _strict(x, what: str):
    """A device operand: EmuArray -> its memory; NumPy arrays are refused as CuPy does."""
    if isinstance(x, EmuArray):
        return x._a
    if isinstance(x, numpy.ndarray):
        raise TypeError(f"Unsupported type {type(x)} (in {what}): move it with cupy.asarray")
    if isinstance(x, (list, tuple)):
        return type(x)(_strict(v, what) for v in x)
    return x


def _wrap(r, owner=None):
    if owner is not None and r is owner._a:
        return owner  # astype(copy=False), ascontiguousarray of a contiguous array: self
    if isinstance(r, numpy.ndarray):
        return EmuArray(r)
    if isinstance(r, numpy.generic):
        return EmuArray(numpy.asarray(r))  # CuPy reductions return 0-d arrays
    if isinstance(r, tuple):
        return tuple(_wrap(v) for v in r)
    if isinstance(r, list):
        return [_wrap(v) for v in r]
    return r


def _is_view(r, a) -> bool:
    return isinstance(r, numpy.ndarray) and r.size > 0 and numpy.shares_memory(r, a)


_METHODS = frozenset(
    "reshape ravel astype copy view transpose swapaxes squeeze flatten sum mean max min argmax "
    "argmin any all std var prod cumsum cumprod clip dot take round nonzero argsort repeat "
    "conj diagonal trace ptp".split()
)
_VIEWS = frozenset("reshape ravel view transpose swapaxes squeeze".split())


class _MemoryPointer:
    __slots__ = ("ptr",)

    def __init__(self, ptr):
        self.ptr = ptr


class EmuArray(NDArrayOperatorsMixin):
    """A device array of the fake cupy (see the module docstring for its rules)."""

    __slots__ = ("_a", "__weakref__")
    __array_priority__ = 1000

    def __init__(self, a: numpy.ndarray):
        assert type(a) is numpy.ndarray, type(a)
        self._a = a

    # -- what CuPy refuses ----------------------------------------------------------------
    def __array__(self, *args, **kwargs):
        raise TypeError(_IMPLICIT)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        what = f"cupy.{ufunc.__name__}"
        args = [_strict(x, what) for x in inputs]
        out = kwargs.get("out")
        if out is not None:
            kwargs["out"] = tuple(_strict(o, what) for o in out)
            _run(lambda: getattr(ufunc, method)(*args, **kwargs), inplace=True)
            return out[0] if len(out) == 1 else out
        return _wrap(_run(lambda: getattr(ufunc, method)(*args, **kwargs)))

    def __array_function__(self, func, types_, args, kwargs):
        what = f"cupy.{func.__name__}"
        a = _strict(list(args), what)
        k = {key: _strict(v, what) for key, v in kwargs.items()}
        return _wrap(_run(lambda: func(*a, **k)))

    # -- host side (each a sync point) ----------------------------------------------------
    def get(self, stream=None, order="C", out=None, blocking=True):
        _no_sync("ndarray.get")
        STATE.log.append(("get", _stream_name(stream), self.shape))
        return numpy.array(self._a, copy=True, order=order)

    def set(self, arr, stream=None):
        """Host -> device copy (pageable memory: not permitted under capture)."""
        if STATE.capture is not None:
            raise CaptureError("ndarray.set: a pageable host-to-device copy during capture")
        STATE.log.append(("set", _stream_name(stream), numpy.asarray(arr).tolist()))
        numpy.copyto(self._a, numpy.asarray(arr))

    def item(self):
        _no_sync("ndarray.item")
        return self._a.item()

    def tolist(self):
        _no_sync("ndarray.tolist")
        return self._a.tolist()

    def __float__(self):
        _no_sync("float(ndarray)")
        return float(self._a)

    def __int__(self):
        _no_sync("int(ndarray)")
        return int(self._a)

    def __bool__(self):
        _no_sync("bool(ndarray)")
        return bool(self._a)

    # -- attributes -----------------------------------------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: EmuArray(self._a.T))
    data = property(lambda self: _MemoryPointer(self._a.ctypes.data))
    device = property(lambda self: EmuDevice(0))

    @property
    def __cuda_array_interface__(self):
        a = self._a
        return {"shape": a.shape, "typestr": a.dtype.str, "data": (a.ctypes.data, False),
                "strides": None if a.flags.c_contiguous else a.strides, "version": 3}

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (EmuArray(numpy.asarray(self._a[i])) if self._a.ndim == 1 else EmuArray(self._a[i])
                for i in range(len(self._a)))

    def __repr__(self):
        return f"emu_array({self._a!r})"

    def __deepcopy__(self, memo):
        return EmuArray(self._a.copy())

    def __getattr__(self, name):
        if name not in _METHODS:
            raise AttributeError(f"'EmuArray' object has no attribute {name!r}")

        def method(*args, **kwargs):
            what = f"ndarray.{name}"
            a = _strict(list(args), what)
            k = {key: _strict(v, what) for key, v in kwargs.items()}
            if "out" in kwargs:
                _run(lambda: getattr(self._a, name)(*a, **k), inplace=True)
                return kwargs["out"]
            r = getattr(self._a, name)(*a, **k)
            if name in _VIEWS and (r is self._a or _is_view(r, self._a)) or r is self._a:
                return _wrap(r, self)
            if STATE.capture is not None:
                r = _run(lambda: getattr(self._a, name)(*a, **k))
            return _wrap(r, self)

        return method

    def fill(self, value):
        value = _strict(value, "ndarray.fill")
        _run(lambda: self._a.fill(value), inplace=True)

    def __getitem__(self, key):
        key = _index(key)
        r = self._a[key]
        if _is_view(r, self._a) or (isinstance(r, numpy.ndarray) and r.size == 0):
            return _wrap(r)
        return _wrap(_run(lambda: self._a[key]))

    def __setitem__(self, key, value):
        if isinstance(value, numpy.ndarray) and value.ndim:
            raise TypeError(
                "non-scalar numpy.ndarray cannot be assigned into a device array: cupy.asarray"
            )
        key, value = _index(key), _strict(value, "ndarray.__setitem__")
        _run(lambda: self._a.__setitem__(key, value), inplace=True)


def _index(key):
    """An index: device arrays unwrapped; NumPy index arrays are allowed (CuPy uploads them)."""
    if isinstance(key, tuple):
        return tuple(_index(k) for k in key)
    return key._a if isinstance(key, EmuArray) else key


# -- the module -------------------------------------------------------------------------------


class _Rng:
    def __init__(self, seed):
        self.g = numpy.random.default_rng(seed)

    def __getattr__(self, name):
        f = getattr(self.g, name)
        return lambda *a, **k: _wrap(_run(lambda: f(*a, **k)))


class EmuKernel:
    """A RawKernel of the fake: checks what CuPy would (device arrays, exact scalar types) and
    launches the emulated kernel (or records the launch under capture)."""

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
                conv.append(a._a.ctypes.data)
            else:
                want = cupy_source._SCALAR_TYPES[ctype]
                if type(a) is not want:
                    raise TypeError(
                        f"{self.name}: {pname} passed as {type(a).__name__}, kernel wants {ctype}"
                    )
                conv.append(a.item())
        STATE.log.append(("kernel", current_stream().name, self.name))

        def launch():
            rc = self.func(grid[0], block[0], *conv)
            if rc == -1:
                raise RuntimeError(f"{self.name}: divergent __syncthreads (some threads exited)")
            if rc != 0:
                raise RuntimeError(f"{self.name}: bad launch {grid} x {block}")

        _run(launch, inplace=True)


class FakeCupy:
    """The fake `cupy` namespace: what nnx and the tests use of CuPy, strictly; every other
    NumPy function is offered with CuPy's rules (device arrays in, device arrays out, NumPy
    arrays refused)."""

    __name__ = "emu_cupy"
    ndarray = EmuArray
    float16, float32, float64 = numpy.float16, numpy.float32, numpy.float64
    int32, int64, dtype = numpy.int32, numpy.int64, numpy.dtype

    def __init__(self, compiler: EmuCompiler, device_count: int = 1):
        self.compiler = compiler
        self.cublas = FakeCublas()
        self.linalg = FakeLinalg()
        self.gemm_log: list = []  # (dtype, compute type) of each float32/float16 matmul
        runtime = types.SimpleNamespace(
            getDevice=current_device, getDeviceCount=lambda: device_count,
            memGetInfo=lambda: (8 << 30, 16 << 30), CUDA_R_32F=0, CUDA_R_64F=1, CUDA_R_16F=2,
            getDeviceProperties=lambda i: {"name": b"emulated", "totalGlobalMem": 0},
        )
        self.cuda = types.SimpleNamespace(
            Device=EmuDevice, runtime=runtime, Stream=Stream, Event=Event,
            get_current_stream=current_stream, get_elapsed_time=get_elapsed_time,
            memory=types.SimpleNamespace(OutOfMemoryError=OutOfMemoryError),
            MemoryPool=MemoryPool, using_allocator=lambda malloc=None: contextlib.nullcontext(),
            cublas=self.cublas, device=types.SimpleNamespace(get_cublas_handle=lambda: 1),
        )
        self._core = types.SimpleNamespace(_routines_linalg=self.linalg)
        self.random = types.SimpleNamespace(default_rng=_Rng)

    @staticmethod
    def log() -> list:
        return STATE.log

    # -- moving data ----------------------------------------------------------------------
    def asarray(self, a, dtype=None):
        if isinstance(a, EmuArray):
            if dtype is None or numpy.dtype(dtype) == a.dtype:
                return a
            return a.astype(dtype)
        if STATE.capture is not None:
            raise CaptureError("cupy.asarray: a pageable host-to-device copy during capture")
        STATE.log.append(("h2d", current_stream().name, numpy.shape(a)))
        return EmuArray(numpy.array(a, dtype=dtype, copy=True))

    array = asarray

    def asnumpy(self, a, stream=None):
        return a.get(stream) if isinstance(a, EmuArray) else numpy.asarray(a)

    def ascontiguousarray(self, a, dtype=None):
        if not isinstance(a, EmuArray):
            raise TypeError(f"Unsupported type {type(a)} (in cupy.ascontiguousarray)")
        r = numpy.ascontiguousarray(a._a, dtype=dtype)
        if r is a._a:
            return a
        return EmuArray(_run(lambda: numpy.ascontiguousarray(a._a, dtype=dtype)))

    # -- allocation -----------------------------------------------------------------------
    def empty(self, shape, dtype=float):
        return EmuArray(_poison(shape, dtype))

    def empty_like(self, a, dtype=None):
        return EmuArray(_poison(a.shape, dtype or a.dtype))

    def zeros(self, shape, dtype=float):
        return EmuArray(_run(lambda: numpy.zeros(shape, dtype)))

    def full(self, shape, value, dtype=None):
        return EmuArray(_run(lambda: numpy.full(shape, value, dtype)))

    def get_default_memory_pool(self):
        return MemoryPool()

    # -- GEMMs: fp16 accumulates in float32 and rounds the result, like cuBLAS -------------
    def matmul(self, a, b, out=None):
        A, B = _strict(a, "cupy.matmul"), _strict(b, "cupy.matmul")
        if A.dtype == numpy.float32 and B.dtype == numpy.float32:
            self.gemm_log.append(("float32", self.linalg.get_compute_type(numpy.float32)))

        def gemm():
            if A.dtype == numpy.float16 and B.dtype == numpy.float16:
                with numpy.errstate(over="ignore"):
                    return (A.astype(numpy.float32) @ B.astype(numpy.float32)).astype(
                        numpy.float16
                    )
            return A @ B

        if out is not None:
            _run(lambda: numpy.copyto(out._a, gemm(), casting="unsafe"), inplace=True)
            return out
        return EmuArray(_run(gemm))

    def copyto(self, dst, src, casting="same_kind"):
        d, s = _strict(dst, "cupy.copyto"), _strict(src, "cupy.copyto")
        _run(lambda: numpy.copyto(d, s, casting=casting), inplace=True)

    def RawModule(self, *, code=None, options=(), **kwargs):  # noqa: N802 - CuPy's name
        compiler = self.compiler

        class _Module:
            def get_function(self, name):
                _dll, funcs = compiler.build(code)
                f, params = funcs[name]
                return EmuKernel(name, f, params)

        return _Module()

    def __getattr__(self, name):
        f = getattr(numpy, name)
        if not callable(f) or isinstance(f, type):
            return f

        def function(*args, **kwargs):
            what = f"cupy.{name}"
            a = _strict(list(args), what)
            k = {key: _strict(v, what) for key, v in kwargs.items()}
            return _wrap(_run(lambda: f(*a, **k)))

        return function


