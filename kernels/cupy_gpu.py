"""CuPy/CUDA overrides of the hot kernels: the reference `Ops` on CuPy arrays, with fused CUDA
kernels (`cuda/*.cu`, compiled lazily with `cupy.RawModule`) on the hot paths.

What is fused here (everything else is the reference running on CuPy arrays):

- `dense_forward`: cuBLAS GEMM (`cupy.matmul`) + ONE epilogue kernel for bias + activation
  (identity, relu, leaky_relu, sigmoid, tanh, gelu; softmax as a row kernel).
- `dense_backward`: ONE kernel for act'(saved) * dy, the bias gradient as a column sum written
  into `db_out`, and the two GEMMs (`out=dW_out` where the dtypes allow).
- `softmax_cross_entropy`: forward and backward in ONE row kernel (block per row); int32/int64
  labels or one-hot/probability targets; the loss stays a 0-d device array (no host sync).
  Labels outside [0, C) cannot raise without a sync: their rows get a NaN loss and gradient
  (NumPy would raise, or wrap negative labels around).
- `sgd_update` / `adam_update` (AdamW with `decoupled=True`): ONE launch over the flat buffer.
- `dropout_forward`: uniform numbers from the backend's CuPy generator + ONE mask kernel.
- `activation_forward` / `activation_backward` for the activations above.

Options (`nnx.use_backend("cupy", device=1, precision="fp16")` passes them here):

- `device`: None pins the Ops to the device current when it is created; an int selects one.
  Every override runs under `cupy.cuda.Device(device)`, so arrays it creates live there.
- `tf32`: float32 GEMMs on tensor cores with TF32 inputs (compute capability >= 8.0), switched
  per GEMM through CuPy's compute-type setting, so other CuPy code is not affected. With
  precision="bf16" it costs no accuracy at all: bf16 values are exact in TF32.
- `precision`: None (everything in `dtype`), "fp16" or "bf16" (mixed precision, below).

Mixed precision (`precision="fp16"|"bf16"`, `dtype` must be float32): parameters, gradients
and optimizer state stay float32 in the flat buffers (master weights); activations and their
gradients are half precision; every GEMM casts its weight operand per call and accumulates in
float32 (cuBLAS compute type 32F). "bf16" is emulated: CuPy has no stable bfloat16 dtype, so
values are rounded to bfloat16 (nearest even) but kept in float32 arrays. That reproduces bf16
numerics, not its memory or speed.

Loss scaling (default: dynamic for fp16, none for bf16; `loss_scale=` "dynamic", a float for a
static scale, or None) runs entirely on the device, with no host syncs:
  * the loss kernels (softmax_cross_entropy, binary_cross_entropy, mse) multiply the returned
    gradient by the current scale (a device scalar); so does `add_l1_l2_grad`;
  * each optimizer update first zeroes a device flag and checks the whole flat gradient buffer
    for inf/NaN (one launch), then updates with grad / scale, or leaves params and state
    untouched when the flag is set; a one-thread kernel then halves the scale on overflow or
    doubles it after `growth_interval` good steps in a row.
  Limitations: the scale logic assumes ONE optimizer update per training step, over the whole
  flat gradient buffer (how nnx's optimizers work): several update calls per step would each
  check only their own buffer and each adjust the scale. The gradient buffer itself stays
  scaled (use `ops.unscaled(grads)` for true gradient norms, e.g. clipping). A skipped step
  still counts in the caller's Adam `step` (the host cannot know it was skipped without a
  sync), so bias correction runs one step ahead per skipped step, unlike PyTorch's GradScaler,
  which does not count skipped steps; after the first few hundred steps that is immaterial.
  Custom losses must scale their gradient with `ops.scale_grad(grad)`. TF32 switching (below)
  and the loss scale are per Ops object; the TF32 switch is process-wide while a GEMM runs,
  so another thread's float32 GEMM at that moment may also use TF32.

Everything here imports without CuPy: the class exists (xp = None) and refuses to be created.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import re
import threading
import time
import warnings

import numpy

from nnx import compat
from nnx.errors import BackendUnavailableError, DeviceOutOfMemoryError, ShapeError

from .reference import Ops

cupy = compat.cupy  # None without CuPy; everything below goes through `self.xp` / `xp`

CUDA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cuda")
COMMON_HEADER = "nnx_common.cuh"
MODULE_FILES = {"dense": "dense.cu", "loss": "loss.cu", "optim": "optim.cu"}
NVRTC_OPTIONS: tuple[str, ...] = ()  # CuPy picks the C++ standard; the sources need C++11

BLOCK = 256  # threads per block of the elementwise kernels
MAX_ROW_THREADS = 256  # NNX_MAX_ROW_THREADS in nnx_common.cuh
_ACT_CODES = {"identity": 0, "relu": 1, "leaky_relu": 2, "sigmoid": 3, "tanh": 4, "gelu": 5}
_INT32_MAX = 2**31 - 1

INSTALL_HINT = (
    "pip install 'nnx-framework[gpu]' (CUDA 12) or 'nnx-framework[gpu-cuda13]' (CUDA 13)"
)


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


def _grid(n: int, max_grid: int) -> int:
    return max(1, min((n + BLOCK - 1) // BLOCK, max_grid))


def _row_threads(cols: int) -> int:
    t = 32
    while t < cols and t < MAX_ROW_THREADS:
        t <<= 1
    return t


def _linalg(xp):
    """CuPy's GEMM compute-type switch (private API; None where missing)."""
    core = getattr(xp, "_core", None)
    rl = getattr(core, "_routines_linalg", None)
    if rl is None or not hasattr(rl, "set_compute_type"):
        return None
    return rl


