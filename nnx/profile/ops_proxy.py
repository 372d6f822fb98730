"""`ProfiledOps`: an Ops object whose kernel calls are timed, standing in for a model's Ops.

    proxy = ProfiledOps(model.ops, timer)
    previous = model.bind_ops(proxy)       # layers, loss and optimizer now call the proxy
    ...
    model.bind_ops(previous)

The proxy is a separate object. Its class is generated once per Ops class: a subclass of that
class (`ProfiledOps` first in the method order) whose kernel methods are timed versions that call
the Ops class's own function. The proxy shares the wrapped object's instance `__dict__`, so every
attribute it reads or writes (dtype, the generator, scratch buffers, the loss-scale state) is the
wrapped object's, and it is an instance of the wrapped object's class. Two things follow, which a
delegating `__getattr__` object could not give:

- kernels that call kernels through `self` (the reference `dense_forward` calls
  `activation_forward`, which calls `relu`; `to_float` calls `to_host`) are timed too, so a
  kernel's self time excludes them;
- `super()` inside a backend's kernels (every CuPy and Numba override falls back with it) works,
  because the proxy is an instance of the backend's class.

Nothing is assigned onto the wrapped object, its class or any other existing object: the Ops
class's `__dict__` and the wrapped object's attribute names are the same before, during and
after profiling, and once the model is bound back to its Ops nothing refers to the proxy.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading

from .timer import Timer

__all__ = ["ProfiledOps", "kernel_category", "kernel_names"]

# Ops methods that are not kernels (setup, allocation, randomness): never timed.
NOT_KERNELS = frozenset({"seed", "zeros", "empty", "random_uniform", "random_normal",
                         "permutation", "warmup", "device_dataset"})
SYNC = frozenset({"to_float", "to_host", "synchronize"})
TRANSFER = frozenset({"asarray", "take_batch"})
_GEMM_WORDS = ("dense_", "conv", "lstm", "gru", "rnn", "attention", "matmul", "linear")


def kernel_category(name: str) -> str:
    """"gemm", "elementwise", "transfer" or "sync" for a kernel name."""
    if name in SYNC:
        return "sync"
    if name in TRANSFER:
        return "transfer"
    if any(w in name for w in _GEMM_WORDS) and "dropout" not in name:
        return "gemm"
    return "elementwise"


def kernel_names(cls) -> list[str]:
    """The public methods of an Ops class that are timed: not private, not setup/allocation/
    randomness (NOT_KERNELS), not static or class methods, properties or nested classes."""
    names = []
    for name in dir(cls):
        if name.startswith("_") or name in NOT_KERNELS:
            continue
        attr = getattr(cls, name, None)
        if not callable(attr) or isinstance(attr, type):
            continue
        if isinstance(inspect.getattr_static(cls, name), (staticmethod, classmethod)):
            continue  # helpers, not methods of the bound object
        names.append(name)
    return names


class ProfiledOps:
    """`ProfiledOps(ops, timer)`: the profiling stand-in for `ops` (see the module docstring).

    `timer` (nnx.profile.timer.Timer; a new one when None) receives every kernel call; `sync`
    (default: on device backends) brackets each call with the device's synchronize so that its
    time is the time of the work it queued; `nvtx` (default: on CuPy) makes each call an NVTX
    range."""

    __slots__ = ("_nnx_ops", "_nnx_timer", "_nnx_sync", "_nnx_nvtx", "_nnx_key")

    def __new__(cls, ops, timer=None, *, sync=None, nvtx=None):
        if isinstance(ops, ProfiledOps):
            raise RuntimeError("these ops are already profiled (a profiler is active on this "
                               "model in another thread)")
        if not hasattr(ops, "__dict__"):
            raise TypeError(f"cannot profile {type(ops).__name__}: it has no instance __dict__")
        return object.__new__(profiled_class(type(ops)))

    def __init__(self, ops, timer=None, *, sync=None, nvtx=None):
        # The wrapped object's attributes are the proxy's: one dict, read and written by both.
        self.__dict__ = ops.__dict__
        self._nnx_ops = ops
        self._nnx_timer = timer if timer is not None else Timer()
        self._nnx_key = id(ops)
        on_device = not getattr(ops, "on_host", True)
        self._nnx_sync = None
        if on_device and sync is not False:
            # the class's own synchronize: the profiler's brackets are not sync points of the run
            self._nnx_sync = functools.partial(type(ops).synchronize, ops)
        self._nnx_nvtx = None
        if on_device and nvtx is not False:
            with contextlib.suppress(Exception):
                from cupy.cuda import nvtx as cupy_nvtx

                self._nnx_nvtx = cupy_nvtx

    @property
    def wrapped(self):
        """The Ops object this proxy times."""
        return self._nnx_ops

    @property
    def profiler_timer(self):
        """The Timer that receives this proxy's kernel calls."""
        return self._nnx_timer

    def __repr__(self) -> str:
        return f"<profiled {self._nnx_ops!r}>"


