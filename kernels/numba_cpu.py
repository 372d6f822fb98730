"""Numba-JIT overrides of the hot kernels: `NumbaOps` = the reference `Ops` + fused CPU loops.

What runs where
- GEMMs stay in BLAS (`np.matmul(..., out=...)`): OpenBLAS already runs them near peak, and a
  hand-written Numba GEMM would not.
- Everything around a GEMM is one fused pass in Numba: bias + activation in place on the GEMM
  output (forward), activation derivative * dy + the bias-gradient column sum (backward),
  row max / log-sum-exp / loss / gradient (softmax cross-entropy), the whole optimizer update
  over the flat parameter buffer, and dropout mask generation + apply.
- Every kernel exists twice: a serial driver (`*_ser`) and a parallel one (`*_par`, `prange`
  over `nchunks` contiguous row/element chunks). Each chunk owns its output rows; column
  reductions (the bias gradient, the loss) go into per-chunk partials combined after the
  parallel loop, so no two threads ever `+=` the same memory. Small problems take the serial
  driver: a parallel launch costs tens of microseconds on a 2-vCPU box (worker wake-up,
  and a core that OpenBLAS's own worker may still hold), more than the whole pass costs at
  training-batch sizes. The crossover is `PAR_MIN_ELEMS` (measured by tools/measure_numba.py).
- The thread count is read in Python (`numba.get_num_threads()`) and passed in as `nchunks`;
  calling it inside a cached kernel would break caching.

Threads (measured on the 2-vCPU box with tools/measure_numba.py): OpenBLAS and Numba both keep
their default 2 threads, and `nnx.compat` sets OMP_WAIT_POLICY=passive so idle Numba workers sleep
instead of spinning against OpenBLAS's. We do not touch the BLAS thread count. At the MLP's
batch-128 sizes (<= 128x512 per epilogue) the serial drivers are 1.5-15x faster than the parallel
ones (a launch costs ~15-30 us there); from 2**18-2**19 elements on the parallel ones win by
10-25% on a quiet box (the Adam update over 535k parameters, a 2048-row epilogue), hence
PAR_MIN_ELEMS = 2**18.
Caveat measured there too: while other processes load the box, OpenBLAS's spin-waiting 2-thread
GEMMs slow down 5-20x (1 thread does not); that is a BLAS setting, outside this module.

Numerics: `fastmath` without `nnan`/`ninf` (reassociation, contraction to FMA, reciprocal
multiplication, fast libm calls), so NaN and inf still propagate the way the reference's do
(`all_finite` checks rely on that) while reductions vectorize. Results match the reference to a
few ulps; float32 kernels compute in float32 (scalars are rounded to the array dtype once, in
Python, exactly as NumPy's weak-scalar promotion does in the reference), loss sums in float64.
`error_model="numpy"`: float division by zero gives inf/NaN as in NumPy instead of raising, and
without the per-element zero check division loops vectorize. Element loops run over
`range(len(slice))`, never `range(lo, hi)`, which keeps a negative-index check that blocks SIMD.

Dropout masks come from a counter-based hash (splitmix64 of seed + element index) with the seed
drawn from `self.rng` each call: the mask depends only on the backend seed and the call sequence,
never on the thread count or chunking.
"""

from __future__ import annotations

import math
import threading
import time

import numba
import numpy as np
from numba import njit, prange

from .numba_common import PAR as _PAR
from .numba_common import PAR_MIN_ELEMS
from .numba_common import SER as _SER
from .numba_common import contiguous as _c
from .numba_common import same_float as _same_float
from .numba_layers import NumbaLayerKernels
from .reference import _GELU_K, ACTIVATIONS, LEAKY_SLOPE, Ops

# Activation codes (frozen into the kernels as constants).
IDENTITY, RELU, LEAKY_RELU, SIGMOID, TANH, SOFTMAX, GELU = range(7)
_ACT_CODE = {name: i for i, name in enumerate(ACTIVATIONS)}
assert _ACT_CODE == {
    "identity": IDENTITY,
    "relu": RELU,
    "leaky_relu": LEAKY_RELU,
    "sigmoid": SIGMOID,
    "tanh": TANH,
    "softmax": SOFTMAX,
    "gelu": GELU,
}

