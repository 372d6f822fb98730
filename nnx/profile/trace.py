"""Chrome trace export (chrome://tracing, https://ui.perfetto.dev): one complete ("X") event
per timed region or kernel call, one track per Python thread, and the whole block."""

from __future__ import annotations

import json
import os

__all__ = ["chrome_trace", "export_chrome_trace"]


def chrome_trace(events, t0: float, wall_s: float | None) -> dict:
    """The trace document for `events` ((name, cat, start, seconds, thread ident) tuples,
    times from time.perf_counter), with `t0` as time zero."""
    pid = os.getpid()
    tids: dict[int, int] = {}
    out = [{"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": "nnx"}}]
    for name, cat, start, dur, ident in events:
        tid = tids.get(ident)
        if tid is None:
            tid = tids[ident] = len(tids) + 1
            out.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
                        "args": {"name": f"python thread {tid}"}})
        out.append({"name": name, "cat": cat, "ph": "X", "pid": pid, "tid": tid,
                    "ts": round((start - t0) * 1e6, 3), "dur": round(dur * 1e6, 3)})
    if wall_s is not None:
        out.append({"name": "profile", "cat": "profile", "ph": "X", "pid": pid, "tid": 1,
                    "ts": 0.0, "dur": round(wall_s * 1e6, 3)})
    return {"traceEvents": out, "displayTimeUnit": "ms",
            "otherData": {"producer": "nnx.profile", "wall_s": wall_s}}


def export_chrome_trace(prof, path) -> str:
    """Write `prof`'s timeline as Chrome trace JSON to `path`; returns the path."""
    doc = chrome_trace(list(prof.timer.events), prof._t0, prof.wall_s)
    with open(path, "w") as f:
        json.dump(doc, f)
    return os.fspath(path)
