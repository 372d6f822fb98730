"""The conv2d mixin of NumbaOps: picks the driver per call. With `numba_dispatch.blas_plan`
(2+ Numba threads, a BLAS GEMM the kernels can call, OpenBLAS not spinning), one group of
samples per thread (numba_conv_threads.py); otherwise the group pipeline of numba_conv.py, each
pass parallel in turn with OpenBLAS's own threads for the GEMMs. Anything the kernels are not
compiled for goes to the reference (`super()`), as numba_conv.py's docstring says.
"""

from __future__ import annotations

import numpy as np

from .numba_common import contiguous as _c
from .numba_common import same_float as _same_float
from .numba_conv import TAG, conv_backward_groups, conv_groups, geometry
from .numba_conv_threads import conv_backward_threads, conv_threads
from .numba_dispatch import blas_plan
from .reference_conv import pads2d, pair


class NumbaConvKernels:
    """Mixin placed before `NumbaLayerKernels` in `NumbaOps`: conv2d forward and backward by
    groups of samples (see the module docstring); the rest falls back to the reference."""

    def conv2d_forward(self, x, W, b, stride=1, padding=0, dilation=1):
        """y = conv2d(x, W) + b, NCHW, by groups of samples; `saved` is a tag (the backward
        rebuilds im2col from x)."""
        arrays = (x, W) if b is None else (x, W, b)
        if not (_same_float(*arrays) and x.ndim == 4 and W.ndim == 4
                and x.shape[1] == W.shape[1]):
            return super().conv2d_forward(x, W, b, stride, padding, dilation)
        geo = geometry(x.shape, W.shape, stride, padding, dilation)
        N, O = x.shape[0], W.shape[0]
        Ho, Wo = geo[8], geo[9]
        y = np.empty((N, O, Ho * Wo), dtype=x.dtype)
        xc, Wm, bc = _c(x), _c(W).reshape(O, -1), None if b is None else _c(b).reshape(-1)
        plan = blas_plan(x.dtype) if N > 0 and O > 0 else None
        if plan is not None:
            conv_threads(xc, Wm, geo, bc, y, plan)
        else:
            conv_groups(xc, Wm, geo, bc, y)
        return y.reshape(N, O, Ho, Wo), (TAG,)

    def conv2d_backward(self, dy, x, W, saved, stride=1, padding=0, dilation=1, need_dx=True,
                        dW_out=None, db_out=None):
        """(dx, dW, db) of conv2d_forward by groups of samples: dW and db from im2col rebuilt
        per group, dx by col2im per group."""
        if not (isinstance(saved, tuple) and saved == (TAG,) and _same_float(dy, x, W)):
            if isinstance(saved, tuple) and saved == (TAG,):
                saved = super()._im2col(x, W.shape[2], W.shape[3], pair(stride),
                                        pads2d(padding), pair(dilation))[0]
            return super().conv2d_backward(dy, x, W, saved, stride, padding, dilation, need_dx,
                                           dW_out, db_out)
        geo = geometry(x.shape, W.shape, stride, padding, dilation)
        N, O = x.shape[0], W.shape[0]
        x = _c(x)
        dy3 = _c(dy).reshape(N, O, geo[8] * geo[9])
        Wm = _c(W).reshape(O, -1)
        plan = blas_plan(x.dtype) if N > 0 and O > 0 else None
        if plan is not None:
            dx, dW, db64 = conv_backward_threads(x, dy3, Wm, geo, need_dx, plan)
        else:
            dx, dW, db64 = conv_backward_groups(x, dy3, Wm, geo, need_dx)
        dW = dW.reshape(W.shape)
        if dW_out is not None:
            dW_out[...] = dW
            dW = dW_out
        db = db64.astype(x.dtype)
        if db_out is not None:
            db_out[...] = db.reshape(db_out.shape)
            db = db_out
        return dx, dW, db
