"""Numba conv2d with one group of samples per thread at a time: each Numba thread runs a whole
group (im2col, the GEMM by the BLAS called single-threaded from the kernel (numba_blas), the
scatter / gather and col2im) in its own L2-sized buffers, and takes the next of its groups; no
barrier between the passes and no Python per group.

Why: numba_conv's groups run each pass on both threads in turn (a parallel im2col, a 2-thread
OpenBLAS GEMM, a parallel scatter), and on the 2-vCPU box that pipeline barely scaled: the zoo
CNN's second conv (N 128, 32 -> 64 channels, 14x14, 3x3 same) took 19.1 ms forward with 2
threads against 20.5 with 1. Samples are independent, so the groups can be split between the
threads instead of each pass. The weight and bias gradients, which every group adds to, go into
one partial per thread (no shared `+=`), summed after.

Measured against that pipeline (2-vCPU Zen 3, 2 threads, same process, interleaved medians):
the second conv forward 15.7 -> 13.0 ms and backward 32.5 -> 24.9 ms (then 9.7 and 19.7 with
256 KB buffers), the first conv (1 -> 32 channels, 28x28; dW only) 15.8 -> 2.7 and
10.7 -> 3.0 ms (its K = 9 GEMMs split over OpenBLAS's two threads were the worst case); the zoo
CNN's train step 1.19x faster.

Used when `numba_dispatch.blas_plan` allows (2+ Numba threads, a callable BLAS, OpenBLAS not
spinning); numba_conv's pipeline otherwise. Same geometry kernels as numba_conv (the
per-sample im2col, scatter, gather and col2im tasks), so the results are the same sums in the
same order per group; dW and db add the per-thread partials in a different order (float
rounding only).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .numba_blas import gemm, single_threaded_blas
from .numba_common import PAR as _PAR
from .numba_conv import MIN_GEMM_COLS, _col2im_ser, _gather_ser, _im2col_ser, _scatter_ser

# Bytes of one thread's im2col buffer. Measured (2-vCPU Zen 3, 2 threads, interleaved, zoo CNN
# convs forward / backward): 128-512 KB equal within noise (1 -> 32 channels 28x28: 2.3 / 2.5 ms,
# 32 -> 64 channels 14x14: 9.7 / 19.7 ms); 1 MB 2.8 / 3.4 and 10.1 / 20.0; 2-4 MB up to 5x slower
# on the first conv. Smaller than the pipeline's GROUP_BYTES: here both threads' buffers are
# live at once.
THREAD_GROUP_BYTES = 1 << 18


def thread_groups(N, K, P, itemsize, threads) -> int:
    """Samples per group: a buffer of about THREAD_GROUP_BYTES but at least MIN_GEMM_COLS GEMM
    columns, then evened out so that every thread gets the same number of groups."""
    by_bytes = THREAD_GROUP_BYTES // max(1, K * P * itemsize)
    by_cols = -(-MIN_GEMM_COLS // max(1, P))
    g0 = int(max(1, min(N, max(by_bytes, by_cols))))
    groups = -(-N // g0)
    groups = threads * -(-groups // threads)
    return max(1, -(-N // groups))


@njit(**_PAR)
def _fwd_threads(addr, ilp64, x, xf, Wm, b, has_b, y, G, bufs, zs, kh, kw, sh, sw, pt, pl, dh,
                 dw, Ho, Wo):
    """y (N, O, P) = conv(x, W) + b: thread th runs groups th, th + nt, ... of G samples, with
    bufs[th] (K, G*P) for im2col and zs[th] (O, G*P) for the GEMM's output."""
    N = x.shape[0]
    O, K = Wm.shape
    P = Ho * Wo
    nt = bufs.shape[0]
    ld = G * P
    ngroups = (N + G - 1) // G
    for th in prange(nt):
        buf, z = bufs[th], zs[th]
        for gi in range(th, ngroups, nt):
            n0 = gi * G
            g = min(G, N - n0)
            _im2col_ser(x, xf, n0, g, buf, kh, kw, sh, sw, pt, pl, dh, dw, Ho, Wo)
            gemm(addr, ilp64, False, False, O, g * P, K, Wm, K, buf, ld, 0.0, z, ld)
            _scatter_ser(z, y, n0, g, b, has_b)


