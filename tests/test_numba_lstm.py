"""The Numba LSTM (kernels/numba_recurrent.py, kernels/numba_lstm.py) against the reference.

- The vectorizable float32 exp / tanh / sigmoid against float64 NumPy, in ulps, on a dense grid
  and at the special values (0, +-inf, NaN, beyond the float32 range).
- Forward outputs, final states and `saved`, then every gradient (dx, dW_ih, dW_hh, db, dh0,
  dc0) against the reference in float32 and float64: initial states given or not (also only one
  of them), dhs absent / batch-first / strided / time-major, dh_last and dc_last, need_dx and
  need_dh0 off, gradient output buffers, non-contiguous inputs; serial and parallel drivers.
- `saved` works across backends (reference forward -> Numba backward and back).
- NaN in gives NaN out; huge inputs saturate exactly as the reference does.
- float64 central differences (gradcheck) on the numba backend, and incremental decoding
  (carried states) equal to the whole sequence.
Shapes are tiny and odd (hidden sizes not multiples of 8 exercise the vector remainders).
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

pytest.importorskip("numba", reason="the numba backend needs Numba (pip install numba)")
from nnx.kernels import numba_dispatch, numba_math  # noqa: E402
from nnx.kernels.numba_cpu import NumbaOps  # noqa: E402
from nnx.kernels.reference import Ops  # noqa: E402
from numba import njit  # noqa: E402

import nnx  # noqa: E402
from nnx.layers.lstm import LSTM  # noqa: E402
from nnx.testing import build, gradcheck  # noqa: E402

REF = Ops(seed=0)
NB = NumbaOps(seed=0)
DTYPES = [np.float32, np.float64]
# |numba - ref| <= ATOL * max(1, max|ref|) + RTOL * |ref|. Float32: the gates come from a
# different (1-2 ulp) tanh / sigmoid than the reference's, and BPTT amplifies that a little.
RTOL = {np.float32: 1e-4, np.float64: 1e-12}
ATOL = {np.float32: 1e-5, np.float64: 1e-12}


def close(got, want, dt):
    if want is None:
        assert got is None
        return
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=RTOL[dt], atol=ATOL[dt] * scale)


@contextlib.contextmanager
def drivers(par):
    """The per-step drivers ("serial"; "parallel": PAR_MIN_ELEMS = 0), or "rows": blocks of
    batch rows carried through every timestep by their own threads with single-threaded BLAS
    calls (SEQ_MIN_ROWS = 1, so that even 3 rows split), which needs 2 Numba threads and an
    OpenBLAS whose GEMM Numba can call."""
    with pytest.MonkeyPatch.context() as m:
        if par == "parallel":
            m.setattr(numba_dispatch, "PAR_MIN_ELEMS", 0)
        if par == "rows":
            m.setattr(numba_dispatch, "SEQ_MIN_ROWS", 1)
            if numba_dispatch.row_blocks(2, np.float32) is None:
                pytest.skip("row blocks need 2 Numba threads and NumPy's OpenBLAS")
        else:
            m.setattr(numba_dispatch, "SEQ_MIN_ROWS", 1 << 30)
        yield


PAR = pytest.mark.parametrize("par", ["serial", "parallel", "rows"])


def strided(a):
    """The same values as `a`, with a non-unit last stride."""
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    big[..., ::2] = a
    return big[..., ::2]


def problem(rng, dt, n=3, t=5, f=4, h=9, init="both", scale=0.5):
    x = rng.standard_normal((n, t, f)).astype(dt)
    W_ih = (rng.standard_normal((f, 4 * h)) * scale).astype(dt)
    W_hh = (rng.standard_normal((h, 4 * h)) * scale).astype(dt)
    b = rng.standard_normal(4 * h).astype(dt)
    h0 = rng.standard_normal((n, h)).astype(dt) if init in ("both", "h") else None
    c0 = rng.standard_normal((n, h)).astype(dt) if init in ("both", "c") else None
    return x, W_ih, W_hh, b, h0, c0


# ============================================================================================
# The float32 math
# ============================================================================================
@njit(cache=False)
def _map(x, y, which):
    for k in range(len(x)):
        v = x[k]
        if which == 0:
            y[k] = numba_math._exp32(v)
        elif which == 1:
            y[k] = numba_math._tanh32(v)
        else:
            y[k] = numba_math._sigmoid32(v)


def _ulps(got, want):
    """|got - want| in units of the float32 spacing at |want| (want float64)."""
    ulp = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    return np.abs(got.astype(np.float64) - want) / ulp


def test_float32_exp_tanh_sigmoid_accuracy():
    grid = np.concatenate(
        [
            np.linspace(-20, 20, 400_001),
            np.geomspace(1e-30, 1, 20_001),
            -np.geomspace(1e-30, 1, 20_001),
        ]
    ).astype(np.float32)
    x64 = grid.astype(np.float64)
    y = np.empty_like(grid)
    _map(grid, y, 1)
    assert _ulps(y, np.tanh(x64)).max() <= 2.0
    _map(grid, y, 2)
    with np.errstate(over="ignore"):
        want = 1.0 / (1.0 + np.exp(-x64))
    assert _ulps(y, want).max() <= 3.0
    e = np.linspace(-87.3, 88.37, 400_001).astype(np.float32)
    ye = np.empty_like(e)
    _map(e, ye, 0)
    assert _ulps(ye, np.exp(e.astype(np.float64))).max() <= 2.0


def test_float32_special_values():
    # exp: its callers keep the argument in [-87.3, 89]; 2**128 is inf from 88.38 on
    e = np.array([0.0, -0.0, np.nan, 89.0, 88.5, 88.37, -87.3], np.float32)
    y = np.empty_like(e)
    _map(e, y, 0)
    np.testing.assert_array_equal(y[:5], [1, 1, np.nan, np.inf, np.inf])
    assert np.isfinite(y[5]) and 0 < y[6] < 2e-38
    x = np.array(
        [0.0, -0.0, np.inf, -np.inf, np.nan, 1e30, -1e30, 89.0, -89.0, 10.0, -10.0, 88.0, -88.0],
        np.float32,
    )
    y = np.empty_like(x)
    _map(x, y, 1)
    np.testing.assert_array_equal(y, [0, 0, 1, -1, np.nan, 1, -1, 1, -1, 1, -1, 1, -1])
    _map(x, y, 2)
    np.testing.assert_array_equal(y[:9], [0.5, 0.5, 1, 0, np.nan, 1, 0, 1, 0])
    assert y[11] == 1 and 0 <= y[12] < 1e-38


# ============================================================================================
# Forward and backward against the reference
# ============================================================================================
@PAR
@pytest.mark.parametrize("dt", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("init", ["none", "both", "h", "c"])
@pytest.mark.parametrize("t", [1, 5])
def test_forward_matches_reference(par, dt, init, t):
    rng = np.random.default_rng(3)
    x, W_ih, W_hh, b, h0, c0 = problem(rng, dt, t=t, init=init)
    for xs in (x, strided(x)):
        y0, s0 = REF.lstm_forward(xs, W_ih, W_hh, b, h0, c0)
        with drivers(par):
            y1, s1 = NB.lstm_forward(xs, W_ih, W_hh, b, h0, c0)
        close(y1, y0, dt)
        close(NB.lstm_final_cell(s1), REF.lstm_final_cell(s0), dt)
        for a, b_ in zip(s1[3:], s0[3:], strict=True):  # gates, c, tanh(c), h
            close(a, b_, dt)
    y1, _ = NB.lstm_forward(x, W_ih, W_hh, None, h0, c0)  # no bias
    close(y1, REF.lstm_forward(x, W_ih, W_hh, None, h0, c0)[0], dt)
    sh0, sc0 = (None if a is None else strided(a) for a in (h0, c0))  # non-contiguous states
    y1, s1 = NB.lstm_forward(x, W_ih, W_hh, b, sh0, sc0)
    y0, s0 = REF.lstm_forward(x, W_ih, W_hh, b, h0, c0)
    close(y1, y0, dt)
    close(NB.lstm_final_cell(s1), REF.lstm_final_cell(s0), dt)


def _dhs(rng, dt, n, t, h, kind):
    if kind == "none":
        return None
    a = rng.standard_normal((n, t, h)).astype(dt)
    if kind == "strided":
        return strided(a)
    if kind == "time_major":  # what an LSTM layer's own outputs look like
        return np.swapaxes(np.ascontiguousarray(np.swapaxes(a, 0, 1)), 0, 1)
    return a


@PAR
@pytest.mark.parametrize("dt", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("init", ["none", "both", "c"])
@pytest.mark.parametrize("dhs_kind", ["none", "c", "strided", "time_major"])
def test_backward_matches_reference(par, dt, init, dhs_kind):
    rng = np.random.default_rng(4)
    n, t, f, h = 3, 5, 4, 9
    x, W_ih, W_hh, b, h0, c0 = problem(rng, dt, n, t, f, h, init)
    dhs = _dhs(rng, dt, n, t, h, dhs_kind)
    for last in (False, True):
        dh_last = rng.standard_normal((n, h)).astype(dt) if (last or dhs is None) else None
        dc_last = strided(rng.standard_normal((n, h)).astype(dt)) if last else None
        dc_copy = None if dc_last is None else dc_last.copy()
        _, s0 = REF.lstm_forward(x, W_ih, W_hh, b, h0, c0)
        with drivers(par):
            _, s1 = NB.lstm_forward(x, W_ih, W_hh, b, h0, c0)
        for need_dx, need_dh0 in ((True, True), (False, False)):
            args = (dhs, x, W_ih, W_hh)
            tail = (dh_last, dc_last, need_dx, need_dh0)
            r0 = REF.lstm_backward(*args, s0, *tail)
            outs = [np.full(W_ih.shape, 7, dt), np.full(W_hh.shape, 7, dt), np.full(b.shape, 7, dt)]
            with drivers(par):
                r1 = NB.lstm_backward(*args, s1, *tail, *outs)
            assert r1[1] is outs[0] and r1[2] is outs[1] and r1[3] is outs[2]
            for a, b_ in zip(r1, r0, strict=True):
                close(a, b_, dt)
        if dc_last is not None:  # the caller's dc_last is not modified in place
            np.testing.assert_array_equal(dc_last, dc_copy)


@pytest.mark.parametrize("dt", DTYPES, ids=["f32", "f64"])
def test_saved_works_across_backends(dt):
    """Both forwards write the reference's `saved` layout, so either backward takes either."""
    rng = np.random.default_rng(5)
    x, W_ih, W_hh, b, h0, c0 = problem(rng, dt)
    dhs = rng.standard_normal((3, 5, 9)).astype(dt)
    _, s0 = REF.lstm_forward(x, W_ih, W_hh, b, h0, c0)
    _, s1 = NB.lstm_forward(x, W_ih, W_hh, b, h0, c0)
    want = REF.lstm_backward(dhs, x, W_ih, W_hh, s0)
    both = (NB.lstm_backward(dhs, x, W_ih, W_hh, s0), REF.lstm_backward(dhs, x, W_ih, W_hh, s1))
    for got in both:
        for a, b_ in zip(got, want, strict=True):
            close(a, b_, dt)


