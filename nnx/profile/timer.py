"""The profiler's clock: timed calls (kernels) and open/close regions (layers, loss, optimizer),
with self time, per-thread tables and the trace events.

Every thread that runs profiled code gets its own table (call counts, times, GEMM shapes, sync
points) and its own stack of open regions, so that a `predict` in another thread during a
profiled `fit` neither races on the counters nor nests into the training thread's regions. The
tables are summed when results are read.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

__all__ = ["Stat", "Timer"]


class Stat:
    __slots__ = ("calls", "total", "self_time")

    def __init__(self):
        self.calls = 0
        self.total = 0.0
        self.self_time = 0.0


class _Table:
    """One thread's results and its stack. `stack` holds the time of the children of each open
    region (kernel calls and regions alike); `frames` the (key, name, cat, depth, nvtx, t0) of the
    open regions, whose child time is `stack[depth]`."""

    __slots__ = ("stats", "gemm_shapes", "sync_points", "in_sync", "stack", "frames")

    def __init__(self):
        self.stats: dict[str, Stat] = defaultdict(Stat)
        self.gemm_shapes: dict[tuple, int] = defaultdict(int)
        self.sync_points = 0
        self.in_sync = False
        self.stack: list[float] = []
        self.frames: list[tuple] = []


class Timer:
    """Collects timings from any number of threads (see the module docstring)."""

    def __init__(self, trace: bool = True, max_events: int = 2_000_000):
        self.trace = trace
        self.max_events = max_events
        self.events: list = []  # (name, cat, t0, dur, thread ident)
        self.dropped_events = 0
        self._tls = threading.local()
        self._tables: list[_Table] = []
        self._lock = threading.Lock()

    def table(self) -> _Table:
        table = getattr(self._tls, "table", None)
        if table is None:
            table = self._tls.table = _Table()
            with self._lock:
                self._tables.append(table)
        return table

    # -- recording --------------------------------------------------------------------------
    def _record(self, table, name, cat, t0, dur, child):
        stack = table.stack
        if stack:
            stack[-1] += dur
        st = table.stats[name]
        st.calls += 1
        st.total += dur
        st.self_time += dur - child
        if self.trace:
            if len(self.events) < self.max_events:
                self.events.append((name, cat, t0, dur, threading.get_ident()))
            else:
                self.dropped_events += 1

    def call(self, fn, obj, name, cat, sync, nvtx, args, kwargs):
        """`fn(obj, *args, **kwargs)`, timed as `name` (a kernel)."""
        table = self.table()
        stack = table.stack
        if sync is not None:
            sync()
        if nvtx is not None:
            nvtx.RangePush(name)
        stack.append(0.0)
        depth = len(stack)
        t0 = time.perf_counter()
        try:
            return fn(obj, *args, **kwargs)
        finally:
            if sync is not None:
                sync()
            t1 = time.perf_counter()
            if nvtx is not None:
                nvtx.RangePop()
            if len(stack) > depth:  # regions opened inside and never closed (they raised)
                _truncate(table, depth)
            child = stack.pop()
            self._record(table, name, cat, t0, t1 - t0, child)

    def call_sync(self, fn, obj, name, sync, nvtx, args, kwargs):
        """A sync point of the code under test: counted once, however deeply nested."""
        table = self.table()
        if table.in_sync:
            return self.call(fn, obj, name, "sync", sync, nvtx, args, kwargs)
        table.sync_points += 1
        table.in_sync = True
        try:
            return self.call(fn, obj, name, "sync", sync, nvtx, args, kwargs)
        finally:
            table.in_sync = False

    def gemm(self, ops_key, m, k, n, trans_a, trans_b) -> None:
        self.table().gemm_shapes[(ops_key, m, k, n, trans_a, trans_b)] += 1

    def open(self, key, name, cat, sync=None, nvtx=None) -> None:
        """Start region `name` (closed by `close(key)` in the same thread)."""
        table = self.table()
        if sync is not None:
            sync()
        if nvtx is not None:
            nvtx.RangePush(name)
        table.stack.append(0.0)
        table.frames.append((key, name, cat, len(table.stack) - 1, nvtx,
                             time.perf_counter()))

    def close(self, key, sync=None) -> None:
        """End the innermost open region `key` of this thread; regions opened inside it and
        left open (their code raised) are dropped. A key with no open region is ignored."""
        if sync is not None:
            sync()
        t1 = time.perf_counter()
        table = self.table()
        frames = table.frames
        for i in range(len(frames) - 1, -1, -1):
            if frames[i][0] == key:
                break
        else:
            return
        _key, name, cat, depth, nvtx, t0 = frames[i]
        _truncate(table, depth + 1)
        frames.pop()
        if nvtx is not None:
            nvtx.RangePop()
        child = table.stack.pop()
        self._record(table, name, cat, t0, t1 - t0, child)

    def drop_open(self) -> None:
        """Forget this thread's open regions (a step that raised left them open)."""
        table = self.table()
        if table.frames:
            _truncate(table, table.frames[0][3])

    # -- results ----------------------------------------------------------------------------
    def _snapshot(self) -> list[_Table]:
        with self._lock:
            return list(self._tables)

    def stats(self) -> dict[str, Stat]:
        """name -> Stat, summed over threads, in order of first appearance."""
        out: dict[str, Stat] = {}
        for table in self._snapshot():
            for name, st in list(table.stats.items()):
                acc = out.get(name)
                if acc is None:
                    acc = out[name] = Stat()
                acc.calls += st.calls
                acc.total += st.total
                acc.self_time += st.self_time
        return out

    def gemm_shapes(self) -> dict[tuple, int]:
        """(ops key, m, k, n, trans_a, trans_b) -> calls, summed over threads."""
        out: dict[tuple, int] = defaultdict(int)
        for table in self._snapshot():
            for key, calls in list(table.gemm_shapes.items()):
                out[key] += calls
        return dict(out)

    def sync_points(self) -> int:
        return sum(table.sync_points for table in self._snapshot())


def _truncate(table: _Table, n: int) -> None:
    """Keep the first `n` entries of the stack, and the regions that own them."""
    del table.stack[n:]
    frames = table.frames
    while frames and frames[-1][3] >= n:
        nvtx = frames.pop()[4]
        if nvtx is not None:
            nvtx.RangePop()
