"""The CUDA kernels' index arithmetic past 2^31 elements, checked on the CPU without the memory.

A GPU test over 2^31 elements needs 8+ GiB per float32 array; what can go wrong there is the
index math (a 32-bit counter or product that wraps). Here the kernels (compiled against the
CUDA shim of tests/cuda_shim.py) run only the LAST few blocks of a grid covering more than 2^31
elements or rows, on pointers shifted back by the offset of those blocks, so the kernel computes
indices beyond 2^31 but touches only a small real window. A wrapped index reads or writes
outside the window (poisoned NaN, or a crash) and the comparison with NumPy on the window fails.
Elements past `n` must stay untouched. Plus a static check: no kernel loop counter is a 32-bit
`int` (a `for (int c ...; c < cols; c += blockDim.x)` loop wraps when cols is near INT_MAX).
"""

from __future__ import annotations

import ctypes
import re
import shutil

import numpy
import pytest
from cuda_shim import EmuCompiler
from nnx.kernels import cupy_source
from nnx.kernels.reference import Ops

BIG = 2**31
BLOCK = 256


@pytest.fixture(scope="module")
def funcs(tmp_path_factory):
    cxx = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler for the CUDA emulation")
    comp = EmuCompiler(str(tmp_path_factory.mktemp("cuda_idx")), cxx)
    out = {}
    for module in cupy_source.MODULE_FILES:
        out.update(comp.build(cupy_source.read_source(module))[1])
    return out


def ptr(a: numpy.ndarray, shift: int) -> int:
    """The address of element -shift of `a` (element `shift` of the kernel's view is a[0])."""
    return a.ctypes.data - shift * a.itemsize


def launch(funcs, name, grid, first_block, nblocks, block, *args):
    f, params = funcs["range:" + name]
    conv = [a if is_ptr else cupy_source._SCALAR_TYPES[c](a).item()
            for (is_ptr, c, _n), a in zip(params, args, strict=True)]
    rc = f(grid, first_block, nblocks, block, *conv)
    assert rc == 0, (name, rc)


def elementwise_window(nblocks=2, tail=100):
    """(grid, first block, start element, n): the last `nblocks` blocks of a one-pass grid over
    n > 2^31 elements; the last block is partial (its last `tail` threads are past n)."""
    first = BIG // BLOCK + 5
    start = first * BLOCK
    n = start + nblocks * BLOCK - tail
    grid = first + nblocks  # stride = grid * BLOCK >= n: every thread handles one element
    return grid, first, start, n


def test_bias_activation_past_2_31_elements(funcs):
    grid, first, start, n = elementwise_window()
    w = 2 * BLOCK
    cols = 7  # i % cols must be computed on the 64-bit index
    rng = numpy.random.default_rng(0)
    z = rng.standard_normal(w).astype(numpy.float32)
    bias = rng.standard_normal(cols).astype(numpy.float32)
    y = numpy.full(w, numpy.nan, numpy.float32)
    pre = numpy.full(w, numpy.nan, numpy.float32)
    launch(funcs, "nnx_bias_act_f32", grid, first, 2, BLOCK, ptr(z, start), bias.ctypes.data,
           ptr(y, start), ptr(pre, start), n, cols, 5, 1, 1)  # gelu, bias, write_pre
    k = n - start
    idx = numpy.arange(start, n, dtype=numpy.int64)
    want_pre = z[:k] + bias[idx % cols]
    numpy.testing.assert_allclose(pre[:k], want_pre, rtol=1e-6)
    numpy.testing.assert_allclose(y[:k], Ops().gelu(want_pre), rtol=1e-5, atol=1e-6)
    assert numpy.isnan(y[k:]).all() and numpy.isnan(pre[k:]).all()  # nothing past n


@pytest.mark.parametrize("act", [1, 3, 5])
def test_activation_backward_past_2_31_elements(funcs, act):
    grid, first, start, n = elementwise_window()
    rng = numpy.random.default_rng(act)
    dy, s = rng.standard_normal((2, 2 * BLOCK)).astype(numpy.float64)
    dz = numpy.full(2 * BLOCK, numpy.nan)
    launch(funcs, "nnx_act_bwd_f64", grid, first, 2, BLOCK, ptr(dy, start), ptr(s, start),
           ptr(dz, start), n, act)
    k = n - start
    name = {1: "relu", 3: "sigmoid", 5: "gelu"}[act]
    want = Ops(dtype="float64").activation_backward(dy[:k], s[:k], name)
    numpy.testing.assert_allclose(dz[:k], want)
    assert numpy.isnan(dz[k:]).all()


