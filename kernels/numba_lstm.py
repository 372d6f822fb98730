"""Numba LSTM kernels: one fused pass per timestep each way; the GEMMs stay in BLAS
(`NumbaRecurrentKernels` in numba_recurrent.py drives them).

Forward step: z = x_t W_ih + b + h_{t-1} W_hh (the two GEMM outputs and the bias, added here),
the four gate nonlinearities, c_t = f c_{t-1} + i g, tanh(c_t), h_t = o tanh(c_t); it writes what
the backward reads (the activated gates in place of x_t W_ih, c_t, tanh(c_t), h_t), in the
reference's `saved` layout. Backward step: dh (+ dy_t), the dc update, the four gate
derivatives, dc <- f dc, and the rows of dz_t summed into the bias gradient while they are in
cache (per block of rows in the parallel driver: no two threads add into the same memory).

Why the forward can be fused here at all: the gate nonlinearities are the vectorizable float32
exp / tanh / sigmoid of numba_math.py (Numba has no SVML here: scalar libm tanh made a fused
forward 3.5x slower than the reference). Float64 takes `math.tanh` (sigmoid as the reference's
0.5 tanh(x/2) + 0.5). The kernels follow numba_math's vectorization rules: every loop runs over
range(len(slice)) of a row slice, and the math helpers are inlined at Numba-IR level.
"""

from __future__ import annotations

from numba import njit, prange

from .numba_blas import gemm_rows
from .numba_common import PAR as _PAR
from .numba_common import SER as _SER
from .numba_dispatch import _span
from .numba_math import INLINE as _INLINE
from .numba_math import _sigmoid, _tanh


# ============================================================================================
# Forward: one timestep
# ============================================================================================
@njit(**_INLINE)
def _sigmoid_block(z, b, u, has_u):
    """z <- sigmoid(z + b (+ u)) over one row block."""
    for k in range(len(z)):
        v = z[k] + b[k]
        if has_u:
            v += u[k]
        z[k] = _sigmoid(v)


@njit(**_INLINE)
def _tanh_block(z, b, u, has_u):
    """z <- tanh(z + b (+ u)) over one row block."""
    for k in range(len(z)):
        v = z[k] + b[k]
        if has_u:
            v += u[k]
        z[k] = _tanh(v)


@njit(**_SER)
def _fwd_rows(lo, hi, t, gates, b, u, has_u, cs, tcs, hs, c0, has_c0):
    """Rows lo:hi of step t, in place: gates[t] (x_t W_ih) += b (+ u = h_{t-1} W_hh), then
    activated; cs[t], tcs[t], hs[t] written. The previous cell state is cs[t-1] (t > 0), else c0
    (has_c0 False: zeros, and c0 is a dummy). Per row, one loop per nonlinearity (i and f
    together, g, o), then the cell loop: one transcendental per loop measured 12-28% faster
    than all five in one loop (which spills registers); the row stays in L1 between them."""
    g, cr_, tr_, hr_ = gates[t], cs[t], tcs[t], hs[t]
    has_c = t > 0 or has_c0
    cp_ = cs[t - 1] if t > 0 else c0
    hid = cs.shape[2]
    h2, h3 = 2 * hid, 3 * hid
    for n in range(lo, hi):
        zr, ur = g[n], u[n]
        _sigmoid_block(zr[:h2], b[:h2], ur[:h2], has_u)
        _tanh_block(zr[h2:h3], b[h2:h3], ur[h2:h3], has_u)
        _sigmoid_block(zr[h3:], b[h3:], ur[h3:], has_u)
        zi, zf, zg, zo = zr[:hid], zr[hid:h2], zr[h2:h3], zr[h3:]
        cp = cp_[n] if has_c else cp_[0]
        cr, tr, hr = cr_[n], tr_[n], hr_[n]
        for k in range(len(cr)):
            cc = zi[k] * zg[k]
            if has_c:
                cc += zf[k] * cp[k]
            tc = _tanh(cc)
            cr[k] = cc
            tr[k] = tc
            hr[k] = zo[k] * tc


@njit(**_SER)
def _lstm_fwd_ser(gates, b, u, has_u, cs, tcs, hs, c0, has_c0, t):
    """One forward step (see `_fwd_rows`), all rows."""
    _fwd_rows(0, gates.shape[1], t, gates, b, u, has_u, cs, tcs, hs, c0, has_c0)


@njit(**_PAR)
def _lstm_fwd_par(gates, b, u, has_u, cs, tcs, hs, c0, has_c0, t, nchunks):
    """One forward step, `prange` over nchunks blocks of rows (each owns its outputs)."""
    n = gates.shape[1]
    for c in prange(nchunks):
        lo, hi = _span(c, nchunks, n)
        _fwd_rows(lo, hi, t, gates, b, u, has_u, cs, tcs, hs, c0, has_c0)


# ============================================================================================
# Backward: one timestep
# ============================================================================================
@njit(**_INLINE)
def _bwd_row(ar, tr, cp, has_c, dhr, has_dh, dyr, has_dy, dcr, zr):
    """One batch row of BPTT: dh = dhr (+ dyr), dcr updated in place, zr (4H) = dz."""
    one, zero = dcr.dtype.type(1.0), dcr.dtype.type(0.0)
    hid = len(dcr)
    ai, af, ag, ao = ar[:hid], ar[hid : 2 * hid], ar[2 * hid : 3 * hid], ar[3 * hid :]
    zi, zf, zg, zo = zr[:hid], zr[hid : 2 * hid], zr[2 * hid : 3 * hid], zr[3 * hid :]
    for k in range(len(dcr)):
        h = zero
        if has_dh:
            h = dhr[k]
        if has_dy:
            h += dyr[k]
        i, f, g, o, tc = ai[k], af[k], ag[k], ao[k], tr[k]
        d = dcr[k] + h * o * (one - tc * tc)
        dcp = zero
        if has_c:
            dcp = d * cp[k]
        zi[k] = d * g * (i - i * i)
        zf[k] = dcp * (f - f * f)
        zg[k] = d * i * (one - g * g)
        zo[k] = h * tc * (o - o * o)
        dcr[k] = d * f