# Activations whose forward calls tanh: Numba has no SVML here and calls scalar libm tanh, which
# measured 4-6x slower than NumPy's SIMD tanh (benchmarks/results: tanh fwd+bwd 0.17-0.27x,
# gelu 0.25-0.75x). Their forward (and gelu's backward, which needs tanh too) stay on the
# reference kernels; tanh's backward, dy * (1 - y*y), stays fused.
_NUMPY_FASTER = frozenset({TANH, GELU})


_GELU_C = 0.044715
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S40 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(40)


# ============================================================================================
# Row / range helpers (serial; inlined by LLVM into the drivers)
# ============================================================================================
@njit(**_SER)
def _span(c, nchunks, n):
    """Bounds of chunk c of nchunks over range(n)."""
    return (c * n) // nchunks, ((c + 1) * n) // nchunks


@njit(**_SER)
def _act_vec(x, y, act):
    """y = act(x) elementwise over 1-D arrays (every activation but softmax); y may be x.
    Loops run over range(len) of whole (sliced) arrays: a range(lo, hi) index could be negative
    as far as Numba knows, and the wraparound check it then keeps blocks vectorization."""
    t = x.dtype.type
    n = x.shape[0]
    zero, one, half = t(0.0), t(1.0), t(0.5)
    if act == RELU:
        for j in range(n):
            v = x[j]
            y[j] = zero if v < zero else v  # NaN stays NaN, like np.maximum
    elif act == LEAKY_RELU:
        slope = t(LEAKY_SLOPE)
        for j in range(n):
            v = x[j]
            y[j] = v if v > zero else v * slope
    elif act == SIGMOID:
        for j in range(n):
            v = x[j]
            e = np.exp(-abs(v))
            y[j] = one / (one + e) if v >= zero else e / (one + e)
    elif act == TANH:
        for j in range(n):
            y[j] = np.tanh(x[j])
    elif act == GELU:
        k, c = t(_GELU_K), t(_GELU_C)
        for j in range(n):
            v = x[j]
            th = np.tanh(k * (v + c * v * v * v))
            y[j] = half * v * (one + th)
    else:  # identity (not reached from NumbaOps, which returns x itself)
        for j in range(n):
            y[j] = x[j]


@njit(**_SER)
def _act_grad_vec(dy, s, act, dx):
    """dx = act'(s) * dy elementwise over 1-D arrays; s is the saved tensor (the output, or the
    input for gelu)."""
    t = dy.dtype.type
    n = dy.shape[0]
    zero, one, half = t(0.0), t(1.0), t(0.5)
    if act == RELU:
        for j in range(n):
            dx[j] = dy[j] * (one if s[j] > zero else zero)  # NaN in dy propagates, as dy * (y > 0)
    elif act == LEAKY_RELU:
        slope = t(LEAKY_SLOPE)
        for j in range(n):
            g = dy[j]
            dx[j] = g if s[j] > zero else g * slope
    elif act == SIGMOID:
        for j in range(n):
            yv = s[j]
            dx[j] = dy[j] * yv * (one - yv)
    elif act == TANH:
        for j in range(n):
            yv = s[j]
            dx[j] = dy[j] * (one - yv * yv)
    elif act == GELU:
        k, c, c3 = t(_GELU_K), t(_GELU_C), t(3 * _GELU_C)
        for j in range(n):
            v = s[j]
            th = np.tanh(k * (v + c * v * v * v))
            dt = (one - th * th) * k * (one + c3 * v * v)
            dx[j] = dy[j] * (half * (one + th) + half * v * dt)
    else:  # identity
        for j in range(n):
            dx[j] = dy[j]


@njit(**_SER)
def _softmax_row(x, y):
    """y = softmax(x) over a 1-D row; y may be x."""
    n = x.shape[0]
    if n == 0:
        return
    m = x[0]
    for j in range(1, n):
        v = x[j]
        m = v if v > m else m
    s = x.dtype.type(0.0)
    for j in range(n):
        e = np.exp(x[j] - m)
        y[j] = e
        s += e
    for j in range(n):
        y[j] = y[j] / s


