"""Shared helpers of the scripts that tests/test_distributed.py runs under `mpiexec -n 2`.

Each script asserts and exits non-zero on failure; it prints "OK <name>" on rank 0 when done."""

from __future__ import annotations

import os
import sys
import zlib

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402

import nnx  # noqa: E402
import nnx.distributed as dist  # noqa: E402,F401


def mlp(seed, backend="numpy", dtype="float64", hidden=16, reg=None, out=3):
    return nnx.Sequential([nnx.Dense(20, hidden, "relu", kernel_regularizer=reg),
                           nnx.Dense(hidden, out)], backend=backend, seed=seed, dtype=dtype)


def data(n, seed=1, features=20, classes=3):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features))
    y = rng.integers(0, classes, n)
    return x, y


def crc(weights) -> int:
    return zlib.crc32(b"".join(np.ascontiguousarray(w).tobytes() for w in weights))


def assert_same_on_all_ranks(comm, weights, what):
    crcs = comm.allgather(crc(weights))
    assert len(set(crcs)) == 1, f"{what}: weights differ across ranks (CRCs {crcs})"


def assert_close(a_list, b_list, what, rtol=1e-9, atol=1e-11):
    assert len(a_list) == len(b_list), what
    for i, (a, b) in enumerate(zip(a_list, b_list, strict=True)):
        if not np.allclose(a, b, rtol=rtol, atol=atol):
            err = float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
            raise AssertionError(f"{what}: array {i} differs (max abs diff {err:.3e})")


def done(comm, name):
    comm.barrier()
    if comm.rank == 0:
        print(f"OK {name}", flush=True)
    sys.exit(0)
