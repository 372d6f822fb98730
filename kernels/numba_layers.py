"""Numba overrides of layer kernels (pooling, batch norm, LSTM, col2im), mixed into NumbaOps.

`NumbaLayerKernels` defines only layer-kernel methods (never the dense/activation ones), sits
before `Ops` in `NumbaOps`' bases, and falls back to the reference (`super()`) for everything
it does not handle: non-NumPy arrays, dtypes other than float32/float64, mixed dtypes, other
layouts/axes, eval-mode batch norm. The kernels live per family (`numba_pool.py`,
`numba_batchnorm.py`, `numba_lstm.py`, `numba_col2im.py`); this module is the mixin that checks
inputs and calls them.

Conventions as in `numba_cpu.py`: `error_model="numpy"`, fastmath without nnan/ninf, serial
driver below `PAR_MIN_ELEMS` elements and a `prange` driver above (the one policy,
`numba_dispatch.nchunks`, called through `numba_dispatch.dispatch`), where each parallel task
owns its output (one (n, c) plane for pooling, one channel for batch norm and col2im): no shared
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

import numpy as np

from .numba_batchnorm import (
    _bn_bwd_2d,
    _bn_bwd_par,
    _bn_bwd_ser,
    _bn_fwd_2d,
    _bn_fwd_par,
    _bn_fwd_ser,
)
from .numba_col2im import _col2im_par, _col2im_ser
from .numba_common import contiguous as _c
from .numba_common import same_float as _same_float
from .numba_dispatch import (
    PAR_MIN_ELEMS,  # noqa: F401  (re-exported: one shared definition)
    dispatch,
    nchunks,
)
from .numba_lstm import _lstm_step_bwd
from .numba_pool import (
    _avgpool_bwd_par,
    _avgpool_bwd_ser,
    _avgpool_par,
    _avgpool_ser,
    _maxpool_bwd_par,
    _maxpool_bwd_ser,
    _maxpool_par,
    _maxpool_ser,
)

_MAXTAG = "numba-maxpool"
_AVGTAG = "numba-avgpool"


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
        dispatch(nchunks(x.size), _maxpool_ser, _maxpool_par, *args, chunked=False)
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
        dispatch(nchunks(dx.size), _maxpool_bwd_ser, _maxpool_bwd_par, *args, chunked=False)
        return dx

    def avgpool2d_forward(self, x, pool_size, stride=None, padding=0, count_include_pad=True):
        if not self._pool2x2(x, pool_size, stride, padding):
            return super().avgpool2d_forward(x, pool_size, stride, padding, count_include_pad)
        N, C, H, W = x.shape
        Ho, Wo = H // 2, W // 2
        y = np.empty((N, C, Ho, Wo), dtype=x.dtype)
        args = (_c(x).reshape(N * C, H, W), y.reshape(N * C, Ho, Wo))
        dispatch(nchunks(x.size), _avgpool_ser, _avgpool_par, *args, chunked=False)
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
        dispatch(nchunks(dx.size), _avgpool_bwd_ser, _avgpool_bwd_par, *args, chunked=False)
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
            dispatch(nchunks(x.size), _bn_fwd_ser, _bn_fwd_par, *args, chunked=False)
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
            dispatch(nchunks(dy.size), _bn_bwd_ser, _bn_bwd_par, *args, chunked=False)
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
        dispatch(nchunks(dcols.size), _col2im_ser, _col2im_par, *args, chunked=False)
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