def test_mixed_dtypes_fall_back_to_the_reference():
    rng = np.random.default_rng(6)
    x, W_ih, W_hh, b, h0, c0 = problem(rng, np.float32)
    h0 = h0.astype(np.float64)
    y0, _ = REF.lstm_forward(x, W_ih, W_hh, b, h0, c0)
    y1, _ = NB.lstm_forward(x, W_ih, W_hh, b, h0, c0)
    np.testing.assert_array_equal(y1, y0)


# ============================================================================================
# NaN and saturation
# ============================================================================================
@PAR
@pytest.mark.parametrize("dt", DTYPES, ids=["f32", "f64"])
def test_nan_propagates(par, dt):
    rng = np.random.default_rng(7)
    x, W_ih, W_hh, b, _, _ = problem(rng, dt, init="none")
    x[1, 2, 0] = np.nan  # row 1 from timestep 2 on
    with drivers(par):
        y, saved = NB.lstm_forward(x, W_ih, W_hh, b)
        dx, dW_ih, dW_hh, db, _, _ = NB.lstm_backward(
            None, x, W_ih, W_hh, saved, np.ones((3, 9), dt)
        )
    assert np.isnan(y[1, 2:]).all() and np.isfinite(y[1, :2]).all()
    assert np.isfinite(y[[0, 2]]).all()
    assert np.isnan(NB.lstm_final_cell(saved)[1]).all()
    assert np.isnan(dW_ih).any() and np.isnan(dW_hh).any() and np.isnan(db).any()
    assert np.isnan(dx[1, :3]).any()