@njit(**_SER)
def _bwd_rows(lo, hi, t, gates, tcs, cs, c0, has_c0, dh, has_dh, dy, dy_tm, has_dy, dc, dz, acc):
    """Rows lo:hi of BPTT step t: dz[t] and dc (in place) from dh and dy[t] (time-major
    (T, N, H) when dy_tm, else batch-first (N, T, H)); has_dh False: dh is zero. The rows of
    dz[t] are added into acc (4H): the bias gradient, while they are in cache."""
    a, tc, z = gates[t], tcs[t], dz[t]
    has_c = t > 0 or has_c0
    cp = cs[t - 1] if t > 0 else c0
    for n in range(lo, hi):
        dyr = dy[0, 0]
        if has_dy:
            dyr = dy[t, n] if dy_tm else dy[n, t]
        cpr = cp[n] if has_c else cp[0]
        dhr = dh[n] if has_dh else dh[0]
        zr = z[n]
        _bwd_row(a[n], tc[n], cpr, has_c, dhr, has_dh, dyr, has_dy, dc[n], zr)
        for k in range(len(zr)):
            acc[k] += zr[k]


@njit(**_SER)
def _lstm_bwd_ser(gates, tcs, cs, c0, has_c0, dh, has_dh, dy, dy_tm, has_dy, dc, dz, t, dbp):
    """One BPTT step (see `_bwd_rows`), all rows; dbp (1, 4H) accumulates the bias gradient."""
    n = gates.shape[1]
    _bwd_rows(0, n, t, gates, tcs, cs, c0, has_c0, dh, has_dh, dy, dy_tm, has_dy, dc, dz, dbp[0])


@njit(**_PAR)
def _lstm_bwd_par(
    gates, tcs, cs, c0, has_c0, dh, has_dh, dy, dy_tm, has_dy, dc, dz, t, dbp, nchunks
):
    """One BPTT step, `prange` over nchunks blocks of rows; block c adds into dbp[c] (the
    caller sums the partials), so no two threads add into the same memory."""
    n = gates.shape[1]
    for c in prange(nchunks):
        lo, hi = _span(c, nchunks, n)
        _bwd_rows(
            lo, hi, t, gates, tcs, cs, c0, has_c0, dh, has_dh, dy, dy_tm, has_dy, dc, dz, dbp[c]
        )


# ============================================================================================
# Whole sequences: each thread carries a block of batch rows through every timestep
# ============================================================================================
@njit(**_PAR)
def _lstm_fwd_seq(addr, ilp64, x_tm, W_ih, gates, b, W_hh, h0, has_h0, cs, tcs, hs, c0, has_c0,
                  nchunks):
    """The forward of every timestep, `prange` over nchunks blocks of batch rows. Per step, the
    block's rows of gates[t] = x_t W_ih (+ h_{t-1} W_hh) by the BLAS at `addr` (single-threaded,
    in this thread), then `_fwd_rows` on them while they are in cache: the input projection is
    never a separate (T, N, 4H) pass through memory. Rows never depend on other rows, so the
    blocks need no barrier."""
    t_len, n = gates.shape[0], gates.shape[1]
    for c in prange(nchunks):
        lo, hi = _span(c, nchunks, n)
        for t in range(t_len):
            g = gates[t]
            gemm_rows(addr, ilp64, x_tm[t], W_ih, False, g, lo, hi, False)
            if t > 0 or has_h0:
                gemm_rows(addr, ilp64, hs[t - 1] if t > 0 else h0, W_hh, False, g, lo, hi, True)
            _fwd_rows(lo, hi, t, gates, b, g, False, cs, tcs, hs, c0, has_c0)


@njit(**_PAR)
def _lstm_bwd_seq(
    addr, ilp64, gates, tcs, cs, c0, has_c0, dh, has_dh_last, dy, dy_tm, has_dy, dc, dz, W_hh,
    need_dh0, dbp, nchunks,
):
    """BPTT over every timestep, `prange` over nchunks blocks of batch rows: per step
    `_bwd_rows` on the block (its bias-gradient partial in dbp[c]), then the block's rows of
    dh = dz_t W_hh^T, written over the dh just read (same rows, same thread). After the loop dh
    holds dh0 when need_dh0 (the t = 0 GEMM is skipped otherwise)."""
    t_len, n = gates.shape[0], gates.shape[1]
    for c in prange(nchunks):
        lo, hi = _span(c, nchunks, n)
        for t in range(t_len - 1, -1, -1):
            has_dh = t < t_len - 1 or has_dh_last
            _bwd_rows(
                lo, hi, t, gates, tcs, cs, c0, has_c0, dh, has_dh, dy, dy_tm, has_dy, dc, dz,
                dbp[c],
            )
            if t > 0 or need_dh0:
                gemm_rows(addr, ilp64, dz[t], W_hh, True, dh, lo, hi, False)
