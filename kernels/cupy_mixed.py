"""Mixed precision for the CuPy backend: the `precision` and loss-scaling options, the dtypes
activations take, the casts around the GEMMs, and the loss-scale state kept on the device.

Kept apart from the kernel overrides so the precision policy reads in one place. The kernels
that round to bfloat16 and check/update the loss scale are launched by CupyOps (`_round_bf16`
in cupy_gpu.py, `_begin_update` / `_end_update` in cupy_optim.py): the tests check the kernel
names used in the cupy_*.py files against the CUDA sources.

Mixed precision (`precision="fp16"|"bf16"`, `dtype` must be float32): parameters, gradients
and optimizer state stay float32 in the flat buffers (master weights); activations and their
gradients are half precision; every GEMM accumulates in float32 (cuBLAS compute type 32F).
The weight and input operands are cast once per forward: the backward of the same call reuses
the forward's casts (`_casts`, keyed by the identity of the input and weight arrays, and
forgotten when the input array dies), so fp16 casts W once per layer per step, not twice, and
bf16 rounds W and x once. bf16 also skips rounding an input that a bf16 kernel of this Ops
produced (already exact in bf16). The weight gradient of an fp16 GEMM is written straight into
the float32 gradient buffer by cuBLAS GemmEx (fp16 inputs, fp32 output and compute): no fp16
temporary (which would overflow at 65504 under a large loss scale), no extra copy kernel.
"bf16" is emulated: CuPy has no stable bfloat16 dtype, so
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
  Custom losses must scale their gradient with `ops.scale_grad(grad)`. TF32 switching (see
  cupy_device.py) and the loss scale are per Ops object; the TF32 switch is process-wide while
  a GEMM runs, so another thread's float32 GEMM at that moment may also use TF32.
"""

from __future__ import annotations

import importlib
import math
import weakref

import numpy

_PRECISIONS = {None: None, "fp16": "fp16", "float16": "fp16", "bf16": "bf16", "bfloat16": "bf16"}


def parse_precision(precision, dtype) -> str | None:
    """The `precision` option as None, "fp16" or "bf16" ("float16"/"bfloat16" accepted);
    mixed precision needs `dtype` float32 (the master weights)."""
    precision = _PRECISIONS.get(precision, precision)
    if precision not in (None, "fp16", "bf16"):
        raise ValueError(f"precision must be None, 'fp16' or 'bf16', got {precision!r}")
    if precision is not None and dtype != numpy.float32:
        raise ValueError(
            f"precision={precision!r} keeps float32 master weights: use dtype='float32', "
            f"got {dtype}"
        )
    return precision


def parse_loss_scale(
    loss_scale,
    precision,
    init_scale: float,
    growth_interval: int,
    growth_factor: float,
    backoff_factor: float,
    min_scale: float,
    max_scale: float,
) -> tuple[bool, bool, tuple, float]:
    """The loss-scaling options, checked: (scaling, dynamic, the arguments of the
    nnx_update_loss_scale kernel after its state arrays, the initial scale)."""
    if loss_scale == "auto":
        loss_scale = "dynamic" if precision == "fp16" else None
    if loss_scale is not None and loss_scale != "dynamic":
        loss_scale = float(loss_scale)
        if not (loss_scale > 0 and math.isfinite(loss_scale)):
            raise ValueError(f"loss_scale must be positive and finite, got {loss_scale}")
    if loss_scale is not None and precision is None:
        raise ValueError("loss_scale needs precision='fp16' or 'bf16'")
    scaling = loss_scale is not None
    dynamic = loss_scale == "dynamic"
    if int(growth_interval) < 1:
        raise ValueError(f"growth_interval must be >= 1, got {growth_interval}")
    scale_args = (
        int(growth_interval),
        float(growth_factor),
        float(backoff_factor),
        float(min_scale),
        float(max_scale),
    )
    start = init_scale if dynamic else (loss_scale if scaling else 1.0)
    return scaling, dynamic, scale_args, start


class MixedPrecisionMixin:
    """The mixed-precision side of CupyOps (mixed in before `Ops`): the activation dtype and
    the loss-scale state on the device (the scale, the overflow flag, the step counters) with
    the methods that read or apply it, and the casts around the GEMMs. CupyOps.__init__ sets
    what these use (`xp`, `precision`, `_scaling`, `_dynamic`); `_scope()` and `_matmul()`
    come from DeviceMixin, `_round_bf16()` (a kernel launch) from CupyOps."""

    def _init_loss_scale(self, start: float) -> None:
        """Allocate the state on the current device, with the scale at `start`."""
        xp = self.xp
        self._loss_scale = xp.full((1,), start, dtype=numpy.float32)
        self._found_inf = xp.zeros((1,), dtype=numpy.int32)
        self._good_steps = xp.zeros((1,), dtype=numpy.int32)
        self._skipped_steps = xp.zeros((1,), dtype=numpy.int32)

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

    def _act_dtype(self, dtype):
        """The dtype activations take in this precision mode."""
        if self.precision == "fp16" and numpy.dtype(dtype) == numpy.float32:
            return numpy.dtype(numpy.float16)
        return numpy.dtype(dtype)

    def _gemm_operand(self, a, src=None):
        """An activation or weight as a GEMM operand of the precision mode (weights are cast
        per GEMM; the float32 master stays untouched). `src`: the array `a` is a reshape of
        (for the bf16-exact check, which goes by identity)."""
        if self.precision == "fp16":
            return a.astype(numpy.float16, copy=False)
        if self.precision == "bf16":
            if self._bf16_exact.holds(a if src is None else src):
                return a
            return self._round_bf16(a)
        return a

    def _mark_bf16(self, a):
        """Remember that `a` (an output of a bf16 kernel) is exact in bf16; returns `a`."""
        if self.precision == "bf16" and a is not None:
            self._bf16_exact.put(a)
        return a

    def _matmul_into(self, a, b, out, grad_dtype):
        """a @ b written into `out` when given (the flat buffer's view). fp16 operands with a
        float32 result go through cuBLAS GemmEx with a float32 output (no fp16 temporary);
        other dtype mismatches are cast."""
        xp = self.xp
        f16 = numpy.dtype(numpy.float16)
        want = numpy.dtype(grad_dtype if out is None else out.dtype)
        if a.dtype == f16 and b.dtype == f16 and want == numpy.float32:
            if out is None or out.flags.c_contiguous:
                target = xp.empty((a.shape[0], b.shape[1]), dtype=numpy.float32) if out is None \
                    else out
                if gemm_f16_f32(xp, a, b, target):
                    return target
        if out is not None:
            if out.dtype == numpy.result_type(a.dtype, b.dtype) and out.flags.c_contiguous:
                return self._matmul(a, b, out=out)
            xp.copyto(out, self._matmul(a, b), casting="unsafe")
            return out
        r = self._matmul(a, b)
        return r if r.dtype == grad_dtype else r.astype(grad_dtype)


