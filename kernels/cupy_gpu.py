"""CuPy/CUDA overrides of the hot kernels: the reference `Ops` on CuPy arrays, with fused CUDA
kernels (`cuda/*.cu`, compiled lazily with `cupy.RawModule`) on the hot paths.

What is fused here (everything else is the reference running on CuPy arrays):

- `dense_forward`: cuBLAS GEMM (`cupy.matmul`) + ONE epilogue kernel for bias + activation
  (identity, relu, leaky_relu, sigmoid, tanh, gelu; softmax as a row kernel).
- `dense_backward`: ONE kernel for dz = act'(saved) * dy together with the bias gradient, the
  column sums of dz (`nnx_act_bwd_colsum_*`: tiles of 32 columns x row chunks, summed in a
  fixed order, plus `nnx_colsum_*` to add the chunks: deterministic, no atomics, no strided
  CuPy reduction), written into `db_out`; then the two GEMMs, dW straight into `dW_out`
  (fp16: cuBLAS GemmEx with a float32 output). Softmax's derivative is a row kernel, so there
  the column sums are a second pass.
- `softmax_cross_entropy`: forward and backward in ONE row kernel (block per row); int32/int64
  labels or one-hot/probability targets; the loss stays a 0-d device array (no host sync).
  Labels outside [0, C) cannot raise without a sync: their rows get a NaN loss and gradient
  (NumPy would raise, or wrap negative labels around).
- `sgd_update` / `adam_update` (AdamW with `decoupled=True`): ONE launch over the flat buffer
  (cupy_optim.py; step-dependent scalars from a device buffer inside CUDA graphs).
- `dropout_forward`: uniform numbers from the backend's CuPy generator + ONE mask kernel.
- `activation_forward` / `activation_backward` for the activations above.

Options (`nnx.use_backend("cupy", device=1, precision="fp16")` passes them here):

- `device`: None pins the Ops to the device current when it is created; an int selects one.
  Every override runs under `cupy.cuda.Device(device)`, so arrays it creates live there.
- `tf32`: float32 GEMMs on tensor cores with TF32 inputs (compute capability >= 8.0), switched
  per GEMM through CuPy's compute-type setting, so other CuPy code is not affected; `tf32=False`
  runs this Ops' float32 GEMMs in full FP32 even under CUPY_TF32=1. With precision="bf16" it
  costs no accuracy at all: bf16 values are exact in TF32.
- `precision`: None (everything in `dtype`), "fp16" or "bf16" (mixed precision: see
  cupy_mixed.py, with loss scaling).

CupyOps is put together from one module per job; each explains its part:

- `cupy_source.py`: the CUDA sources, their kernel signatures, lazy compilation, launch geometry.
- `cupy_device.py`: device selection and scope, out-of-memory errors, TF32 GEMMs, and the
  array methods (asarray, zeros, to_host, ...) on the device (`DeviceMixin`).
- `cupy_mixed.py`: mixed precision and loss scaling, and their limitations
  (`MixedPrecisionMixin`); the kernels they need are launched here, with all the others.
- `cupy_optim.py`: the fused SGD / Adam updates and the loss-scaling checks around them
  (`OptimizerMixin`).
- `cupy_graphs.py`: EXPERIMENTAL CUDA graph capture (`capture_graph`): stream ordering with
  the caller's stream, and the optimizer scalars refreshed before each replay.

What tests, tools and nnx.backends.cupy import from here is re-exported below.

Everything here imports without CuPy: the class exists (xp = None) and refuses to be created.
"""

from __future__ import annotations

import time

import numpy

from nnx import compat
from nnx.errors import BackendUnavailableError, ShapeError
from nnx.errors import DeviceOutOfMemoryError as DeviceOutOfMemoryError

from .cupy_device import INSTALL_HINT, DeviceMixin, scope_inherited
from .cupy_graphs import CapturedGraph as CapturedGraph
from .cupy_graphs import capture_graph as capture_graph
from .cupy_mixed import IdentityMemo, MixedPrecisionMixin, parse_loss_scale, parse_precision
from .cupy_optim import OptimizerMixin
from .cupy_source import _INT32_MAX, BLOCK, _grid, _Kernel, _row_threads, get_kernel, kernel_names
from .cupy_source import _POINTER_DTYPES as _POINTER_DTYPES
from .cupy_source import _SCALAR_TYPES as _SCALAR_TYPES
from .cupy_source import COMMON_HEADER as COMMON_HEADER
from .cupy_source import CUDA_DIR as CUDA_DIR
from .cupy_source import MAX_ROW_THREADS as MAX_ROW_THREADS
from .cupy_source import MODULE_FILES as MODULE_FILES
from .cupy_source import NVRTC_OPTIONS as NVRTC_OPTIONS
from .cupy_source import kernel_index as kernel_index
from .cupy_source import parse_signatures as parse_signatures
from .cupy_source import read_source as read_source
from .reference import Ops

