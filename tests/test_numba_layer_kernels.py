"""NumbaLayerKernels (kernels/numba_layers.py, mixed into NumbaOps) against the reference.

Each override is compared with the reference `Ops` on random small shapes (odd sizes, 1s,
non-contiguous inputs), float32 and float64, through the serial drivers and the parallel ones
(forced by setting PAR_MIN_ELEMS to 0). Tolerances: |numba - ref| <= ATOL * max(1, max|ref|)
+ RTOL * |ref|; differences are rounding only (float64 statistics, FMA contraction).
Pooling is exact (the same additions in the same order, the same maxima). Configurations the
module does not handle must fall back to the reference and still agree. Then
`nnx.testing.gradcheck(layer, x, "numba")` for each affected layer, and the MRO / signature
contract (NumbaOps' own dense/activation overrides come first; same signatures as the reference).
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

pytest.importorskip("numba", reason="the numba backend needs Numba (pip install numba)")
hypothesis = pytest.importorskip("hypothesis", reason="these tests draw shapes with hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from nnx.kernels import numba_cpu, numba_dispatch, numba_layers  # noqa: E402
from nnx.kernels.numba_cpu import NumbaOps  # noqa: E402
from nnx.kernels.reference import Ops  # noqa: E402
from nnx.kernels.reference_layers import LayerKernels  # noqa: E402

from nnx.layers import AvgPool2D, MaxPool2D  # noqa: E402
from nnx.layers.batchnorm import BatchNorm1d, BatchNorm2d  # noqa: E402
from nnx.layers.conv2d import Conv2D  # noqa: E402
from nnx.layers.lstm import LSTM  # noqa: E402
from nnx.testing import gradcheck  # noqa: E402

RTOL = {np.float32: 2e-5, np.float64: 1e-12}
ATOL = {np.float32: 2e-6, np.float64: 1e-13}
DTYPES = [np.float32, np.float64]
SETTINGS = settings(max_examples=15, deadline=None)
REF = Ops(seed=0)
NB = NumbaOps(seed=0)


PAR = pytest.mark.parametrize("par", [False, True], ids=["serial", "parallel"])


@contextlib.contextmanager
def drivers(par):
    """The parallel drivers forced on (PAR_MIN_ELEMS = 0) when `par`."""
    with pytest.MonkeyPatch.context() as m:
        if par:
            m.setattr(numba_dispatch, "PAR_MIN_ELEMS", 0)  # the one chunk policy's threshold
        yield


def close(got, want, dt):
    if want is None:
        assert got is None
        return
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=RTOL[dt], atol=ATOL[dt] * scale)


def layout(a, kind):
    """The same values as `a`, C-contiguous, strided or Fortran-ordered."""
    if kind == "c":
        return a
    if kind == "strided":
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., ::2] = a
        return big[..., ::2]
    return np.asfortranarray(a)


def test_mro_and_helpers():
    mro = NumbaOps.__mro__
    assert mro.index(numba_layers.NumbaLayerKernels) < mro.index(Ops)
    own = {k for k in vars(numba_layers.NumbaLayerKernels) if not k.startswith("__")}
    assert own <= set(dir(LayerKernels)) | {"_pool2x2"}  # layer kernels only
    assert not own & set(vars(NumbaOps))  # NumbaOps' own overrides are untouched
    assert NumbaOps.dense_forward is numba_cpu.NumbaOps.__dict__["dense_forward"]
    assert numba_layers.PAR_MIN_ELEMS is numba_cpu.PAR_MIN_ELEMS  # one shared definition


# -- pooling ------------------------------------------------------------------------------
pool_cfg = st.sampled_from([  # (pool, stride, padding): the first two run in Numba
    (2, None, 0), (2, 2, 0), (3, 2, 1), ((2, 3), (1, 2), ((1, 0), (0, 1))), (2, 1, 0)])


@PAR
@SETTINGS
@given(n=st.integers(1, 3), c=st.integers(1, 4), h=st.integers(3, 11), w=st.integers(3, 11),
       cfg=pool_cfg, dt=st.sampled_from(DTYPES), kind=st.sampled_from(["c", "strided", "f"]),
       ties=st.booleans(), seed=st.integers(0, 2**16))
def test_pooling_matches_reference(par, n, c, h, w, cfg, dt, kind, ties, seed):
    with drivers(par):
        _check_pooling(n, c, h, w, cfg, dt, kind, ties, seed)


def _check_pooling(n, c, h, w, cfg, dt, kind, ties, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w))
    if ties:  # many equal maxima: the first one (row-major) must get the gradient
        x = np.round(x)
    x = layout(x.astype(dt), kind)
    pool, stride, pad = cfg
    y0, s0 = REF.maxpool2d_forward(x, pool, stride, pad)
    y1, s1 = NB.maxpool2d_forward(x, pool, stride, pad)
    np.testing.assert_array_equal(y1, y0)
    dy = layout(rng.standard_normal(y0.shape).astype(dt), kind)
    close(NB.maxpool2d_backward(dy, s1), REF.maxpool2d_backward(dy, s0), dt)
    for cip in (True, False):
        y0, s0 = REF.avgpool2d_forward(x, pool, stride, pad, cip)
        y1, s1 = NB.avgpool2d_forward(x, pool, stride, pad, cip)
        close(y1, y0, dt)
        close(NB.avgpool2d_backward(dy, s1), REF.avgpool2d_backward(dy, s0), dt)


def test_maxpool_nan_and_inf():
    x = np.zeros((1, 2, 4, 4))
    x[0, 0, 0, 1] = np.nan        # NaN after the first element of its window
    x[0, 0, 2, 2] = -np.inf
    x[0, 0, 2:4, 2:4] = -np.inf   # an all -inf window
    x[0, 1, 0, 0] = np.inf
    x[0, 1, 0, 1] = -np.inf       # inf - inf: the NaN-aware path, no NaN in the result
    y0, s0 = REF.maxpool2d_forward(x, 2)
    y1, s1 = NB.maxpool2d_forward(x, 2)
    np.testing.assert_array_equal(y1, y0)
    dy = np.arange(1.0, 9.0).reshape(1, 2, 2, 2)
    np.testing.assert_array_equal(NB.maxpool2d_backward(dy, s1), REF.maxpool2d_backward(dy, s0))


# -- batch norm ---------------------------------------------------------------------------
@PAR
@SETTINGS
@given(n=st.integers(2, 9), c=st.integers(1, 6), hw=st.sampled_from([None, (1, 1), (3, 5),
       (4,)]), dt=st.sampled_from(DTYPES), kind=st.sampled_from(["c", "strided", "f"]),
       affine=st.booleans(), offset=st.sampled_from([0.0, 50.0]), seed=st.integers(0, 2**16))
def test_batchnorm_matches_reference(par, n, c, hw, dt, kind, affine, offset, seed):
    with drivers(par):
        _check_batchnorm(n, c, hw, dt, kind, affine, offset, seed)


def _check_batchnorm(n, c, hw, dt, kind, affine, offset, seed):
    rng = np.random.default_rng(seed)
    shape = (n, c) + (hw or ())
    axes = (0, *range(2, len(shape)))
    x = layout((rng.standard_normal(shape) * 3 + offset).astype(dt), kind)
    gamma = rng.standard_normal(c).astype(dt) if affine else None
    beta = rng.standard_normal(c).astype(dt) if affine else None
    run = [(np.zeros(c, dt), np.ones(c, dt)) for _ in range(2)]
    out = [ops.batchnorm_forward(x, gamma, beta, rm, rv, 0.1, 1e-5, True, axes)
           for ops, (rm, rv) in zip((REF, NB), run, strict=True)]
    # with a large offset float32 statistics differ by the reference's float32 mean rounding
    tol = dt if offset == 0 or dt == np.float64 else np.float64
    rt = {np.float64: 1e-4 if dt == np.float32 else 1e-12}
    at = {np.float64: 1e-4 if dt == np.float32 else 1e-13}
    chk = (lambda a, b: close(a, b, dt)) if tol == dt else (
        lambda a, b: np.testing.assert_allclose(a, b, rtol=rt[np.float64],
                                                atol=at[np.float64] * max(1, np.abs(b).max())))
    chk(out[1][0], out[0][0])
    for a, b in zip(run[1], run[0], strict=True):
        chk(a, b)
    dy = layout(rng.standard_normal(shape).astype(dt), kind)
    for need_dx in (True, False):
        outs = [np.empty(c, dt), np.empty(c, dt)]
        r1 = NB.batchnorm_backward(dy, out[1][1], need_dx, *outs)
        r0 = REF.batchnorm_backward(dy, out[0][1], need_dx)
        assert r1[1] is outs[0] and r1[2] is outs[1]
        for a, b in zip(r1, r0, strict=True):
            if b is None:
                assert a is None
            else:
                chk(a, b)
    # eval mode falls back to the reference
    y0, _ = REF.batchnorm_forward(x, gamma, beta, run[0][0], run[0][1], 0.1, 1e-5, False, axes)
    y1, _ = NB.batchnorm_forward(x, gamma, beta, run[0][0], run[0][1], 0.1, 1e-5, False, axes)
    close(y1, y0, dt)


# -- LSTM backward ------------------------------------------------------------------------
@SETTINGS
@given(n=st.integers(1, 5), t=st.integers(1, 5), f=st.integers(1, 6), h=st.integers(1, 7),
       init=st.booleans(), with_dhs=st.booleans(), last=st.booleans(),
       dt=st.sampled_from(DTYPES), strided=st.booleans(), seed=st.integers(0, 2**16))
def test_lstm_backward_matches_reference(n, t, f, h, init, with_dhs, last, dt, strided, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, t, f)).astype(dt)
    W_ih = (rng.standard_normal((f, 4 * h)) * 0.5).astype(dt)
    W_hh = (rng.standard_normal((h, 4 * h)) * 0.5).astype(dt)
    b = rng.standard_normal(4 * h).astype(dt)
    h0 = rng.standard_normal((n, h)).astype(dt) if init else None
    c0 = rng.standard_normal((n, h)).astype(dt) if init else None
    _, saved = REF.lstm_forward(x, W_ih, W_hh, b, h0, c0)
    dhs = layout(rng.standard_normal((n, t, h)).astype(dt), "strided" if strided else "c")
    dhs = dhs if with_dhs else None
    dh_last = rng.standard_normal((n, h)).astype(dt) if (last or not with_dhs) else None
    dc_last = rng.standard_normal((n, h)).astype(dt) if last else None
    args = (dhs, x, W_ih, W_hh, saved, dh_last, dc_last)
    dc_copy = None if dc_last is None else dc_last.copy()
    r0 = REF.lstm_backward(*args)
    r1 = NB.lstm_backward(*args)
    for a, b_ in zip(r1, r0, strict=True):
        close(a, b_, dt)
    if dc_last is not None:  # the caller's dc_last is not modified in place
        np.testing.assert_array_equal(dc_last, dc_copy)


# -- conv2d (numba_conv.py) --------------------------------------------------------------------
@PAR
@SETTINGS
@given(n=st.integers(1, 3), c=st.integers(1, 3), h=st.integers(3, 9), w=st.integers(3, 9),
       o=st.integers(1, 3), k=st.sampled_from([(1, 1), (3, 3), (3, 2), (2, 3)]),
       stride=st.sampled_from([(1, 1), (2, 1), (1, 2), (2, 2)]),
       pad=st.sampled_from([0, 1, ((1, 0), (0, 2))]), dil=st.sampled_from([(1, 1), (2, 1)]),
       dt=st.sampled_from(DTYPES), kind=st.sampled_from(["c", "strided", "f"]),
       seed=st.integers(0, 2**16))
def test_conv2d_backward_matches_reference(par, n, c, h, w, o, k, stride, pad, dil, dt, kind,
                                           seed):
    from nnx.kernels.reference_conv import out_size, pads2d

    (pt, pb), (pl, pr) = pads2d(pad)
    if min(out_size(h, k[0], stride[0], pt, pb, dil[0]),
           out_size(w, k[1], stride[1], pl, pr, dil[1])) < 1:
        return
    rng = np.random.default_rng(seed)
    x = layout(rng.standard_normal((n, c, h, w)).astype(dt), kind)
    W = rng.standard_normal((o, c) + k).astype(dt)
    b = rng.standard_normal(o).astype(dt)
    with drivers(par):
        y0, s0 = REF.conv2d_forward(x, W, b, stride, pad, dil)
        y1, s1 = NB.conv2d_forward(x, W, b, stride, pad, dil)
        close(y1, y0, dt)
        dy = layout(rng.standard_normal(y0.shape).astype(dt), kind)
        r0 = REF.conv2d_backward(dy, x, W, s0, stride, pad, dil)
        r1 = NB.conv2d_backward(dy, x, W, s1, stride, pad, dil)
        assert r1[0].flags.c_contiguous
        for a, b_ in zip(r1, r0, strict=True):
            close(a, b_, dt)


# -- gradcheck of the layers on the numba backend ------------------------------------------
@pytest.mark.parametrize("make, shape", [
    (lambda: MaxPool2D(2), (2, 3, 5, 6)),
    (lambda: MaxPool2D(3, stride=2, padding=1), (2, 2, 5, 5)),
    (lambda: AvgPool2D(2), (2, 3, 4, 5)),
    (lambda: AvgPool2D(3, stride=2, padding=1, count_include_pad=False), (2, 2, 5, 5)),
    (lambda: BatchNorm2d(3), (4, 3, 3, 2)),
    (lambda: BatchNorm1d(5), (6, 5)),
    (lambda: LSTM(3, 4, return_sequences=True), (2, 5, 3)),
    (lambda: LSTM(3, 4), (3, 4, 3)),
    (lambda: Conv2D(3, 2, 3, padding="same"), (2, 3, 5, 5)),
], ids=["maxpool", "maxpool-pad", "avgpool", "avgpool-pad", "bn2d", "bn1d", "lstm-seq",
        "lstm-last", "conv2d"])
def test_gradcheck_numba(make, shape):
    x = np.random.default_rng(1).standard_normal(shape)
    gradcheck(make(), x, "numba")


def test_gradcheck_numba_noncontiguous():
    x = np.random.default_rng(2).standard_normal((2, 3, 6, 8))[:, :, :, ::2]
    gradcheck(MaxPool2D(2), x, "numba")
    gradcheck(BatchNorm2d(3), x, "numba")


@pytest.mark.parametrize("name", sorted(k for k in vars(numba_layers.NumbaLayerKernels)
                                        if not k.startswith("_")))
def test_signatures_equal_reference(name):
    import inspect

    assert (inspect.signature(getattr(NumbaOps, name))
            == inspect.signature(getattr(LayerKernels, name)))
