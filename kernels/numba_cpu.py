"""Numba-JIT overrides of the hot kernels: `NumbaOps` = the reference `Ops` + fused CPU loops.

What runs where
- GEMMs stay in BLAS (`np.matmul(..., out=...)`): OpenBLAS already runs them near peak, and a
  hand-written Numba GEMM would not.
- Everything around a GEMM is one fused pass in Numba: bias + activation in place on the GEMM
  output (forward), activation derivative * dy + the bias-gradient column sum (backward),
  row max / log-sum-exp / loss / gradient (softmax cross-entropy), the whole optimizer update
  over the flat parameter buffer, and dropout mask generation + apply.

Where the code is: this module is the backend class. Each `NumbaOps` method checks its inputs,
hands what the kernels do not handle to the reference (`super()`), and otherwise runs one family's
serial or parallel driver through `numba_dispatch.dispatch`, with the chunk count from
`numba_dispatch.nchunks` (the one serial/parallel policy, and its thread measurements). The
kernels live per family: `numba_dense.py` (epilogues, dense backward, activations),
`numba_loss.py` (softmax cross-entropy), `numba_optim.py` (SGD, Adam/AdamW), `numba_dropout.py`;
the layer kernels come in through mixins: `numba_conv_ops.py` (conv2d by groups of samples:
`numba_conv.py`, `numba_conv_threads.py`), `numba_recurrent.py` (LSTM), `numba_layers.py`
(pooling, batch norm). The LSTM and conv2d kernels call the BLAS GEMM from inside Numba threads
(`numba_blas.py`) when `numba_dispatch.blas_plan` allows.

Numerics: `fastmath` without `nnan`/`ninf` (reassociation, contraction to FMA, reciprocal
multiplication, fast libm calls), so NaN and inf still propagate the way the reference's do
(`all_finite` checks rely on that) while reductions vectorize. Results match the reference to a
few ulps; float32 kernels compute in float32 (scalars are rounded to the array dtype once, in
Python, exactly as NumPy's weak-scalar promotion does in the reference), loss sums in float64.
`error_model="numpy"`: float division by zero gives inf/NaN as in NumPy instead of raising, and
without the per-element zero check division loops vectorize. Element loops run over
`range(len(slice))`, never `range(lo, hi)`, which keeps a negative-index check that blocks SIMD.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np

from . import numba_dense, numba_dropout, numba_loss, numba_optim
from .numba_common import ACT_CODE as _ACT_CODE
from .numba_common import GELU, IDENTITY, LEAKY_RELU, RELU, SIGMOID, SOFTMAX, TANH
from .numba_common import contiguous as _c
from .numba_common import same_float as _same_float
from .numba_conv_ops import NumbaConvKernels
from .numba_dense import (
    _act_grad_par,
    _act_grad_ser,
    _act_par,
    _act_ser,
    _dense_grad_par,
    _dense_grad_ser,
    _epilogue_par,
    _epilogue_ser,
    _softmax_grad_par,
    _softmax_grad_ser,
    _softmax_par,
    _softmax_ser,
)
from .numba_dispatch import NUMPY_FASTER as _NUMPY_FASTER
from .numba_dispatch import NUMPY_FASTER_GRAD as _NUMPY_FASTER_GRAD
from .numba_dispatch import (
    PAR_MIN_ELEMS,  # noqa: F401  (re-exported: one shared definition)
    dispatch,
    nchunks,
)
from .numba_dropout import _dropout_par, _dropout_ser, _mul_par, _mul_ser
from .numba_layers import NumbaLayerKernels
from .numba_loss import _sce_int_par, _sce_int_ser, _sce_prob_par, _sce_prob_ser
from .numba_optim import NumbaOptimKernels, _adam_par, _adam_ser, _sgd_par, _sgd_ser
from .numba_recurrent import NumbaRecurrentKernels
from .reference import Ops


# ============================================================================================
# The backend
# ============================================================================================
class NumbaOps(NumbaConvKernels, NumbaRecurrentKernels, NumbaLayerKernels, NumbaOptimKernels, Ops):
    """NumPy arrays; BLAS GEMMs with fused Numba epilogues, fused losses and optimizers."""

    name = "numba"

    def __init__(self, seed: int | None = None, dtype: str = "float32", **options):
        super().__init__(seed=seed, dtype=dtype, **options)
        self._local = threading.local()  # per-thread scratch (dz of dense_backward)

    # -- helpers --------------------------------------------------------------------------
    # The chunk policy (numba_dispatch.nchunks) as an overridable hook: the tests force the
    # parallel drivers by overriding it.
    _chunks = staticmethod(nchunks)

    def _scratch(self, shape, dtype):
        cache = getattr(self._local, "bufs", None)
        if cache is None:
            cache = self._local.bufs = {}
        key = (shape, dtype)
        buf = cache.get(key)
        if buf is None:
            if len(cache) >= 16:  # e.g. many distinct batch sizes: keep the newest few
                del cache[next(iter(cache))]
            buf = cache[key] = np.empty(shape, dtype=dtype)
        return buf

    def _act(self, x, code):
        """act(x) for any shape; returns a new array."""
        xc = _c(x)
        if code == SOFTMAX:
            x2 = xc.reshape(-1, xc.shape[-1]) if xc.ndim else xc.reshape(1, 1)
            y = np.empty_like(x2)
            dispatch(self._chunks(x2.size), _softmax_ser, _softmax_par, x2, y)
            return y.reshape(x.shape)
        xf = xc.reshape(-1)
        y = np.empty_like(xf)
        dispatch(self._chunks(xf.size), _act_ser, _act_par, xf, y, code)
        return y.reshape(x.shape)

    def _act_grad(self, dy, saved, code):
        dyc, sc = _c(dy), _c(saved)
        if code == SOFTMAX:
            last = sc.shape[-1] if sc.ndim else 1
            d2, s2 = dyc.reshape(-1, last), sc.reshape(-1, last)
            dx = np.empty_like(s2)
            dispatch(self._chunks(s2.size), _softmax_grad_ser, _softmax_grad_par, d2, s2, dx)
            return dx.reshape(saved.shape)
        df, sf = dyc.reshape(-1), sc.reshape(-1)
        dx = np.empty_like(sf)
        dispatch(self._chunks(sf.size), _act_grad_ser, _act_grad_par, df, sf, code, dx)
        return dx.reshape(saved.shape)

    def _elementwise_ok(self, x, saved=None) -> bool:
        if saved is None:
            return _same_float(x)
        return _same_float(x, saved) and x.shape == saved.shape

    # -- activations ----------------------------------------------------------------------
    def activation_forward(self, x, activation: str):
        code = _ACT_CODE.get(activation)
        if code is None or code == IDENTITY or code in _NUMPY_FASTER or not _same_float(x):
            return super().activation_forward(x, activation)
        y = self._act(x, code)
        return y, (x if code == GELU else y)

    def activation_backward(self, dy, saved, activation: str):
        code = _ACT_CODE.get(activation)
        if code is None or code == IDENTITY or code in _NUMPY_FASTER_GRAD:
            return super().activation_backward(dy, saved, activation)
        if not self._elementwise_ok(dy, saved):
            return super().activation_backward(dy, saved, activation)
        return self._act_grad(dy, saved, code)

    def relu(self, x):
        return self._act(x, RELU) if _same_float(x) else super().relu(x)

    def backprop_relu(self, dy, y):
        if self._elementwise_ok(dy, y):
            return self._act_grad(dy, y, RELU)
        return super().backprop_relu(dy, y)

    def leaky_relu(self, x):
        return self._act(x, LEAKY_RELU) if _same_float(x) else super().leaky_relu(x)

    def backprop_leaky_relu(self, dy, y):
        if self._elementwise_ok(dy, y):
            return self._act_grad(dy, y, LEAKY_RELU)
        return super().backprop_leaky_relu(dy, y)

    def sigmoid(self, x):
        return self._act(x, SIGMOID) if _same_float(x) else super().sigmoid(x)

    def backprop_sigmoid(self, dy, y):
        if self._elementwise_ok(dy, y):
            return self._act_grad(dy, y, SIGMOID)
        return super().backprop_sigmoid(dy, y)

    def tanh(self, x):
        if TANH in _NUMPY_FASTER or not _same_float(x):
            return super().tanh(x)
        return self._act(x, TANH)

    def backprop_tanh(self, dy, y):
        if self._elementwise_ok(dy, y):
            return self._act_grad(dy, y, TANH)
        return super().backprop_tanh(dy, y)

    def softmax(self, x, axis: int = -1):
        if _same_float(x) and x.ndim >= 1 and axis in (-1, x.ndim - 1):
            return self._act(x, SOFTMAX)
        return super().softmax(x, axis=axis)

    def backprop_softmax(self, dy, y, axis: int = -1):
        if self._elementwise_ok(dy, y) and y.ndim >= 1 and axis in (-1, y.ndim - 1):
            return self._act_grad(dy, y, SOFTMAX)
        return super().backprop_softmax(dy, y, axis=axis)

    def gelu(self, x):
        if GELU in _NUMPY_FASTER or not _same_float(x):
            return super().gelu(x)
        return self._act(x, GELU)

    def backprop_gelu(self, dy, x):
        if GELU in _NUMPY_FASTER_GRAD or not self._elementwise_ok(dy, x):
            return super().backprop_gelu(dy, x)
        return self._act_grad(dy, x, GELU)

    # -- dense ----------------------------------------------------------------------------
    def dense_forward(self, x, W, b, activation: str = "identity"):
        code = _ACT_CODE.get(activation)
        arrays = (x, W) if b is None else (x, W, b)
        if code is None or W.ndim != 2 or x.ndim < 1 or not _same_float(*arrays):
            return super().dense_forward(x, W, b, activation)
        if code in _NUMPY_FASTER:  # fused bias, then the reference activation (see _NUMPY_FASTER)
            y, _ = self.dense_forward(x, W, b, "identity")
            y2 = y.reshape(-1, W.shape[1])
            out, saved = super().activation_forward(y2, activation)
            return out.reshape(y.shape), saved
        lead = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        n, nout = x2.shape[0], W.shape[1]
        # Fresh output every call: it is the next layer's input and saved for backward.
        z = np.empty((n, nout), dtype=x.dtype)
        np.matmul(x2, W, out=z)
        bias = np.zeros(nout, dtype=x.dtype) if b is None else _c(b.reshape(-1))
        y = np.empty_like(z) if code == GELU else z
        dispatch(self._chunks(z.size), _epilogue_ser, _epilogue_par, z, bias, code, y)
        if code == IDENTITY:
            saved = None
        elif code == GELU:
            saved = z
        else:
            saved = y
        return y.reshape(*lead, nout), saved

    def dense_backward(
        self, dy, x, W, saved, activation="identity", need_dx=True, dW_out=None, db_out=None
    ):
        code = _ACT_CODE.get(activation)
        nout = W.shape[1] if W.ndim == 2 else -1
        arrays = (dy, x, W) if code == IDENTITY or code is None else (dy, x, W, saved)
        slow = code in _NUMPY_FASTER_GRAD
        if code is None or slow or W.ndim != 2 or not _same_float(*arrays):
            return super().dense_backward(dy, x, W, saved, activation, need_dx, dW_out, db_out)
        x2 = x.reshape(-1, x.shape[-1])
        dy2 = _c(dy.reshape(-1, nout))
        if code == IDENTITY:
            s2 = dz = dy2
        else:
            s2 = _c(saved.reshape(-1, nout))
            if s2.shape != dy2.shape:
                return super().dense_backward(dy, x, W, saved, activation, need_dx, dW_out, db_out)
            dz = self._scratch(dy2.shape, dy2.dtype)  # consumed before we return
        direct = (
            isinstance(db_out, np.ndarray)
            and db_out.dtype == dy2.dtype
            and db_out.shape == (nout,)
            and db_out.flags.c_contiguous
        )
        db = db_out if direct else np.empty(nout, dtype=dy2.dtype)
        dispatch(self._chunks(dy2.size), _dense_grad_ser, _dense_grad_par, dy2, s2, code, dz, db)
        if db_out is not None and not direct:
            db_out[...] = db
            db = db_out
        dW = np.matmul(x2.T, dz, out=dW_out)
        dx = np.matmul(dz, W.T).reshape(x.shape) if need_dx else None
        return dx, dW, db

    # -- losses ---------------------------------------------------------------------------
    def softmax_cross_entropy(self, logits, labels):
        if (
            not _same_float(logits)
            or logits.ndim != 2
            or logits.shape[1] == 0
            or not isinstance(labels, np.ndarray)
            or labels.shape[0] != logits.shape[0]
        ):
            return super().softmax_cross_entropy(logits, labels)
        x = _c(logits)
        n = x.shape[0]
        if n == 0:
            return super().softmax_cross_entropy(logits, labels)
        grad = np.empty_like(x)
        inv_n = x.dtype.type(1.0 / n)
        nc = self._chunks(x.size)
        if labels.ndim == 1 and labels.dtype.kind in "iu":
            lab = labels if labels.dtype in (np.int32, np.int64) else labels.astype(np.int64)
            lab = _c(lab)
            total, bad = dispatch(nc, _sce_int_ser, _sce_int_par, x, lab, grad, inv_n)
            if bad:  # out-of-range (or negative, which NumPy wraps): the reference decides
                return super().softmax_cross_entropy(logits, labels)
        elif labels.ndim == 2 and labels.shape == x.shape and labels.dtype == x.dtype:
            t = _c(labels)
            total = dispatch(nc, _sce_prob_ser, _sce_prob_par, x, t, grad, inv_n)
        else:
            return super().softmax_cross_entropy(logits, labels)
        return np.asarray(total / n, dtype=x.dtype), grad

    # -- dropout --------------------------------------------------------------------------
    def dropout_forward(self, x, rate: float):
        if not _same_float(x) or not (0.0 <= rate < 1.0):
            return super().dropout_forward(x, rate)
        xf = _c(x).reshape(-1)
        y = np.empty_like(xf)
        mask = np.empty_like(xf)
        seed = int(self.rng.integers(0, 2**63))
        threshold = math.ceil(rate * (1 << 24))
        scale = x.dtype.type(1.0 / (1.0 - rate))
        dispatch(
            self._chunks(xf.size), _dropout_ser, _dropout_par, xf, y, mask, seed, threshold, scale
        )
        return y.reshape(x.shape), mask.reshape(x.shape)

    def backprop_dropout(self, dy, mask):
        if not self._elementwise_ok(dy, mask):
            return super().backprop_dropout(dy, mask)
        df, mf = _c(dy).reshape(-1), _c(mask).reshape(-1)
        out = np.empty_like(df)
        dispatch(self._chunks(df.size), _mul_ser, _mul_par, df, mf, out)
        return out.reshape(dy.shape)

    # -- optimizers -----------------------------------------------------------------------
    @staticmethod
    def _flat_ok(*arrays) -> bool:
        return (
            _same_float(*arrays)
            and all(a.ndim == 1 and a.flags.c_contiguous for a in arrays)
            and len({a.shape for a in arrays}) == 1
            and arrays[0].flags.writeable
        )

    def sgd_update(
        self,
        params,
        grads,
        velocity,
        lr: float,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        arrays = (params, grads, velocity) if momentum else (params, grads)
        if not self._flat_ok(*arrays):
            return super().sgd_update(params, grads, velocity, lr, momentum, nesterov, weight_decay)
        t = params.dtype.type
        sc = np.array([t(lr), t(momentum), t(weight_decay)], dtype=params.dtype)
        vel = velocity if momentum else params  # unused without momentum
        args = (params, grads, vel, sc, bool(weight_decay), bool(momentum), bool(nesterov))
        dispatch(self._chunks(params.size), _sgd_ser, _sgd_par, *args)

    def adam_update(
        self,
        params,
        grads,
        m,
        v,
        step: int,
        lr: float,
        beta1: float,
        beta2: float,
        eps: float,
        weight_decay: float = 0.0,
        decoupled: bool = False,
    ) -> None:
        if not self._flat_ok(params, grads, m, v):
            return super().adam_update(
                params, grads, m, v, step, lr, beta1, beta2, eps, weight_decay, decoupled
            )
        bc1 = 1.0 - beta1**step
        bc2_sqrt = math.sqrt(1.0 - beta2**step)
        mode = 0 if not weight_decay else (2 if decoupled else 1)
        sc = np.array(
            [
                beta1,
                1.0 - beta1,
                beta2,
                1.0 - beta2,
                lr / bc1,
                bc2_sqrt,
                eps,
                weight_decay,
                1.0 - lr * weight_decay,
            ],
            dtype=params.dtype,
        )
        dispatch(self._chunks(params.size), _adam_ser, _adam_par, params, grads, m, v, sc, mode)

    # -- compilation ----------------------------------------------------------------------
    def warmup(self) -> dict[str, float]:
        """Compile (or load from the cache) every kernel for float32 and float64."""
        return warmup()


def _warmup_calls(dt):
    """(name, thunk) pairs that call every driver once on tiny arrays of dtype `dt`."""
    return [
        *numba_dense.warmup_calls(dt),
        *numba_loss.warmup_calls(dt),
        *numba_optim.warmup_calls(dt),
        *numba_dropout.warmup_calls(dt),
    ]


def warmup() -> dict[str, float]:
    """Compile every kernel for float32 and float64 (with cache=True, a later process loads
    them from the on-disk cache instead). Returns seconds per `kernel/driver[dtype]`."""
    out: dict[str, float] = {}
    for dt in ("float32", "float64"):
        for name, call in _warmup_calls(dt):
            t0 = time.perf_counter()
            call()
            out[f"{name}[{dt}]"] = time.perf_counter() - t0
    return out