_CLASSES: dict[type, type] = {}
_CLASSES_LOCK = threading.Lock()


def profiled_class(cls: type) -> type:
    """The ProfiledOps subclass for Ops class `cls` (built once, then reused)."""
    sub = _CLASSES.get(cls)
    if sub is not None:
        return sub
    with _CLASSES_LOCK:
        sub = _CLASSES.get(cls)
        if sub is None:
            sub = _CLASSES[cls] = _build_class(cls)
    return sub


def _build_class(cls: type) -> type:
    namespace = {"__module__": __name__, "__slots__": (),
                 "__doc__": f"{cls.__name__} with timed kernels (nnx.profile)."}
    for name in kernel_names(cls):
        fn = getattr(cls, name)
        if name in SYNC:
            method = _sync_method(name, fn)
        elif name in ("dense_forward", "dense_backward"):
            method = _dense_method(name, fn)
        else:
            method = _method(name, kernel_category(name), fn)
        functools.update_wrapper(method, fn)
        namespace[name] = method
    return type(cls)(f"Profiled{cls.__name__}", (ProfiledOps, cls), namespace)


def _method(name, cat, fn):
    key = f"kernel:{name}"

    def timed(self, *args, **kwargs):
        return self._nnx_timer.call(fn, self, key, cat, self._nnx_sync, self._nnx_nvtx,
                                    args, kwargs)

    return timed


def _sync_method(name, fn):
    """to_float / to_host / synchronize: a host-device round trip; counted once when nested
    (to_float calls to_host)."""
    key = f"kernel:{name}"

    def timed(self, *args, **kwargs):
        return self._nnx_timer.call_sync(fn, self, key, self._nnx_sync, self._nnx_nvtx,
                                         args, kwargs)

    return timed


def _dense_method(name, fn):
    """dense_forward / dense_backward: also record the GEMM shapes for the replay."""
    key = f"kernel:{name}"
    forward = name == "dense_forward"

    def timed(self, *args, **kwargs):
        timer = self._nnx_timer
        try:
            if forward:
                x, W = args[0], args[1]
                k, n = W.shape[0], W.shape[1]
                m = x.size // k if k else 0
                timer.gemm(self._nnx_key, m, k, n, False, False)
            else:
                _dy, x, W = args[0], args[1], args[2]
                k, n = W.shape[0], W.shape[1]
                m = x.size // k if k else 0
                timer.gemm(self._nnx_key, k, m, n, True, False)  # dW = x^T @ dz
                need_dx = args[5] if len(args) > 5 else kwargs.get("need_dx", True)
                if need_dx:
                    timer.gemm(self._nnx_key, m, n, k, False, True)  # dx = dz @ W^T
        except (AttributeError, IndexError, TypeError, ValueError):
            pass
        return timer.call(fn, self, key, "gemm", self._nnx_sync, self._nnx_nvtx, args, kwargs)

    return timed