@njit(**_SER)
def _softmax_grad_row(dy, y, dx):
    """dx = y * (dy - <dy, y>) over a 1-D row; dx may be dy."""
    n = y.shape[0]
    d = y.dtype.type(0.0)
    for j in range(n):
        d += dy[j] * y[j]
    for j in range(n):
        dx[j] = y[j] * (dy[j] - d)


@njit(**_SER)
def _epilogue_rows(z, b, act, y):
    """The dense epilogue over a block of rows: z += b in place, then y = act(z) (y may be z)."""
    ncol = z.shape[1]
    for i in range(z.shape[0]):
        zi = z[i]
        for j in range(ncol):
            zi[j] += b[j]
        if act == SOFTMAX:
            _softmax_row(zi, y[i])
        elif act != IDENTITY:
            _act_vec(zi, y[i], act)


@njit(**_SER)
def _dense_grad_rows(dy, s, act, dz, acc):
    """The dense backward over a block of rows: dz = act'(s) * dy, acc += column sums of dz.
    For identity dz is dy itself and only the column sum runs."""
    ncol = dy.shape[1]
    for i in range(dy.shape[0]):
        dzi = dz[i]
        if act == SOFTMAX:
            _softmax_grad_row(dy[i], s[i], dzi)
        elif act != IDENTITY:
            _act_grad_vec(dy[i], s[i], act, dzi)
        for j in range(ncol):
            acc[j] += dzi[j]


@njit(**_SER)
def _sce_int_rows(x, labels, grad, inv_n):
    """Softmax cross-entropy over a block of rows against integer labels; returns
    (loss sum, number of out-of-range labels)."""
    ncol = x.shape[1]
    loss = 0.0
    bad = 0
    for i in range(x.shape[0]):
        xi = x[i]
        gi = grad[i]
        m = xi[0]
        for j in range(1, ncol):
            v = xi[j]
            m = v if v > m else m
        s = x.dtype.type(0.0)
        for j in range(ncol):
            e = np.exp(xi[j] - m)
            gi[j] = e
            s += e
        lse = m + np.log(s)
        r = inv_n / s
        for j in range(ncol):
            gi[j] = gi[j] * r
        lab = labels[i]
        if lab < 0 or lab >= ncol:
            bad += 1
            continue
        loss += lse - xi[lab]
        gi[lab] -= inv_n
    return loss, bad


@njit(**_SER)
def _sce_prob_rows(x, t, grad, inv_n):
    """Softmax cross-entropy over a block of rows against probability targets; returns the
    loss sum."""
    ncol = x.shape[1]
    loss = 0.0
    for i in range(x.shape[0]):
        xi = x[i]
        ti = t[i]
        gi = grad[i]
        m = xi[0]
        for j in range(1, ncol):
            v = xi[j]
            m = v if v > m else m
        s = x.dtype.type(0.0)
        for j in range(ncol):
            e = np.exp(xi[j] - m)
            gi[j] = e
            s += e
        lse = m + np.log(s)
        r = x.dtype.type(1.0) / s
        row = x.dtype.type(0.0)
        for j in range(ncol):
            tj = ti[j]
            row += tj * (xi[j] - lse)
            gi[j] = (gi[j] * r - tj) * inv_n
        loss -= row
    return loss


@njit(**_SER)
def _sgd_vec(p, g, vel, sc, has_wd, has_mom, nesterov):
    """PyTorch SGD over 1-D p; sc = [lr, momentum, weight_decay] in the array dtype."""
    lr, mu, wd = sc[0], sc[1], sc[2]
    n = p.shape[0]
    if has_mom:
        if has_wd:
            for i in range(n):
                gi = g[i] + wd * p[i]
                vi = vel[i] * mu + gi
                vel[i] = vi
                p[i] -= lr * (gi + mu * vi if nesterov else vi)
        else:
            for i in range(n):
                gi = g[i]
                vi = vel[i] * mu + gi
                vel[i] = vi
                p[i] -= lr * (gi + mu * vi if nesterov else vi)
    else:
        if has_wd:
            for i in range(n):
                p[i] -= lr * (g[i] + wd * p[i])
        else:
            for i in range(n):
                p[i] -= lr * g[i]


