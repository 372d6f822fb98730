"""A profiler's results: `summary(prof)` (a JSON-able dict), `report(prof)` (the text tables),
the GEMM replay behind "GEMM share", and the estimate of the profiler's own cost per call."""

from __future__ import annotations

import functools
import time
from collections import defaultdict

from .ops_proxy import kernel_category
from .timer import Timer

__all__ = ["call_overhead_s", "replay_gemms", "report", "summary"]


def replay_gemms(shapes: dict, ops_by_key: dict, repeats: int = 7) -> dict:
    """{(ops key, m, k, n, ta, tb): seconds per call}: the median of `repeats` timed
    `xp.matmul` calls on that shape (float32, random data), on the Ops the shape ran on."""
    import numpy as np

    out = {}
    for key in shapes:
        ops_key, m, k, n, ta, tb = key
        ops = ops_by_key.get(ops_key)
        if ops is None or m * k * n == 0:
            continue
        rng = np.random.default_rng(0)
        A = ops.asarray(rng.standard_normal((k, m) if ta else (m, k), dtype=np.float32))
        B = ops.asarray(rng.standard_normal((n, k) if tb else (k, n), dtype=np.float32))
        A, B = (A.T if ta else A), (B.T if tb else B)
        C = ops.empty((m, n))
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
    return out


@functools.lru_cache(maxsize=1)
def call_overhead_s(n: int = 20000) -> float:
    """Estimated cost of one timed call (a ProfiledOps kernel method on a no-op), measured once
    per process: the timed call minus the plain call."""
    timer = Timer(trace=True, max_events=n)

    def noop(obj):
        return None

    def timed(obj):
        return timer.call(noop, obj, "probe", "probe", None, None, (), {})

    t0 = time.perf_counter()
    for _ in range(n):
        timed(None)
    wrapped = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for _ in range(n):
        noop(None)
    return max(0.0, wrapped - (time.perf_counter() - t0) / n)


def summary(prof) -> dict:
    """Everything `report()` prints, as a dict (JSON-able)."""
    wall = prof.wall_s if prof.wall_s is not None else time.perf_counter() - prof._t0
    stats = prof.stats
    layers = {}
    for name, st in stats.items():
        if not name.startswith("layer:"):
            continue
        lname, what = name[len("layer:"):].rsplit(" ", 1)
        d = layers.setdefault(lname, {"type": prof.layer_types.get(lname, "?"),
                                      "forward_s": 0.0, "forward_calls": 0,
                                      "backward_s": 0.0, "backward_calls": 0})
        d[f"{what}_s"] += st.total
        d[f"{what}_calls"] += st.calls
    # layers in model order (as hooked), then any seen only while running
    order = [k for k in prof.layer_types if k in layers]
    layers = {k: layers[k] for k in order + [k for k in layers if k not in prof.layer_types]}
    kernels = {}
    for name, st in stats.items():
        if name.startswith("kernel:"):
            short = name[len("kernel:"):]
            kernels[short] = {"calls": st.calls, "total_s": st.total, "self_s": st.self_time,
                              "category": kernel_category(short)}
    phases = {"forward": sum(v["forward_s"] for v in layers.values()),
              "backward": sum(v["backward_s"] for v in layers.values())}
    phases["loss"] = sum(st.total for n, st in stats.items() if n.startswith("loss:"))
    phases["optimizer"] = sum(st.total for n, st in stats.items() if n.startswith("optimizer:"))
    phases["other"] = max(0.0, wall - sum(phases.values()))
    kernel_time = sum(k["self_s"] for k in kernels.values())
    by_cat = defaultdict(float)
    for k in kernels.values():
        by_cat[k["category"]] += k["self_s"]
    timer = prof.timer
    out = {
        "wall_s": wall, "layers": layers, "kernels": kernels, "phases": phases,
        "kernel_time_s": kernel_time, "category_s": dict(by_cat),
        "sync_points": timer.sync_points(), "events": len(timer.events),
        "dropped_events": timer.dropped_events,
        "wrapped_calls": sum(st.calls for st in stats.values()),
        "optimizer": {n[len("optimizer:"):]: {"calls": st.calls, "total_s": st.total}
                      for n, st in stats.items() if n.startswith("optimizer:")},
        "loss": {n[len("loss:"):]: {"calls": st.calls, "total_s": st.total}
                 for n, st in stats.items() if n.startswith("loss:")},
        "device_sync_around_regions": prof.device_sync,
    }
    shapes = prof.gemm_shapes
    if prof.replay_gemms and shapes:
        replay = prof.gemm_replay()
        blas = sum(calls * replay.get(key, 0.0) for key, calls in shapes.items())
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
                       for k, c in sorted(shapes.items(), key=lambda kv: kv[0][1:])],
        }
        out["gemm_share"] = blas / kernel_time if kernel_time else 0.0
    out["overhead_estimate_s"] = call_overhead_s() * out["wrapped_calls"]
    return out


def report(prof, top: int = 25) -> str:
    """The per-layer and per-kernel tables, as text."""
    s = summary(prof)
    wall = s["wall_s"] or 1e-12
    ms = lambda x: f"{x * 1e3:9.2f}"  # noqa: E731
    pct = lambda x: f"{100 * x / wall:5.1f}%"  # noqa: E731
    backends = ", ".join(sorted({getattr(o, "name", "?") for o in prof.ops_list})) or "-"
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
    lines.append("")
    lines.append("phases: " + ", ".join(f"{k} {v * 1e3:.1f} ms ({100 * v / wall:.0f}%)"
                                        for k, v in s["phases"].items()))
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
    lines.append(f"profiler: {s['wrapped_calls']} timed calls, estimated overhead "
                 f"{over * 1e3:.1f} ms ({100 * over / wall:.1f}% of wall)"
                 + (f"; {s['dropped_events']} trace events dropped"
                    if s["dropped_events"] else ""))
    return "\n".join(lines)
