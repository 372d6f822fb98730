"""Numba conv2d: im2col, GEMM and epilogue per group of samples, so nothing leaves the cache.

The reference (`reference_conv.py`) builds the whole im2col matrix (C*kh*kw, N*Ho*Wo) for the
batch, runs one GEMM and copies (O, N, Ho, Wo) into NCHW with the bias: at the zoo CNN's second
conv (N 128, C 32, 14x14, O 64) that matrix is 29 MB, written once by kh*kw strided NumPy copies,
read by the GEMM, kept for the backward (and read twice more there), and the transposed copies
around the GEMMs move as much again. Here the batch goes through in groups of G samples:

- forward, per group: im2col of the group into a buffer of about 1 MB per thread (it stays in
  L2), one GEMM W (O, K) @ cols (K, G*P), and the bias added while the result is scattered into
  its (G, O, P) place in y. Nothing is saved but a tag: the backward rebuilds a group's im2col,
  which costs less than reading a 29 MB matrix back from memory (and the layer holds x already).
- backward, per group: dy's group gathered into (O, G*P) with the bias gradient summed on the way
  (float64, per output channel), dW += dy_g @ cols_g^T, dcols_g = W^T @ dy_g, and col2im of
  dcols_g straight into the group's planes of dx.
- at stride 1 with an output as wide as the input ("same" padding) every im2col row is one
  contiguous span of the input plane shifted by (i*dh - pt)*W + (j*dw - pl), with the columns
  that wrap around a row edge zeroed by strided slices; col2im adds the same spans back. Other
  geometries go row by row.

This file holds the geometry kernels and that pipeline (`conv_groups`, `conv_backward_groups`):
each pass in turn, parallel over independent output rows/planes (no shared `+=`), with
OpenBLAS's own threads for the GEMMs. With 2+ Numba threads and a BLAS GEMM the kernels can
call, numba_conv_threads.py runs the same per-group work one group per thread instead (faster:
its docstring); numba_conv_ops.py (the NumbaOps mixin) picks per call.
Pipeline figures: Measured on the 2-vCPU Zen 3 against the reference (same process,
interleaved, medians; the zoo CNN's second conv, N 128, 32 -> 64 channels, 14x14, 3x3 same):
forward 22.4 -> 19.1 ms and backward 42.0 -> 25.8 ms with 2 threads, 27.1 -> 20.5 ms and
52.8 -> 41.2 ms with 1 thread; the first conv (1 -> 32 channels, 28x28): 7.0 -> 4.4 ms and
6.6 -> 4.9 ms (1 thread). The rest of those times is the GEMMs.
(Tried and dropped: dx as the convolution of dy with the flipped kernel, which needs no col2im
but an im2col twice as large: 20% slower; each half of the batch on its own Python thread with
1-thread BLAS: 25% slower than 2-thread BLAS GEMMs with parallel Numba passes.)

Handled here: float32/float64 NumPy arrays of one dtype, any stride, padding and dilation.
Anything else goes to the reference (`super()`), and so does a backward given a reference
`saved` (the cols matrix); a Numba `saved` whose arrays changed dtype is turned back into the
reference's cols first.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .numba_common import PAR as _PAR
from .numba_common import SER as _SER
from .numba_dispatch import nchunks
from .reference_conv import out_size, pads2d, pair

TAG = "numba-conv2d"
# Bytes of one group's im2col buffer, and columns one GEMM should at least get. Measured on the
# zoo CNN's conv shapes (2-vCPU Zen 3, 1 thread, forward + backward; /tmp sweeps in the issue 13
# note): buffers of 256 KB-1 MB (L2-sized: 4 samples at 32->64 channels, 14x14; 36 at 1->32,
# 28x28) ran 1.25x faster than 2 MB and 1.4x faster than 4 MB ones, whose im2col and col2im
# passes spill to L3; the GEMMs lose nothing down to a few hundred columns.
GROUP_BYTES = 1 << 20
MIN_GEMM_COLS = 256


def group_size(N, K, P, itemsize, threads=1) -> int:
    """Samples per group: enough GEMM columns, a buffer within GROUP_BYTES per thread (each
    thread's share of a group stays in its own L2, and fewer groups mean fewer parallel-region
    launches)."""
    by_bytes = GROUP_BYTES * max(1, threads) // max(1, K * P * itemsize)
    by_cols = -(-MIN_GEMM_COLS // max(1, P))
    return int(max(1, min(N, max(by_bytes, by_cols))))


# ============================================================================================
# im2col of one group: buf[r, g*P + oh*Wo + ow] = xpad[n0+g, c, oh*sh + i*dh, ow*sw + j*dw]
# with r = (c, i, j); one task per (row, sample) pair.
# ============================================================================================
@njit(**_SER)
def _ow_range(off, sw, W, Wo):
    """[lo, hi): the output columns ow with 0 <= ow*sw + off < W (no division at stride 1)."""
    if sw == 1:
        lo = max(0, -off)
        hi = min(Wo, W - off)
    else:
        lo = 0 if off >= 0 else (-off + sw - 1) // sw
        last = W - 1 - off
        hi = 0 if last < 0 else min(Wo, last // sw + 1)
    return min(lo, Wo), max(min(lo, Wo), hi)


@njit(**_SER)
def _shift_span(top, off, H, W, Ho, Wo):
    """Stride 1, Wo == W: output rows [a, b) read input rows [a + top, b + top); their flat
    block [a*Wo + d0, a*Wo + d1) maps to the flat plane at [s0 + d0, s0 + d1) (d0 > 0 or d1 short
    only where the block reaches past the plane, in border columns)."""
    a = min(max(0, -top), Ho)
    b = max(a, min(Ho, H - top))
    s0 = (a + top) * W + off
    d0 = max(0, -s0)
    d1 = max(d0, min((b - a) * Wo, H * W - s0))
    return a, b, s0, d0, d1


@njit(**_SER)
def _zero_border_cols(row, a, b, lo, hi, Wo):
    """Zero the columns outside [lo, hi) of rows [a, b) of a (rows x Wo) row block: one
    strided slice per column."""
    for q in range(lo):
        col = row[a * Wo + q:b * Wo:Wo]
        for k in range(len(col)):
            col[k] = 0
    for q in range(hi, Wo):
        col = row[a * Wo + q:b * Wo:Wo]
        for k in range(len(col)):
            col[k] = 0


@njit(**_SER)
def _im2col_plane(x, xf, n0, c, g, buf, kh, kw, sh, sw, pt, pl, dh, dw, Ho, Wo):
    """The kh*kw rows (c, i, j) of sample g's block of the group's im2col matrix.

    x is (N, C, H, W), xf the same as (N, C, H*W). Copies run over `range(len(slice))`: an
    index Numba cannot prove non-negative keeps a wraparound check per element that stops
    the loop from vectorizing (measured 7x slower); a plane per task, not a row, because the
    per-task index divisions cost more than a 196-element copy."""
    H = x.shape[2]
    W = x.shape[3]
    P = Ho * Wo
    plane = x[n0 + g, c]
    flat = xf[n0 + g, c]
    r = c * kh * kw
    for i in range(kh):
        top = i * dh - pt  # input row of output row 0 at stride 1
        for j in range(kw):
            row = buf[r, g * P:(g + 1) * P]
            r += 1
            off = j * dw - pl
            lo, hi = _ow_range(off, sw, W, Wo)
            if sh == 1 and sw == 1 and Wo == W:
                # output row oh reads input row oh + top: the valid rows are one contiguous
                # span of the flat plane shifted by top*W + off; the border columns it wraps
                # into are zeroed after.
                a, b, s0, d0, d1 = _shift_span(top, off, H, W, Ho, Wo)
                head = row[:a * Wo]
                for k in range(len(head)):
                    head[k] = 0
                tail = row[b * Wo:]
                for k in range(len(tail)):
                    tail[k] = 0
                dst = row[a * Wo + d0:a * Wo + d1]
                src = flat[s0 + d0:s0 + d1]
                for k in range(len(dst)):
                    dst[k] = src[k]
                _zero_border_cols(row, a, b, lo, hi, Wo)
                continue
            for oh in range(Ho):
                seg = row[oh * Wo:(oh + 1) * Wo]
                hh = oh * sh + i * dh - pt
                if hh < 0 or hh >= H:
                    for k in range(len(seg)):
                        seg[k] = 0
                    continue
                xr = plane[hh]
                for k in range(lo):
                    seg[k] = 0
                if sw == 1:
                    src = xr[lo + off:hi + off]
                    dst = seg[lo:hi]
                    for k in range(len(dst)):
                        dst[k] = src[k]
                else:
                    for ow in range(lo, hi):
                        seg[ow] = xr[ow * sw + off]
                for k in range(hi, Wo):
                    seg[k] = 0


@njit(**_SER)
def _im2col_ser(x, xf, n0, G, buf, kh, kw, sh, sw, pt, pl, dh, dw, Ho, Wo):
    for c in range(x.shape[1]):
        for g in range(G):
            _im2col_plane(x, xf, n0, c, g, buf, kh, kw, sh, sw, pt, pl, dh, dw, Ho, Wo)


@njit(**_PAR)
def _im2col_par(x, xf, n0, G, buf, kh, kw, sh, sw, pt, pl, dh, dw, Ho, Wo):
    for t in prange(x.shape[1] * G):
        c = t // G
        _im2col_plane(x, xf, n0, c, t - c * G, buf, kh, kw, sh, sw, pt, pl, dh, dw, Ho, Wo)


# ============================================================================================
# forward epilogue: y[n0+g, o, :] = z[o, g*P:(g+1)*P] + b[o]; one task per (sample, channel)
# ============================================================================================
@njit(**_SER)
def _scatter_task(z, y, n0, t, b, has_b):
    O = z.shape[0]
    P = y.shape[2]
    g = t // O
    o = t - g * O
    src = z[o, g * P:(g + 1) * P]
    dst = y[n0 + g, o]
    if has_b:
        bb = b[o]
        for k in range(len(dst)):
            dst[k] = src[k] + bb
    else:
        for k in range(len(dst)):
            dst[k] = src[k]


@njit(**_SER)
def _scatter_ser(z, y, n0, G, b, has_b):
    for t in range(G * z.shape[0]):
        _scatter_task(z, y, n0, t, b, has_b)


@njit(**_PAR)
def _scatter_par(z, y, n0, G, b, has_b):
    for t in prange(G * z.shape[0]):
        _scatter_task(z, y, n0, t, b, has_b)


# ============================================================================================
# backward: gather dy's group into (O, G*P) and sum each channel (float64); one task per channel
# ============================================================================================
@njit(**_SER)
def _gather_channel(dy, n0, G, o, dyt, dbp):
    P = dy.shape[2]
    row = dyt[o]
    s = 0.0
    for g in range(G):
        src = dy[n0 + g, o]
        dst = row[g * P:(g + 1) * P]
        for k in range(len(dst)):
            v = src[k]
            dst[k] = v
            s += v
    dbp[o] = s


@njit(**_SER)
def _gather_ser(dy, n0, G, dyt, dbp):
    for o in range(dyt.shape[0]):
        _gather_channel(dy, n0, G, o, dyt, dbp)


@njit(**_PAR)
def _gather_par(dy, n0, G, dyt, dbp):
    for o in prange(dyt.shape[0]):
        _gather_channel(dy, n0, G, o, dyt, dbp)


# ============================================================================================
# col2im of one group: dx[n0+g, c] = sum over (i, j) of dcols rows; one task per (sample, c)
# plane, in the reference's (i, j) order.
# ============================================================================================
@njit(**_SER)
def _col2im_task(dcols, dx, dxf, n0, t, kh, kw, sh, sw, pt, pl, dh, dw, Ho, Wo):
    """Plane (g, c) of dx: the sum over (i, j) of its dcols rows, in the reference's (i, j)
    order; t = g * C + c. At stride 1 with Wo == W each row is added as one contiguous span
    of the flat plane (the columns that would wrap around a row edge are zeroed in dcols
    first: dcols is scratch); otherwise row by row."""
    C = dx.shape[1]
    H = dx.shape[2]
    W = dx.shape[3]
    g = t // C
    c = t - g * C
    P = Ho * Wo
    plane = dx[n0 + g, c]
    flat = dxf[n0 + g, c]
    for k in range(len(flat)):
        flat[k] = 0
    r = c * kh * kw
    for i in range(kh):
        top = i * dh - pt
        for j in range(kw):
            row = dcols[r, g * P:(g + 1) * P]
            r += 1
            off = j * dw - pl
            lo, hi = _ow_range(off, sw, W, Wo)
            if sh == 1 and sw == 1 and Wo == W:
                a, b, s0, d0, d1 = _shift_span(top, off, H, W, Ho, Wo)
                _zero_border_cols(row, a, b, lo, hi, Wo)  # wrapped cells must add nothing
                src = row[a * Wo + d0:a * Wo + d1]
                dst = flat[s0 + d0:s0 + d1]
                for k in range(len(dst)):
                    dst[k] += src[k]
                continue
            for oh in range(Ho):
                hh = oh * sh + top
                if hh < 0 or hh >= H:
                    continue
                src = row[oh * Wo:(oh + 1) * Wo]
                xr = plane[hh]
                if sw == 1:
                    seg = xr[lo + off:hi + off]
                    s2 = src[lo:hi]
                    for k in range(len(seg)):
                        seg[k] += s2[k]
                else:
                    for ow in range(lo, hi):
                        xr[ow * sw + off] += src[ow]


@njit(**_SER)
def _col2im_ser(dcols, dx, dxf, n0, G, kh, kw, sh, sw, pt, pl, dh, dw, Ho, Wo):
    for t in range(G * dx.shape[1]):
        _col2im_task(dcols, dx, dxf, n0, t, kh, kw, sh, sw, pt, pl, dh, dw, Ho, Wo)


@njit(**_PAR)
def _col2im_par(dcols, dx, dxf, n0, G, kh, kw, sh, sw, pt, pl, dh, dw, Ho, Wo):
    for t in prange(G * dx.shape[1]):
        _col2im_task(dcols, dx, dxf, n0, t, kh, kw, sh, sw, pt, pl, dh, dw, Ho, Wo)


def _run(work, ser, par, *args):
    """The serial driver below the shared PAR_MIN_ELEMS policy, else the parallel one."""
    return (ser if nchunks(work) == 1 else par)(*args)


def geometry(x_shape, W_shape, stride, padding, dilation):
    """(kh, kw, sh, sw, pt, pl, dh, dw, Ho, Wo): the kernels' geometry arguments."""
    (sh, sw), (dh, dw) = pair(stride), pair(dilation)
    (pt, pb), (pl, pr) = pads2d(padding)
    _, _, H, Wd = x_shape
    _, _, kh, kw = W_shape
    Ho = out_size(H, kh, sh, pt, pb, dh)
    Wo = out_size(Wd, kw, sw, pl, pr, dw)
    return (kh, kw, sh, sw, pt, pl, dh, dw, Ho, Wo)


