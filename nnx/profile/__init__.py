"""Per-layer and per-kernel profiling of any training code.

    with nnx.profile.profile(model) as prof:      # or profile(): every model used in the block
        model.fit(x, y, epochs=1)
    print(prof.report())
    prof.export_chrome_trace("trace.json")        # chrome://tracing or https://ui.perfetto.dev

How it works. The profiler takes part in the model's step through the model's own seams; it
patches nothing. On entry it adds a `ProfilerHooks` object (`model.add_hooks`, nnx.hooks: it
wants per-leaf events, so the step brackets every leaf's forward and backward, the loss and the
optimizer update with its hook points) and binds the model to a `ProfiledOps` (`model.bind_ops`:
the layers, the loss and the optimizer then call a stand-in for the model's Ops whose kernels are
timed; see nnx/profile/ops_proxy.py). On exit it removes the hooks and binds the model back to
its Ops. No attribute of the model, its layers, its Ops or any class is set or replaced, so there
is nothing to restore; with profiling off there is no wrapper, flag or check in the hot path
beyond the step's empty hook loops. A `compile` inside the block keeps the profiler's hooks (it
replaces only the previous optimizer's own hooks) and sets the new optimizer up on the profiled
Ops. `profile()` without a model registers a model watcher (`nnx.hooks.add_model_watcher`) for
the block: every model whose fit / train_step / evaluate / predict / loss_and_grads starts
inside it, in any thread, is hooked then. A profiler belongs to one thread (profilers do not
nest); the code it times may run in several (each thread has its own stacks and counters, so a
`predict` in another thread during a profiled `fit` is timed on its own track).

What is measured
- wall time of the block; per layer: forward and backward time and calls (training steps and
  inference); the optimizer update and the loss of each training step; "other" = the wall time
  outside all of those (batching, host checks, Python). Hooks added after the profiler (a
  DistributedOptimizer compiled inside the block brings its strategy) run inside its layer and
  update regions, so their work (a gradient allreduce) counts there.
- per kernel: calls, total (inclusive) and self time (minus kernels called inside it: the
  reference `dense_forward` calls `activation_forward`, which calls `relu`; the proxy sees these
  inner calls because they go through `self`, which is the proxy), category.
- GEMM share. Kernels are classed "gemm" (dense, conv, recurrent: GEMMs plus their epilogue),
  "elementwise" (activations, losses, optimizer updates, dropout, pooling, norms: memory-bound
  passes), "transfer" and "sync". Inside a dense kernel the BLAS call and the epilogue cannot be
  told apart without patching NumPy, so the profiler records each GEMM's shape (m, k, n) as it
  goes and, in `report()`, *replays* every distinct shape on the backend's `xp.matmul` a few
  times: "BLAS (replayed)" = sum over calls of the replayed time, "GEMM share" = that / kernel
  time. The rest of the dense kernels' time is their epilogue (bias, activation, its
  derivative, the bias-gradient reduction).
- sync points: calls of `ops.to_float`, `ops.to_host` and `ops.synchronize` by the code under
  test (each one a host-device round trip on a GPU backend; `to_float` calling `to_host` is one).

Perturbation. On device backends (CuPy) every timed region (kernel, layer, loss, update) is
bracketed by the device's synchronize (the Ops class's own, not counted as a sync point) so that
times belong to the region that queued the work; this removes the overlap of host and device and
makes the profiled run slower than an unprofiled one. On CuPy each region is also an NVTX range
(visible in Nsight Systems). On the CPU backends each timed call costs about a microsecond (the
proxy's method, the per-thread table, the clock; a layer region also the step's leaf observer);
`report()` states the estimate, and `nnx profile` measures the run with and without profiling.
"""

from __future__ import annotations

import contextlib
import threading
import time

from .. import hooks as hooks_mod
from .hooks import ProfilerHooks
from .ops_proxy import ProfiledOps, kernel_category
from .report import call_overhead_s, replay_gemms
from .report import report as _report
from .report import summary as _summary
from .timer import Timer
from .trace import export_chrome_trace as _export_chrome_trace

__all__ = ["Profiler", "ProfiledOps", "ProfilerHooks", "kernel_category", "profile"]

_active = threading.local()


class _Binding:
    """What the profiler did to one model: its hooks, and the Ops bound before the proxy."""

    __slots__ = ("model", "hooks", "proxy", "previous")

    def __init__(self, model, hooks, proxy, previous):
        self.model, self.hooks, self.proxy, self.previous = model, hooks, proxy, previous


