"""Numba dense-layer and activation kernels: the fused bias + activation epilogue on a GEMM's
output (forward), activation derivative * dy + the bias-gradient column sum (backward), and the
standalone activation / softmax passes and their gradients. The GEMMs stay in BLAS (`NumbaOps`
calls `np.matmul(..., out=...)`): OpenBLAS already runs them near peak, and a hand-written Numba
GEMM would not."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .numba_common import GELU, IDENTITY, LEAKY_RELU, RELU, SIGMOID, SOFTMAX, TANH
from .numba_common import PAR as _PAR
from .numba_common import SER as _SER
from .numba_dispatch import _span
from .numba_math import _exp, _gelu, _gelu_grad, _sigmoid_exp, _tanh
from .reference import LEAKY_SLOPE


# ============================================================================================
# Row helpers (serial; inlined by LLVM into the drivers)
# ============================================================================================
@njit(**_SER)
def _act_vec(x, y, act):
    """y = act(x) elementwise over 1-D arrays (every activation but softmax); y may be x.
    Loops run over range(len) of whole (sliced) arrays: a range(lo, hi) index could be negative
    as far as Numba knows, and the wraparound check it then keeps blocks vectorization.
    sigmoid / tanh / gelu are numba_math's (vectorized in float32, libm in float64)."""
    t = x.dtype.type
    n = x.shape[0]
    zero = t(0.0)
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
            y[j] = _sigmoid_exp(x[j])
    elif act == TANH:
        for j in range(n):
            y[j] = _tanh(x[j])
    elif act == GELU:  # the tanh argument from x clipped to +-GELU_CLIP, as the reference
        for j in range(n):
            y[j] = _gelu(x[j])
    else:  # identity (not reached from NumbaOps, which returns x itself)
        for j in range(n):
            y[j] = x[j]


@njit(**_SER)
def _act_grad_vec(dy, s, act, dx):
    """dx = act'(s) * dy elementwise over 1-D arrays; s is the saved tensor (the output, or the
    input for gelu)."""
    t = dy.dtype.type
    n = dy.shape[0]
    zero, one = t(0.0), t(1.0)
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
    elif act == GELU:  # x clipped to +-GELU_CLIP (where the derivative is exactly 0 or 1)
        for j in range(n):
            dx[j] = dy[j] * _gelu_grad(s[j])
    else:  # identity
        for j in range(n):
            dx[j] = dy[j]


@njit(**_SER)
def _softmax_row(x, y):
    """y = softmax(x) over a 1-D row; y may be x. exp is numba_math's (float32: vectorized;
    0 below -87.3, where the reference gives a subnormal)."""
    n = x.shape[0]
    if n == 0:
        return
    m = x[0]
    for j in range(n):
        v = x[j]
        m = v if v > m else m
    s = x.dtype.type(0.0)
    for j in range(n):
        e = _exp(x[j] - m)
        y[j] = e
        s += e
    r = x.dtype.type(1.0) / s
    for j in range(n):
        y[j] = y[j] * r


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


def warmup_calls(dt):
    """(name, thunk) pairs that call every driver here once on tiny arrays of dtype `dt`."""
    z = np.ones((3, 4), dt)
    b = np.ones(4, dt)
    y = np.ones((3, 4), dt)
    f = np.ones(8, dt)
    g = np.ones(8, dt)
    h = np.ones(8, dt)
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
    ]