class IdentityMemo:
    """Values remembered for live array objects, by identity: an entry is keyed by the ids of
    its key arrays, holds only a weak reference to the first one, and is dropped when that
    array dies (an id can then be reused by another object). Thread-safe under the GIL (one
    dict operation per call)."""

    __slots__ = ("_d",)

    def __init__(self):
        self._d: dict = {}

    def put(self, first, *rest, value=True) -> None:
        key = (id(first), *map(id, rest))
        d = self._d

        def drop(ref, key=key, d=d):
            entry = d.get(key)
            if entry is not None and entry[0] is ref:
                d.pop(key, None)

        self._d[key] = (weakref.ref(first, drop), rest, value)

    def _entry(self, first, rest):
        key = (id(first), *map(id, rest))
        entry = self._d.get(key)
        if entry is None or entry[0]() is not first:
            return key, None
        if any(a is not b for a, b in zip(entry[1], rest, strict=True)):
            return key, None
        return key, entry

    def holds(self, first, *rest) -> bool:
        return self._entry(first, rest)[1] is not None

    def pop(self, first, *rest, default=None):
        key, entry = self._entry(first, rest)
        if entry is None:
            return default
        self._d.pop(key, None)
        return entry[2]

    def __len__(self) -> int:
        return len(self._d)


_ONE_F32 = numpy.ones((), numpy.float32)  # cuBLAS alpha/beta (host pointers, compute type 32F)
_ZERO_F32 = numpy.zeros((), numpy.float32)
_INT32_MAX = 2**31 - 1


def _cublas(xp):
    """CuPy's cuBLAS bindings (None where they cannot be had)."""
    lib = getattr(xp.cuda, "cublas", None)
    if lib is None and xp.__name__ == "cupy":  # imported lazily, only with CuPy itself
        try:
            lib = importlib.import_module("cupy_backends.cuda.libs.cublas")
        except ImportError:  # pragma: no cover - depends on the CuPy build
            lib = None
    return lib


def _colmajor_operand(xp, arr):
    """(array, cuBLAS op, leading dimension) to read C-order `arr` as a column-major operand
    (cuBLAS sees a C-contiguous matrix as its transpose)."""
    if arr.flags.c_contiguous:
        return arr, 0, max(1, arr.shape[1])  # CUBLAS_OP_N on arr^T
    if arr.flags.f_contiguous:
        return arr, 1, max(1, arr.shape[0])  # CUBLAS_OP_T
    arr = xp.ascontiguousarray(arr)
    return arr, 0, max(1, arr.shape[1])


def gemm_f16_f32(xp, a, b, out) -> bool:
    """out = a @ b for 2-D fp16 `a` (M, K) and `b` (K, N) into C-contiguous float32 `out`
    (M, N), with cuBLAS GemmEx: fp16 inputs, fp32 output and accumulation. Returns False
    (nothing done) where GemmEx is unavailable or a size exceeds cuBLAS's int32 arguments."""
    lib = _cublas(xp)
    device = getattr(xp.cuda, "device", None)
    if lib is None or device is None or not hasattr(lib, "gemmEx"):
        return False
    (M, K), N = a.shape, b.shape[1]
    if max(M, N, K) > _INT32_MAX or out.shape != (M, N):
        return False
    if out.size == 0:
        return True
    if K == 0:
        out.fill(0)
        return True
    # C^T (N x M, column-major, ld N) = B^T (N x K) @ A^T (K x M)
    b_, op_b, ld_b = _colmajor_operand(xp, b)
    a_, op_a, ld_a = _colmajor_operand(xp, a)
    rt = xp.cuda.runtime
    lib.gemmEx(
        device.get_cublas_handle(), op_b, op_a, N, M, K,
        _ONE_F32.ctypes.data, b_.data.ptr, rt.CUDA_R_16F, ld_b,
        a_.data.ptr, rt.CUDA_R_16F, ld_a,
        _ZERO_F32.ctypes.data, out.data.ptr, rt.CUDA_R_32F, N,
        lib.CUBLAS_COMPUTE_32F, lib.CUBLAS_GEMM_DEFAULT,
    )
    return True
