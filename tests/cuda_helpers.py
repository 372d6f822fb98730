"""Shared pieces of the CuPy backend's tests: the `make_ops` fixture that runs one test body on
a real GPU ("gpu", marked and skipped without CUDA) and on the strict CPU emulation ("emu",
tests/fake_cupy.py), the host-copy and tolerance helpers, and the reference roundings."""

from __future__ import annotations

import shutil

import numpy
import pytest
from cuda_shim import EmuCompiler
from fake_cupy import FakeCupy
from nnx.kernels.cupy_gpu import CupyOps
from nnx.kernels.reference import Ops

from nnx import compat

# =============================================================================================
# 2a. the CPU emulation of the CUDA kernels (for the "emu" runs): tests/fake_cupy.py
# =============================================================================================


@pytest.fixture(scope="session")
def emu_cupy(tmp_path_factory):
    cxx = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler for the CUDA emulation")
    return FakeCupy(EmuCompiler(str(tmp_path_factory.mktemp("cuda_emu")), cxx))


def emu_ops_class(xp):
    # max_grid=3: every grid-stride loop and row loop runs several rounds (and emulates fast)
    return type("EmuCupyOps", (CupyOps,), {"xp": xp, "max_grid": 3})


# =============================================================================================
# 2b. kernel tests vs the reference: "gpu" (real CuPy) and "emu" (CPU emulation)
# =============================================================================================


_POISON_POOL = []  # one pool for the session: arrays may outlive a test, never their pool


def _gpu_poison_allocator():
    cp = compat.cupy
    if not _POISON_POOL:
        _POISON_POOL.append(cp.cuda.MemoryPool())
    pool = _POISON_POOL[0]

    def alloc(size):
        mem = pool.malloc(size)
        if size:
            mem.memset_async(0xFF, size)  # all-ones bytes: NaN in float16/32/64
        return mem

    return pool, alloc


@pytest.fixture(params=[pytest.param("gpu", marks=pytest.mark.gpu), "emu"])
def make_ops(request):
    """make_ops(**options) -> a CupyOps (real GPU or CPU emulation), outputs poisoned."""
    if request.param == "gpu":
        if not compat.has_cupy_gpu():
            pytest.skip("no CUDA GPU")
        pool, alloc = _gpu_poison_allocator()
        with compat.cupy.cuda.using_allocator(alloc):
            yield CupyOps
        compat.cupy.cuda.Device().synchronize()
        pool.free_all_blocks()
    else:
        yield emu_ops_class(request.getfixturevalue("emu_cupy"))


def H(ops, a):
    """Host NumPy copy."""
    return numpy.asarray(ops.to_host(a))


def close(actual, expected, tol):
    actual = numpy.asarray(actual, dtype=numpy.float64)
    expected = numpy.asarray(expected, dtype=numpy.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert not numpy.isnan(actual).any() or numpy.isnan(expected).any(), "unwritten (NaN) output"
    scale = max(1.0, float(numpy.abs(expected).max(initial=0.0)))
    numpy.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale)


TOL = {"float64": 1e-10, "float32": 3e-5, "fp16": 2e-2, "bf16": 4e-2}


def rounded(a, mode):
    """What the mixed-precision GEMM sees: `a` rounded to the activation precision."""
    if mode not in ("fp16", "bf16"):
        return numpy.asarray(a)
    a = numpy.asarray(a, numpy.float32)
    if mode == "fp16":
        return a.astype(numpy.float16).astype(numpy.float32)
    if mode == "bf16":
        u = a.view(numpy.uint32).astype(numpy.uint64)
        u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
        return u.astype(numpy.uint32).view(numpy.float32)
    return a


def setup_mode(make_ops, mode, seed=0):
    """(ops, ref, host dtype, tolerance) for a precision mode."""
    if mode in ("fp16", "bf16"):
        ops = make_ops(seed=seed, precision=mode, loss_scale=None)
        return ops, Ops(dtype="float32"), numpy.float32, TOL[mode]
    return make_ops(seed=seed, dtype=mode), Ops(dtype=mode), numpy.dtype(mode), TOL[mode]