class Profiler:
    """Collects timings while active; see the module docstring. Use `profile(...)`."""

    def __init__(self, model=None, *, sync: bool | None = None, nvtx: bool | None = None,
                 trace: bool = True, max_events: int = 2_000_000, replay_gemms: bool = True):
        self.model = model
        self.sync = sync  # None: synchronize around regions on device backends only
        self.nvtx = nvtx  # None: NVTX ranges on cupy
        self.trace = trace
        self.max_events = max_events
        self.replay_gemms = replay_gemms
        self.timer = Timer(trace=trace, max_events=max_events)
        self.layer_types: dict[str, str] = {}  # leaf name -> class name, in model order
        self.wall_s = None
        self._t0 = None
        self._lock = threading.RLock()
        self._bindings: dict[int, _Binding] = {}
        self._proxies: dict[int, ProfiledOps] = {}  # id(ops) -> its proxy
        self._ops_by_key: dict[int, object] = {}  # id(ops) -> ops (kept for the replay)
        self._watching = False
        self._gemm_replay = None

    # -- context ------------------------------------------------------------------------------
    def __enter__(self):
        if getattr(_active, "prof", None) is not None:
            raise RuntimeError("nnx.profile: a profiler is already active in this thread")
        _active.prof = self
        self._t0 = time.perf_counter()
        try:
            if self.model is not None:
                self.hook_model(self.model)
            else:
                hooks_mod.add_model_watcher(self._watch)
                self._watching = True
        except BaseException:
            self._unhook()
            _active.prof = None
            raise
        return self

    def __exit__(self, *exc):
        try:
            for ops in self.ops_list:
                if not getattr(ops, "on_host", True):
                    with contextlib.suppress(Exception):
                        type(ops).synchronize(ops)
            self.wall_s = time.perf_counter() - self._t0
        finally:
            self._unhook()
            _active.prof = None
        return False

    # -- hooking ------------------------------------------------------------------------------
    def hook_model(self, model) -> None:
        """Profile `model` until the block ends: add the profiler's hooks to it and bind it to
        a ProfiledOps of its Ops."""
        with self._lock:
            if id(model) in self._bindings:
                return
            ops = model.ops
            proxy = self._proxies.get(id(ops))
            if proxy is None:  # models sharing one Ops share its proxy
                proxy = ProfiledOps(ops, self.timer, sync=self.sync, nvtx=self.nvtx)
                self._proxies[id(ops)] = proxy
                self._ops_by_key[id(ops)] = ops
            hooks = ProfilerHooks(self.timer, proxy._nnx_sync, proxy._nnx_nvtx)
            previous = model.bind_ops(proxy)
            try:
                model.add_hooks(hooks)
            except BaseException:
                model.bind_ops(previous)
                raise
            self._bindings[id(model)] = _Binding(model, hooks, proxy, previous)
            for layer in model.layers:
                self.layer_types.setdefault(layer.name, type(layer).__name__)

    def _watch(self, model) -> None:
        """The model watcher of `profile()` without a model."""
        if id(model) in self._bindings:
            return
        if isinstance(model.ops, ProfiledOps):
            return  # profiled by another thread's profiler: leave it to that one
        self.hook_model(model)

    def _unhook(self) -> None:
        if self._watching:
            hooks_mod.remove_model_watcher(self._watch)
            self._watching = False
        errors = []
        with self._lock:
            bindings = list(self._bindings.values())
            self._bindings.clear()
        for b in reversed(bindings):
            try:
                b.model.remove_hooks(b.hooks)
                if b.model.ops is b.proxy:  # not rebound by the code in the block
                    b.model.bind_ops(b.previous)
            except Exception as exc:  # unhook the others anyway
                errors.append(exc)
        if errors:
            raise errors[0]

    # -- raw results --------------------------------------------------------------------------
    @property
    def stats(self) -> dict:
        """name -> Stat (calls, total, self_time), summed over threads."""
        return self.timer.stats()

    @property
    def gemm_shapes(self) -> dict:
        """(ops key, m, k, n, trans_a, trans_b) -> calls, summed over threads."""
        return self.timer.gemm_shapes()

    @property
    def sync_points(self) -> int:
        """The number of host-device syncs (to_float / to_host / synchronize) recorded, over all
        threads."""
        return self.timer.sync_points()

    @property
    def events(self) -> list:
        """Trace events: (name, category, start, seconds, thread ident)."""
        return self.timer.events

    @property
    def dropped_events(self) -> int:
        """Trace events not kept because `max_events` was reached."""
        return self.timer.dropped_events

    @property
    def ops_list(self) -> list:
        """The Ops objects profiled (the wrapped ones, not the proxies)."""
        return list(self._ops_by_key.values())

    @property
    def device_sync(self) -> bool:
        """Whether regions are bracketed by device synchronization (device backends)."""
        return any(p._nnx_sync is not None for p in self._proxies.values())

    # -- results ------------------------------------------------------------------------------
    def gemm_replay(self) -> dict:
        """{(ops key, m, k, n, ta, tb): seconds per call} of the recorded GEMM shapes."""
        if self._gemm_replay is None:
            self._gemm_replay = replay_gemms(self.gemm_shapes, self._ops_by_key)
        return self._gemm_replay

    def call_overhead_s(self) -> float:
        """Estimated cost of one timed call (measured on a no-op, this process)."""
        return call_overhead_s()

    def summary(self) -> dict:
        """Everything `report()` prints, as a dict (JSON-able)."""
        return _summary(self)

    def report(self, top: int = 25) -> str:
        """The per-layer and per-kernel tables, as text."""
        return _report(self, top)

    def export_chrome_trace(self, path) -> str:
        """Write the timeline as Chrome trace JSON (chrome://tracing, ui.perfetto.dev)."""
        return _export_chrome_trace(self, path)


def profile(model=None, **options) -> Profiler:
    """A profiler for `with` blocks: `with profile(model) as prof:` profiles that model; with no
    model, every model used inside the block. Options: sync (default: on device backends), nvtx
    (default: on cupy), trace (keep events for the Chrome trace), max_events, replay_gemms
    (GEMM share)."""
    return Profiler(model, **options)