def test_dropout_and_bf16_rounding_past_2_31_elements(funcs):
    grid, first, start, n = elementwise_window()
    rng = numpy.random.default_rng(1)
    x = rng.standard_normal(2 * BLOCK).astype(numpy.float32)
    u = rng.random(2 * BLOCK).astype(numpy.float32)
    y, mask = numpy.full((2, 2 * BLOCK), numpy.nan, numpy.float32)
    launch(funcs, "nnx_dropout_f32", grid, first, 2, BLOCK, ptr(x, start), ptr(u, start),
           ptr(y, start), ptr(mask, start), n, 0.25, 1 / 0.75)
    k = n - start
    keep = (u[:k] >= 0.25) * numpy.float32(1 / 0.75)
    numpy.testing.assert_array_equal(mask[:k], keep)
    numpy.testing.assert_array_equal(y[:k], x[:k] * keep)
    assert numpy.isnan(y[k:]).all()
    r = numpy.full(2 * BLOCK, numpy.nan, numpy.float32)
    launch(funcs, "nnx_round_bf16_f32", grid, first, 2, BLOCK, ptr(x, start), ptr(r, start), n)
    u32 = x[:k].view(numpy.uint32).astype(numpy.uint64)
    want = ((u32 + 0x7FFF + ((u32 >> 16) & 1)) & 0xFFFF0000).astype(numpy.uint32)
    numpy.testing.assert_array_equal(r[:k], want.view(numpy.float32))


def test_optimizer_updates_past_2_31_elements(funcs):
    grid, first, start, n = elementwise_window()
    k, w = n - start, 2 * BLOCK
    rng = numpy.random.default_rng(2)
    p0, g = rng.standard_normal((2, w)).astype(numpy.float32)
    scale = numpy.ones(1, numpy.float32)
    flag = numpy.zeros(1, numpy.int32)
    hyper = numpy.zeros(1, numpy.float64)
    p, m, v = p0.copy(), numpy.zeros(w, numpy.float32), numpy.zeros(w, numpy.float32)
    launch(funcs, "nnx_adam_f32", grid, first, 2, BLOCK, ptr(p, start), ptr(g, start),
           ptr(m, start), ptr(v, start), n, 0.01 / 0.1, 0.9, 0.1, 0.999, 0.001,
           (1 - 0.999) ** 0.5, 1e-8, 0.0, 1.0, 0, scale.ctypes.data, flag.ctypes.data,
           hyper.ctypes.data, 0)
    pr, mr, vr = p0[:k].copy(), numpy.zeros(k, numpy.float32), numpy.zeros(k, numpy.float32)
    Ops().adam_update(pr, g[:k].copy(), mr, vr, 1, 0.01, 0.9, 0.999, 1e-8)
    numpy.testing.assert_allclose(p[:k], pr, rtol=1e-6)
    numpy.testing.assert_array_equal(p[k:], p0[k:])  # past n: untouched
    vel = numpy.zeros(w, numpy.float32)
    p = p0.copy()
    launch(funcs, "nnx_sgd_f32", grid, first, 2, BLOCK, ptr(p, start), ptr(g, start),
           ptr(vel, start), n, 0.5, 0.9, 0, 0.0, scale.ctypes.data, flag.ctypes.data,
           hyper.ctypes.data, 0)
    numpy.testing.assert_allclose(p[:k], p0[:k] - 0.5 * g[:k], rtol=1e-6)
    numpy.testing.assert_array_equal(p[k:], p0[k:])


def test_check_finite_past_2_31_elements(funcs):
    grid, first, start, n = elementwise_window()
    x = numpy.ones(2 * BLOCK, numpy.float32)
    x[n - start:] = numpy.inf  # past n: must not be seen
    flag = numpy.zeros(1, numpy.int32)
    launch(funcs, "nnx_check_finite_f32", grid, first, 2, BLOCK, ptr(x, start), n,
           flag.ctypes.data)
    assert flag[0] == 0
    x[n - start - 1] = numpy.nan  # the last element: must be seen
    launch(funcs, "nnx_check_finite_f32", grid, first, 2, BLOCK, ptr(x, start), n,
           flag.ctypes.data)
    assert flag[0] == 1


ROWS = 2**29 + 2  # an int row count whose row * cols (cols = 5) passes 2^31
COLS = 5


def test_row_softmax_past_2_31_elements(funcs):
    r0 = ROWS - 2
    shift = r0 * COLS
    rng = numpy.random.default_rng(3)
    z = rng.standard_normal(2 * COLS)
    y = numpy.full(2 * COLS, numpy.nan)
    launch(funcs, "nnx_softmax_fwd_f64", ROWS, r0, 2, 32, ptr(z, shift),
           numpy.zeros(1).ctypes.data, ptr(y, shift), ROWS, COLS, 0)
    want = Ops(dtype="float64").softmax(z.reshape(2, COLS)).ravel()
    numpy.testing.assert_allclose(y, want, rtol=1e-12)
    dy = rng.standard_normal(2 * COLS)
    dz = numpy.full(2 * COLS, numpy.nan)
    launch(funcs, "nnx_softmax_bwd_f64", ROWS, r0, 2, 32, ptr(dy, shift), ptr(y, shift),
           ptr(dz, shift), ROWS, COLS)
    want_dz = Ops(dtype="float64").activation_backward(dy.reshape(2, COLS), y.reshape(2, COLS),
                                                 "softmax").ravel()
    numpy.testing.assert_allclose(dz, want_dz, rtol=1e-10, atol=1e-14)