@njit(**_SER)
def _adam_vec(p, g, m, v, sc, mode):
    """Adam over 1-D arrays. sc = [beta1, 1-beta1, beta2, 1-beta2, lr/bc1, sqrt(bc2), eps, wd,
    1-lr*wd] in the array dtype; mode 0: no decay, 1: L2 (Adam), 2: decoupled (AdamW)."""
    b1, omb1, b2, omb2 = sc[0], sc[1], sc[2], sc[3]
    step, bc2s, eps, wd, decay = sc[4], sc[5], sc[6], sc[7], sc[8]
    n = p.shape[0]
    if mode == 0:
        for i in range(n):
            gi = g[i]
            mi = m[i] * b1 + omb1 * gi
            vi = v[i] * b2 + omb2 * (gi * gi)
            m[i] = mi
            v[i] = vi
            p[i] -= step * mi / (np.sqrt(vi) / bc2s + eps)
    elif mode == 1:
        for i in range(n):
            pi = p[i]
            gi = g[i] + wd * pi
            mi = m[i] * b1 + omb1 * gi
            vi = v[i] * b2 + omb2 * (gi * gi)
            m[i] = mi
            v[i] = vi
            p[i] = pi - step * mi / (np.sqrt(vi) / bc2s + eps)
    else:
        for i in range(n):
            pi = p[i] * decay
            gi = g[i]
            mi = m[i] * b1 + omb1 * gi
            vi = v[i] * b2 + omb2 * (gi * gi)
            m[i] = mi
            v[i] = vi
            p[i] = pi - step * mi / (np.sqrt(vi) / bc2s + eps)


@njit(**_SER)
def _dropout_vec(x, y, mask, seed, threshold, scale, offset):
    """Keep element offset+i iff the top 24 bits of splitmix64(seed + (i+1)*golden) >= threshold
    (threshold = ceil(rate * 2**24)); mask = scale or 0, y = x * mask."""
    zero = x.dtype.type(0.0)
    s = np.uint64(seed) + np.uint64(offset) * _GOLDEN
    for i in range(x.shape[0]):
        z = s + np.uint64(i + 1) * _GOLDEN
        z = (z ^ (z >> _S30)) * _MIX1
        z = (z ^ (z >> _S27)) * _MIX2
        z = z ^ (z >> _S31)
        k = np.int64(z >> _S40)
        mk = scale if k >= threshold else zero
        mask[i] = mk
        y[i] = x[i] * mk


@njit(**_SER)
def _mul_vec(a, b, out):
    for i in range(a.shape[0]):
        out[i] = a[i] * b[i]


# ============================================================================================
# Drivers: serial (*_ser) and parallel (*_par, prange over nchunks chunks)
# ============================================================================================
@njit(**_SER)
def _epilogue_ser(z, b, act, y):
    _epilogue_rows(z, b, act, y)


@njit(**_PAR)
def _epilogue_par(z, b, act, y, nchunks):
    n = z.shape[0]
    for c in prange(nchunks):
        lo, hi = _span(c, nchunks, n)
        _epilogue_rows(z[lo:hi], b, act, y[lo:hi])


@njit(**_SER)
def _dense_grad_ser(dy, s, act, dz, db):
    db[:] = 0
    _dense_grad_rows(dy, s, act, dz, db)


@njit(**_PAR)
def _dense_grad_par(dy, s, act, dz, db, nchunks):
    n, ncol = dy.shape
    part = np.zeros((nchunks, ncol), dtype=db.dtype)
    for c in prange(nchunks):
        lo, hi = _span(c, nchunks, n)
        _dense_grad_rows(dy[lo:hi], s[lo:hi], act, dz[lo:hi], part[c])
    for j in range(ncol):
        acc = part[0, j]
        for c in range(1, nchunks):
            acc += part[c, j]
        db[j] = acc


@njit(**_SER)
def _act_ser(x, y, act):
    _act_vec(x, y, act)


@njit(**_PAR)
def _act_par(x, y, act, nchunks):
    n = x.shape[0]
    for c in prange(nchunks):
        lo, hi = _span(c, nchunks, n)
        _act_vec(x[lo:hi], y[lo:hi], act)


@njit(**_SER)
def _act_grad_ser(dy, s, act, dx):
    _act_grad_vec(dy, s, act, dx)