# -- the device scope: device selection + readable out-of-memory errors --------------------


class _Scope:
    """`with ops._scope():` runs under the Ops' device and turns CuPy's OutOfMemoryError
    into DeviceOutOfMemoryError (a MemoryError naming the bytes and what to do)."""

    __slots__ = ("ops", "dev")

    def __init__(self, ops):
        self.ops = ops
        self.dev = None

    def __enter__(self):
        self.dev = self.ops.xp.cuda.Device(self.ops._device_id)
        self.dev.__enter__()
        return self

    def __exit__(self, etype, exc, tb):
        err = None
        if exc is not None and isinstance(exc, self.ops._oom_type):
            err = self.ops._oom_error(exc)  # still on the Ops' device: its pool's numbers
        self.dev.__exit__(etype, exc, tb)
        if err is not None:
            raise err from exc
        return False


# -- the backend -----------------------------------------------------------------------------


class CupyOps(Ops):
    """The reference kernels on CuPy arrays, with fused CUDA kernels on the hot paths."""

    name = "cupy"
    xp = cupy
    on_host = False
    max_grid = 1 << 20  # blocks per elementwise launch (grid-stride loops cover the rest)

    def __init__(
        self,
        seed: int | None = None,
        dtype: str = "float32",
        device=None,
        tf32: bool = False,
        precision: str | None = None,
        *,
        loss_scale="auto",
        init_scale: float = 2.0**16,
        growth_interval: int = 2000,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        min_scale: float = 1.0,
        max_scale: float = 2.0**24,
    ):
        xp = self.xp
        if xp is None or (xp is compat.cupy and not compat.has_cupy_gpu()):
            raise BackendUnavailableError(
                f"backend 'cupy' is not available: {compat.cupy_unavailable_reason()}. "
                f"To install it: {INSTALL_HINT}, on a machine with an NVIDIA GPU"
            )
        self.dtype = numpy.dtype(dtype)
        if self.dtype.kind != "f":
            raise ValueError(f"backend dtype must be a float type, got {dtype!r}")
        precision = {None: None, "fp16": "fp16", "float16": "fp16", "bf16": "bf16",
                     "bfloat16": "bf16"}.get(precision, precision)
        if precision not in (None, "fp16", "bf16"):
            raise ValueError(f"precision must be None, 'fp16' or 'bf16', got {precision!r}")
        if precision is not None and self.dtype != numpy.float32:
            raise ValueError(
                f"precision={precision!r} keeps float32 master weights: use dtype='float32', "
                f"got {self.dtype}"
            )
        self.precision = precision
        if loss_scale == "auto":
            loss_scale = "dynamic" if precision == "fp16" else None
        if loss_scale is not None and loss_scale != "dynamic":
            loss_scale = float(loss_scale)
            if not (loss_scale > 0 and math.isfinite(loss_scale)):
                raise ValueError(f"loss_scale must be positive and finite, got {loss_scale}")
        if loss_scale is not None and precision is None:
            raise ValueError("loss_scale needs precision='fp16' or 'bf16'")
        self._scaling = loss_scale is not None
        self._dynamic = loss_scale == "dynamic"
        if int(growth_interval) < 1:
            raise ValueError(f"growth_interval must be >= 1, got {growth_interval}")
        self._scale_args = (
            int(growth_interval), float(growth_factor), float(backoff_factor),
            float(min_scale), float(max_scale),
        )
        self._device_id = self._resolve_device(device)
        mem = getattr(getattr(xp, "cuda", None), "memory", None)
        self._oom_type = getattr(mem, "OutOfMemoryError", MemoryError)
        self.tf32 = self._check_tf32(bool(tf32))
        start = init_scale if self._dynamic else (loss_scale if self._scaling else 1.0)
        with self._scope():
            self.seed(seed)
            self._loss_scale = xp.full((1,), start, dtype=numpy.float32)
            self._found_inf = xp.zeros((1,), dtype=numpy.int32)
            self._good_steps = xp.zeros((1,), dtype=numpy.int32)
            self._skipped_steps = xp.zeros((1,), dtype=numpy.int32)
            self._dummy = {
                numpy.dtype(t): xp.zeros((1,), dtype=t)
                for t in (numpy.float16, numpy.float32, numpy.float64)
            }

    def __repr__(self) -> str:
        extra = f" precision={self.precision}" if self.precision else ""
        extra += " tf32" if self.tf32 else ""
        return (
            f"<{type(self).__name__} {self.name} device={self._device_id} "
            f"dtype={self.dtype}{extra}>"
        )

    # -- device, scope, errors ------------------------------------------------------------
    @property
    def device(self) -> int:
        """The CUDA device id this Ops runs on."""
        return self._device_id

    def _resolve_device(self, device) -> int:
        xp = self.xp
        if device is None:
            return int(xp.cuda.runtime.getDevice())
        if isinstance(device, xp.cuda.Device):
            device = device.id
        if isinstance(device, str):
            text = device.strip().lower()
            text = text[5:] if text.startswith("cuda:") else text
            if not text.isdigit():
                raise ValueError(f"device must be an int or 'cuda:N', got {device!r}")
            device = int(text)
        if isinstance(device, bool) or not isinstance(device, (int, numpy.integer)):
            raise TypeError(f"device must be None, an int or 'cuda:N', got {type(device).__name__}")
        count = int(xp.cuda.runtime.getDeviceCount())
        if not 0 <= int(device) < count:
            raise ValueError(
                f"device {int(device)} does not exist: CuPy sees {count} CUDA device(s)"
                + (f" (0..{count - 1})" if count else "")
            )
        return int(device)

    def _check_tf32(self, tf32: bool) -> bool:
        if not tf32:
            return False
        xp = self.xp
        cc = int(xp.cuda.Device(self._device_id).compute_capability)
        if cc < 80:
            warnings.warn(
                f"tf32=True ignored: TF32 needs compute capability >= 8.0, device "
                f"{self._device_id} has {cc // 10}.{cc % 10}",
                UserWarning,
                stacklevel=3,
            )
            return False
        if _linalg(xp) is None:
            # Older/newer CuPy without the switch: the environment variable is read once, at
            # the first float32 GEMM of the process, so this works only if none ran yet.
            os.environ["CUPY_TF32"] = "1"
            warnings.warn(
                "this CuPy has no per-GEMM compute-type switch; set CUPY_TF32=1 instead "
                "(effective only before the first float32 matmul of the process)",
                UserWarning,
                stacklevel=3,
            )
            return False
        return True

    def _scope(self) -> _Scope:
        return _Scope(self)

    def _oom_error(self, exc) -> DeviceOutOfMemoryError:
        size = getattr(exc, "_size", None)
        if size is None:
            m = re.search(r"allocating ([\d,]+) bytes", str(exc))
            size = int(m.group(1).replace(",", "")) if m else None
        held = None
        try:
            held = int(self.xp.get_default_memory_pool().used_bytes())
        except Exception:  # pragma: no cover - best effort only
            pass
        what = f"{size:,} bytes ({size / 2**20:.1f} MiB)" if size is not None else "memory"
        msg = (
            f"GPU out of memory on device {self._device_id}: could not allocate {what}"
            + (f"; CuPy's memory pool already holds {held:,} bytes" if held is not None else "")
            + ". Use a smaller batch size (or a smaller model), or precision='fp16'/'bf16'; "
            "cupy.get_default_memory_pool().free_all_blocks() returns cached blocks."
        )
        return DeviceOutOfMemoryError(msg, size)

    def oom_guard(self):
        """`with ops.oom_guard(): ...` for allocation-heavy code outside the Ops: runs on this
        Ops' device and re-raises CuPy's OutOfMemoryError as DeviceOutOfMemoryError."""
        return self._scope()

    def _k(self, name: str) -> _Kernel:
        return get_kernel(self.xp, name)

    def _variant(self, dtype) -> str | None:
        """The kernel suffix for activations of `dtype` (None: no fused kernel)."""
        dtype = numpy.dtype(dtype)
        if dtype == numpy.float32:
            return "bf16" if self.precision == "bf16" else "f32"
        if dtype == numpy.float64:
            return "f64"
        if dtype == numpy.float16:
            return "f16"
        return None

    # -- arrays, memory, randomness -------------------------------------------------------
    def seed(self, seed: int | None) -> None:
        """Reseed the backend's generator (dropout masks, initializers drawn on device)."""
        with self._scope():
            self._seed = seed
            self.rng = self.xp.random.default_rng(seed)

    def asarray(self, x, dtype=None):
        """Move `x` to this backend's device. Floats take the backend dtype unless `dtype`
        says otherwise; integer arrays (labels) keep their kind. Accepts NumPy arrays (copied
        to the device), CuPy arrays (copied when on another device), objects exposing
        __cuda_array_interface__, and array-like data (nested lists, scalars)."""
        xp = self.xp
        with self._scope():
            if isinstance(x, xp.ndarray):
                dev = getattr(x, "device", None)
                if dev is not None and getattr(dev, "id", self._device_id) != self._device_id:
                    x = x.copy()  # CuPy copies onto the current device (peer copy)
            elif isinstance(x, numpy.ndarray):
                pass
            elif hasattr(x, "__cuda_array_interface__"):
                x = xp.asarray(x)
            else:
                try:
                    arr = numpy.asarray(x)
                except Exception as exc:
                    raise TypeError(self._convert_message(x)) from exc
                if arr.dtype.kind in "OUSVM":
                    raise TypeError(self._convert_message(x))
                x = arr
            if dtype is None:
                dtype = self.dtype if x.dtype.kind == "f" else None
            return xp.asarray(x, dtype=dtype)

    def device_dataset(self, x):
        """Where a training set lives during fit: moved to this GPU (floats in the backend
        dtype) when it takes at most a quarter of the device's free memory, CuPy's cached
        blocks counted as free; otherwise left on the host for `take_batch` to move one batch
        at a time."""
        xp = self.xp
        if isinstance(x, xp.ndarray):
            return x
        arr = x if isinstance(x, numpy.ndarray) else numpy.asarray(x)
        itemsize = self.dtype.itemsize if arr.dtype.kind == "f" else arr.dtype.itemsize
        with self._scope():
            free = int(xp.cuda.runtime.memGetInfo()[0])
            free += int(xp.get_default_memory_pool().free_bytes())
            if arr.size * itemsize <= free // 4:
                return self.asarray(arr)
        return x

    def take_batch(self, data, index):
        """One batch of `device_dataset` output, as a device array (floats in the dtype);
        a NumPy index into a device-resident dataset is moved to the device first."""
        xp = self.xp
        with self._scope():
            if isinstance(data, xp.ndarray) and isinstance(index, numpy.ndarray):
                index = xp.asarray(index)
            return self.asarray(data[index])

    @staticmethod
    def _convert_message(x) -> str:
        return (
            f"cannot move a {type(x).__module__}.{type(x).__name__} to the GPU: expected a "
            "numpy.ndarray, a cupy.ndarray or array-like numbers (nested lists, scalars)"
        )

    def to_host(self, x) -> numpy.ndarray:
        """A NumPy array on the host (a copy from the device: a sync point)."""
        if isinstance(x, self.xp.ndarray):
            return x.get()
        if isinstance(x, numpy.ndarray):
            return x
        if hasattr(x, "get"):
            return x.get()
        return numpy.asarray(x)

    def synchronize(self) -> None:
        """Wait for all work queued on this Ops' device."""
        self.xp.cuda.Device(self._device_id).synchronize()

    def zeros(self, shape, dtype=None):
        with self._scope():
            return self.xp.zeros(shape, dtype=dtype or self.dtype)

    def empty(self, shape, dtype=None):
        with self._scope():
            return self.xp.empty(shape, dtype=dtype or self.dtype)

    def random_uniform(self, shape, low: float, high: float):
        with self._scope():
            return super().random_uniform(shape, low, high)

    def random_normal(self, shape, mean: float = 0.0, std: float = 1.0):
        with self._scope():
            return super().random_normal(shape, mean, std)

    def permutation(self, n: int):
        # cupy.random.Generator has no permutation(): sort random keys instead (seeded).
        with self._scope():
            return self.xp.argsort(self.rng.random(int(n)))

    # -- mixed precision: loss scale state ------------------------------------------------
    @property
    def loss_scale(self):
        """The current loss scale, a (1,) float32 device array (1 outside mixed precision)."""
        return self._loss_scale

    def scale_grad(self, grad):
        """grad * loss scale (on the device): for gradients of custom losses in mixed
        precision, so that the update's unscaling is right. A no-op without loss scaling."""
        if not self._scaling:
            return grad
        with self._scope():
            return (grad * self._loss_scale).astype(grad.dtype, copy=False)

    def unscaled(self, grads):
        """grads / loss scale, a new array (e.g. for gradient-norm clipping)."""
        if not self._scaling:
            return grads
        with self._scope():
            return (grads / self._loss_scale).astype(grads.dtype, copy=False)

    def amp_state(self) -> dict:
        """Host copy of the loss-scaling state (a sync point: for logging and tests)."""
        return {
            "scale": float(self._loss_scale.get()[0]),
            "good_steps": int(self._good_steps.get()[0]),
            "skipped_steps": int(self._skipped_steps.get()[0]),
            "found_inf": bool(self._found_inf.get()[0]),
            "dynamic": self._dynamic,
        }

    # -- GEMM helpers ---------------------------------------------------------------------
    def _matmul(self, a, b, out=None):
        xp = self.xp
        if self.tf32 and a.dtype == numpy.float32 and b.dtype == numpy.float32:
            rl = _linalg(xp)
            prev = rl.get_compute_type(numpy.float32)
            rl.set_compute_type(numpy.float32, rl.COMPUTE_TYPE_TF32)
            try:
                return xp.matmul(a, b, out=out)
            finally:
                rl.set_compute_type(numpy.float32, prev)
        return xp.matmul(a, b, out=out)

    def _matmul_into(self, a, b, out, grad_dtype):
        """a @ b written into `out` when given (the flat buffer's view), cast when the GEMM's
        dtype differs (fp16 GEMM -> float32 master gradient)."""
        xp = self.xp
        if out is not None:
            if out.dtype == numpy.result_type(a.dtype, b.dtype) and out.flags.c_contiguous:
                return self._matmul(a, b, out=out)
            xp.copyto(out, self._matmul(a, b), casting="unsafe")
            return out
        r = self._matmul(a, b)
        return r if r.dtype == grad_dtype else r.astype(grad_dtype)

    def _round_bf16(self, a):
        """A float32 copy of `a` rounded to bfloat16 (bf16 emulation)."""
        xp = self.xp
        a = xp.ascontiguousarray(a, dtype=numpy.float32)
        out = xp.empty_like(a)
        if a.size:
            self._k("nnx_round_bf16_f32")(_grid(a.size, self.max_grid), BLOCK, a, out, a.size)
        return out

    def _gemm_operand(self, a):
        """An activation or weight as a GEMM operand of the precision mode (weights are cast
        per GEMM; the float32 master stays untouched)."""
        if self.precision == "fp16":
            return a.astype(numpy.float16, copy=False)
        if self.precision == "bf16":
            return self._round_bf16(a)
        return a

    def _act_dtype(self, dtype):
        """The dtype activations take in this precision mode."""
        if self.precision == "fp16" and numpy.dtype(dtype) == numpy.float32:
            return numpy.dtype(numpy.float16)
        return numpy.dtype(dtype)

    def _bias_arg(self, b, variant: str, cols: int):
        acc = numpy.dtype(numpy.float64 if variant == "f64" else numpy.float32)
        if b is None:
            return self._dummy[acc], 0
        if b.size != cols:
            raise ShapeError(f"bias has {b.size} elements, expected {cols} (W.shape[1])")
        return self.xp.ascontiguousarray(b.reshape(cols), dtype=acc), 1

    # -- activations ----------------------------------------------------------------------
    def activation_forward(self, x, activation: str):
        """y, saved = act(x); `saved` is what `activation_backward` needs."""
        if activation == "identity":
            return x, None
        variant = self._variant(x.dtype)
        if variant is None or (activation not in _ACT_CODES and activation != "softmax"):
            return super().activation_forward(x, activation)
        xp = self.xp
        with self._scope():
            xc = xp.ascontiguousarray(x)
            y = xp.empty_like(xc)
            if xc.size:
                if activation == "softmax":
                    self._softmax_rows(xc, None, y, variant)
                else:
                    cols = xc.shape[-1] if xc.ndim else 1
                    bias, _ = self._bias_arg(None, variant, cols)
                    self._k("nnx_bias_act_" + variant)(
                        _grid(xc.size, self.max_grid), BLOCK, xc, bias, y, y, xc.size,
                        max(cols, 1), _ACT_CODES[activation], 0, 0,
                    )
            return y, (x if activation == "gelu" else y)

    def activation_backward(self, dy, saved, activation: str):
        if activation == "identity":
            return dy
        variant = self._variant(saved.dtype) if saved is not None else None
        if variant is None or (activation not in _ACT_CODES and activation != "softmax"):
            return super().activation_backward(dy, saved, activation)
        with self._scope():
            return self._act_backward(dy, saved, activation, variant)

    def _act_backward(self, dy, saved, activation, variant):
        xp = self.xp
        dy = xp.ascontiguousarray(dy, dtype=saved.dtype)
        saved = xp.ascontiguousarray(saved)
        if dy.shape != saved.shape:
            dy = dy.reshape(saved.shape)
        dz = xp.empty_like(saved)
        if not dz.size:
            return dz
        if activation == "softmax":
            rows, cols = dz.size // dz.shape[-1], dz.shape[-1]
            self._row_launch("nnx_softmax_bwd_" + variant, rows, cols, dy, saved, dz, rows, cols)
        else:
            self._k("nnx_act_bwd_" + variant)(
                _grid(dz.size, self.max_grid), BLOCK, dy, saved, dz, dz.size, _ACT_CODES[activation]
            )
        return dz

    def _row_launch(self, name, rows, cols, *args):
        if rows > _INT32_MAX or cols > _INT32_MAX:
            raise ValueError(f"{name}: {rows} x {cols} exceeds the kernel's int32 indexing")
        self._k(name)(min(rows, self.max_grid), _row_threads(cols), *args)

    def _softmax_rows(self, z, bias_or_none, y, variant):
        cols = z.shape[-1]
        rows = z.size // cols
        bias, has_bias = self._bias_arg(bias_or_none, variant, cols)
        self._row_launch("nnx_softmax_fwd_" + variant, rows, cols, z, bias, y, rows, cols, has_bias)

    # -- dense ----------------------------------------------------------------------------
    def dense_forward(self, x, W, b, activation: str = "identity"):
        """act(x @ W + b) over the last axis of x; returns (y, saved)."""
        if activation not in _ACT_CODES and activation != "softmax":
            return super().dense_forward(x, W, b, activation)
        xp = self.xp
        with self._scope():
            lead = x.shape[:-1]
            x2 = x.reshape(-1, x.shape[-1])
            z = self._matmul(self._gemm_operand(x2), self._gemm_operand(W))
            variant = self._variant(z.dtype)
            if variant is None:  # e.g. integer inputs: the reference path
                if b is not None:
                    z += b
                y, saved = super().activation_forward(z, activation)
                return y.reshape(*lead, W.shape[1]), saved
            rows, cols = z.shape
            n = z.size
            if activation == "softmax":
                if n:
                    self._softmax_rows(z, b, z, variant)
                y, saved = z, z
            elif activation == "gelu":
                y = xp.empty_like(z)
                if n:
                    bias, has_bias = self._bias_arg(b, variant, cols)
                    self._k("nnx_bias_act_" + variant)(
                        _grid(n, self.max_grid), BLOCK, z, bias, y, z, n, cols,
                        _ACT_CODES["gelu"], has_bias, 1,
                    )
                saved = z
            else:
                bias, has_bias = self._bias_arg(b, variant, cols)
                if n and (has_bias or activation != "identity" or variant == "bf16"):
                    self._k("nnx_bias_act_" + variant)(
                        _grid(n, self.max_grid), BLOCK, z, bias, z, z, n, cols,
                        _ACT_CODES[activation], has_bias, 0,
                    )
                y, saved = z, (None if activation == "identity" else z)
            return y.reshape(*lead, cols), saved

    def dense_backward(
        self, dy, x, W, saved, activation="identity", need_dx=True, dW_out=None, db_out=None
    ):
        """(dx, dW, db) of dense_forward. `db` is None for a layer without bias only when
        `db_out` is None and the caller ignores it; the bias gradient is cheap either way."""
        if activation not in _ACT_CODES and activation != "softmax":
            return super().dense_backward(dy, x, W, saved, activation, need_dx, dW_out, db_out)
        with self._scope():
            x2 = x.reshape(-1, x.shape[-1])
            dy2 = dy.reshape(-1, W.shape[1])
            if activation == "identity" or saved is None:
                act_dtype = self._act_dtype(numpy.result_type(x.dtype, W.dtype))
                dz = dy2.astype(act_dtype, copy=False)
                if self.precision == "bf16":
                    dz = self._round_bf16(dz)
            else:
                variant = self._variant(saved.dtype)
                if variant is None:
                    dz = super().activation_backward(dy2, saved, activation)
                else:
                    dz = self._act_backward(dy2, saved.reshape(dy2.shape), activation, variant)
            grad_dtype = numpy.dtype(W.dtype)
            dW = self._matmul_into(self._gemm_operand(x2).T, dz, dW_out, grad_dtype)
            sum_dtype = db_out.dtype if db_out is not None else (
                grad_dtype if dz.dtype == numpy.float16 else dz.dtype
            )
            db = dz.sum(axis=0, dtype=sum_dtype, out=db_out)
            dx = None
            if need_dx:
                dx = self._matmul(dz, self._gemm_operand(W).T)
                if self.precision == "bf16":
                    dx = self._round_bf16(dx)
                dx = dx.reshape(x.shape)
            return dx, dW, db

    # -- losses ---------------------------------------------------------------------------
    def softmax_cross_entropy(self, logits, labels):
        """Mean cross-entropy of softmax(logits) against integer labels (N,) or one-hot /
        probability targets (N, C); stable log-sum-exp. Returns (loss, dlogits)."""
        variant = self._variant(logits.dtype)
        if variant is None or logits.ndim != 2:
            return super().softmax_cross_entropy(logits, labels)
        xp = self.xp
        with self._scope():
            rows, cols = logits.shape
            acc = numpy.dtype(numpy.float64 if variant == "f64" else numpy.float32)
            logits = xp.ascontiguousarray(logits)
            if labels.ndim == 1:
                if labels.dtype.kind not in "iu":
                    raise TypeError(f"integer labels expected, got dtype {labels.dtype}")
                if labels.shape[0] != rows:
                    raise ShapeError(f"labels has {labels.shape[0]} rows, logits has {rows}")
                if labels.dtype == numpy.int32:
                    kind = "i32"
                    targets = xp.ascontiguousarray(labels)
                else:
                    kind = "i64"
                    targets = xp.ascontiguousarray(labels, dtype=numpy.int64)
            else:
                if labels.shape != logits.shape:
                    raise ShapeError(
                        f"targets shape {labels.shape} does not match logits {logits.shape}"
                    )
                kind = "dense"
                targets = xp.ascontiguousarray(labels, dtype=acc)
            grad = xp.empty_like(logits)
            row_loss = xp.empty((rows,), dtype=acc)
            if rows and cols:
                self._row_launch(
                    f"nnx_softmax_ce_{kind}_{variant}", rows, cols,
                    logits, targets, grad, row_loss, rows, cols, self._loss_scale, 1.0 / rows,
                )
            elif rows:
                row_loss.fill(numpy.nan)
            return row_loss.sum(), grad

    def binary_cross_entropy(self, logits, targets):
        """Mean BCE from logits; in mixed precision computed in float32, gradient scaled."""
        if self.precision is None:
            return super().binary_cross_entropy(logits, targets)
        with self._scope():
            loss, grad = super().binary_cross_entropy(
                logits.astype(numpy.float32, copy=False), targets.astype(numpy.float32, copy=False)
            )
            return loss, self.scale_grad(grad).astype(logits.dtype, copy=False)

    def mse(self, pred, target):
        """Mean squared error; in mixed precision computed in float32, gradient scaled."""
        if self.precision is None:
            return super().mse(pred, target)
        with self._scope():
            loss, grad = super().mse(
                pred.astype(numpy.float32, copy=False), target.astype(numpy.float32, copy=False)
            )
            return loss, self.scale_grad(grad).astype(pred.dtype, copy=False)

    def add_l1_l2_grad(self, grad, W, l1: float, l2: float) -> None:
        """grad += d/dW (l1*|W| + l2*W^2), in place (times the loss scale when scaling)."""
        if not self._scaling:
            return super().add_l1_l2_grad(grad, W, l1, l2)
        xp = self.xp
        with self._scope():
            if l1:
                grad += (l1 * xp.sign(W)) * self._loss_scale
            if l2:
                grad += ((2 * l2) * W) * self._loss_scale
        return None

    # -- dropout --------------------------------------------------------------------------
    def dropout_forward(self, x, rate: float):
        """Inverted dropout: zero each unit with probability `rate`, scale the rest by
        1/(1-rate) so inference needs no rescaling. Returns (y, mask)."""
        variant = self._variant(x.dtype)
        if variant is None:
            return super().dropout_forward(x, rate)
        xp = self.xp
        with self._scope():
            scale = 1.0 / (1.0 - rate)
            x = xp.ascontiguousarray(x)
            u = self.rng.random(size=x.shape, dtype=numpy.float32)
            y = xp.empty_like(x)
            mask = xp.empty_like(x)
            if x.size:
                self._k("nnx_dropout_" + variant)(
                    _grid(x.size, self.max_grid), BLOCK, x, u, y, mask, x.size, rate, scale
                )
            return y, mask

    # -- optimizers (in place, flat buffers) ----------------------------------------------
    def _flat_variant(self, params, *others) -> str | None:
        v = {numpy.dtype(numpy.float32): "f32", numpy.dtype(numpy.float64): "f64"}.get(
            numpy.dtype(params.dtype)
        )
        if v is None or not params.flags.c_contiguous:
            return None
        for a in others:
            if a.dtype != params.dtype or not a.flags.c_contiguous or a.size != params.size:
                return None
        return v

    def _no_fused_update(self, what):
        if self._scaling:
            raise ValueError(
                f"{what} with loss scaling needs C-contiguous float32 params, grads and state "
                "of equal size (the flat buffers)"
            )

    def _begin_update(self, grads) -> None:
        if self._scaling:
            self._found_inf.fill(0)
            self._k("nnx_check_finite_" + ("f64" if grads.dtype == numpy.float64 else "f32"))(
                _grid(grads.size, self.max_grid), BLOCK, grads, grads.size, self._found_inf
            )

    def _end_update(self) -> None:
        if self._dynamic:
            self._k("nnx_update_loss_scale")(
                1, 1, self._loss_scale, self._good_steps, self._found_inf, self._skipped_steps,
                *self._scale_args,
            )

    def sgd_update(
        self, params, grads, velocity, lr: float, momentum: float = 0.0,
        nesterov: bool = False, weight_decay: float = 0.0,
    ) -> None:
        """PyTorch's SGD: g += wd*p; v = mu*v + g; p -= lr*(g + mu*v if nesterov else v)."""
        if momentum and velocity is None:
            raise ValueError("sgd_update with momentum needs a velocity buffer")
        state = (velocity,) if momentum else ()
        variant = self._flat_variant(params, grads, *state)
        if variant is None:
            self._no_fused_update("sgd_update")
            return super().sgd_update(params, grads, velocity, lr, momentum, nesterov, weight_decay)
        with self._scope():
            self._begin_update(grads)
            if params.size:
                vel = velocity if momentum else self._dummy[numpy.dtype(params.dtype)]
                self._k("nnx_sgd_" + variant)(
                    _grid(params.size, self.max_grid), BLOCK, params, grads, vel, params.size,
                    float(lr), float(momentum), int(bool(nesterov)), float(weight_decay),
                    self._loss_scale, self._found_inf,
                )
            self._end_update()
        return None

    def adam_update(
        self, params, grads, m, v, step: int, lr: float, beta1: float, beta2: float,
        eps: float, weight_decay: float = 0.0, decoupled: bool = False,
    ) -> None:
        """Adam (decoupled=False: L2 added to the gradient) or AdamW (decoupled weight decay),
        with PyTorch's bias correction. Scalars are computed in float64 on the host."""
        variant = self._flat_variant(params, grads, m, v)
        if variant is None:
            self._no_fused_update("adam_update")
            return super().adam_update(
                params, grads, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled
            )
        bc1 = 1.0 - beta1**step
        bc2_sqrt = math.sqrt(1.0 - beta2**step)
        lr_bc1 = lr / bc1
        with self._scope():
            self._begin_update(grads)
            if params.size:
                self._k("nnx_adam_" + variant)(
                    _grid(params.size, self.max_grid), BLOCK, params, grads, m, v, params.size,
                    float(lr_bc1), float(beta1), 1.0 - beta1, float(beta2), 1.0 - beta2,
                    float(bc2_sqrt), float(eps), float(weight_decay),
                    1.0 - lr * weight_decay, int(bool(weight_decay and decoupled)),
                    self._loss_scale, self._found_inf,
                )
            self._end_update()
        return None