@njit(**_PAR)
def _bwd_threads(addr, ilp64, x, xf, dy3, Wm, need_dx, dx, dxf, G, bufs, dyts, dcs, dWp, dbp,
                 kh, kw, sh, sw, pt, pl, dh, dw, Ho, Wo):
    """Thread th runs groups th, th + nt, ...: rebuilds the group's im2col in bufs[th], gathers
    its dy into dyts[th] (O, G*P), adds dy_g cols^T into dWp[th] (O, K) and the channel sums
    into dbp[th] (O, float64), and with need_dx scatters dcols = W^T dy_g (dcs[th]) into the
    group's planes of dx by col2im. A thread with no group leaves zeros in its partials."""
    N = x.shape[0]
    O, K = Wm.shape
    P = Ho * Wo
    nt = bufs.shape[0]
    ld = G * P
    ngroups = (N + G - 1) // G
    for th in prange(nt):
        buf, dyt, dc, dW, db = bufs[th], dyts[th], dcs[th], dWp[th], dbp[th]
        sums = np.empty(O, dtype=np.float64)
        dW[:] = 0
        db[:] = 0
        for gi in range(th, ngroups, nt):
            n0 = gi * G
            g = min(G, N - n0)
            _im2col_ser(x, xf, n0, g, buf, kh, kw, sh, sw, pt, pl, dh, dw, Ho, Wo)
            _gather_ser(dy3, n0, g, dyt, sums)
            for o in range(O):
                db[o] += sums[o]
            gemm(addr, ilp64, False, True, O, K, g * P, dyt, ld, buf, ld, 1.0, dW, K)
            if need_dx:
                gemm(addr, ilp64, True, False, K, g * P, O, Wm, K, dyt, ld, 0.0, dc, ld)
                _col2im_ser(dc, dx, dxf, n0, g, kh, kw, sh, sw, pt, pl, dh, dw, Ho, Wo)


def _layout(x, Wm, P, nt):
    """(G, xf, bufs): samples per group, x as (N, C, H*W), and one im2col buffer per thread."""
    N, C, H, Wd = x.shape
    K = Wm.shape[1]
    G = thread_groups(N, K, P, x.dtype.itemsize, nt)
    return G, x.reshape(N, C, H * Wd), np.empty((nt, K, G * P), dtype=x.dtype)


def conv_threads(x, Wm, geo, b, out, plan):
    """out (N, O, P) = conv(x, W) + b with `_fwd_threads`; plan = numba_dispatch.blas_plan's
    (address, ilp64, threads). x C-contiguous (N, C, H, W), Wm C-contiguous (O, K)."""
    addr, ilp64, nt = plan
    P = out.shape[2]
    G, xf, bufs = _layout(x, Wm, P, nt)
    zs = np.empty((nt, Wm.shape[0], G * P), dtype=x.dtype)
    has_b = b is not None
    bb = b if has_b else np.zeros(1, dtype=x.dtype)
    with single_threaded_blas():
        _fwd_threads(addr, ilp64, x, xf, Wm, bb, has_b, out, G, bufs, zs, *geo)


def conv_backward_threads(x, dy3, Wm, geo, need_dx, plan):
    """(dx or None, dW (O, K), db (O,) float64) with `_bwd_threads`: the per-thread partials
    summed. Arguments as numba_conv.conv_backward_groups, plus the plan."""
    addr, ilp64, nt = plan
    O, K = Wm.shape
    P = dy3.shape[2]
    dt = x.dtype
    G, xf, bufs = _layout(x, Wm, P, nt)
    dyts = np.empty((nt, O, G * P), dtype=dt)
    dcs = np.empty((nt, K, G * P), dtype=dt) if need_dx else np.empty((nt, 1, 1), dtype=dt)
    dWp = np.empty((nt, O, K), dtype=dt)
    dbp = np.empty((nt, O), dtype=np.float64)
    dx = np.empty(x.shape, dtype=dt) if need_dx else np.empty((1, 1, 1, 1), dtype=dt)
    dxf = dx.reshape(dx.shape[0], dx.shape[1], dx.shape[2] * dx.shape[3])  # not -1: C may be 0
    with single_threaded_blas():
        _bwd_threads(addr, ilp64, x, xf, dy3, Wm, need_dx, dx, dxf, G, bufs, dyts, dcs, dWp, dbp,
                     *geo)
    return (dx if need_dx else None), dWp.sum(axis=0), dbp.sum(axis=0)