@njit(**_PAR)
def _act_grad_par(dy, s, act, dx, nchunks):
    n = dy.shape[0]
    for c in prange(nchunks):
        lo, hi = _span(c, nchunks, n)
        _act_grad_vec(dy[lo:hi], s[lo:hi], act, dx[lo:hi])


@njit(**_SER)
def _softmax_ser(x, y):
    for i in range(x.shape[0]):
        _softmax_row(x[i], y[i])


@njit(**_PAR)
def _softmax_par(x, y, nchunks):
    n = x.shape[0]
    for c in prange(nchunks):
        lo, hi = _span(c, nchunks, n)
        for i in range(lo, hi):
            _softmax_row(x[i], y[i])


@njit(**_SER)
def _softmax_grad_ser(dy, y, dx):
    for i in range(y.shape[0]):
        _softmax_grad_row(dy[i], y[i], dx[i])


@njit(**_PAR)
def _softmax_grad_par(dy, y, dx, nchunks):
    n = y.shape[0]
    for c in prange(nchunks):
        lo, hi = _span(c, nchunks, n)
        for i in range(lo, hi):
            _softmax_grad_row(dy[i], y[i], dx[i])


@njit(**_SER)
def _sce_int_ser(x, labels, grad, inv_n):
    return _sce_int_rows(x, labels, grad, inv_n)


@njit(**_PAR)
def _sce_int_par(x, labels, grad, inv_n, nchunks):
    n = x.shape[0]
    losses = np.zeros(nchunks)
    bads = np.zeros(nchunks, dtype=np.int64)
    for c in prange(nchunks):
        lo, hi = _span(c, nchunks, n)
        losses[c], bads[c] = _sce_int_rows(x[lo:hi], labels[lo:hi], grad[lo:hi], inv_n)
    return losses.sum(), bads.sum()


@njit(**_SER)
def _sce_prob_ser(x, t, grad, inv_n):
    return _sce_prob_rows(x, t, grad, inv_n)


@njit(**_PAR)
def _sce_prob_par(x, t, grad, inv_n, nchunks):
    n = x.shape[0]
    losses = np.zeros(nchunks)
    for c in prange(nchunks):
        lo, hi = _span(c, nchunks, n)
        losses[c] = _sce_prob_rows(x[lo:hi], t[lo:hi], grad[lo:hi], inv_n)
    return losses.sum()


@njit(**_SER)
def _sgd_ser(p, g, vel, sc, has_wd, has_mom, nesterov):
    _sgd_vec(p, g, vel, sc, has_wd, has_mom, nesterov)


@njit(**_PAR)
def _sgd_par(p, g, vel, sc, has_wd, has_mom, nesterov, nchunks):
    n = p.shape[0]
    for c in prange(nchunks):
        lo, hi = _span(c, nchunks, n)
        _sgd_vec(p[lo:hi], g[lo:hi], vel[lo:hi], sc, has_wd, has_mom, nesterov)


@njit(**_SER)
def _adam_ser(p, g, m, v, sc, mode):
    _adam_vec(p, g, m, v, sc, mode)


@njit(**_PAR)
def _adam_par(p, g, m, v, sc, mode, nchunks):
    n = p.shape[0]
    for c in prange(nchunks):
        lo, hi = _span(c, nchunks, n)
        _adam_vec(p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi], sc, mode)


@njit(**_SER)
def _dropout_ser(x, y, mask, seed, threshold, scale):
    _dropout_vec(x, y, mask, seed, threshold, scale, 0)


@njit(**_PAR)
def _dropout_par(x, y, mask, seed, threshold, scale, nchunks):
    n = x.shape[0]
    for c in prange(nchunks):
        lo, hi = _span(c, nchunks, n)
        _dropout_vec(x[lo:hi], y[lo:hi], mask[lo:hi], seed, threshold, scale, lo)


@njit(**_SER)
def _mul_ser(a, b, out):
    _mul_vec(a, b, out)


@njit(**_PAR)
def _mul_par(a, b, out, nchunks):
    n = a.shape[0]
    for c in prange(nchunks):
        lo, hi = _span(c, nchunks, n)
        _mul_vec(a[lo:hi], b[lo:hi], out[lo:hi])


