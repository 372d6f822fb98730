"""The process's BLAS GEMM, called from inside Numba kernels: several single-threaded GEMMs at
once, one per Numba thread, each on its own block of rows.

Why: a recurrence's per-timestep GEMM is small (the LSTM's h_{t-1} W_hh: 128x128x512), and
OpenBLAS's own two threads run it at 92 GFLOP/s on the 2-vCPU box, where two single-threaded
GEMMs of half the rows each, running at once on the two cores, reach 117 (one: 60; measured with
this module, 64x128x512 per thread). Batch rows of a recurrence are independent, so each Numba
thread can carry its block of rows through every timestep (GEMM, then the fused step kernel on
the same rows, still in its cache) with no barrier between steps and no Python per step.

How: the GEMM's address is looked up once in the OpenBLAS that NumPy loaded (NumPy 2's wheels:
`scipy_cblas_sgemm64_`, 64-bit integers; other builds: `cblas_sgemm`, 32-bit) and passed to the
kernel as an integer; `_gemm64` / `_gemm32` (intrinsics) cast it to the CBLAS function type and
call it. An address passed as an argument keeps the kernels cacheable (a ctypes function referenced
as a global would not be). While such a kernel runs, the BLAS is set to one thread
(`single_threaded_blas`): its calls then run in the calling thread, and two of them at once are
safe (OpenBLAS locks only its buffer table).

`gemm_for(dtype)` is None when there is no such BLAS (MKL, Accelerate, a BLAS not mapped yet):
the callers keep their NumPy path then.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from nnx import threads as nnx_threads

from .numba_common import SER as _SER

# (symbol, 64-bit integers) in the order tried, per dtype
_GEMM_NAMES = {
    np.dtype(np.float32): (("scipy_cblas_sgemm64_", True), ("cblas_sgemm64_", True),
                           ("scipy_cblas_sgemm", False), ("cblas_sgemm", False)),
    np.dtype(np.float64): (("scipy_cblas_dgemm64_", True), ("cblas_dgemm64_", True),
                           ("scipy_cblas_dgemm", False), ("cblas_dgemm", False)),
}
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112

_LOCK = threading.Lock()
_FOUND: dict = {}


_CONFIG_NAMES = ("scipy_openblas_get_config64_", "scipy_openblas_get_config",
                 "openblas_get_config64_", "openblas_get_config")


def _first(lib, names):
    """The first of `names` that `lib` exports (a ctypes function), or None."""
    return next((getattr(lib, s) for s in names if hasattr(lib, s)), None)


def _built_ilp64(lib) -> bool:
    """Whether this OpenBLAS was built with 64-bit integers (USE64BITINT in its config string):
    some builds keep the plain `cblas_sgemm` name for the 64-bit interface."""
    fn = _first(lib, _CONFIG_NAMES)
    if fn is None:
        return False
    fn.restype = ctypes.c_char_p
    return b"USE64BITINT" in (fn() or b"")


def _lookup() -> dict:
    """{dtype: (address, ilp64)} plus "get"/"set" (ctypes functions) of the first mapped
    OpenBLAS that has a GEMM and both thread calls; {} when none."""
    with _LOCK:
        if "done" in _FOUND:
            return _FOUND
        for path in nnx_threads.mapped_libraries(lambda n: "openblas" in n):
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            get = _first(lib, nnx_threads.BLAS_GET_NAMES)
            set_ = _first(lib, nnx_threads.BLAS_SET_NAMES)
            gemms = {}
            built_ilp64 = _built_ilp64(lib)
            for dt, names in _GEMM_NAMES.items():
                for name, ilp64 in names:
                    if hasattr(lib, name):
                        ilp64 = ilp64 or built_ilp64  # 64-bit ints under an unsuffixed name
                        addr = ctypes.cast(getattr(lib, name), ctypes.c_void_p).value
                        gemms[dt] = (int(addr), ilp64)
                        gemms.setdefault("names", []).append(name)
                        break
            if get is not None and set_ is not None and gemms:
                get.restype, set_.argtypes = ctypes.c_int, [ctypes.c_int]
                names = ", ".join(gemms.pop("names"))
                _FOUND.update(gemms, get=get, set=set_,
                              describe=f"{names} in {path.rsplit('/', 1)[-1]}")
                break
        # only once NumPy's BLAS is mapped (importing numpy maps it): later lookups are final
        if nnx_threads.mapped_libraries(lambda n: "openblas" in n or "mkl" in n or "blas" in n):
            _FOUND["done"] = True
        return _FOUND


def describe() -> str:
    """One line for `nnx info`: which GEMMs the kernels call, from which library, or why none."""
    found = _lookup()
    if "describe" in found:
        return found["describe"]
    return "none (no OpenBLAS with a CBLAS GEMM mapped: the per-step / pipeline paths run)"


def gemm_for(dtype):
    """(address, ilp64) of the BLAS GEMM for `dtype` (float32 / float64), or None."""
    return _lookup().get(np.dtype(dtype))


_THREADS_LOCK = threading.Lock()
_THREADS = {"depth": 0, "saved": 1}


@contextlib.contextmanager
def single_threaded_blas():
    """The BLAS runs one thread per call inside the block: GEMMs called from several Numba
    threads at once then each run in their caller's thread. Nested or concurrent blocks (two
    Python threads) share one setting: the first in saves the thread count, the last out
    restores it."""
    found = _lookup()
    with _THREADS_LOCK:
        if _THREADS["depth"] == 0:
            _THREADS["saved"] = found["get"]()
            if _THREADS["saved"] != 1:
                found["set"](1)
        _THREADS["depth"] += 1
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _THREADS["depth"] -= 1
            if _THREADS["depth"] == 0 and _THREADS["saved"] != 1:
                found["set"](_THREADS["saved"])


def _gemm_codegen(ilp64: bool):
    def codegen(context, builder, sig, args):
        addr, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc = args
        i32 = ir.IntType(32)
        it = ir.IntType(64) if ilp64 else i32
        ft = context.get_value_type(sig.args[6])
        p = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(
            ir.VoidType(), [i32, i32, i32, it, it, it, ft, p, it, p, it, ft, p, it]
        )
        fn = builder.inttoptr(addr, fnty.as_pointer())

        def cast(v):
            return v if ilp64 else builder.trunc(v, i32)

        builder.call(
            fn,
            [ir.Constant(i32, ROW_MAJOR), builder.trunc(transa, i32), builder.trunc(transb, i32),
             cast(m), cast(n), cast(k), alpha, a, cast(lda), b, cast(ldb), beta, c, cast(ldc)],
        )
        return context.get_dummy_value()

    return codegen


def _gemm_signature(alpha):
    i8, vp = types.int64, types.voidptr
    return types.void(i8, i8, i8, i8, i8, i8, alpha, vp, i8, vp, i8, alpha, vp, i8)


@intrinsic
def _gemm64(typingctx, addr, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """CBLAS ?gemm at `addr` with 64-bit integers: C = alpha A op(B) + beta C, row-major."""
    if alpha not in (types.float32, types.float64):
        return None
    return _gemm_signature(alpha), _gemm_codegen(True)


@intrinsic
def _gemm32(typingctx, addr, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
    """The same with 32-bit integers (an LP64 BLAS)."""
    if alpha not in (types.float32, types.float64):
        return None
    return _gemm_signature(alpha), _gemm_codegen(False)


@njit(**_SER)
def gemm(addr, ilp64, trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc):
    """c (m x n, leading dimension ldc) = op(a) @ op(b) + beta c, row-major, in this thread, by
    the BLAS at `addr`; a, b, c arrays whose first element starts each matrix (any strides the
    leading dimensions describe). Nothing happens when m or n is 0; k = 0 scales c by beta."""
    if m <= 0 or n <= 0:
        return
    one = c.dtype.type(1.0)
    bt = c.dtype.type(beta)
    ta = TRANS if trans_a else NO_TRANS
    tb = TRANS if trans_b else NO_TRANS
    lda, ldb, ldc = max(1, lda), max(1, ldb), max(1, ldc)
    pa, pb, pc = a.ctypes.data, b.ctypes.data, c.ctypes.data
    if ilp64:
        _gemm64(addr, ta, tb, m, n, k, one, pa, lda, pb, ldb, bt, pc, ldc)
    else:
        _gemm32(addr, ta, tb, m, n, k, one, pa, lda, pb, ldb, bt, pc, ldc)


@njit(**_SER)
def gemm_rows(addr, ilp64, a, b, trans_b, c, lo, hi, accumulate):
    """c[lo:hi] = a[lo:hi] @ (b.T if trans_b else b) (`accumulate`: c[lo:hi] += that), in this
    thread, by the BLAS at `addr` (`gemm` on those rows). a, b, c C-contiguous 2-D arrays of one
    float dtype; nothing happens for an empty range; an empty product (no columns of a) sets the
    rows to 0, or adds nothing."""
    k = a.shape[1]
    beta = 1.0 if accumulate else 0.0
    gemm(addr, ilp64, False, trans_b, hi - lo, c.shape[1], k, a[lo:], k, b, b.shape[1], beta,
         c[lo:], c.shape[1])
