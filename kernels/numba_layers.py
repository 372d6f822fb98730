"""Numba overrides of layer kernels (pooling, batch norm), mixed into NumbaOps.

`NumbaLayerKernels` defines only layer-kernel methods (never the dense/activation ones), sits
before `Ops` in `NumbaOps`' bases, and falls back to the reference (`super()`) for everything
it does not handle: non-NumPy arrays, dtypes other than float32/float64, mixed dtypes, other
layouts/axes, eval-mode batch norm. The kernels live per family (`numba_pool.py`,
`numba_batchnorm.py`); this module is the mixin that checks inputs and calls them. (conv2d:
`numba_conv_ops.py`; LSTM: `numba_recurrent.py`.)

Conventions as in `numba_cpu.py`: `error_model="numpy"`, fastmath without nnan/ninf, serial
driver below `PAR_MIN_ELEMS` elements and a `prange` driver above (the one policy,
`numba_dispatch.nchunks`, called through `numba_dispatch.dispatch`), where each parallel task
owns its output (one (n, c) plane for pooling, one channel for batch norm): no shared
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
from .numba_common import contiguous as _c
from .numba_common import same_float as _same_float
from .numba_dispatch import (
    PAR_MIN_ELEMS,  # noqa: F401  (re-exported: one shared definition)
    dispatch,
    nchunks,
)
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