# ============================================================================================
# The backend
# ============================================================================================
class NumbaOps(NumbaLayerKernels, Ops):
    """NumPy arrays; BLAS GEMMs with fused Numba epilogues, fused losses and optimizers."""

    name = "numba"

    def __init__(self, seed: int | None = None, dtype: str = "float32", **options):
        super().__init__(seed=seed, dtype=dtype, **options)
        self._local = threading.local()  # per-thread scratch (dz of dense_backward)

    # -- helpers --------------------------------------------------------------------------
    @staticmethod
    def _chunks(work: int) -> int:
        """1 (serial) below PAR_MIN_ELEMS elements, else one chunk per Numba thread."""
        if work < PAR_MIN_ELEMS:
            return 1
        return numba.get_num_threads()

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
            nc = self._chunks(x2.size)
            if nc == 1:
                _softmax_ser(x2, y)
            else:
                _softmax_par(x2, y, nc)
            return y.reshape(x.shape)
        xf = xc.reshape(-1)
        y = np.empty_like(xf)
        nc = self._chunks(xf.size)
        if nc == 1:
            _act_ser(xf, y, code)
        else:
            _act_par(xf, y, code, nc)
        return y.reshape(x.shape)

    def _act_grad(self, dy, saved, code):
        dyc, sc = _c(dy), _c(saved)
        if code == SOFTMAX:
            last = sc.shape[-1] if sc.ndim else 1
            d2, s2 = dyc.reshape(-1, last), sc.reshape(-1, last)
            dx = np.empty_like(s2)
            nc = self._chunks(s2.size)
            if nc == 1:
                _softmax_grad_ser(d2, s2, dx)
            else:
                _softmax_grad_par(d2, s2, dx, nc)
            return dx.reshape(saved.shape)
        df, sf = dyc.reshape(-1), sc.reshape(-1)
        dx = np.empty_like(sf)
        nc = self._chunks(sf.size)
        if nc == 1:
            _act_grad_ser(df, sf, code, dx)
        else:
            _act_grad_par(df, sf, code, dx, nc)
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
        if code is None or code in (IDENTITY, GELU) or not self._elementwise_ok(dy, saved):
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
        return super().tanh(x)  # see _NUMPY_FASTER

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
        return super().gelu(x)  # see _NUMPY_FASTER

    def backprop_gelu(self, dy, x):
        return super().backprop_gelu(dy, x)

    # -- dense ----------------------------------------------------------------------------
    def dense_forward(self, x, W, b, activation: str = "identity"):
        code = _ACT_CODE.get(activation)
        arrays = (x, W) if b is None else (x, W, b)
        if code is None or W.ndim != 2 or x.ndim < 1 or not _same_float(*arrays):
            return super().dense_forward(x, W, b, activation)
        if code in _NUMPY_FASTER:  # fused bias, then NumPy's SIMD tanh (reference path)
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
        nc = self._chunks(z.size)
        if nc == 1:
            _epilogue_ser(z, bias, code, y)
        else:
            _epilogue_par(z, bias, code, y, nc)
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
        if code is None or code == GELU or W.ndim != 2 or not _same_float(*arrays):
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
        nc = self._chunks(dy2.size)
        if nc == 1:
            _dense_grad_ser(dy2, s2, code, dz, db)
        else:
            _dense_grad_par(dy2, s2, code, dz, db, nc)
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
            if nc == 1:
                total, bad = _sce_int_ser(x, lab, grad, inv_n)
            else:
                total, bad = _sce_int_par(x, lab, grad, inv_n, nc)
            if bad:  # out-of-range (or negative, which NumPy wraps): the reference decides
                return super().softmax_cross_entropy(logits, labels)
        elif labels.ndim == 2 and labels.shape == x.shape and labels.dtype == x.dtype:
            t = _c(labels)
            if nc == 1:
                total = _sce_prob_ser(x, t, grad, inv_n)
            else:
                total = _sce_prob_par(x, t, grad, inv_n, nc)
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
        nc = self._chunks(xf.size)
        if nc == 1:
            _dropout_ser(xf, y, mask, seed, threshold, scale)
        else:
            _dropout_par(xf, y, mask, seed, threshold, scale, nc)
        return y.reshape(x.shape), mask.reshape(x.shape)

    def backprop_dropout(self, dy, mask):
        if not self._elementwise_ok(dy, mask):
            return super().backprop_dropout(dy, mask)
        df, mf = _c(dy).reshape(-1), _c(mask).reshape(-1)
        out = np.empty_like(df)
        nc = self._chunks(df.size)
        if nc == 1:
            _mul_ser(df, mf, out)
        else:
            _mul_par(df, mf, out, nc)
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
        nc = self._chunks(params.size)
        args = (params, grads, vel, sc, bool(weight_decay), bool(momentum), bool(nesterov))
        if nc == 1:
            _sgd_ser(*args)
        else:
            _sgd_par(*args, nc)

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
        nc = self._chunks(params.size)
        if nc == 1:
            _adam_ser(params, grads, m, v, sc, mode)
        else:
            _adam_par(params, grads, m, v, sc, mode, nc)

    # -- compilation ----------------------------------------------------------------------
    def warmup(self) -> dict[str, float]:
        """Compile (or load from the cache) every kernel for float32 and float64."""
        return warmup()


