"""kernels/numba_conv.py (conv2d by groups of samples) against the reference `Ops`.

The hypothesis sweep over geometries lives in test_numba_layer_kernels.py; here: group
boundaries (a batch that does not split evenly, one sample per group), the stride-1 fast paths'
borders (padding wider than the kernel reach, asymmetric, dilated), the fallbacks (a reference
`saved` given to the Numba backward, mixed dtypes), NaN propagation, and that nothing is saved
but a tag (the backward rebuilds im2col from x).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba", reason="the numba backend needs Numba (pip install numba)")
from nnx.kernels import numba_conv, numba_conv_ops, numba_conv_threads, numba_dispatch  # noqa: E402
from nnx.kernels.numba_cpu import NumbaOps  # noqa: E402
from nnx.kernels.reference import Ops  # noqa: E402

REF = Ops(seed=0)
NB = NumbaOps(seed=0)
TOL = {np.float32: 3e-5, np.float64: 1e-12}


def _close(got, want, dt):
    if want is None:
        assert got is None
        return
    assert got.shape == want.shape and got.dtype == want.dtype
    scale = max(1.0, float(np.abs(want).max())) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=TOL[dt], atol=TOL[dt] * scale)


def _both(x, W, b, stride, pad, dil, need_dx=True, seed=0):
    dt = x.dtype.type
    y0, s0 = REF.conv2d_forward(x, W, b, stride, pad, dil)
    y1, s1 = NB.conv2d_forward(x, W, b, stride, pad, dil)
    _close(y1, y0, dt)
    dy = np.random.default_rng(seed).standard_normal(y0.shape).astype(dt)
    r0 = REF.conv2d_backward(dy, x, W, s0, stride, pad, dil, need_dx)
    r1 = NB.conv2d_backward(dy, x, W, s1, stride, pad, dil, need_dx)
    for got, want in zip(r1, r0, strict=True):
        _close(got, want, dt)
    return s1


GEOMETRIES = [  # (N, C, H, W, O, kh, kw, stride, padding, dilation)
    (7, 3, 6, 5, 4, 3, 3, 1, 1, 1),
    (5, 2, 7, 7, 3, 3, 3, 1, 3, 1),  # padding wider than the kernel reaches
    (4, 2, 9, 8, 3, 3, 3, 1, ((2, 0), (1, 1)), (2, 1)),
    (3, 2, 6, 6, 3, 3, 3, 1, ((0, 2), (3, 0)), 1),
    (3, 2, 6, 6, 3, 2, 2, 1, 1, 2),
    (3, 2, 5, 5, 2, 5, 5, 1, 0, 1),  # valid: 1x1 output
    (4, 2, 9, 8, 3, 3, 2, 2, ((1, 0), (2, 1)), 1),
    (3, 4, 8, 8, 2, 1, 1, 3, 0, 1),
    (3, 2, 10, 9, 5, 2, 3, (2, 1), 0, (2, 1)),
]


def _driver(driver, monkeypatch):
    """"serial" / "parallel" (PAR_MIN_ELEMS = 0): numba_conv's group pipeline; "threads": one
    group per thread (numba_conv_threads), which needs 2 Numba threads and a callable BLAS."""
    if driver == "threads":
        if numba_dispatch.blas_plan(np.float32) is None:
            pytest.skip("one group per thread needs 2 Numba threads and NumPy's OpenBLAS")
    else:
        monkeypatch.setattr(numba_conv_ops, "blas_plan", lambda dtype: None)
    if driver == "parallel":
        monkeypatch.setattr(numba_dispatch, "PAR_MIN_ELEMS", 0)


DRIVERS = ["serial", "parallel", "threads"]


@pytest.mark.parametrize("group_bytes", [1, 1 << 20], ids=["one-sample-groups", "default"])
@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("geo", GEOMETRIES)
def test_matches_reference(geo, dt, driver, group_bytes, monkeypatch):
    N, C, H, W, O, kh, kw, stride, pad, dil = geo
    monkeypatch.setattr(numba_conv, "GROUP_BYTES", group_bytes)
    monkeypatch.setattr(numba_conv_threads, "THREAD_GROUP_BYTES", group_bytes)
    monkeypatch.setattr(numba_conv, "MIN_GEMM_COLS", 1)
    monkeypatch.setattr(numba_conv_threads, "MIN_GEMM_COLS", 1)
    _driver(driver, monkeypatch)
    rng = np.random.default_rng(N * 100 + C)
    x = rng.standard_normal((N, C, H, W)).astype(dt)
    Wt = rng.standard_normal((O, C, kh, kw)).astype(dt)
    b = rng.standard_normal(O).astype(dt)
    for need_dx in (True, False):
        _both(x, Wt, b, stride, pad, dil, need_dx)
    _both(x, Wt, None, stride, pad, dil)
    # non-contiguous inputs
    xt = np.asfortranarray(x)
    _both(xt, Wt[:, :, ::1], b, stride, pad, dil)


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("n", [1, 2, 3])
def test_fewer_groups_than_threads(n, driver, monkeypatch):
    """A thread with no group contributes zero partials; a last group shorter than the rest."""
    _driver(driver, monkeypatch)
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 3, 6, 6)).astype(np.float32)
    Wt = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    _both(x, Wt, b, 1, 1, 1)
    _both(x, Wt, b, 2, 0, 1, need_dx=False)


def test_thread_groups_split_evenly():
    for N, K, P, nt in [(128, 288, 196, 2), (128, 9, 784, 2), (7, 10**6, 10, 2), (5, 9, 4, 3)]:
        G = numba_conv_threads.thread_groups(N, K, P, 4, nt)
        groups = -(-N // G)
        assert 1 <= G <= N
        g0 = max(1, min(N, max(numba_conv_threads.THREAD_GROUP_BYTES // (K * P * 4),
                               -(-numba_conv.MIN_GEMM_COLS // P))))
        assert G <= g0  # evening out never makes a group bigger
        assert groups % nt == 0 or groups < nt or G == 1


def test_group_size_keeps_buffers_small_and_gemms_wide():
    # 32 -> 64 channels at 14x14: 288 x 196 floats per sample
    g = numba_conv.group_size(128, 288, 196, 4)
    assert g * 288 * 196 * 4 <= numba_conv.GROUP_BYTES or g * 196 >= numba_conv.MIN_GEMM_COLS
    assert 1 <= g <= 128
    assert numba_conv.group_size(3, 9, 784, 4) == 3  # never more than the batch
    assert numba_conv.group_size(10, 10**6, 10**3, 8) == 1


def test_saves_only_a_tag():
    x = np.ones((2, 3, 5, 5), np.float32)
    W = np.ones((4, 3, 3, 3), np.float32)
    _, saved = NB.conv2d_forward(x, W, None, 1, 1)
    assert saved == (numba_conv.TAG,)


def test_reference_saved_falls_back():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 2, 6, 6)).astype(np.float32)
    W = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    y, cols = REF.conv2d_forward(x, W, None, 1, 1)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    want = REF.conv2d_backward(dy, x, W, cols, 1, 1)
    got = NB.conv2d_backward(dy, x, W, cols, 1, 1)
    for a, b in zip(got, want, strict=True):
        _close(a, b, np.float32)


def test_mixed_dtypes_fall_back_to_the_reference():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    W = rng.standard_normal((3, 2, 3, 3))  # float64 weights
    y1, s1 = NB.conv2d_forward(x, W, None, 1, 1)
    y0, s0 = REF.conv2d_forward(x, W, None, 1, 1)
    np.testing.assert_array_equal(y1, y0)
    dy = rng.standard_normal(y0.shape)
    got = NB.conv2d_backward(dy, x, W, s1, 1, 1)
    want = REF.conv2d_backward(dy, x, W, s0, 1, 1)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_nan_propagates():
    x = np.zeros((2, 1, 5, 5), np.float32)
    x[1, 0, 2, 2] = np.nan
    W = np.ones((2, 1, 3, 3), np.float32)
    y, saved = NB.conv2d_forward(x, W, np.zeros(2, np.float32), 1, 1)
    assert np.isnan(y[1, :, 1:4, 1:4]).all() and np.isfinite(y[0]).all()
    dy = np.ones_like(y)
    dx, dW, db = NB.conv2d_backward(dy, x, W, saved, 1, 1)
    assert np.isnan(dW).all() and np.isfinite(db).all() and np.isfinite(dx).all()
    dy[0, 0, 0, 0] = np.nan
    dx, _, db = NB.conv2d_backward(dy, x, W, saved, 1, 1)
    assert np.isnan(db[0]) and np.isnan(dx[0, 0, :2, :2]).all()


@pytest.mark.parametrize("name", ["conv2d_forward", "conv2d_backward"])
def test_signatures_equal_reference(name):
    import inspect

    assert inspect.signature(getattr(NumbaOps, name)) == inspect.signature(getattr(Ops, name))


def test_empty_batch_gives_zero_gradients_as_the_reference():
    x = np.zeros((0, 2, 5, 5), np.float32)
    W = np.ones((3, 2, 3, 3), np.float32)
    b = np.ones(3, np.float32)
    _both(x, W, b, 1, 1, 1)
    dy = np.zeros((0, 3, 5, 5), np.float32)
    _, saved = NB.conv2d_forward(x, W, b, 1, 1)
    dx, dW, db = NB.conv2d_backward(dy, x, W, saved, 1, 1)
    assert dx.shape == x.shape and not dW.any() and not db.any()


@pytest.mark.parametrize("driver", DRIVERS)
def test_zero_input_channels_match_the_reference(driver, monkeypatch):
    _driver(driver, monkeypatch)
    x = np.ones((2, 0, 4, 4), np.float32)
    Wt = np.ones((3, 0, 3, 3), np.float32)
    _both(x, Wt, None, 1, 1, 1)
    _both(x, Wt, np.ones(3, np.float32), 1, 1, 1, need_dx=False)
