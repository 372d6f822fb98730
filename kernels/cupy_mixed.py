"""Mixed precision for the CuPy backend: the `precision` and loss-scaling options, the dtypes
activations take, the casts around the GEMMs, and the loss-scale state kept on the device.

Kept apart from the kernel overrides so the precision policy reads in one place. The kernels
that round to bfloat16 and check/update the loss scale are launched by CupyOps (`_round_bf16`,
`_begin_update`, `_end_update` in cupy_gpu.py) with every other launch: the tests check the
kernel names used in that one file against the CUDA sources.

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
  Custom losses must scale their gradient with `ops.scale_grad(grad)`. TF32 switching (see
  cupy_device.py) and the loss scale are per Ops object; the TF32 switch is process-wide while
  a GEMM runs, so another thread's float32 GEMM at that moment may also use TF32.
"""

from __future__ import annotations

import math

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

    def _gemm_operand(self, a):
        """An activation or weight as a GEMM operand of the precision mode (weights are cast
        per GEMM; the float32 master stays untouched)."""
        if self.precision == "fp16":
            return a.astype(numpy.float16, copy=False)
        if self.precision == "bf16":
            return self._round_bf16(a)
        return a

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