def test_softmax_cross_entropy_rows_past_2_31_elements(funcs):
    r0 = ROWS - 2
    rng = numpy.random.default_rng(4)
    logits = rng.standard_normal(2 * COLS).astype(numpy.float32)
    labels = numpy.array([3, 1], numpy.int64)
    grad = numpy.full(2 * COLS, numpy.nan, numpy.float32)
    loss = numpy.full(2, numpy.nan, numpy.float32)
    scale = numpy.ones(1, numpy.float32)
    launch(funcs, "nnx_softmax_ce_i64_f32", ROWS, r0, 2, 32, ptr(logits, r0 * COLS),
           ptr(labels, r0), ptr(grad, r0 * COLS), ptr(loss, r0), ROWS, COLS,
           scale.ctypes.data, 0.5)
    ref_loss, ref_grad = Ops().softmax_cross_entropy(logits.reshape(2, COLS), labels)
    numpy.testing.assert_allclose(loss.sum(), float(ref_loss), rtol=1e-5)
    numpy.testing.assert_allclose(grad.reshape(2, COLS), ref_grad, rtol=1e-5, atol=1e-7)


def test_bias_gradient_column_sums_past_2_31_elements(funcs):
    cols, chunk_rows = 40, 4
    rows = BIG // cols + 9  # rows * cols > 2^31
    tiles = -(-cols // 32)
    chunks = -(-rows // chunk_rows)
    last_chunk = chunks - 1
    r0 = last_chunk * chunk_rows
    nrows = rows - r0  # the last (partial) chunk
    rng = numpy.random.default_rng(5)
    dy, s = rng.standard_normal((2, nrows * cols)).astype(numpy.float32)
    dz = numpy.full(nrows * cols, numpy.nan, numpy.float32)
    partial = numpy.full(cols, numpy.nan, numpy.float32)
    first = last_chunk * tiles  # the work items of the last chunk: one block each
    launch(funcs, "nnx_act_bwd_colsum_f32", tiles * chunks, first, tiles, 64,
           ptr(dy, r0 * cols), ptr(s, r0 * cols), ptr(dz, r0 * cols),
           ptr(partial, last_chunk * cols), rows, cols, 1, 1, chunk_rows)
    want = Ops().activation_backward(dy.reshape(nrows, cols), s.reshape(nrows, cols), "relu")
    numpy.testing.assert_array_equal(dz.reshape(nrows, cols), want)
    numpy.testing.assert_allclose(partial, want.sum(axis=0), rtol=1e-5, atol=1e-6)


def test_no_32_bit_loop_counters_in_the_kernels():
    """Loop counters compared with sizes must be 64-bit: `c += blockDim.x` on an int wraps
    (undefined behaviour) once c passes INT_MAX - blockDim.x, e.g. for cols near INT_MAX."""
    for module in cupy_source.MODULE_FILES:
        src = cupy_source.read_source(module)
        loops = re.findall(r"for\s*\(\s*([\w\s]+?)\s+\w+\s*=", src)
        bad = [t for t in loops if t.strip() in ("int", "unsigned", "unsigned int", "short")]
        # the block reductions' `unsigned int s = blockDim.x >> 1` halving loops are bounded
        bad = [t for t in bad if t.strip() != "unsigned int"]
        assert not bad, f"{module}: 32-bit loop counters {bad}"


def test_size_arguments_are_64_bit():
    """Element counts, row lengths of elementwise kernels and the column-sum geometry are
    `long long` in every signature (Python ints over 2^31 marshal without overflow)."""
    index = cupy_source.kernel_index()
    for name, (_m, params) in index.items():
        for is_ptr, ctype, pname in params:
            if not is_ptr and pname in ("n", "chunks", "chunk_rows"):
                assert ctype == "long long", (name, pname, ctype)
            if not is_ptr and pname == "cols" and not name.startswith(
                ("nnx_softmax_", "nnx_softmax_ce_")
            ):
                assert ctype == "long long", (name, pname, ctype)
    k = cupy_source._Kernel("nnx_bias_act_f32", index["nnx_bias_act_f32"][1], lambda *a: None)
    x = numpy.zeros(1, numpy.float32)
    k(1, 32, x, x, x, x, BIG + 5, BIG + 5, 0, 1, 0)  # no OverflowError
    assert ctypes.sizeof(ctypes.c_longlong) == 8
