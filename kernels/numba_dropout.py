"""Numba dropout kernels: mask generation + apply in one pass, and the backward's dy * mask.

Dropout masks come from a counter-based hash (splitmix64 of seed + element index) with the seed
drawn from `self.rng` each call: the mask depends only on the backend seed and the call sequence,
never on the thread count or chunking."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .numba_common import PAR as _PAR
from .numba_common import SER as _SER
from .numba_dispatch import _span

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S40 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(40)


# ============================================================================================
# Element helpers (serial; inlined by LLVM into the drivers)
# ============================================================================================
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


def warmup_calls(dt):
    """(name, thunk) pairs that call every driver here once on tiny arrays of dtype `dt`."""
    t = np.dtype(dt).type
    f = np.ones(8, dt)
    g = np.ones(8, dt)
    h = np.ones(8, dt)
    return [
        ("dropout/serial", lambda: _dropout_ser(f, g, h, 1, 0, t(1.0))),
        ("dropout/parallel", lambda: _dropout_par(f, g, h, 1, 0, t(1.0), 2)),
        ("mul/serial", lambda: _mul_ser(f, g, h)),
        ("mul/parallel", lambda: _mul_par(f, g, h, 2)),
    ]