# Every public kernel CupyOps inherits unchanged (the reference on CuPy arrays, including the
# LayerKernels mixin) runs under the Ops' device and OOM scope too; functools.wraps keeps the
# base signature visible to inspect.signature (the consistency tests rely on that).
_HOST_SIDE = {"to_host", "to_float", "synchronize"}


def _device_scoped(fn):
    @functools.wraps(fn)
    def scoped(self, *args, **kwargs):
        with self._scope():
            return fn(self, *args, **kwargs)

    return scoped


for _name, _fn in inspect.getmembers(Ops, inspect.isfunction):
    if not _name.startswith("_") and _name not in vars(CupyOps) and _name not in _HOST_SIDE:
        setattr(CupyOps, _name, _device_scoped(_fn))
del _name, _fn


# -- module-level helpers ----------------------------------------------------------------------


def kernel_names() -> list[str]:
    """Every fused CUDA kernel (parsed from the sources; no GPU needed)."""
    return sorted(kernel_index())


def warmup(ops=None) -> dict:
    """Compile (NVRTC, or CuPy's on-disk cache) and load every fused kernel on the Ops' device;
    returns {kernel name: seconds}. The first kernel of each module carries its compile time."""
    if ops is None:
        ops = CupyOps()
    times = {}
    with ops._scope():
        for name in kernel_names():
            t0 = time.perf_counter()
            ops._k(name).load()
            times[name] = time.perf_counter() - t0
    return times