def conv_groups(x, Wm, geo, b, out):
    """out (N, O, Ho*Wo) = conv(x, W) + b by groups: im2col of a group, one GEMM, scatter.
    x C-contiguous (N, C, H, W); Wm (O, C*kh*kw); b (O,) or None. Returns the group size."""
    N, C = x.shape[0], x.shape[1]
    O, K = Wm.shape
    P = out.shape[2]
    dt = x.dtype
    xf = x.reshape(N, C, x.shape[2] * x.shape[3])  # not -1: N may be 0
    has_b = b is not None
    bb = b if has_b else np.zeros(1, dtype=dt)
    G = group_size(N, K, P, dt.itemsize, nchunks(N * K * P))
    buf = np.empty((K, G * P), dtype=dt)
    z = np.empty((O, G * P), dtype=dt)
    for n0 in range(0, N, G):
        g = min(G, N - n0)
        cols = buf if g == G else np.empty((K, g * P), dtype=dt)
        zg = z if g == G else np.empty((O, g * P), dtype=dt)
        _run(cols.size, _im2col_ser, _im2col_par, x, xf, n0, g, cols, *geo)
        np.matmul(Wm, cols, out=zg)
        _run(zg.size, _scatter_ser, _scatter_par, zg, out, n0, g, bb, has_b)
    return G


