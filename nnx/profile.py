"""Per-layer and per-kernel profiling of any training code.

    with nnx.profile.profile(model) as prof:      # or profile(): every model used in the block
        model.fit(x, y, epochs=1)
    print(prof.report())
    prof.export_chrome_trace("trace.json")        # chrome://tracing or https://ui.perfetto.dev

How it works. On entry the profiler sets *instance attributes* that shadow methods with timing
wrappers: every kernel of the model's bound `Ops` object, `forward`/`backward` of every leaf
layer, the optimizer's `update`, and the model's loss. On exit it deletes them (or puts back
what was there), so the objects resolve to their classes' methods again: with profiling off
there is no wrapper, no flag, no check anywhere in the hot path. `profile()` without a model
also patches a few `Model` entry points (fit, train_step, evaluate, predict, ...) for the
duration of the block, so that every model created or used inside it gets hooked on first use.
These class patches are process-wide while the block runs (other threads see them too).

What is measured
- wall time of the block; per layer: forward and backward time and calls; the optimizer update;
  the loss; "other" = the wall time outside all of those (batching, host checks, Python).
- per kernel: calls, total (inclusive) and self time (minus kernels called inside it: the
  reference `dense_forward` calls `activation_forward`, which calls `relu`), category.
- GEMM share. Kernels are classed "gemm" (dense, conv, recurrent: GEMMs plus their epilogue),
  "elementwise" (activations, losses, optimizer updates, dropout, pooling, norms: memory-bound
  passes), "transfer" and "sync". Inside a dense kernel the BLAS call and the epilogue cannot be
  told apart without patching NumPy, so the profiler records each GEMM's shape (m, k, n) as it
  goes and, in `report()`, *replays* every distinct shape on the backend's `xp.matmul` a few
  times: "BLAS (replayed)" = sum over calls of the replayed time, "GEMM share" = that / kernel
  time. The rest of the dense kernels' time is their epilogue (bias, activation, its
  derivative, the bias-gradient reduction).
- sync points: calls of `ops.to_float`, `ops.to_host` and `ops.synchronize` by the code under
  test (each one a host-device round trip on a GPU backend).

Perturbation. On device backends (CuPy) every timed region is bracketed by `ops.synchronize()`
so that times belong to the region that queued the work; this removes the overlap of host and
device and makes the profiled run slower than an unprofiled one. On CuPy each region is also an
NVTX range (visible in Nsight Systems). On the CPU backends each wrapped call costs about a
microsecond; `report()` states the estimate, and `nnx profile` measures the run with and
without profiling.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import threading
import time
from collections import defaultdict

__all__ = ["Profiler", "profile"]

# Ops methods that are not kernels (setup, allocation, randomness): never wrapped.
_NOT_KERNELS = {"seed", "zeros", "empty", "random_uniform", "random_normal", "permutation",
                "warmup", "device_dataset"}
_SYNC = {"to_float", "to_host", "synchronize"}
_TRANSFER = {"asarray", "take_batch"}
_GEMM_WORDS = ("dense_", "conv", "lstm", "gru", "rnn", "attention", "matmul", "linear")
_MODEL_ENTRY = ("fit", "train_step", "evaluate", "predict", "loss_and_grads", "__call__")


def kernel_category(name: str) -> str:
    if name in _SYNC:
        return "sync"
    if name in _TRANSFER:
        return "transfer"
    if any(w in name for w in _GEMM_WORDS) and "dropout" not in name:
        return "gemm"
    return "elementwise"


class _Stat:
    __slots__ = ("calls", "total", "self_time")

    def __init__(self):
        self.calls = 0
        self.total = 0.0
        self.self_time = 0.0


class _LossProxy:
    """Stands in for `model.loss` while profiling: times `__call__`, delegates the rest."""

    def __init__(self, loss, prof):
        self._nnx_loss = loss
        self._nnx_prof = prof
        self._nnx_name = f"loss:{getattr(loss, 'name', type(loss).__name__)}"

    def __call__(self, *args, **kwargs):
        return self._nnx_prof._timed(self._nnx_loss, self._nnx_name, "loss", args, kwargs)

    def __getattr__(self, name):
        return getattr(self._nnx_loss, name)


_active = threading.local()


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
        self.stats: dict[str, _Stat] = defaultdict(_Stat)
        self.categories: dict[str, str] = {}
        self.layer_types: dict[str, str] = {}
        self.gemm_shapes: dict[tuple, int] = defaultdict(int)  # (ops id, m, k, n, ta, tb) -> calls
        self.events: list = []  # (name, cat, t0, dur, tid)
        self.dropped_events = 0
        self.sync_points = 0
        self.wall_s = None
        self._t0 = None
        self._restore: list = []  # (obj, attr, had_own, old_value)
        self._class_patches: list = []
        self._hooked_models: set[int] = set()
        self._hooked_ops: dict[int, object] = {}
        self._tls = threading.local()
        self._ops_list: list = []
        self._gemm_replay = None
        self._call_overhead_s = None
        self._device = False
        self._sync_fn = None
        self._nvtx = None
        self._loss_models: list = []

    # -- context --------------------------------------------------------------------------
    def __enter__(self):
        if getattr(_active, "prof", None) is not None:
            raise RuntimeError("nnx.profile: a profiler is already active in this thread")
        _active.prof = self
        self._t0 = time.perf_counter()
        try:
            if self.model is not None:
                self.hook_model(self.model)
            else:
                self._patch_model_class()
        except BaseException:
            self._unhook()
            _active.prof = None
            raise
        return self

    def __exit__(self, *exc):
        for ops in self._ops_list:
            if not getattr(ops, "on_host", True):
                with contextlib.suppress(Exception):
                    type(ops).synchronize(ops)
        self.wall_s = time.perf_counter() - self._t0
        self._unhook()
        _active.prof = None
        return False

    # -- hooking --------------------------------------------------------------------------
    def _set(self, obj, attr, value):
        own = attr in getattr(obj, "__dict__", {})
        self._restore.append((obj, attr, own, obj.__dict__.get(attr) if own else None))
        setattr(obj, attr, value)

    def _unhook(self):
        for model in self._loss_models:  # whatever loss the model has now, unwrapped
            loss = model.__dict__.get("loss")
            if isinstance(loss, _LossProxy):
                model.loss = loss._nnx_loss
        self._loss_models.clear()
        for obj, attr, own, old in reversed(self._restore):
            if own:
                setattr(obj, attr, old)
            else:
                with contextlib.suppress(AttributeError):
                    delattr(obj, attr)
        self._restore.clear()
        for cls, attr, old in reversed(self._class_patches):
            setattr(cls, attr, old)
        self._class_patches.clear()

    def _patch_model_class(self):
        from .model import Model

        prof = self

        def make(name, orig):
            if name == "__init__":
                def patched_init(model, *a, **k):
                    orig(model, *a, **k)
                    prof.hook_model(model)
                return patched_init

            def patched(model, *a, **k):
                if id(model) not in prof._hooked_models:
                    prof.hook_model(model)
                return orig(model, *a, **k)
            return patched

        for name in ("__init__", *_MODEL_ENTRY):
            orig = Model.__dict__.get(name)
            if orig is None:
                continue
            self._class_patches.append((Model, name, orig))
            setattr(Model, name, make(name, orig))

    def hook_model(self, model) -> None:
        """Wrap the kernels of `model.ops`, its leaf layers, optimizer and loss."""
        if id(model) in self._hooked_models:
            return
        self._hooked_models.add(id(model))
        self._hook_ops(model.ops)
        for layer in model.layers:
            self._hook_layer(layer)
        self._hook_optimizer(model)
        self._proxy_loss(model)
        orig_compile = model.compile  # bound method of the class (or an earlier patch)
        prof = self

        def compile(*a, **k):
            out = orig_compile(*a, **k)
            prof._hook_optimizer(model)
            prof._proxy_loss(model)
            return out

        self._set(model, "compile", compile)

    def _proxy_loss(self, model):
        loss = model.__dict__.get("loss")
        if loss is None or isinstance(loss, _LossProxy):
            return
        model.loss = _LossProxy(loss, self)
        self._loss_models.append(model)

    def _hook_optimizer(self, model):
        opt = getattr(model, "optimizer", None)
        if opt is None or "update" in opt.__dict__:
            return
        self._set(opt, "update", self._wrap(opt.update, f"optimizer:{type(opt).__name__} update",
                                            "optimizer"))

    def _hook_layer(self, layer):
        if "forward" in layer.__dict__:  # already hooked (a layer shared by two models)
            return
        self.layer_types[layer.name] = type(layer).__name__
        for what in ("forward", "backward"):
            self._set(layer, what, self._wrap(getattr(layer, what),
                                              f"layer:{layer.name} {what}", "layer"))

    def _hook_ops(self, ops):
        if id(ops) in self._hooked_ops:
            return
        self._hooked_ops[id(ops)] = ops
        self._ops_list.append(ops)
        on_device = not getattr(ops, "on_host", True)
        self._device = self._device or on_device
        if self.sync is None:
            self._sync_fn = (lambda: type(ops).synchronize(ops)) if on_device else None
        else:
            self._sync_fn = (lambda: type(ops).synchronize(ops)) if self.sync else None
        if self.nvtx is None or self.nvtx:
            nvtx = None
            if on_device:
                with contextlib.suppress(Exception):
                    from cupy.cuda import nvtx  # noqa: F811
            self._nvtx = nvtx
        else:
            self._nvtx = None
        cls = type(ops)
        for name in dir(cls):
            if name.startswith("_") or name in _NOT_KERNELS:
                continue
            attr = getattr(cls, name, None)
            if not callable(attr) or isinstance(attr, type):
                continue
            if isinstance(inspect.getattr_static(cls, name), (staticmethod, classmethod)):
                continue  # helpers, not methods of the bound object
            cat = kernel_category(name)
            self.categories[f"kernel:{name}"] = cat
            bound = getattr(ops, name)
            if name in _SYNC:
                self._set(ops, name, self._wrap_sync(bound, f"kernel:{name}"))
            elif name in ("dense_forward", "dense_backward"):
                self._set(ops, name, self._wrap_dense(bound, name, ops))
            else:
                self._set(ops, name, self._wrap(bound, f"kernel:{name}", cat))

    # -- timing -----------------------------------------------------------------------------
    def _stack(self):
        st = getattr(self._tls, "stack", None)
        if st is None:
            st = self._tls.stack = []
        return st

    def _timed(self, fn, name, cat, args, kwargs):
        stack = self._stack()
        sync = self._sync_fn if self._device else None
        nvtx = self._nvtx
        if sync:
            sync()
        if nvtx:
            nvtx.RangePush(name)
        stack.append(0.0)
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            if sync:
                sync()
            t1 = time.perf_counter()
            if nvtx:
                nvtx.RangePop()
            child = stack.pop()
            dur = t1 - t0
            if stack:
                stack[-1] += dur
            st = self.stats[name]
            st.calls += 1
            st.total += dur
            st.self_time += dur - child
            if self.trace:
                if len(self.events) < self.max_events:
                    self.events.append((name, cat, t0, dur, threading.get_ident()))
                else:
                    self.dropped_events += 1

    def _wrap(self, fn, name, cat):
        timed = self._timed

        def wrapper(*args, **kwargs):
            return timed(fn, name, cat, args, kwargs)

        wrapper.__wrapped__ = fn
        wrapper._nnx_profiled = True
        return wrapper

    def _wrap_sync(self, fn, name):
        timed = self._timed
        prof = self

        tls = self._tls

        def wrapper(*args, **kwargs):
            if getattr(tls, "in_sync", False):  # to_float calls to_host: one sync point
                return timed(fn, name, "sync", args, kwargs)
            prof.sync_points += 1
            tls.in_sync = True
            try:
                return timed(fn, name, "sync", args, kwargs)
            finally:
                tls.in_sync = False

        wrapper.__wrapped__ = fn
        wrapper._nnx_profiled = True
        return wrapper

    def _wrap_dense(self, fn, name, ops):
        """dense_forward / dense_backward: also record the GEMM shapes for the replay."""
        timed = self._timed
        shapes = self.gemm_shapes
        key_ops = id(ops)
        forward = name == "dense_forward"
        kname = f"kernel:{name}"

        def wrapper(*args, **kwargs):
            try:
                if forward:
                    x, W = args[0], args[1]
                    k, n = W.shape[0], W.shape[1]
                    m = x.size // k if k else 0
                    shapes[(key_ops, m, k, n, False, False)] += 1
                else:
                    _dy, x, W = args[0], args[1], args[2]
                    k, n = W.shape[0], W.shape[1]
                    m = x.size // k if k else 0
                    shapes[(key_ops, k, m, n, True, False)] += 1  # dW = x^T @ dz
                    need_dx = args[5] if len(args) > 5 else kwargs.get("need_dx", True)
                    if need_dx:
                        shapes[(key_ops, m, n, k, False, True)] += 1  # dx = dz @ W^T
            except (AttributeError, IndexError, TypeError, ValueError):
                pass
            return timed(fn, kname, "gemm", args, kwargs)

        wrapper.__wrapped__ = fn
        wrapper._nnx_profiled = True
        return wrapper

    # -- results ----------------------------------------------------------------------------
    def _replay(self, repeats: int = 7) -> dict:
        """{(ops id, m, k, n, ta, tb): seconds per call} by timing xp.matmul on that shape."""
        if self._gemm_replay is not None:
            return self._gemm_replay
        out = {}
        import numpy as np

        for key in self.gemm_shapes:
            ops_id, m, k, n, ta, tb = key
            ops = self._hooked_ops.get(ops_id)
            if ops is None or m * k * n == 0:
                continue
            rng = np.random.default_rng(0)
            A = ops.asarray(rng.standard_normal((k, m) if ta else (m, k), dtype=np.float32))
            B = ops.asarray(rng.standard_normal((n, k) if tb else (k, n), dtype=np.float32))
            A, B = (A.T if ta else A), (B.T if tb else B)
            C = type(ops).empty(ops, (m, n))
            mm = ops.xp.matmul
            sync = functools.partial(type(ops).synchronize, ops)
            mm(A, B, out=C)
            times = []
            for _ in range(repeats):
                sync()
                t0 = time.perf_counter()
                mm(A, B, out=C)
                sync()
                times.append(time.perf_counter() - t0)
            times.sort()
            out[key] = times[len(times) // 2]
        self._gemm_replay = out
        return out

    def call_overhead_s(self) -> float:
        """Estimated cost of one wrapped call (measured on a no-op, this process)."""
        if self._call_overhead_s is None:
            probe = Profiler(trace=True)
            probe._t0 = time.perf_counter()
            f = probe._wrap(lambda: None, "probe", "probe")
            n = 20000
            t0 = time.perf_counter()
            for _ in range(n):
                f()
            wrapped = (time.perf_counter() - t0) / n
            g = lambda: None  # noqa: E731
            t0 = time.perf_counter()
            for _ in range(n):
                g()
            self._call_overhead_s = max(0.0, wrapped - (time.perf_counter() - t0) / n)
        return self._call_overhead_s

    def summary(self) -> dict:
        """Everything `report()` prints, as a dict (JSON-able)."""
        wall = self.wall_s if self.wall_s is not None else time.perf_counter() - self._t0
        layers = {}
        for name, st in self.stats.items():
            if not name.startswith("layer:"):
                continue
            lname, what = name[len("layer:"):].rsplit(" ", 1)
            d = layers.setdefault(lname, {"type": self.layer_types.get(lname, "?"),
                                          "forward_s": 0.0, "forward_calls": 0,
                                          "backward_s": 0.0, "backward_calls": 0})
            d[f"{what}_s"] += st.total
            d[f"{what}_calls"] += st.calls
        # order layers as hooked (model order)
        order = list(self.layer_types)
        layers = {k: layers[k] for k in order if k in layers}
        kernels = {}
        for name, st in self.stats.items():
            if name.startswith("kernel:"):
                kernels[name[len("kernel:"):]] = {
                    "calls": st.calls, "total_s": st.total, "self_s": st.self_time,
                    "category": self.categories.get(name, kernel_category(name[7:]))}
        phases = {"forward": sum(v["forward_s"] for v in layers.values()),
                  "backward": sum(v["backward_s"] for v in layers.values())}
        phases["loss"] = sum(st.total for n, st in self.stats.items() if n.startswith("loss:"))
        phases["optimizer"] = sum(st.total for n, st in self.stats.items()
                                  if n.startswith("optimizer:"))
        counted = sum(phases.values())
        phases["other"] = max(0.0, wall - counted)
        kernel_time = sum(k["self_s"] for k in kernels.values())
        by_cat = defaultdict(float)
        for k in kernels.values():
            by_cat[k["category"]] += k["self_s"]
        out = {
            "wall_s": wall, "layers": layers, "kernels": kernels, "phases": phases,
            "kernel_time_s": kernel_time, "category_s": dict(by_cat),
            "sync_points": self.sync_points, "events": len(self.events),
            "dropped_events": self.dropped_events,
            "wrapped_calls": sum(st.calls for st in self.stats.values()),
            "optimizer": {n[len("optimizer:"):]: {"calls": st.calls, "total_s": st.total}
                          for n, st in self.stats.items() if n.startswith("optimizer:")},
            "loss": {n[len("loss:"):]: {"calls": st.calls, "total_s": st.total}
                     for n, st in self.stats.items() if n.startswith("loss:")},
            "device_sync_around_regions": bool(self._device and self._sync_fn),
        }
        if self.replay_gemms and self.gemm_shapes:
            replay = self._replay()
            blas = sum(calls * replay.get(key, 0.0) for key, calls in self.gemm_shapes.items())
            dense_self = sum(kernels.get(n, {}).get("self_s", 0.0)
                             for n in ("dense_forward", "dense_backward"))
            clipped = blas > dense_self  # the replay ran slower than the real calls (noise)
            blas = min(blas, dense_self)
            out["gemm"] = {
                "blas_replayed_s": blas,
                "replay_clipped": clipped,
                "dense_kernels_s": dense_self,
                "epilogue_s": max(0.0, dense_self - blas),
                "shapes": [{"m": k[1], "k": k[2], "n": k[3], "trans_a": k[4], "trans_b": k[5],
                            "calls": c, "replayed_s_per_call": replay.get(k)}
                           for k, c in sorted(self.gemm_shapes.items(), key=lambda kv: kv[0][1:])],
            }
            out["gemm_share"] = blas / kernel_time if kernel_time else 0.0
        est = self.call_overhead_s() * out["wrapped_calls"]
        out["overhead_estimate_s"] = est
        return out

    def report(self, top: int = 25) -> str:
        """The per-layer and per-kernel tables, as text."""
        s = self.summary()
        wall = s["wall_s"] or 1e-12
        ms = lambda x: f"{x * 1e3:9.2f}"  # noqa: E731
        pct = lambda x: f"{100 * x / wall:5.1f}%"  # noqa: E731
        backends = ", ".join(sorted({getattr(o, "name", "?") for o in self._ops_list})) or "-"
        lines = [f"nnx profile: wall {s['wall_s'] * 1e3:.1f} ms, backend {backends}"
                 + (" (synchronized around every region: device timings serialized)"
                    if s["device_sync_around_regions"] else "")]
        lines.append("")
        lines.append(f"{'layer':<22}{'type':<12}{'fwd ms':>9}{'calls':>7}{'bwd ms':>9}{'calls':>7}"
                     f"{'total ms':>10}{'% wall':>8}")
        for name, d in s["layers"].items():
            tot = d["forward_s"] + d["backward_s"]
            lines.append(f"{name:<22}{d['type']:<12}{ms(d['forward_s'])}{d['forward_calls']:>7}"
                         f"{ms(d['backward_s'])}{d['backward_calls']:>7}{ms(tot):>10} "
                         f"{pct(tot):>7}")
        ph = s["phases"]
        lines.append("")
        lines.append("phases: " + ", ".join(f"{k} {v * 1e3:.1f} ms ({100 * v / wall:.0f}%)"
                                            for k, v in ph.items()))
        for name, d in {**s["loss"], **s["optimizer"]}.items():
            lines.append(f"  {name}: {d['calls']} calls, {d['total_s'] * 1e3:.1f} ms")
        lines.append("")
        lines.append(f"{'kernel':<28}{'category':<12}{'calls':>7}{'total ms':>10}{'self ms':>10}"
                     f"{'mean us':>9}{'% wall':>8}")
        ks = sorted(s["kernels"].items(), key=lambda kv: -kv[1]["self_s"])
        for name, d in ks[:top]:
            mean = d["total_s"] / d["calls"] * 1e6 if d["calls"] else 0.0
            lines.append(f"{name:<28}{d['category']:<12}{d['calls']:>7}{ms(d['total_s']):>10}"
                         f"{ms(d['self_s']):>10}{mean:>9.1f} {pct(d['self_s']):>7}")
        if len(ks) > top:
            lines.append(f"... {len(ks) - top} more kernels")
        kt = s["kernel_time_s"] or 1e-12
        lines.append("")
        cats = ", ".join(f"{c} {v * 1e3:.1f} ms ({100 * v / kt:.0f}%)"
                         for c, v in sorted(s["category_s"].items(), key=lambda kv: -kv[1]))
        lines.append(f"kernel time {kt * 1e3:.1f} ms ({100 * kt / wall:.0f}% of wall): {cats}")
        if "gemm" in s:
            g = s["gemm"]
            lines.append(f"GEMM share {100 * s['gemm_share']:.0f}% of kernel time: BLAS "
                         f"(replayed) {g['blas_replayed_s'] * 1e3:.1f} ms of "
                         f"{g['dense_kernels_s'] * 1e3:.1f} ms in dense kernels; "
                         f"epilogues {g['epilogue_s'] * 1e3:.1f} ms"
                         + (" (replay slower than the run: clipped; the host is noisy)"
                            if g["replay_clipped"] else ""))
        lines.append(f"host-device sync points (to_float/to_host/synchronize): {s['sync_points']}")
        over = s["overhead_estimate_s"]
        lines.append(f"profiler: {s['wrapped_calls']} wrapped calls, estimated overhead "
                     f"{over * 1e3:.1f} ms ({100 * over / wall:.1f}% of wall)"
                     + (f"; {s['dropped_events']} trace events dropped"
                        if s["dropped_events"] else ""))
        return "\n".join(lines)

    def export_chrome_trace(self, path) -> str:
        """Write the timeline as Chrome trace JSON (chrome://tracing, ui.perfetto.dev)."""
        pid = os.getpid()
        tids = {}
        events = [{"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
                   "args": {"name": "nnx"}}]
        base = self._t0
        for name, cat, t0, dur, tid in self.events:
            if tid not in tids:
                tids[tid] = len(tids) + 1
                events.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tids[tid],
                               "args": {"name": f"python thread {tids[tid]}"}})
            events.append({"name": name, "cat": cat, "ph": "X", "pid": pid, "tid": tids[tid],
                           "ts": round((t0 - base) * 1e6, 3), "dur": round(dur * 1e6, 3)})
        if self.wall_s is not None:
            events.append({"name": "profile", "cat": "profile", "ph": "X", "pid": pid,
                           "tid": 1, "ts": 0.0, "dur": round(self.wall_s * 1e6, 3)})
        doc = {"traceEvents": events, "displayTimeUnit": "ms",
               "otherData": {"producer": "nnx.profile", "wall_s": self.wall_s}}
        with open(path, "w") as f:
            json.dump(doc, f)
        return os.fspath(path)


def profile(model=None, **options) -> Profiler:
    """A profiler for `with` blocks: `with profile(model) as prof:` hooks that model; with no
    model, every model created or used inside the block. Options: sync (default: on device
    backends), nvtx (default: on cupy), trace (keep events for the Chrome trace),
    replay_gemms (GEMM share)."""
    return Profiler(model, **options)