@pytest.mark.parametrize("dt", DTYPES, ids=["f32", "f64"])
def test_saturated_and_infinite_inputs(dt):
    rng = np.random.default_rng(8)
    x, W_ih, W_hh, b, h0, c0 = problem(rng, dt, scale=50.0)
    x[0, 1, :] = np.inf
    x[2, 3, :] = -np.inf
    x[1, :, :] = 1e30
    with np.errstate(invalid="ignore"):  # inf * 0 in the reference's projection
        y0, s0 = REF.lstm_forward(x, W_ih, W_hh, b, h0, c0)
        y1, s1 = NB.lstm_forward(x, W_ih, W_hh, b, h0, c0)
    np.testing.assert_array_equal(np.isnan(y1), np.isnan(y0))
    fin = np.isfinite(y0)
    close(y1[fin], y0[fin], dt)


# ============================================================================================
# Through the layer: gradcheck (float64) and incremental decoding
# ============================================================================================
def test_gradcheck_numba_float64():
    rng = np.random.default_rng(9)
    gradcheck(LSTM(3, 5, return_sequences=True), rng.standard_normal((2, 4, 3)), "numba")
    layer = LSTM(3, 5)
    layer.set_initial_state(rng.standard_normal((2, 5)), rng.standard_normal((2, 5)))
    gradcheck(layer, rng.standard_normal((2, 4, 6))[:, :, ::2], "numba")


