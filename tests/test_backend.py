"""Backend selection: precedence, scoping across threads and asyncio, errors."""

from __future__ import annotations

import asyncio
import threading

import pytest

import nnx
from nnx import backend as B
from nnx.errors import BackendUnavailableError, UnknownNameError


@pytest.fixture(autouse=True)
def _clean_global(monkeypatch):
    monkeypatch.delenv("NNX_BACKEND", raising=False)
    nnx.set_backend(None)
    yield
    nnx.set_backend(None)


def other_backend():
    others = [b for b in nnx.available_backends() if b != "numpy"]
    if not others:
        pytest.skip("needs a second available backend")
    return others[0]


def model(**kw):
    return nnx.Sequential([nnx.Dense(3, 2)], **kw)


def test_numpy_always_available_and_registry_lists_all():
    assert nnx.available_backends()[0] == "numpy"
    assert {"numpy", "numba", "cupy"} <= set(nnx.backend_names())


def test_default_is_numpy():
    assert nnx.get_backend() == "numpy"
    assert model().backend == "numpy"


def test_env_variable(monkeypatch):
    other = other_backend()
    monkeypatch.setenv("NNX_BACKEND", other)
    assert model().backend == other


def test_env_variable_unknown_name(monkeypatch):
    monkeypatch.setenv("NNX_BACKEND", "tpu")
    with pytest.raises(UnknownNameError, match="NNX_BACKEND.*'tpu'.*numpy"):
        model()


def test_precedence_model_over_scope_over_global_over_env(monkeypatch):
    other = other_backend()
    monkeypatch.setenv("NNX_BACKEND", other)
    nnx.set_backend("numpy")
    assert model().backend == "numpy"  # global beats env
    with nnx.use_backend(other):
        assert model().backend == other  # scope beats global
        assert model(backend="numpy").backend == "numpy"  # model beats scope
    assert model().backend == "numpy"  # the scope did not leak


def test_scope_restored_after_exception():
    other = other_backend()
    with pytest.raises(RuntimeError), nnx.use_backend(other):
        raise RuntimeError("boom")
    assert nnx.get_backend() == "numpy"


def test_scope_is_per_thread():
    other = other_backend()
    seen = {}
    inside = threading.Event()
    release = threading.Event()

    def worker():
        with nnx.use_backend(other):
            seen["worker"] = nnx.get_backend()
            inside.set()
            release.wait(5)

    t = threading.Thread(target=worker)
    t.start()
    inside.wait(5)
    seen["main"] = nnx.get_backend()  # the worker's scope is open right now
    release.set()
    t.join()
    assert seen == {"worker": other, "main": "numpy"}


def test_scope_is_per_asyncio_task():
    other = other_backend()

    async def task(name, delay):
        if name == other:
            with nnx.use_backend(other):
                await asyncio.sleep(delay)
                return nnx.get_backend()
        await asyncio.sleep(delay)
        return nnx.get_backend()

    async def main():
        return await asyncio.gather(task(other, 0.02), task("numpy", 0.01))

    assert asyncio.run(main()) == [other, "numpy"]


def test_unavailable_backend_error_names_available_and_install(monkeypatch):
    monkeypatch.setattr(B.backend_module("cupy"), "is_available", lambda: False)
    with pytest.raises(BackendUnavailableError) as info:
        model(backend="cupy")
    msg = str(info.value)
    assert "'cupy' is not available" in msg
    assert "Available here: numpy" in msg
    assert "pip install" in msg and "cupy-cuda12x" in msg
    with pytest.raises(BackendUnavailableError):
        nnx.set_backend("cupy")
    with pytest.raises(BackendUnavailableError), nnx.use_backend("cupy"):
        pass


def test_unknown_backend_name():
    with pytest.raises(UnknownNameError, match="unknown backend 'jax'.*cupy, numba, numpy"):
        nnx.set_backend("jax")


def test_get_ops_dtype_and_seed(backend):
    a = nnx.get_ops(backend, seed=3, dtype="float64")
    b = nnx.get_ops(backend, seed=3, dtype="float64")
    assert a.name == backend and str(a.dtype) == "float64"
    x, y = a.random_normal((5,)), b.random_normal((5,))
    assert (a.to_host(x) == b.to_host(y)).all()
    with pytest.raises(ValueError, match="float"):
        nnx.get_ops(backend, dtype="int32")


def test_use_backend_passes_options_and_yields_ops():
    with nnx.use_backend("numpy") as ops:
        assert ops.name == "numpy"
    with pytest.raises(TypeError, match="takes no options"), nnx.use_backend("numpy", device=1):
        model()
