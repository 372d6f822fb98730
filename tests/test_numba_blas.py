"""kernels/numba_blas.py: the BLAS GEMM called from Numba kernels, against NumPy's matmul
(both dtypes, both layouts of B, sub-ranges of rows, accumulating, empty products, from several
Numba threads at once), and the BLAS thread count set to one inside `single_threaded_blas` and
restored after, also when nested."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba", reason="the numba backend needs Numba (pip install numba)")
from nnx.kernels import numba_blas  # noqa: E402
from numba import njit, prange  # noqa: E402

from nnx import threads  # noqa: E402

DTYPES = [np.float32, np.float64]
TOL = {np.float32: 1e-5, np.float64: 1e-13}


def _gemm(dt):
    g = numba_blas.gemm_for(dt)
    if g is None:
        pytest.skip("no OpenBLAS GEMM that Numba can call in this process")
    return g


@njit(cache=True)
def _rows(addr, ilp64, a, b, trans_b, c, lo, hi, accumulate):
    numba_blas.gemm_rows(addr, ilp64, a, b, trans_b, c, lo, hi, accumulate)


@njit(parallel=True, cache=True)
def _blocks(addr, ilp64, a, b, trans_b, c, nb):
    n = a.shape[0]
    for i in prange(nb):
        numba_blas.gemm_rows(addr, ilp64, a, b, trans_b, c, i * n // nb, (i + 1) * n // nb,
                             False)


@pytest.mark.parametrize("dt", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("trans_b", [False, True], ids=["B", "B^T"])
@pytest.mark.parametrize("accumulate", [False, True], ids=["set", "add"])
def test_rows_match_numpy(dt, trans_b, accumulate):
    addr, ilp64 = _gemm(dt)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((13, 7)).astype(dt)
    b = rng.standard_normal((9, 7) if trans_b else (7, 9)).astype(dt)
    c0 = rng.standard_normal((13, 9)).astype(dt)
    c = c0.copy()
    _rows(addr, ilp64, a, b, trans_b, c, 3, 11, accumulate)
    want = c0.copy()
    prod = a[3:11] @ (b.T if trans_b else b)
    want[3:11] = want[3:11] + prod if accumulate else prod
    np.testing.assert_allclose(c, want, rtol=TOL[dt], atol=TOL[dt])
    np.testing.assert_array_equal(c[:3], c0[:3])  # rows outside the range untouched
    np.testing.assert_array_equal(c[11:], c0[11:])


@pytest.mark.parametrize("dt", DTYPES, ids=["f32", "f64"])
def test_empty_products(dt):
    addr, ilp64 = _gemm(dt)
    a, b = np.ones((4, 0), dt), np.ones((0, 5), dt)
    c = np.full((4, 5), 7.0, dt)
    _rows(addr, ilp64, a, b, False, c, 0, 4, True)  # adds nothing
    assert (c == 7).all()
    _rows(addr, ilp64, a, b, False, c, 1, 3, False)  # sets those rows to the empty sum, 0
    assert (c[1:3] == 0).all() and (c[0] == 7).all() and (c[3] == 7).all()
    _rows(addr, ilp64, np.ones((4, 3), dt), np.ones((3, 5), dt), False, c, 2, 2, False)
    assert (c[0] == 7).all()  # an empty range of rows: nothing


@pytest.mark.parametrize("dt", DTYPES, ids=["f32", "f64"])
def test_blocks_of_rows_on_several_threads(dt):
    addr, ilp64 = _gemm(dt)
    rng = np.random.default_rng(1)
    a = rng.standard_normal((130, 64)).astype(dt)
    b = rng.standard_normal((96, 64)).astype(dt)
    c = np.full((130, 96), np.nan, dt)
    with numba_blas.single_threaded_blas():
        _blocks(addr, ilp64, a, b, True, c, 3)
    np.testing.assert_allclose(c, a @ b.T, rtol=TOL[dt] * 10, atol=TOL[dt] * 10)


def test_single_threaded_blas_sets_one_thread_and_restores():
    _gemm(np.float32)
    before = threads.blas_threads()
    threads.set_blas_threads(2)
    try:
        with numba_blas.single_threaded_blas():
            assert threads.blas_threads() == 1
            with numba_blas.single_threaded_blas():
                assert threads.blas_threads() == 1
            assert threads.blas_threads() == 1  # the inner block does not restore early
        assert threads.blas_threads() == 2
        with pytest.raises(RuntimeError), numba_blas.single_threaded_blas():
            raise RuntimeError("a kernel failed")
        assert threads.blas_threads() == 2  # restored on errors too
    finally:
        threads.set_blas_threads(before)
