"""Numba loss kernels: softmax cross-entropy in one pass per row (row max, log-sum-exp, the
loss and its gradient), against integer labels or probability targets. Loss sums run in
float64; the parallel drivers sum per-chunk partials after the parallel loop. exp is
numba_math's (float32: vectorized, where libm's expf is a scalar call; the loops run over
range(ncol) of whole rows so that LLVM vectorizes them)."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .numba_common import PAR as _PAR
from .numba_common import SER as _SER
from .numba_dispatch import _span
from .numba_math import _exp


# ============================================================================================
# Row helpers (serial; inlined by LLVM into the drivers)
# ============================================================================================
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
        for j in range(ncol):
            v = xi[j]
            m = v if v > m else m
        s = x.dtype.type(0.0)
        for j in range(ncol):
            e = _exp(xi[j] - m)
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
        for j in range(ncol):
            v = xi[j]
            m = v if v > m else m
        s = x.dtype.type(0.0)
        for j in range(ncol):
            e = _exp(xi[j] - m)
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


# ============================================================================================
# Drivers: serial (*_ser) and parallel (*_par, prange over nchunks chunks)
# ============================================================================================
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


def warmup_calls(dt):
    """(name, thunk) pairs that call every driver here once on tiny arrays of dtype `dt`."""
    t = np.dtype(dt).type
    z = np.ones((3, 4), dt)
    y = np.ones((3, 4), dt)
    i32 = np.zeros(3, np.int32)
    i64 = np.zeros(3, np.int64)
    inv = t(1.0 / 3)
    return [
        ("softmax_ce_int32/serial", lambda: _sce_int_ser(z, i32, y, inv)),
        ("softmax_ce_int32/parallel", lambda: _sce_int_par(z, i32, y, inv, 2)),
        ("softmax_ce_int64/serial", lambda: _sce_int_ser(z, i64, y, inv)),
        ("softmax_ce_int64/parallel", lambda: _sce_int_par(z, i64, y, inv, 2)),
        ("softmax_ce_prob/serial", lambda: _sce_prob_ser(z, z, y, inv)),
        ("softmax_ce_prob/parallel", lambda: _sce_prob_par(z, z, y, inv, 2)),
    ]
