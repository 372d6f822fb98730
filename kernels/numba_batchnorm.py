"""Numba batch-norm kernels (training mode): per-channel float64 statistics in one shifted
pass, then one normalize pass writing y and xhat; the backward does one float64 reduction pass
(dbeta, dgamma) and one dx pass. (N, C, L) inputs run per channel (the parallel driver's
`prange` gives each channel to one task); (N, F) inputs run serially with per-feature row
accumulators."""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .numba_common import PAR as _PAR
from .numba_common import SER as _SER


# ============================================================================================
# Batch norm: x viewed as (N, C, L); statistics per channel c over (N, L)
# ============================================================================================
@njit(**_SER)
def _bn_fwd_channel(x, c, gamma, beta, eps, y, xhat, stats):
    """Channel c of (N, C, L): float64 shifted one-pass sums, then y and xhat in one pass.
    stats[c] = (mean, biased var, invstd)."""
    N = x.shape[0]
    L = x.shape[2]
    k = np.float64(x[0, c, 0])
    s1 = 0.0
    s2 = 0.0
    for n in range(N):
        row = x[n, c]
        for l in range(len(row)):
            d = np.float64(row[l]) - k
            s1 += d
            s2 += d * d
    cnt = N * L
    m1 = s1 / cnt
    var = s2 / cnt - m1 * m1
    if var < 0.0:
        var = 0.0
    mean = k + m1
    inv = 1.0 / math.sqrt(var + eps)
    stats[c, 0] = mean
    stats[c, 1] = var
    stats[c, 2] = inv
    tmp = np.empty(2, dtype=x.dtype)
    tmp[0] = mean
    tmp[1] = inv
    mt = tmp[0]
    it = tmp[1]
    g = gamma[c]
    b = beta[c]
    for n in range(N):
        xr = x[n, c]
        yr = y[n, c]
        hr = xhat[n, c]
        for l in range(len(xr)):
            v = (xr[l] - mt) * it
            hr[l] = v
            yr[l] = v * g + b


@njit(**_SER)
def _bn_fwd_ser(x, gamma, beta, eps, y, xhat, stats):
    for c in range(x.shape[1]):
        _bn_fwd_channel(x, c, gamma, beta, eps, y, xhat, stats)


@njit(**_PAR)
def _bn_fwd_par(x, gamma, beta, eps, y, xhat, stats):
    for c in prange(x.shape[1]):
        _bn_fwd_channel(x, c, gamma, beta, eps, y, xhat, stats)


@njit(**_SER)
def _bn_fwd_2d(x, gamma, beta, eps, y, xhat, stats, acc1, acc2):
    """(N, F) layout: per-feature float64 row accumulators (vectorizes along F)."""
    N, F = x.shape
    k = x[0]
    for f in range(F):
        acc1[f] = 0.0
        acc2[f] = 0.0
    for n in range(N):
        row = x[n]
        for f in range(len(row)):
            d = np.float64(row[f]) - np.float64(k[f])
            acc1[f] += d
            acc2[f] += d * d
    for f in range(F):
        m1 = acc1[f] / N
        var = acc2[f] / N - m1 * m1
        if var < 0.0:
            var = 0.0
        stats[f, 0] = np.float64(k[f]) + m1
        stats[f, 1] = var
        stats[f, 2] = 1.0 / math.sqrt(var + eps)
    mt = np.empty(F, dtype=x.dtype)
    it = np.empty(F, dtype=x.dtype)
    for f in range(F):
        mt[f] = stats[f, 0]
        it[f] = stats[f, 2]
    for n in range(N):
        xr = x[n]
        yr = y[n]
        hr = xhat[n]
        for f in range(len(xr)):
            v = (xr[f] - mt[f]) * it[f]
            hr[f] = v
            yr[f] = v * gamma[f] + beta[f]


@njit(**_SER)
def _bn_bwd_channel(dy, xhat, c, scale, inv_n, dx, red, need_dx):
    s_b = 0.0
    s_g = 0.0
    for n in range(dy.shape[0]):
        dr = dy[n, c]
        hr = xhat[n, c]
        for l in range(len(dr)):
            d = np.float64(dr[l])
            s_b += d
            s_g += d * np.float64(hr[l])
    red[c, 0] = s_b
    red[c, 1] = s_g
    if need_dx:
        sc = scale[c]
        tmp = np.empty(2, dtype=dx.dtype)
        tmp[0] = s_b * inv_n
        tmp[1] = s_g * inv_n
        a = tmp[0]
        b = tmp[1]
        for n in range(dy.shape[0]):
            dr = dy[n, c]
            hr = xhat[n, c]
            xr = dx[n, c]
            for l in range(len(dr)):
                xr[l] = (dr[l] - a - hr[l] * b) * sc


@njit(**_SER)
def _bn_bwd_ser(dy, xhat, scale, inv_n, dx, red, need_dx):
    for c in range(dy.shape[1]):
        _bn_bwd_channel(dy, xhat, c, scale, inv_n, dx, red, need_dx)


@njit(**_PAR)
def _bn_bwd_par(dy, xhat, scale, inv_n, dx, red, need_dx):
    for c in prange(dy.shape[1]):
        _bn_bwd_channel(dy, xhat, c, scale, inv_n, dx, red, need_dx)


@njit(**_SER)
def _bn_bwd_2d(dy, xhat, scale, inv_n, dx, red, need_dx):
    N, F = dy.shape
    sb = np.zeros(F)
    sg = np.zeros(F)
    for n in range(N):
        dr = dy[n]
        hr = xhat[n]
        for f in range(len(dr)):
            d = np.float64(dr[f])
            sb[f] += d
            sg[f] += d * np.float64(hr[f])
    for f in range(F):
        red[f, 0] = sb[f]
        red[f, 1] = sg[f]
    if need_dx:
        a = np.empty(F, dtype=dx.dtype)
        b = np.empty(F, dtype=dx.dtype)
        for f in range(F):
            a[f] = sb[f] * inv_n
            b[f] = sg[f] * inv_n
        for n in range(N):
            dr = dy[n]
            hr = xhat[n]
            xr = dx[n]
            for f in range(len(dr)):
                xr[f] = (dr[f] - a[f] - hr[f] * b[f]) * scale[f]
