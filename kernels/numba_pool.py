"""Numba pooling kernels (2x2 windows, stride 2, no padding; other geometries stay on the
reference): max pooling that records each window's first maximum's index, so the backward is one
scatter pass, and average pooling, one pass each way. The parallel drivers run `prange` over the
(n, c) planes, each owning its output."""

from __future__ import annotations

from numba import njit, prange

from .numba_common import PAR as _PAR
from .numba_common import SER as _SER


# ============================================================================================
# Pooling: x viewed as (P, H, W) planes, P = N*C
# ============================================================================================
@njit(**_SER)
def _maxpool_plane(x, y, idx):
    """2x2 windows, stride 2, no padding: the running max and its index in registers
    (selects, not branches: random data mispredicts half the compares); a strict > keeps
    the first maximum in row-major order. A window whose sum is NaN (it holds a NaN, or
    inf - inf) is redone NaN-aware, so a NaN sticks as with np.maximum, and then its index
    is -1: the reference's backward (xpad == y) gives a NaN window's cells no gradient."""
    H, W = x.shape
    Ho, Wo = y.shape
    for oh in range(Ho):
        h = 2 * oh
        r0 = x[h]
        r1 = x[h + 1]
        yr = y[oh]
        ir = idx[oh]
        for ow in range(len(yr)):
            w = 2 * ow
            a = r0[w]
            b = r0[w + 1]
            c = r1[w]
            d = r1[w + 1]
            best = a
            bi = h * W + w
            t = b > best
            bi = h * W + w + 1 if t else bi
            best = b if t else best
            t = c > best
            bi = (h + 1) * W + w if t else bi
            best = c if t else best
            t = d > best
            bi = (h + 1) * W + w + 1 if t else bi
            best = d if t else best
            s = a + b + c + d
            if s != s:
                best = a
                bi = h * W + w
                for k in range(1, 4):
                    hh = h + k // 2
                    ww = w + k % 2
                    v = x[hh, ww]
                    if v > best or (v != v and best == best):
                        best = v
                        bi = hh * W + ww
                if best != best:  # as the reference: NaN == NaN is False, no cell gets dy
                    bi = -1
            yr[ow] = best
            ir[ow] = bi


@njit(**_SER)
def _maxpool_ser(x, y, idx):
    for p in range(x.shape[0]):
        _maxpool_plane(x[p], y[p], idx[p])


@njit(**_PAR)
def _maxpool_par(x, y, idx):
    for p in prange(x.shape[0]):
        _maxpool_plane(x[p], y[p], idx[p])


@njit(**_SER)
def _maxpool_bwd_plane(dy, idx, dx):
    dxf = dx.reshape(dx.size)
    for k in range(len(dxf)):
        dxf[k] = 0
    dyf = dy.reshape(dy.size)
    idf = idx.reshape(idx.size)
    for k in range(len(dyf)):
        j = idf[k]
        if j >= 0:
            dxf[j] += dyf[k]


@njit(**_SER)
def _maxpool_bwd_ser(dy, idx, dx):
    for p in range(dy.shape[0]):
        _maxpool_bwd_plane(dy[p], idx[p], dx[p])


@njit(**_PAR)
def _maxpool_bwd_par(dy, idx, dx):
    for p in prange(dy.shape[0]):
        _maxpool_bwd_plane(dy[p], idx[p], dx[p])


@njit(**_SER)
def _avgpool_plane(x, y):
    """2x2 windows, stride 2, no padding; the reference's order: 0 + a + b + c + d, * 1/4."""
    Ho, Wo = y.shape
    for oh in range(Ho):
        r0 = x[2 * oh]
        r1 = x[2 * oh + 1]
        yr = y[oh]
        for ow in range(len(yr)):
            w = 2 * ow
            yr[ow] = (r0[w] + r0[w + 1] + r1[w] + r1[w + 1]) * 0.25


@njit(**_SER)
def _avgpool_ser(x, y):
    for p in range(x.shape[0]):
        _avgpool_plane(x[p], y[p])


@njit(**_PAR)
def _avgpool_par(x, y):
    for p in prange(x.shape[0]):
        _avgpool_plane(x[p], y[p])


@njit(**_SER)
def _avgpool_bwd_plane(dy, dx):
    """2x2 windows, stride 2, no padding: disjoint windows, so each dx cell is written once;
    the rows / column an odd H / W leaves uncovered are zeroed."""
    H, W = dx.shape
    Ho, Wo = dy.shape
    for oh in range(Ho):
        dr = dy[oh]
        r0 = dx[2 * oh]
        r1 = dx[2 * oh + 1]
        for ow in range(len(dr)):
            g = dr[ow] * 0.25
            w = 2 * ow
            r0[w] = g
            r0[w + 1] = g
            r1[w] = g
            r1[w + 1] = g
        if W > 2 * Wo:
            r0[W - 1] = 0
            r1[W - 1] = 0
    for h in range(2 * Ho, H):
        row = dx[h]
        for w in range(len(row)):
            row[w] = 0


@njit(**_SER)
def _avgpool_bwd_ser(dy, dx):
    for p in range(dy.shape[0]):
        _avgpool_bwd_plane(dy[p], dx[p])


@njit(**_PAR)
def _avgpool_bwd_par(dy, dx):
    for p in prange(dy.shape[0]):
        _avgpool_bwd_plane(dy[p], dx[p])
