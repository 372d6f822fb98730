"""Numba LSTM kernels: one fused pass per timestep each way; the GEMMs stay in BLAS
(`NumbaRecurrentKernels` in numba_recurrent.py drives them).

Forward step: z = x_t W_ih + b + h_{t-1} W_hh (the two GEMM outputs and the bias, added here),
the four gate nonlinearities, c_t = f c_{t-1} + i g, tanh(c_t), h_t = o tanh(c_t); it writes what
the backward reads (the activated gates in place of x_t W_ih, c_t, tanh(c_t), h_t), in the
reference's `saved` layout. Backward step: dh (+ dy_t), the dc update, the four gate
derivatives, dc <- f dc, and the rows of dz_t summed into the bias gradient while they are in
cache (per block of rows in the parallel driver: no two threads add into the same memory).

Why the forward can be fused here at all: Numba has no SVML on this machine, so `np.tanh` /
`math.exp` in a kernel are scalar libm calls (4-6x slower than NumPy's SIMD tanh; a fused forward
built on them measured 3.5x slower than the reference). Float32 therefore gets its own exp,
tanh and sigmoid written as plain arithmetic that LLVM vectorizes (8 lanes under AVX2):
- exp: Cephes expf. n = floor(x log2 e + 1/2), r = x - n ln 2 (ln 2 split in two), a degree-6
  polynomial, times 2**n built from exponent bits (`_pow2`, LLVM integer ops and bitcasts).
  Max error 1.4 ulp. Callers clamp its argument (tanh's is in [0, 20] anyway).
- tanh: |x| < 0.625 Cephes' odd polynomial (no cancellation near 0), else
  1 - 2 / (exp(2|x|) + 1) with the sign put back; |x| is clamped at 10 (tanh is 1.0f there).
  Max error 1.3 ulp against float64 (np.tanh: 1.4).
- sigmoid: 1 / (1 + exp(-x)); max error ~2 ulp, and sigmoid(-inf) = 0, sigmoid(inf) = 1.
- NaN in gives NaN out (the fastmath flags keep NaN semantics; clamps are selects on compares
  that are false for NaN, and no float -> int conversion sees it).
Float64 takes `math.tanh` (sigmoid as the reference's 0.5 tanh(x/2) + 0.5): exact to ~1 ulp,
scalar; float64 is the gradcheck path, not the fast one. `_tanh` / `_sigmoid` pick by type at
compile time (`overload`), so each kernel is written once.

Vectorization rules the kernels follow (measured: breaking either costs 4-8x per step):
- every loop runs over range(len(slice)) of a row slice: an index like `hid + k` may be negative
  as far as Numba knows, and the wraparound select it keeps stops LLVM from vectorizing;
- the math helpers are inlined at Numba-IR level (`inline="always"`): left to LLVM, a kernel
  calling them a dozen times keeps them as scalar calls.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from .numba_common import PAR as _PAR
from .numba_common import SER as _SER
from .numba_dispatch import _span

_INLINE = dict(_SER, inline="always")
_f4 = np.float32


# ============================================================================================
# Vectorizable float32 exp / tanh / sigmoid
# ============================================================================================
@intrinsic
def _pow2(typingctx, n):
    """2**n for an integral float32 n in [-126, 128] (128 gives inf). n + 1.5 * 2**23 holds n in
    its low mantissa bits, so the float's bits minus those of 1.5 * 2**23, plus 127, shifted
    left 23 are the bits of 2**n. No float -> int conversion: that would be LLVM poison for a
    NaN, while this gives some finite power of 2, and the caller's arithmetic keeps the NaN."""
    if n != types.float32:
        return None

    def codegen(context, builder, sig, args):
        i32, f32 = ir.IntType(32), ir.FloatType()
        m = builder.bitcast(builder.fadd(args[0], ir.Constant(f32, 12582912.0)), i32)
        k = builder.add(m, ir.Constant(i32, 127 - 0x4B400000))
        return builder.bitcast(builder.shl(k, ir.Constant(i32, 23)), f32)

    return types.float32(types.float32), codegen


