"""Where the CuPy backend's work runs, and how it fails: device selection (`device=`), the
device scope every CupyOps method runs under, CuPy's OutOfMemoryError turned into nnx's
DeviceOutOfMemoryError, TF32 GEMMs (`tf32=`), and the `Ops` methods that move, allocate and
draw arrays on the device or wait for it.

Kept apart from the fused kernels because it is the same plumbing for every method, fused or
not. Nothing here imports CuPy: everything goes through the Ops' `xp` (which the tests replace
by a CPU emulation).
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import warnings

import numpy

from nnx.errors import DeviceOutOfMemoryError

INSTALL_HINT = "pip install 'nnx-framework[gpu]' (CUDA 12) or 'nnx-framework[gpu-cuda13]' (CUDA 13)"

# Public Ops methods that stay outside the device scope (host side: no device work to scope).
HOST_SIDE = frozenset({"to_host", "to_float", "synchronize"})


def _linalg(xp):
    """CuPy's GEMM compute-type switch (private API; None where missing)."""
    core = getattr(xp, "_core", None)
    rl = getattr(core, "_routines_linalg", None)
    if rl is None or not hasattr(rl, "set_compute_type"):
        return None
    return rl


# -- the device scope: device selection + readable out-of-memory errors --------------------


class DeviceScope:
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


# -- the device scope around the methods a backend inherits ---------------------------------


def _device_scoped(fn):
    @functools.wraps(fn)
    def scoped(self, *args, **kwargs):
        with self._scope():
            return fn(self, *args, **kwargs)

    return scoped


def scope_inherited(cls, base, host_side=HOST_SIDE) -> None:
    """Run every public method `cls` inherits unchanged from `base` (except the `host_side`
    ones) under `self._scope()`. functools.wraps keeps the base signature visible to
    inspect.signature (the consistency tests rely on that)."""
    for name, fn in inspect.getmembers(base, inspect.isfunction):
        if not name.startswith("_") and name not in host_side and getattr(cls, name) is fn:
            setattr(cls, name, _device_scoped(fn))


# -- the device side of CupyOps -------------------------------------------------------------


class DeviceMixin:
    """The device side of CupyOps (mixed in before `Ops`): which device, the scope every
    method runs under, readable out-of-memory errors, TF32 GEMMs, and the `Ops` methods that
    move, allocate and draw arrays on the device. CupyOps.__init__ sets what these use
    (`xp`, `dtype`, `_device_id`, `_oom_type`, `tf32`, `rng`)."""

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
        """The effective `tf32` option. Every float32 GEMM of this Ops sets CuPy's compute type
        for itself (TF32 when True, CuPy's default FP32 when False), so `tf32=False` also holds
        when the user set CUPY_TF32=1 (CuPy latches that variable at its first float32 GEMM)."""
        xp = self.xp
        rl = _linalg(xp)
        if rl is None:
            # A CuPy without the per-GEMM switch: nothing here can choose the compute type.
            # (Setting CUPY_TF32 from here would be dead code: CuPy 13/14 read it once, at the
            # first float32 GEMM of the process, and they have the switch anyway.)
            env_tf32 = os.environ.get("CUPY_TF32", "0").strip() not in ("", "0")
            if tf32 or env_tf32:
                warnings.warn(
                    f"this CuPy has no per-GEMM compute-type switch: tf32={tf32} cannot be "
                    f"applied; float32 GEMMs follow CUPY_TF32 "
                    f"({os.environ.get('CUPY_TF32', 'unset')})",
                    UserWarning,
                    stacklevel=3,
                )
            return False
        if not tf32:
            return False
        cc = int(xp.cuda.Device(self._device_id).compute_capability)
        if cc < 80:
            warnings.warn(
                f"tf32=True ignored: TF32 needs compute capability >= 8.0, device "
                f"{self._device_id} has {cc // 10}.{cc % 10}",
                UserWarning,
                stacklevel=3,
            )
            return False
        return True

    def _scope(self) -> DeviceScope:
        return DeviceScope(self)

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

    def _matmul(self, a, b, out=None):
        """a @ b. A float32 GEMM runs with the compute type this Ops chose: TF32 tensor cores
        with `tf32=True`, full FP32 otherwise, whatever CUPY_TF32 says (CuPy's process-wide
        setting is switched for this GEMM only and restored after)."""
        xp = self.xp
        rl = _linalg(xp) if a.dtype == numpy.float32 and b.dtype == numpy.float32 else None
        if rl is not None:
            want = rl.COMPUTE_TYPE_TF32 if self.tf32 else rl.COMPUTE_TYPE_DEFAULT
            prev = rl.get_compute_type(numpy.float32)
            if prev != want:
                rl.set_compute_type(numpy.float32, want)
                try:
                    return xp.matmul(a, b, out=out)
                finally:
                    rl.set_compute_type(numpy.float32, prev)
        return xp.matmul(a, b, out=out)

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
        """One batch of `device_dataset` output, as a device array (floats in the dtype).

        A NumPy index into a device-resident dataset must go to the device. fit takes x's and
        y's batch with the same slice of the epoch's permutation, so the whole permutation
        (the index's base array) is uploaded once and each batch is a slice of that device
        copy: one upload per epoch instead of two per batch. The batch's values are compared
        with the host copy the upload was made from (host work only), so a base array
        changed in place is uploaded again rather than read stale."""
        xp = self.xp
        with self._scope():
            if isinstance(data, xp.ndarray) and isinstance(index, numpy.ndarray):
                index = self._device_index(index)
            return self.asarray(data[index])

    def _device_index(self, index: numpy.ndarray):
        """`index` on the device, as a slice of the cached upload of its base array when it
        is a 1-D strided view of one (fit's batches), else a fresh upload."""
        base = index.base
        if (
            index.ndim != 1
            or not isinstance(base, numpy.ndarray)
            or base.ndim != 1
            or base.dtype != index.dtype
            or base.strides[0] != index.itemsize
            or index.strides[0] <= 0
            or index.strides[0] % index.itemsize
        ):
            return self.xp.asarray(index)
        offset = index.ctypes.data - base.ctypes.data
        if offset % index.itemsize:
            return self.xp.asarray(index)
        start, step = offset // index.itemsize, index.strides[0] // index.itemsize
        stop = start + step * (len(index) - 1) + 1 if len(index) else start
        cached = getattr(self, "_index_cache", None)
        if cached is None or cached[0] is not base or not numpy.array_equal(
            cached[1][start:stop:step], index
        ):
            host = base.copy()  # what the device copy holds, to validate later slices
            cached = (base, host, self.xp.asarray(host))
            self._index_cache = cached
        return cached[2][start:stop:step]

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
