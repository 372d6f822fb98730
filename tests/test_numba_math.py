"""The vectorizable elementary functions of kernels/numba_math.py against float64 NumPy.

- float32 exp (any argument), sigmoid, gelu and its derivative in ulps / absolute error on
  dense grids (exp / tanh / sigmoid on their own are also covered in tests/test_numba_lstm.py);
- special values: 0, +-inf, NaN, beyond the float32 range (saturation, finite gelu at 1e30);
- float64 goes through libm and the reference formulas: equal to the reference to ~1 ulp
  (gelu and its derivative: to 1e-15 / 1e-14 absolute, where 1 +- tanh cancels in both).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba", reason="the numba backend needs Numba (pip install numba)")
from nnx.kernels import numba_math as nm  # noqa: E402
from nnx.kernels.reference import Ops  # noqa: E402
from numba import njit  # noqa: E402

REF = Ops(seed=0)


@njit(cache=False)
def _map(x, y, which):
    for k in range(len(x)):
        v = x[k]
        if which == 0:
            y[k] = nm._exp(v)
        elif which == 1:
            y[k] = nm._tanh(v)
        elif which == 2:
            y[k] = nm._sigmoid_exp(v)
        elif which == 3:
            y[k] = nm._gelu(v)
        else:
            y[k] = nm._gelu_grad(v)


def f(x, which):
    y = np.empty_like(x)
    _map(x, y, which)
    return y


def _ulps(got, want):
    """|got - want| in units of the float32 spacing at |want| (want float64)."""
    ulp = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    return np.abs(got.astype(np.float64) - want) / ulp


def _gelu_truth(x):
    """GELU (tanh approximation) and its derivative in float64, written without the
    cancellation of 1 + tanh(w) (the float64 reference formula loses all digits from x ~ -6):
    0.5 (1 + tanh(w)) = s = 1 / (1 + e), e = exp(-2w), 1 - tanh(w)^2 = 4 e s^2."""
    x = x.astype(np.float64)
    u = np.clip(x, -20, 20)
    k = np.sqrt(2 / np.pi)
    w2 = 2 * k * (u + 0.044715 * u**3)
    with np.errstate(over="ignore", invalid="ignore"):
        e = np.exp(-w2)
        s = 1 / (1 + e)
        ds = np.where(np.isfinite(e), e * s * s, 0.0)
    return x * s, s + u * ds * 2 * k * (1 + 3 * 0.044715 * u * u), np.abs(w2)


GRID = np.concatenate(
    [
        np.linspace(-30, 30, 200_001),
        np.geomspace(1e-30, 1, 10_001),
        -np.geomspace(1e-30, 1, 10_001),
    ]
).astype(np.float32)


def test_float32_exp_any_argument():
    x = np.linspace(-87.3, 88.37, 200_001).astype(np.float32)
    assert _ulps(f(x, 0), np.exp(x.astype(np.float64))).max() <= 2.0
    below = np.array([-87.4, -100, -1e30, -np.inf], np.float32)
    np.testing.assert_array_equal(f(below, 0), 0)  # true value < FLT_MIN: flushed
    over = np.array([88.5, 1e30, np.inf, np.nan, 0.0, -0.0], np.float32)
    np.testing.assert_array_equal(f(over, 0), [np.inf, np.inf, np.inf, np.nan, 1, 1])


def test_float32_sigmoid_and_tanh():
    x64 = GRID.astype(np.float64)
    with np.errstate(over="ignore"):
        want = 1.0 / (1.0 + np.exp(-x64))
    assert _ulps(f(GRID, 2), want).max() <= 3.0
    assert _ulps(f(GRID, 1), np.tanh(x64)).max() <= 2.0


def test_float32_gelu_accuracy():
    want, _, w2 = _gelu_truth(GRID)
    got = f(GRID, 3)
    near = GRID >= -1
    assert _ulps(got[near], want[near]).max() <= 3.0
    # Elsewhere the float32 rounding of the tanh argument w (half an ulp of |w|) is amplified
    # by the function's condition number (~|2w|): relative error <= a few eps * (1 + |2w|).
    nz = np.abs(want) > 1e-30
    rel = np.abs(got[nz] - want[nz]) / np.abs(want[nz])
    assert (rel <= 4 * 2.0**-24 * (1 + w2[nz])).all()
    # ... which is far below the float32 reference formula's error (1 + tanh(w) cancels).
    ref32 = REF.gelu(GRID)[nz].astype(np.float64)
    assert np.max(rel) < 1e-3 * np.max(np.abs(ref32 - want[nz]) / np.abs(want[nz]))


def test_float32_gelu_grad_accuracy():
    _, want, _ = _gelu_truth(GRID)
    err = np.abs(f(GRID, 4).astype(np.float64) - want)
    assert err.max() <= 3e-7  # ~2.5 ulp of the derivative's largest values (~1.1)
    ref32 = REF.backprop_gelu(np.ones_like(GRID), GRID).astype(np.float64)
    assert err.max() < np.abs(ref32 - want).max()


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_special_values(dt):
    big = np.finfo(dt).max
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e30, -1e30, big, -big, 25.0, -25.0], dt)
    with np.errstate(over="ignore", invalid="ignore"):
        for which, ref in ((1, np.tanh), (2, REF.sigmoid), (3, REF.gelu)):
            got, want = f(x, which), ref(x)
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
        g = f(x, 4)
        want = REF.backprop_gelu(np.ones_like(x), x)
    np.testing.assert_array_equal(g[5:], [1, 0, 1, 0, 1, 0])
    np.testing.assert_array_equal(np.isnan(g), np.isnan(want))
    gelu = f(x, 3)
    assert np.isfinite(gelu[[0, 1, 5, 6, 7, 8]]).all()  # finite for finite input
    assert gelu[5] == dt(1e30) and gelu[6] == 0


def test_float64_matches_reference():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(5000) * 4, [-40.0, -20.5, 20.5, 1e-300]])
    with np.errstate(over="ignore"):
        np.testing.assert_allclose(f(x, 0), np.exp(x), rtol=1e-15)
        np.testing.assert_allclose(f(x, 1), np.tanh(x), rtol=1e-15)
        np.testing.assert_allclose(f(x, 2), REF.sigmoid(x), rtol=1e-15)
        np.testing.assert_allclose(f(x, 3), REF.gelu(x), rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(
            f(x, 4), REF.backprop_gelu(np.ones_like(x), x), rtol=1e-14, atol=1e-14
        )