cupy = compat.cupy  # None without CuPy; everything below goes through `self.xp` / `xp`

_ACT_CODES = {"identity": 0, "relu": 1, "leaky_relu": 2, "sigmoid": 3, "tanh": 4, "gelu": 5}


# -- the backend -----------------------------------------------------------------------------


class CupyOps(DeviceMixin, MixedPrecisionMixin, OptimizerMixin, Ops):
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
        self.precision = parse_precision(precision, self.dtype)
        self._scaling, self._dynamic, self._scale_args, start = parse_loss_scale(
            loss_scale,
            self.precision,
            init_scale,
            growth_interval,
            growth_factor,
            backoff_factor,
            min_scale,
            max_scale,
        )
        self._device_id = self._resolve_device(device)
        mem = getattr(getattr(xp, "cuda", None), "memory", None)
        self._oom_type = getattr(mem, "OutOfMemoryError", MemoryError)
        self.tf32 = self._check_tf32(bool(tf32))
        with self._scope():
            self.seed(seed)
            self._init_loss_scale(start)
            self._dummy = {
                numpy.dtype(t): xp.zeros((1,), dtype=t)
                for t in (numpy.float16, numpy.float32, numpy.float64)
            }
        self._index_cache = None  # take_batch's uploaded epoch permutation (cupy_device.py)
        self._casts = IdentityMemo()  # (x, W) -> the forward's GEMM operands, for its backward
        self._bf16_exact = IdentityMemo()  # arrays a bf16 kernel wrote (exact in bf16)

    def __repr__(self) -> str:
        extra = f" precision={self.precision}" if self.precision else ""
        extra += " tf32" if self.tf32 else ""
        return (
            f"<{type(self).__name__} {self.name} device={self._device_id} "
            f"dtype={self.dtype}{extra}>"
        )

    # -- kernels ----------------------------------------------------------------------------
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

    # -- GEMM helpers (the casts of the precision mode are in MixedPrecisionMixin) --------
    def _round_bf16(self, a):
        """A float32 copy of `a` rounded to bfloat16 (bf16 emulation)."""
        xp = self.xp
        a = xp.ascontiguousarray(a, dtype=numpy.float32)
        out = xp.empty_like(a)
        if a.size:
            self._k("nnx_round_bf16_f32")(_grid(a.size, self.max_grid), BLOCK, a, out, a.size)
        return out

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
                    # no bias: `cols` is never read, so pass 1 (not the row length, which
                    # could be any size)
                    bias, _ = self._bias_arg(None, variant, 1)
                    self._k("nnx_bias_act_" + variant)(
                        _grid(xc.size, self.max_grid),
                        BLOCK,
                        xc,
                        bias,
                        y,
                        y,
                        xc.size,
                        1,
                        _ACT_CODES[activation],
                        0,
                        0,
                    )
            return self._mark_bf16(y), (x if activation == "gelu" else y)

    def activation_backward(self, dy, saved, activation: str):
        if activation == "identity":
            return dy
        variant = self._variant(saved.dtype) if saved is not None else None
        if variant is None or (activation not in _ACT_CODES and activation != "softmax"):
            return super().activation_backward(dy, saved, activation)
        with self._scope():
            return self._mark_bf16(self._act_backward(dy, saved, activation, variant))

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
            xg, Wg = self._gemm_operand(x2, src=x), self._gemm_operand(W)
            if self.precision is not None:
                # the backward of this call reuses the casts; an operand that is x itself (a
                # view: fp16 input, or bf16-exact) is not kept, or the entry would keep x alive
                self._casts.put(x, W, value=(None if xg is x2 else xg, Wg))
            z = self._matmul(xg, Wg)
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
            else:
                bias, has_bias = self._bias_arg(b, variant, cols)
                gelu = activation == "gelu"
                y = xp.empty_like(z) if gelu else z
                if n and (has_bias or activation != "identity" or variant == "bf16"):
                    self._k("nnx_bias_act_" + variant)(
                        _grid(n, self.max_grid),
                        BLOCK,
                        z,
                        bias,
                        y,
                        z,
                        n,
                        cols if has_bias else 1,
                        _ACT_CODES[activation],
                        has_bias,
                        int(gelu),
                    )
                saved = z if gelu else (None if activation == "identity" else z)
            return self._mark_bf16(y.reshape(*lead, cols)), saved

    def dense_backward(
        self, dy, x, W, saved, activation="identity", need_dx=True, dW_out=None, db_out=None
    ):
        """(dx, dW, db) of dense_forward. The activation derivative and the bias gradient are
        one kernel (`_act_backward_colsum`); dW and dx are GEMMs on the forward's operands."""
        if activation not in _ACT_CODES and activation != "softmax":
            return super().dense_backward(dy, x, W, saved, activation, need_dx, dW_out, db_out)
        with self._scope():
            x2 = x.reshape(-1, x.shape[-1])
            dy2 = dy.reshape(-1, W.shape[1])
            cast = self._casts.pop(x, W) if self.precision is not None else None
            if cast is None:
                xg, Wg = self._gemm_operand(x2, src=x), self._gemm_operand(W)
            else:
                xg, Wg = (x2 if cast[0] is None else cast[0]), cast[1]
            grad_dtype = numpy.dtype(W.dtype)
            if activation == "identity" or saved is None:
                act_dtype = self._act_dtype(numpy.result_type(x.dtype, W.dtype))
                src, act_saved, act = dy2.astype(act_dtype, copy=False), None, "identity"
                if self.precision == "bf16" and self._bf16_exact.holds(dy):
                    act = "exact"  # already rounded by a bf16 kernel: nothing to store
            else:
                src, act_saved, act = dy2, saved.reshape(dy2.shape), activation
            dz, db = self._act_backward_colsum(src, act_saved, act, db_out, grad_dtype)
            dW = self._matmul_into(xg.T, dz, dW_out, grad_dtype)
            dx = None
            if need_dx:
                dx = self._matmul(dz, Wg.T)
                if self.precision == "bf16":
                    dx = self._round_bf16(dx)
                dx = self._mark_bf16(dx.reshape(x.shape))
            return dx, dW, db

    def _act_backward_colsum(self, dy, saved, activation, db_out, grad_dtype):
        """(dz, db): dz = act'(saved) * dy in the activation dtype and db its column sums,
        in ONE pass over dz (`nnx_act_bwd_colsum_*`, deterministic: no atomics), written into
        `db_out` when it has the accumulation dtype. activation "identity": dz = dy (rounded
        in bf16), "exact": dz is dy as is. Softmax's row kernel runs first."""
        xp = self.xp
        variant = self._variant(saved.dtype if saved is not None else dy.dtype)
        if variant is None:  # not a float kernel dtype: the reference
            dz = dy if saved is None else super().activation_backward(dy, saved, activation)
            return dz, dz.sum(axis=0, dtype=db_out.dtype if db_out is not None else grad_dtype,
                              out=db_out)
        if activation == "softmax":  # a row kernel first; then the column sums of its dz
            dy, saved, activation = self._act_backward(dy, saved, "softmax", variant), None, "exact"
        dy = xp.ascontiguousarray(dy, dtype=saved.dtype if saved is not None else dy.dtype)
        rows, cols = dy.shape
        acc = numpy.dtype(numpy.float64 if variant == "f64" else numpy.float32)
        write_dz = activation != "exact" and (activation != "identity" or variant == "bf16")
        dz = xp.empty_like(dy) if write_dz else dy
        code = _ACT_CODES.get(activation, 0)
        direct = db_out is not None and db_out.dtype == acc and db_out.flags.c_contiguous
        db = db_out.reshape(cols) if direct else xp.empty((cols,), dtype=acc)
        if rows == 0 or cols == 0:
            db.fill(0)
        else:
            tiles = -(-cols // 32)
            chunks = max(1, min(-(-rows // 32), -(-1024 // tiles)))
            chunk_rows = -(-rows // chunks)
            chunks = -(-rows // chunk_rows)
            partial = db if chunks == 1 else xp.empty((chunks * cols,), dtype=acc)
            self._k("nnx_act_bwd_colsum_" + variant)(
                min(tiles * chunks, self.max_grid),
                BLOCK,
                dy,
                saved if saved is not None else dy,
                dz if write_dz else self._dummy[numpy.dtype(dy.dtype)],
                partial,
                rows,
                cols,
                code,
                int(write_dz),
                chunk_rows,
            )
            if chunks > 1:
                self._k("nnx_colsum_" + ("f64" if variant == "f64" else "f32"))(
                    _grid(cols, self.max_grid), BLOCK, partial, db, chunks, cols
                )
        if db_out is not None:
            if not direct:
                xp.copyto(db_out, db.reshape(db_out.shape), casting="unsafe")
            db = db_out
        return self._mark_bf16(dz) if write_dz else dz, db

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
                    f"nnx_softmax_ce_{kind}_{variant}",
                    rows,
                    cols,
                    logits,
                    targets,
                    grad,
                    row_loss,
                    rows,
                    cols,
                    self._loss_scale,
                    1.0 / rows,
                )
            elif rows:
                row_loss.fill(numpy.nan)
            return row_loss.sum(), self._mark_bf16(grad)

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
            return self._mark_bf16(y), mask


# Every public kernel CupyOps inherits unchanged (the reference on CuPy arrays, including the
# LayerKernels mixin) runs under the Ops' device and OOM scope too.
scope_inherited(CupyOps, Ops)


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