class CapturedGraph:
    """EXPERIMENTAL. A CUDA graph captured from a callable (see `capture_graph`)."""

    def __init__(self, xp, graph, stream, pool, outputs, device_id):
        self.xp = xp
        self.graph = graph
        self.stream = stream
        self.pool = pool  # private memory pool: keeps the graph's temporaries alive
        self.outputs = outputs
        self.device_id = device_id

    def replay(self, synchronize: bool = False):
        """Launch the captured work again (same input and output buffers); returns the
        outputs of the captured call (the same arrays, overwritten)."""
        with self.xp.cuda.Device(self.device_id):
            self.graph.launch(stream=self.stream)
            if synchronize:
                self.stream.synchronize()
        return self.outputs


def capture_graph(fn, *args, ops=None, warmup_runs: int = 1, **kwargs) -> CapturedGraph:
    """EXPERIMENTAL: capture `fn(*args, **kwargs)` (e.g. one train step) into a CUDA graph.

    `fn` runs `warmup_runs` times first (kernel compilation and cuBLAS setup cannot be
    captured), then once under stream capture with a private memory pool, so temporaries keep
    their addresses for every replay. Rules: inputs must be updated in place between replays
    (the graph reads the same buffers), `fn` must not sync with the host (no .get(), float(),
    printing device values), and results are the arrays `fn` returned, overwritten by each
    `replay()`. Unverified on hardware in this version.
    """
    xp = ops.xp if ops is not None else compat.cupy
    if xp is None:
        raise BackendUnavailableError(f"capture_graph needs CuPy: {INSTALL_HINT}")
    device_id = ops.device if ops is not None else int(xp.cuda.runtime.getDevice())
    with xp.cuda.Device(device_id):
        stream = xp.cuda.Stream(non_blocking=True)
        with stream:
            for _ in range(int(warmup_runs)):
                fn(*args, **kwargs)
        stream.synchronize()
        pool = xp.cuda.MemoryPool()
        with xp.cuda.using_allocator(pool.malloc), stream:
            stream.begin_capture()
            try:
                outputs = fn(*args, **kwargs)
            finally:
                graph = stream.end_capture()
    return CapturedGraph(xp, graph, stream, pool, outputs, device_id)