def _warmup_calls(dt):
    """(name, thunk) pairs that call every driver once on tiny arrays of dtype `dt`."""
    t = np.dtype(dt).type
    z = np.ones((3, 4), dt)
    b = np.ones(4, dt)
    y = np.ones((3, 4), dt)
    f = np.ones(8, dt)
    g = np.ones(8, dt)
    h = np.ones(8, dt)
    q = np.ones(8, dt)
    sc9 = np.ones(9, dt)
    sc3 = np.ones(3, dt)
    i32 = np.zeros(3, np.int32)
    i64 = np.zeros(3, np.int64)
    inv = t(1.0 / 3)
    return [
        ("dense_epilogue/serial", lambda: _epilogue_ser(z, b, RELU, y)),
        ("dense_epilogue/parallel", lambda: _epilogue_par(z, b, RELU, y, 2)),
        ("dense_grad/serial", lambda: _dense_grad_ser(z, y, RELU, z.copy(), b)),
        ("dense_grad/parallel", lambda: _dense_grad_par(z, y, RELU, z.copy(), b, 2)),
        ("activation/serial", lambda: _act_ser(f, g, RELU)),
        ("activation/parallel", lambda: _act_par(f, g, RELU, 2)),
        ("activation_grad/serial", lambda: _act_grad_ser(f, g, RELU, h)),
        ("activation_grad/parallel", lambda: _act_grad_par(f, g, RELU, h, 2)),
        ("softmax/serial", lambda: _softmax_ser(z, y)),
        ("softmax/parallel", lambda: _softmax_par(z, y, 2)),
        ("softmax_grad/serial", lambda: _softmax_grad_ser(z, y, z.copy())),
        ("softmax_grad/parallel", lambda: _softmax_grad_par(z, y, z.copy(), 2)),
        ("softmax_ce_int32/serial", lambda: _sce_int_ser(z, i32, y, inv)),
        ("softmax_ce_int32/parallel", lambda: _sce_int_par(z, i32, y, inv, 2)),
        ("softmax_ce_int64/serial", lambda: _sce_int_ser(z, i64, y, inv)),
        ("softmax_ce_int64/parallel", lambda: _sce_int_par(z, i64, y, inv, 2)),
        ("softmax_ce_prob/serial", lambda: _sce_prob_ser(z, z, y, inv)),
        ("softmax_ce_prob/parallel", lambda: _sce_prob_par(z, z, y, inv, 2)),
        ("sgd/serial", lambda: _sgd_ser(f, g, h, sc3, True, True, False)),
        ("sgd/parallel", lambda: _sgd_par(f, g, h, sc3, True, True, False, 2)),
        ("adam/serial", lambda: _adam_ser(f, g, h, q, sc9, 0)),
        ("adam/parallel", lambda: _adam_par(f, g, h, q, sc9, 0, 2)),
        ("dropout/serial", lambda: _dropout_ser(f, g, h, 1, 0, t(1.0))),
        ("dropout/parallel", lambda: _dropout_par(f, g, h, 1, 0, t(1.0), 2)),
        ("mul/serial", lambda: _mul_ser(f, g, h)),
        ("mul/parallel", lambda: _mul_par(f, g, h, 2)),
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
