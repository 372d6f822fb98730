"""Vectorizable elementary functions for the Numba kernels: exp, tanh, sigmoid and GELU (and
GELU's derivative) in float32 as plain arithmetic that LLVM vectorizes, float64 through libm.

Why: Numba has no SVML on this machine, so `np.tanh` / `math.exp` in a kernel are scalar libm
calls, 4-6x slower than NumPy's SIMD tanh (a fused LSTM forward built on them measured 3.5x
slower than the reference; the dense activations had to be routed to NumPy). Written as plain
float32 arithmetic they run 8 lanes wide under AVX2. Accuracy, measured against float64 NumPy on
dense grids (tests/test_numba_math.py, tests/test_numba_lstm.py):
- `_exp32`: Cephes expf. n = floor(x log2 e + 1/2), r = x - n ln 2 (ln 2 split in two), a
  degree-6 polynomial, times 2**n built from exponent bits (`_pow2`, LLVM integer ops and
  bitcasts). Max error 1.4 ulp for v in [-87.3, 89] (callers clamp; inf from 88.38 on).
- `_exp32_any`: any input: clamped into that range, 0 below -87.3 (the true value is below
  FLT_MIN there: absolute error < 1.2e-38, subnormals flushed), inf from 88.38, NaN stays NaN.
  For softmax / log-sum-exp, whose arguments are <= 0.
- `_tanh32`: |x| < 0.625 Cephes' odd polynomial (no cancellation near 0), else
  1 - 2 / (exp(2|x|) + 1) with the sign put back; |x| is clamped at 10 (tanh is 1.0f there).
  Max error 1.3 ulp (np.tanh float32: 1.4).
- `_sigmoid32`: 1 / (1 + exp(-x)); max error ~2 ulp; exactly 0 / 1 at -inf / inf.
- `_gelu32`: the reference's tanh approximation, 0.5 x (1 + tanh(w)), w = k (u + c u^3), u = x
  clipped to +-GELU_CLIP, computed as x * sigmoid(2w) (the same function: no cancellation in
  1 + tanh(w) for x < 0, one exp). Max error 2.2 ulp for x >= -1, 5.3 ulp on [-2, -1]; below,
  the float32 rounding of w is amplified by the function's own condition number (~|2w|):
  relative error <= 2.7 eps (1 + |2w|), 1.1e-5 at worst on [-10, -5], where the reference's
  float32 formula is off by 50% up to 13x (its 1 + tanh(w) cancels; the float64 one too, from
  x ~ -6 on: test against x / (1 + exp(-2w))).
- `_gelu_grad32`: s + u s (1 - s) 2w', s = sigmoid(2w), s (1 - s) = e s^2 with e = exp(-2w):
  absolute error <= 1.9e-7 (the reference's formula in float32: 1.2e-6, as 1 - tanh^2 cancels).
- NaN in gives NaN out (the fastmath flags keep NaN semantics; clamps are selects on compares
  that are false for NaN, and no float -> int conversion sees it); +-inf and huge inputs
  saturate (gelu(1e30) = 1e30, gelu(-1e30) = -0).
Float64 keeps libm (`math.exp`, `math.tanh`) and the reference formulas: exact to ~1 ulp,
scalar; float64 is the gradcheck path, not the fast one. `_exp`, `_tanh`, `_sigmoid`,
`_sigmoid_exp`, `_gelu`, `_gelu_grad` pick by type at compile time (`overload`), so each kernel
is written once.

Vectorization rules for the kernels that call these (measured in the LSTM: breaking either
costs 4-8x):
- every loop runs over range(len(slice)) of a row slice: an index like `hid + k` may be negative
  as far as Numba knows, and the wraparound select it keeps stops LLVM from vectorizing;
- the helpers are inlined at Numba-IR level (`inline="always"`): left to LLVM, a kernel calling
  them a dozen times keeps them as scalar calls.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from .numba_common import SER as _SER
from .reference import _GELU_K, GELU_CLIP

INLINE = dict(_SER, inline="always")
_f4 = np.float32


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
# subnormal, and 1 / (1 + FLT_MIN) is 1 anyway. -87.3 is also `_exp32`'s lower limit (n = -126).
_SIG_HI, _SIG_LO = _f4(89.0), _f4(-87.3)
# GELU: 2w = u (2k + 2kc u^2), u = x clipped; its derivative 2w' = 2k + 3 (2kc) u^2.
_GELU_C = 0.044715
_G2K, _G2KC, _G6KC = _f4(2 * _GELU_K), _f4(2 * _GELU_K * _GELU_C), _f4(6 * _GELU_K * _GELU_C)
_GCLIP = _f4(GELU_CLIP)


@njit(**_SER)
def _sel(c, a, b):
    """a if c else b, as a function: a conditional expression inside an `inline="always"`
    function makes Numba's SSA pass warn (NumbaIRAssumptionWarning); LLVM inlines this one."""
    return a if c else b


@njit(**INLINE)
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


@njit(**INLINE)
def _exp32_any(v):
    """exp(v), float32, vectorizable, for any v (softmax's and log-sum-exp's x - max): 0 below
    -87.3 (true value < FLT_MIN), inf from 88.38, exp(-inf) = 0, NaN stays NaN."""
    c = _sel(v < _SIG_LO, _SIG_LO, v)
    c = _sel(c > _SIG_HI, _SIG_HI, c)
    return _sel(v < _SIG_LO, _ZERO, _exp32(c))