@pytest.mark.parametrize("dt", ["float32", "float64"])
def test_decoding_in_pieces_equals_the_whole_sequence(dt):
    rng = np.random.default_rng(10)
    layer = LSTM(4, 9, return_sequences=True)
    ops, _ = build(layer, "numba", dt)
    x = ops.asarray(rng.standard_normal((3, 7, 4)).astype(dt))
    full, (h_t, c_t) = layer.forward_with_state(x)
    state = layer.init_decode_state(3, 7)  # zeros: (None, None)
    pieces = []
    for lo, hi in ((0, 1), (1, 4), (4, 5), (5, 7)):
        y, state = layer.decode_step(x[:, lo:hi], state)
        pieces.append(y)
    npdt = np.dtype(dt).type
    close(np.concatenate(pieces, axis=1), full, npdt)
    close(state[0], h_t, npdt)
    close(state[1], c_t, npdt)


def test_numba_backend_uses_these_kernels():
    from nnx.kernels.numba_recurrent import NumbaRecurrentKernels

    ops = nnx.backend.get_ops("numba")
    for name in ("lstm_forward", "lstm_backward"):
        assert getattr(type(ops), name) is vars(NumbaRecurrentKernels)[name]


@pytest.mark.parametrize("shape", [(0, 5, 3), (2, 0, 3)], ids=["no-samples", "no-timesteps"])
@pytest.mark.parametrize("need_dh0", [True, False])
def test_empty_sequences_match_the_reference(shape, need_dh0):
    rng = np.random.default_rng(5)
    W_ih = rng.standard_normal((3, 16)).astype(np.float32)
    W_hh = rng.standard_normal((4, 16)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    x = np.zeros(shape, np.float32)
    got, want = [], []
    for ops, out in ((NumbaOps(seed=0), got), (Ops(seed=0), want)):
        hs, saved = ops.lstm_forward(x, W_ih, W_hh, b)[:2]
        out.append(hs)
        out.extend(ops.lstm_backward(np.ones_like(hs), x, W_ih, W_hh, saved,
                                     need_dh0=need_dh0))
    for g, w in zip(got, want, strict=True):
        if w is None:
            assert g is None
        else:
            assert g.shape == w.shape and g.dtype == w.dtype
            np.testing.assert_array_equal(g, w)


@PAR
def test_states_that_broadcast_or_weights_that_mismatch_go_to_the_reference(par):
    """The kernels index by the exact shapes; a (1, H) initial state (which the reference
    broadcasts) or a weight of the wrong shape must never reach them."""
    rng = np.random.default_rng(7)
    x, W_ih, W_hh, b, _, _ = problem(rng, np.float32, n=6, t=3, f=4, h=5)
    h0 = rng.standard_normal((1, 5)).astype(np.float32)
    c0 = rng.standard_normal((1, 5)).astype(np.float32)
    with drivers(par):
        for hh, cc in ((h0, None), (None, c0), (h0, c0)):
            want, _ = REF.lstm_forward(x, W_ih, W_hh, b, hh, cc)
            got, _ = NB.lstm_forward(x, W_ih, W_hh, b, hh, cc)
            close(got, want, np.float32)
        bad = np.zeros((W_ih.shape[0] + 2, W_ih.shape[1]), np.float32)
        with pytest.raises(ValueError):
            REF.lstm_forward(x, bad, W_hh, b)
        with pytest.raises(ValueError):
            NB.lstm_forward(x, bad, W_hh, b)