def conv_backward_groups(x, dy3, Wm, geo, need_dx):
    """(dx or None, dW (O, K), db (O,) float64) of conv_groups by groups: a group's im2col
    rebuilt, dy gathered with the channel sums, dW += dy_g cols^T, and with need_dx
    dcols = W^T dy_g scattered into dx by col2im. x C-contiguous (N, C, H, W), dy3 (N, O, P)."""
    N, C, H, Wd = x.shape
    O, K = Wm.shape
    P = dy3.shape[2]
    dt = x.dtype
    xf = x.reshape(N, C, H * Wd)  # not -1: N may be 0
    dW = np.zeros((O, K), dtype=dt) if N == 0 else np.empty((O, K), dtype=dt)  # no group
    part = np.empty((O, K), dtype=dt)
    dbp = np.empty(O, dtype=np.float64)
    db64 = np.zeros(O, dtype=np.float64)
    dx = np.empty(x.shape, dtype=dt) if need_dx else None
    dxf = dx.reshape(N, C, H * Wd) if need_dx else None
    G = group_size(N, K, P, dt.itemsize, nchunks(N * K * P))
    buf = np.empty((K, G * P), dtype=dt)
    dyt = np.empty((O, G * P), dtype=dt)
    dcols = np.empty((K, G * P), dtype=dt) if need_dx else None
    for n0 in range(0, N, G):
        g = min(G, N - n0)
        cols = buf if g == G else np.empty((K, g * P), dtype=dt)
        dyg = dyt if g == G else np.empty((O, g * P), dtype=dt)
        _run(cols.size, _im2col_ser, _im2col_par, x, xf, n0, g, cols, *geo)
        _run(dyg.size, _gather_ser, _gather_par, dy3, n0, g, dyg, dbp)
        db64 += dbp
        if n0 == 0:
            np.matmul(dyg, cols.T, out=dW)
        else:
            np.matmul(dyg, cols.T, out=part)
            dW += part
        if need_dx:
            dc = dcols if g == G else np.empty((K, g * P), dtype=dt)
            np.matmul(Wm.T, dyg, out=dc)
            _run(dc.size, _col2im_ser, _col2im_par, dc, dx, dxf, n0, g, *geo)
    return dx, dW, db64