@njit(**INLINE)
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


@njit(**INLINE)
def _sigmoid32(x):
    """1 / (1 + exp(-x)), float32, vectorizable; exactly 0 / 1 at -inf / inf; NaN stays NaN."""
    v = -x
    v = _sel(v > _SIG_HI, _SIG_HI, v)
    v = _sel(v < _SIG_LO, _SIG_LO, v)
    return _ONE / (_ONE + _exp32(v))


@njit(**INLINE)
def _gelu32(x):
    """GELU (tanh approximation, as the reference), float32, vectorizable: x * sigmoid(2w).
    Finite for finite x (u is clipped), gelu(inf) = inf, gelu(-inf) = NaN (as the reference's
    -inf * 0), NaN stays NaN."""
    u = _sel(x > _GCLIP, _GCLIP, x)
    u = _sel(u < -_GCLIP, -_GCLIP, u)
    return x * _sigmoid32(u * (_G2K + _G2KC * (u * u)))


@njit(**INLINE)
def _gelu_grad32(x):
    """d gelu / dx, float32, vectorizable: s + u s (1 - s) 2w' with s = sigmoid(2w) = 1 / (1 + e),
    e = exp(-2w), and s (1 - s) = e s s (no cancellation in 1 - s); u = x clipped (where s is
    exactly 0 or 1, so the derivative is exactly 0 or 1, never inf * 0). NaN stays NaN."""
    u = _sel(x > _GCLIP, _GCLIP, x)
    u = _sel(u < -_GCLIP, -_GCLIP, u)
    z = u * u
    v = -u * (_G2K + _G2KC * z)
    v = _sel(v > _SIG_HI, _SIG_HI, v)
    v = _sel(v < _SIG_LO, _SIG_LO, v)
    e = _exp32(v)
    s = _ONE / (_ONE + e)
    ds = _sel(s > _ZERO, (e * s) * s, _ZERO)  # e = inf: s = 0, and so is s (1 - s)
    return s + u * ds * (_G2K + _G6KC * z)


# ============================================================================================
# Type-dispatched names the kernels call (float32: the above; float64: libm, reference formulas)
# ============================================================================================
def _exp(x):
    """exp in a kernel: `_exp32_any` for float32, else math.exp (see `_ov_exp`)."""
    return math.exp(x)


def _tanh(x):
    """tanh in a kernel: the vectorizable float32 one, else math.tanh (see `_ov_tanh`)."""
    return math.tanh(x)


def _sigmoid(x):
    """sigmoid in the recurrent kernels: float32 vectorizable, float64 the recurrent
    reference's 0.5 tanh(x/2) + 0.5."""
    return 0.5 * math.tanh(0.5 * x) + 0.5


def _sigmoid_exp(x):
    """sigmoid in the activation kernels: float32 vectorizable, float64 the activation
    reference's stable form (exp of -|x| only: full relative accuracy in both tails)."""
    e = math.exp(-abs(x))
    return 1.0 / (1.0 + e) if x >= 0 else e / (1.0 + e)


def _gelu(x):
    """GELU in a kernel: float32 vectorizable, float64 the reference's formula."""
    u = min(max(x, -GELU_CLIP), GELU_CLIP)
    return 0.5 * x * (1.0 + math.tanh(_GELU_K * (u + _GELU_C * u * u * u)))


def _gelu_grad(x):
    """d GELU / dx in a kernel: float32 vectorizable, float64 the reference's formula."""
    u = min(max(x, -GELU_CLIP), GELU_CLIP)
    t = math.tanh(_GELU_K * (u + _GELU_C * u * u * u))
    dt = (1.0 - t * t) * _GELU_K * (1.0 + 3 * _GELU_C * u * u)
    return 0.5 * (1.0 + t) + 0.5 * u * dt


@overload(_exp, inline="always")
def _ov_exp(x):
    if x == types.float32:
        return lambda x: _exp32_any(x)
    return lambda x: math.exp(x)


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


@overload(_sigmoid_exp, inline="always")
def _ov_sigmoid_exp(x):
    if x == types.float32:
        return lambda x: _sigmoid32(x)

    def f64(x):
        e = math.exp(-abs(x))
        return _sel(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))

    return f64


@overload(_gelu, inline="always")
def _ov_gelu(x):
    if x == types.float32:
        return lambda x: _gelu32(x)

    def f64(x):
        u = _sel(x > GELU_CLIP, GELU_CLIP, x)
        u = _sel(u < -GELU_CLIP, -GELU_CLIP, u)  # NaN stays NaN
        return 0.5 * x * (1.0 + math.tanh(_GELU_K * (u + _GELU_C * u * u * u)))

    return f64


@overload(_gelu_grad, inline="always")
def _ov_gelu_grad(x):
    if x == types.float32:
        return lambda x: _gelu_grad32(x)

    def f64(x):
        u = _sel(x > GELU_CLIP, GELU_CLIP, x)
        u = _sel(u < -GELU_CLIP, -GELU_CLIP, u)
        t = math.tanh(_GELU_K * (u + _GELU_C * u * u * u))
        dt = (1.0 - t * t) * _GELU_K * (1.0 + 3 * _GELU_C * u * u)
        return 0.5 * (1.0 + t) + 0.5 * u * dt

    return f64
