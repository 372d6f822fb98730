"""Shared fixtures: every backend-parametrized test runs on every backend available here; `gpu`
tests skip with a reason without CUDA; real MNIST is read from ../shared/data/mnist."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import nnx
from nnx import compat

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"
if SHARED_MNIST.is_dir():
    os.environ.setdefault("NNX_DATA_DIR", str(SHARED_MNIST))

BACKENDS = nnx.available_backends()


def pytest_report_header(config):
    return f"nnx backends available: {', '.join(BACKENDS)}"


def pytest_collection_modifyitems(config, items):
    if compat.has_cupy_gpu():
        return
    skip = pytest.mark.skip(reason=f"no CUDA GPU: {compat.cupy_unavailable_reason()}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Each available backend's name."""
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def real_mnist_available() -> bool:
    d = os.environ.get("NNX_DATA_DIR")
    return bool(d) and (Path(d) / "train-images-idx3-ubyte.gz").exists()


@pytest.fixture(autouse=True)
def _numba_dispatch_as_configured(monkeypatch):
    """pytest imports NumPy before nnx: nnx restarts OpenBLAS's workers with its short timeout
    then, but where that is declined (NNX_BLAS_RESTART=0, a long OPENBLAS_THREAD_TIMEOUT)
    nnx.compat.blas_spins is True and the Numba kernels would all run serially
    (numba_dispatch.SERIAL_NEXT_TO_BLAS): tests that force the parallel drivers would silently
    test the serial ones. Off for every test; the policy itself is tested in
    tests/test_threads_blas_spin.py."""
    if compat.has_numba:
        from nnx.kernels import numba_dispatch

        monkeypatch.setattr(numba_dispatch, "SERIAL_NEXT_TO_BLAS", False)
