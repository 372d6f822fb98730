"""Backend registry and selection.

A backend is an `Ops` object (see `nnx.kernels.reference`): the array namespace `xp`, the dtype,
a seeded generator and the kernel table. Which one a model gets, most specific first:

1. per model: `Sequential([...], backend="numba")`
2. scoped: `with nnx.use_backend("cupy"):` (a ContextVar: safe across threads and asyncio
   tasks, never leaks out of its block)
3. global: `nnx.set_backend("numba")`
4. the environment variable `NNX_BACKEND`
5. `numpy`

A scope beats the global choice because it is the narrower, more recent statement of intent:
were it the other way round, a `with` block after any `set_backend` call would silently do nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os

from .errors import BackendUnavailableError, unknown

# name -> module implementing: NAME, INSTALL_HINT, is_available(), unavailable_reason(),
# create_ops(seed, dtype, **options), warmup(ops)
_REGISTRY: dict[str, str] = {
    "numpy": "nnx.backends.numpy",
    "numba": "nnx.backends.numba",
    "cupy": "nnx.backends.cupy",
}
DEFAULT = "numpy"

_global_choice: tuple[str, dict] | None = None
_scoped_choice: contextvars.ContextVar[tuple[str, dict] | None] = contextvars.ContextVar(
    "nnx_backend", default=None
)


def register_backend(name: str, module: str) -> None:
    """Register a third-party backend module (same interface as `nnx.backends.numpy`)."""
    _REGISTRY[name] = module


def backend_names() -> list[str]:
    """Every registered backend, available or not."""
    return list(_REGISTRY)


def backend_module(name: str):
    if name not in _REGISTRY:
        raise unknown("backend", name, _REGISTRY)
    return importlib.import_module(_REGISTRY[name])


def available_backends() -> list[str]:
    """The backends that work on this machine, in registry order."""
    return [n for n in _REGISTRY if backend_module(n).is_available()]


def check_available(name: str) -> None:
    """Raise a clear error if `name` is unknown or cannot run here."""
    mod = backend_module(name)
    if not mod.is_available():
        raise BackendUnavailableError(
            f"backend {name!r} is not available: {mod.unavailable_reason()}. "
            f"Available here: {', '.join(available_backends())}. "
            f"To install it: {mod.INSTALL_HINT}"
        )


def set_backend(name: str | None, **options) -> None:
    """Set (or with None, clear) the process-wide default backend."""
    global _global_choice
    if name is not None:
        check_available(name)
    _global_choice = None if name is None else (name, options)


@contextlib.contextmanager
def use_backend(name: str, **options):
    """Use `name` for models created inside this block (this thread/task only).

    Options go to the backend, e.g. `use_backend("cupy", device=1)`."""
    check_available(name)
    token = _scoped_choice.set((name, options))
    try:
        yield get_ops(name, **options)
    finally:
        _scoped_choice.reset(token)


def current_choice() -> tuple[str, dict]:
    """The (name, options) a model created now without `backend=` would get."""
    for choice in (_scoped_choice.get(), _global_choice):
        if choice is not None:
            return choice
    env = os.environ.get("NNX_BACKEND", "").strip()
    if env:
        if env not in _REGISTRY:
            raise unknown("backend (from NNX_BACKEND)", env, _REGISTRY)
        return env, {}
    return DEFAULT, {}


def get_backend() -> str:
    """The name of the backend currently selected."""
    return current_choice()[0]


def get_ops(name: str | None = None, *, seed: int | None = None, dtype: str = "float32", **options):
    """A fresh backend object. `name=None` resolves the current choice (scope, global, env)."""
    if name is None:
        name, chosen = current_choice()
        options = {**chosen, **options}
    check_available(name)
    return backend_module(name).create_ops(seed=seed, dtype=dtype, **options)


def resolve(backend, *, seed=None, dtype="float32"):
    """Accept a backend name, an Ops object or None (current choice) and return Ops."""
    if backend is None or isinstance(backend, str):
        return get_ops(backend, seed=seed, dtype=dtype)
    if hasattr(backend, "xp") and hasattr(backend, "dense_forward"):
        return backend
    raise TypeError(f"backend must be a name, an Ops object or None, got {type(backend).__name__}")
