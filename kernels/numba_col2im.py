"""Numba col2im for conv2d's input gradient: dcols added straight into dx per input channel
(no padded buffer, no transpose copy), the parallel driver's `prange` giving each channel's
planes to one task."""

from __future__ import annotations

from numba import njit, prange

from .numba_common import PAR as _PAR
from .numba_common import SER as _SER


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
