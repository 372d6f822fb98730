"""Numba overrides of layer kernels (pooling, batch norm, LSTM, col2im), mixed into NumbaOps.

`NumbaLayerKernels` defines only layer-kernel methods (never the dense/activation ones), sits
before `Ops` in `NumbaOps`' bases, and falls back to the reference (`super()`) for everything
it does not handle: non-NumPy arrays, dtypes other than float32/float64, mixed dtypes, other
layouts/axes, eval-mode batch norm.

Conventions as in `numba_cpu.py`: `error_model="numpy"`, fastmath without nnan/ninf, serial
driver below `PAR_MIN_ELEMS` elements and a `prange` driver above, where each parallel task owns
its output (one (n, c) plane for pooling, one channel for batch norm and col2im): no shared
`+=` across threads. Element loops over `range(len(slice))`.

What is kept (measured with the A/B script in the report, batch 128, 2-vCPU box):
- maxpool2d (2x2, stride 2, no padding; other windows: the reference): the forward stores
  each window's first maximum's index (int32 into the unpadded plane), so the backward is
  one scatter pass. The `saved` of a Numba forward is tagged ("numba-maxpool", ...); the
  backward hands anything else (a reference `saved`) to `super()`.
- avgpool2d (2x2, stride 2, no padding): one pass each way.
- batchnorm (training): per-channel sum and sum of squares in one pass in float64 (shifted by
  the channel's first element against cancellation), one normalize pass writing y and xhat;
  the backward does one float64 reduction pass (dbeta, dgamma) and one dx pass. `saved` has
  the reference's format, so either backward accepts either forward's output.
- lstm_backward: per timestep one fused pass (dc update, the four gate derivatives, dc <- f dc);
  the forward is the reference's (tanh-bound: NumPy's SIMD tanh beats Numba's scalar one).
- conv2d: `_col2im` (dx of conv2d_backward) as per-channel loops; im2col stays the reference's.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from .numba_common import PAR as _PAR
from .numba_common import PAR_MIN_ELEMS
from .numba_common import SER as _SER
from .numba_common import contiguous as _c
from .numba_common import same_float as _same_float

_MAXTAG = "numba-maxpool"
_AVGTAG = "numba-avgpool"


def _nchunks(work: int) -> int:
    return 1 if work < PAR_MIN_ELEMS else numba.get_num_threads()


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


# ============================================================================================
# conv2d: col2im as loops (the GEMMs stay in BLAS); parallel over input channels, each owning
# its planes of dx. (An im2col loop measured 1.7-2.4x slower than the reference's kh*kw
# strided slice copies, so im2col stays the reference's.)
# ============================================================================================
@njit(**_SER)
def _ow_range(off, sw, W, Wo):
    """[lo, hi): the output columns ow with 0 <= ow*sw + off < W."""
    lo = 0 if off >= 0 else (-off + sw - 1) // sw
    last = W - 1 - off
    hi = 0 if last < 0 else min(Wo, last // sw + 1)
    return min(lo, Wo), max(min(lo, Wo), hi)


@njit(**_SER)
def _col2im_channel(dcols, c, dx, sh, sw, pt, pl, dh, dw):
    N, C, H, W = dx.shape
    _, kh, kw, _, Ho, Wo = dcols.shape
    for n in range(N):
        for h in range(H):
            row = dx[n, c, h]
            for w in range(len(row)):
                row[w] = 0
    for i in range(kh):
        for j in range(kw):
            off = j * dw - pl
            lo, hi = _ow_range(off, sw, W, Wo)
            for n in range(N):
                for oh in range(Ho):
                    hh = oh * sh - pt + i * dh
                    if hh < 0 or hh >= H:
                        continue
                    src = dcols[c, i, j, n, oh]
                    xr = dx[n, c, hh]
                    if sw == 1:
                        seg = xr[lo + off:hi + off]
                        s2 = src[lo:hi]
                        for k in range(len(seg)):
                            seg[k] += s2[k]
                    else:
                        for ow in range(lo, hi):
                            xr[ow * sw + off] += src[ow]


@njit(**_SER)
def _col2im_ser(dcols, dx, sh, sw, pt, pl, dh, dw):
    for c in range(dx.shape[1]):
        _col2im_channel(dcols, c, dx, sh, sw, pt, pl, dh, dw)


@njit(**_PAR)
def _col2im_par(dcols, dx, sh, sw, pt, pl, dh, dw):
    for c in prange(dx.shape[1]):
        _col2im_channel(dcols, c, dx, sh, sw, pt, pl, dh, dw)


# ============================================================================================
# The mixin
# ============================================================================================
class NumbaLayerKernels:
    """Mixin placed before `Ops` in `NumbaOps`: Numba pooling and batch-norm kernels."""

    # -- pooling ------------------------------------------------------------------------
    # Only 2x2 windows with stride 2 and no padding (every CNN in nnx/models) run in Numba:
    # general window loops measured slower than the reference's strided NumPy passes, so
    # other geometries keep the reference forward and backward.
    def _pool2x2(self, x, pool_size, stride, padding):
        if not (_same_float(x) and x.ndim == 4):
            return False
        (kh, kw), (sh, sw), pads, (Ho, Wo) = self._pool_geometry(x, pool_size, stride, padding)
        return ((kh, kw) == (2, 2) and (sh, sw) == (2, 2) and pads == ((0, 0), (0, 0))
                and Ho >= 1 and Wo >= 1)

    def maxpool2d_forward(self, x, pool_size, stride=None, padding=0):
        if not self._pool2x2(x, pool_size, stride, padding):
            return super().maxpool2d_forward(x, pool_size, stride, padding)
        N, C, H, W = x.shape
        Ho, Wo = H // 2, W // 2
        xc = _c(x).reshape(N * C, H, W)
        y = np.empty((N, C, Ho, Wo), dtype=x.dtype)
        idx = np.empty((N, C, Ho, Wo), dtype=np.int32)
        args = (xc, y.reshape(N * C, Ho, Wo), idx.reshape(N * C, Ho, Wo))
        if _nchunks(x.size) > 1:
            _maxpool_par(*args)
        else:
            _maxpool_ser(*args)
        return y, (_MAXTAG, idx, tuple(x.shape))

    def maxpool2d_backward(self, dy, saved):
        if not (isinstance(saved[0], str) and saved[0] == _MAXTAG):
            return super().maxpool2d_backward(dy, saved)
        _, idx, x_shape = saved
        if not _same_float(dy):
            dy = np.asarray(dy, dtype=np.float64)
        N, C, H, W = x_shape
        P = N * C
        Ho, Wo = idx.shape[2], idx.shape[3]
        dx = np.empty(x_shape, dtype=dy.dtype)
        args = (_c(dy).reshape(P, Ho, Wo), idx.reshape(P, Ho, Wo), dx.reshape(P, H, W))
        if _nchunks(dx.size) > 1:
            _maxpool_bwd_par(*args)
        else:
            _maxpool_bwd_ser(*args)
        return dx

    def avgpool2d_forward(self, x, pool_size, stride=None, padding=0, count_include_pad=True):
        if not self._pool2x2(x, pool_size, stride, padding):
            return super().avgpool2d_forward(x, pool_size, stride, padding, count_include_pad)
        N, C, H, W = x.shape
        Ho, Wo = H // 2, W // 2
        y = np.empty((N, C, Ho, Wo), dtype=x.dtype)
        args = (_c(x).reshape(N * C, H, W), y.reshape(N * C, Ho, Wo))
        if _nchunks(x.size) > 1:
            _avgpool_par(*args)
        else:
            _avgpool_ser(*args)
        return y, (_AVGTAG, tuple(x.shape))

    def avgpool2d_backward(self, dy, saved):
        if not (isinstance(saved[0], str) and saved[0] == _AVGTAG):
            return super().avgpool2d_backward(dy, saved)
        _, x_shape = saved
        if not _same_float(dy):
            dy = np.asarray(dy, dtype=np.float64)
        N, C, H, W = x_shape
        P = N * C
        Ho, Wo = dy.shape[2], dy.shape[3]
        dx = np.empty(x_shape, dtype=dy.dtype)
        args = (_c(dy).reshape(P, Ho, Wo), dx.reshape(P, H, W))
        if _nchunks(dx.size) > 1:
            _avgpool_bwd_par(*args)
        else:
            _avgpool_bwd_ser(*args)
        return dx

    # -- batch norm -----------------------------------------------------------------------
    def batchnorm_forward(self, x, gamma, beta, running_mean, running_var, momentum=0.1,
                          eps=1e-5, training=True, axes=(0,)):
        axes = tuple(axes)
        arrays = [a for a in (x, gamma, beta) if a is not None]
        if not (training and x.ndim >= 2 and axes == (0, *range(2, x.ndim))
                and _same_float(*arrays) and x.shape[0] * math.prod(x.shape[2:]) >= 1):
            return super().batchnorm_forward(x, gamma, beta, running_mean, running_var,
                                             momentum, eps, training, axes)
        dt = x.dtype
        N, C = x.shape[0], x.shape[1]
        L = math.prod(x.shape[2:])
        n = N * L
        g = np.ones(C, dt) if gamma is None else _c(gamma).reshape(C)
        b = np.zeros(C, dt) if beta is None else _c(beta).reshape(C)
        y = np.empty(x.shape, dtype=dt)
        xhat = np.empty(x.shape, dtype=dt)
        stats = np.empty((C, 3))
        if L == 1:
            _bn_fwd_2d(_c(x).reshape(N, C), g, b, float(eps), y.reshape(N, C),
                       xhat.reshape(N, C), stats, np.empty(C), np.empty(C))
        else:
            args = (_c(x).reshape(N, C, L), g, b, float(eps), y.reshape(N, C, L),
                    xhat.reshape(N, C, L), stats)
            if _nchunks(x.size) > 1:
                _bn_fwd_par(*args)
            else:
                _bn_fwd_ser(*args)
        if running_mean is not None:
            running_mean *= 1.0 - momentum
            running_mean += momentum * stats[:, 0].astype(dt).reshape(running_mean.shape)
        if running_var is not None:
            unbiased = n / (n - 1) if n > 1 else 1.0
            running_var *= 1.0 - momentum
            running_var += ((momentum * unbiased)
                            * stats[:, 1].astype(dt).reshape(running_var.shape))
        bshape = (1, C) + (1,) * (x.ndim - 2)
        invstd = stats[:, 2].astype(dt).reshape(bshape)
        return y, (xhat, invstd, gamma, axes, True, n)

    def batchnorm_backward(self, dy, saved, need_dx=True, dgamma_out=None, dbeta_out=None):
        xhat, invstd, gamma, axes, training, n = saved
        if not (training and isinstance(xhat, np.ndarray) and xhat.ndim >= 2
                and axes == (0, *range(2, xhat.ndim)) and dy.shape == xhat.shape
                and _same_float(*[a for a in (dy, xhat, invstd, gamma) if a is not None])):
            return super().batchnorm_backward(dy, saved, need_dx, dgamma_out, dbeta_out)
        dt = dy.dtype
        N, C = xhat.shape[0], xhat.shape[1]
        L = math.prod(xhat.shape[2:])
        scale = invstd.reshape(C) if gamma is None else invstd.reshape(C) * gamma.reshape(C)
        scale = _c(scale)
        red = np.empty((C, 2))
        dx = np.empty(xhat.shape, dtype=dt) if need_dx else np.empty((1,) * xhat.ndim, dt)
        inv_n = 1.0 / n
        if L == 1:
            _bn_bwd_2d(_c(dy).reshape(N, C), _c(xhat).reshape(N, C), scale, inv_n,
                       dx.reshape(N, C) if need_dx else dx.reshape(1, 1), red, need_dx)
        else:
            args = (_c(dy).reshape(N, C, L), _c(xhat).reshape(N, C, L), scale, inv_n,
                    dx.reshape(N, C, L) if need_dx else dx.reshape(1, 1, 1), red, need_dx)
            if _nchunks(dy.size) > 1:
                _bn_bwd_par(*args)
            else:
                _bn_bwd_ser(*args)
        fshape = (C,)
        dbeta = red[:, 0].astype(dt)
        dgamma = red[:, 1].astype(dt)
        if dbeta_out is not None:
            dbeta_out[...] = dbeta.reshape(dbeta_out.shape)
            dbeta = dbeta_out
        else:
            dbeta = dbeta.reshape(fshape)
        if dgamma_out is not None:
            dgamma_out[...] = dgamma.reshape(dgamma_out.shape)
            dgamma = dgamma_out
        else:
            dgamma = dgamma.reshape(fshape)
        return (dx if need_dx else None), dgamma, dbeta

    # -- conv2d: col2im (the reference's conv2d_backward calls it for dx) -----------------
    def _col2im(self, dcols, x_shape, kh, kw, stride, pads, dilation, Ho, Wo):
        """dx from dcols (C*kh*kw, N*Ho*Wo): per channel, each kernel offset's rows added
        straight into dx (no padded buffer, no final transpose copy), in the reference's
        (i, j) order, so the sums are the same."""
        if not _same_float(dcols):
            return super()._col2im(dcols, x_shape, kh, kw, stride, pads, dilation, Ho, Wo)
        N, C, H, W = x_shape
        (pt, pb), (pl, pr) = pads
        (sh, sw), (dh, dw) = stride, dilation
        dx = np.empty((N, C, H, W), dtype=dcols.dtype)
        args = (_c(dcols).reshape(C, kh, kw, N, Ho, Wo), dx, sh, sw, pt, pl, dh, dw)
        if _nchunks(dcols.size) > 1:
            _col2im_par(*args)
        else:
            _col2im_ser(*args)
        return dx

    # -- LSTM -----------------------------------------------------------------------------
    # Backward only: the reference's BPTT with each timestep's elementwise work (dc update,
    # the four gate derivatives, dc <- f dc) fused into one Numba pass; GEMMs stay in BLAS.
    # The forward stays the reference's: it is bound by tanh, and NumPy's SIMD tanh beats
    # Numba's scalar libm call (no SVML here) -- a fused forward measured 3.5x slower.
    def lstm_backward(self, dhs, x, W_ih, W_hh, saved, dh_last=None, dc_last=None,
                      need_dx=True, need_dh0=True, dW_ih_out=None, dW_hh_out=None, db_out=None):
        x_tm, h0, c0, gates, cs, tcs, hs = saved
        arrays = [a for a in (dhs, W_hh, gates, cs, tcs, hs, c0, dh_last, dc_last)
                  if a is not None]
        if not (_same_float(*arrays) and gates.flags.c_contiguous):
            return super().lstm_backward(dhs, x, W_ih, W_hh, saved, dh_last, dc_last, need_dx,
                                         need_dh0, dW_ih_out, dW_hh_out, db_out)
        t_len, n, hid = hs.shape
        dt = hs.dtype
        dz_all = np.empty_like(gates)
        dh = np.zeros((n, hid), dtype=dt) if dh_last is None else _c(dh_last)
        dc = np.zeros((n, hid), dtype=dt) if dc_last is None else np.array(dc_last, order="C")
        dummy = np.empty((1, 1), dtype=dt)
        # time-major copy of dhs: contiguous per-step blocks keep the fused loop vectorized
        # (a strided (N, H) view measured ~1.6x slower than the copy plus contiguous steps)
        dhs_tm = None if dhs is None else np.ascontiguousarray(np.swapaxes(dhs, 0, 1))
        for t in range(t_len - 1, -1, -1):
            dyt = dummy if dhs_tm is None else dhs_tm[t]
            c_prev = cs[t - 1] if t > 0 else c0
            _lstm_step_bwd(gates[t], tcs[t], dummy if c_prev is None else c_prev,
                           c_prev is not None, dh, dyt, dhs is not None, dc, dz_all[t])
            dh = dz_all[t] @ W_hh.T if (t > 0 or need_dh0) else None
        dW_hh = self._dW_hh(h0, hs, dz_all, dW_hh_out)
        dx, dW_ih, db = self.dense_backward(dz_all, x_tm, W_ih, None, "identity", need_dx,
                                            dW_ih_out, db_out)
        dx = np.swapaxes(dx, 0, 1) if need_dx else None
        return dx, dW_ih, dW_hh, db, dh, (dc if need_dh0 else None)


# ============================================================================================
# LSTM backward: one fused pass per timestep (GEMMs stay in BLAS)
# ============================================================================================
@njit(**_SER)
def _lstm_step_bwd(a, tct, c_prev, has_c, dh, dyt, has_dy, dc, dz):
    """One BPTT step: dh (+ dy_t), dc updated in place (dc <- f * dc), dz (N, 4H) written."""
    hid = dc.shape[1]
    for n in range(a.shape[0]):
        ar = a[n]
        ai = ar[:hid]
        af = ar[hid:2 * hid]
        ag = ar[2 * hid:3 * hid]
        ao = ar[3 * hid:]
        zr = dz[n]
        zi = zr[:hid]
        zf = zr[hid:2 * hid]
        zg = zr[2 * hid:3 * hid]
        zo = zr[3 * hid:]
        tr = tct[n]
        dhr = dh[n]
        dyr = dyt[n]
        dcr = dc[n]
        cp = c_prev[n]
        for k in range(len(dcr)):
            h = dhr[k]
            if has_dy:
                h += dyr[k]
            i = ai[k]
            f = af[k]
            g = ag[k]
            o = ao[k]
            tc = tr[k]
            d = dcr[k] + h * (o * (1 - tc * tc))
            zi[k] = d * g * (i * (1 - i))
            zf[k] = (d * cp[k] * (f * (1 - f))) if has_c else d * 0
            zg[k] = d * i * (1 - g * g)
            zo[k] = h * tc * (o * (1 - o))
            dcr[k] = d * f