_ONE, _TWO, _HALF, _ZERO = _f4(1.0), _f4(2.0), _f4(0.5), _f4(0.0)
_LOG2E = _f4(1.44269504088896341)
_LN2_HI, _LN2_LO = _f4(0.693359375), _f4(-2.12194440e-4)
_E0, _E1, _E2, _E3, _E4, _E5 = (
    _f4(1.9875691500e-4),
    _f4(1.3981999507e-3),
    _f4(8.3334519073e-3),
    _f4(4.1665795894e-2),
    _f4(1.6666665459e-1),
    _f4(5.0000001201e-1),
)
_T0, _T1, _T2, _T3, _T4 = (
    _f4(-5.70498872745e-3),
    _f4(2.06390887954e-2),
    _f4(-5.37397155531e-2),
    _f4(1.33314422036e-1),
    _f4(-3.33332819422e-1),
)
_TANH_SMALL, _TANH_CLAMP = _f4(0.625), _f4(10.0)
# sigmoid's exp argument -x, clamped: from 88.38 on 2**n overflows to inf, so sigmoid is exactly
# 0 from x = -88.38 (the true value is below FLT_MIN there); below -87.3, exp(-x) would be
# subnormal, and 1 / (1 + FLT_MIN) is 1 anyway.
_SIG_HI, _SIG_LO = _f4(89.0), _f4(-87.3)


@njit(**_SER)
def _sel(c, a, b):
    """a if c else b, as a function: a conditional expression inside an `inline="always"`
    function makes Numba's SSA pass warn (NumbaIRAssumptionWarning); LLVM inlines this one."""
    return a if c else b


@njit(**_INLINE)
def _exp32(v):
    """exp(v), float32, vectorizable (Cephes expf), for v in [-87.3, 89] (the callers clamp):
    1.4 ulp; from 88.38 on inf (2**128; the true exp overflows at 88.72). NaN stays NaN."""
    n = np.floor(v * _LOG2E + _HALF)
    r = v - n * _LN2_HI
    r = r - n * _LN2_LO
    p = _E0 * r + _E1
    p = p * r + _E2
    p = p * r + _E3
    p = p * r + _E4
    p = p * r + _E5
    return (p * (r * r) + r + _ONE) * _pow2(n)


@njit(**_INLINE)
def _tanh32(x):
    """tanh(x), float32, vectorizable: odd polynomial near 0, 1 - 2/(e^{2|x|}+1) elsewhere.
    NaN stays NaN (the clamp's compare is false for it, and arithmetic keeps it)."""
    a = np.abs(x)
    a = _sel(a > _TANH_CLAMP, _TANH_CLAMP, a)
    big = _ONE - _TWO / (_exp32(a + a) + _ONE)
    big = _sel(x < _ZERO, -big, big)
    z = x * x
    s = _T0 * z + _T1
    s = s * z + _T2
    s = s * z + _T3
    s = s * z + _T4
    return _sel(a < _TANH_SMALL, s * z * x + x, big)


@njit(**_INLINE)
def _sigmoid32(x):
    """1 / (1 + exp(-x)), float32, vectorizable; exactly 0 / 1 at -inf / inf; NaN stays NaN."""
    v = -x
    v = _sel(v > _SIG_HI, _SIG_HI, v)
    v = _sel(v < _SIG_LO, _SIG_LO, v)
    return _ONE / (_ONE + _exp32(v))


def _tanh(x):
    """tanh in a kernel: the vectorizable float32 one, else math.tanh (see `_ov_tanh`)."""
    return math.tanh(x)


def _sigmoid(x):
    """sigmoid in a kernel: the vectorizable float32 one, else the reference's formula."""
    return 0.5 * math.tanh(0.5 * x) + 0.5


@overload(_tanh, inline="always")
def _ov_tanh(x):
    if x == types.float32:
        return lambda x: _tanh32(x)
    return lambda x: math.tanh(x)


@overload(_sigmoid, inline="always")
def _ov_sigmoid(x):
    if x == types.float32:
        return lambda x: _sigmoid32(x)
    return lambda x: 0.5 * math.tanh(0.5 * x) + 0.5


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
