"""Runs cases on targets: warm-up (timed apart, reported as compile/first-call time), calibration,
then interleaved rounds across targets.

Interleaving: each round takes one sample of every target of a case, in an order rotated every
round, so that slow phases of the host (vCPU migration, a neighbour's burst) hit all targets
alike instead of whichever happened to run then. Speed-ups are ratios of medians over rounds.
"""

from __future__ import annotations

import gc
import math
import time
import traceback
from dataclasses import dataclass

from .machine import LoadProbe
from .registry import Case, Skip, Target, nan_to_none
from .timing import Stats, calibrate


@dataclass
class RunConfig:
    repeats: int = 15  # rounds (samples per target)
    sample_s: float = 0.02  # target duration of one sample
    warmup: int = 2  # untimed calls after the first (timed) call
    max_case_s: float = 40.0  # rounds are cut so that one case stays within this budget
    min_repeats: int = 3
    # Shared hosts: a round during which other processes kept more than `busy_threshold` CPUs
    # busy is thrown away, and the runner sleeps until they are gone (at most `max_wait_s` per
    # case; after that rounds are kept and the record says how loaded the host was).
    busy_threshold: float | None = 0.5
    max_wait_s: float = 90.0

    @classmethod
    def quick(cls, repeats: int | None = None):
        return cls(repeats=repeats or 3, sample_s=0.004, warmup=1, max_case_s=6.0, min_repeats=2,
                   busy_threshold=None)


class _Subject:
    def __init__(self, case: Case, target: Target):
        self.case, self.target = case, target
        self.fn = None
        self.clock = None
        self.number = 1
        self.first_s = math.nan
        self.stats = Stats()
        self.status = "ok"
        self.reason = ""


def _record(s: _Subject, peaks: dict | None) -> dict:
    case = s.case
    rec = {
        "case": case.name, "suite": case.suite, "target": s.target.name,
        "params": case.params, "flops": case.flops, "bytes": case.bytes, "bound": case.bound,
        "group": case.group, "x": case.x, "status": s.status, "reason": s.reason,
    }
    if s.status != "ok":
        return rec
    st = s.stats
    med = st.median
    rec.update(st.to_dict())
    rec.update({
        "number": s.number, "repeats": st.n, "clock": s.clock.kind,
        "first_call_s": s.first_s,
        # what the first call cost beyond a steady-state call: JIT compilation (or loading it
        # from Numba's cache), first-touch page faults, thread-pool start-up
        "compile_s": max(0.0, s.first_s - med),
    })
    rec.update(throughput(case.flops, case.bytes, st, peaks, case.bound))
    return rec


def throughput(flops, nbytes, st: Stats, peaks: dict | None, bound: str) -> dict:
    out = {}
    med = st.median
    if flops and med > 0:
        out["gflops"] = flops / med / 1e9
        out["gflops_q1"] = flops / st.q3 / 1e9  # slower quartile -> lower throughput
        out["gflops_q3"] = flops / st.q1 / 1e9
    if nbytes and med > 0:
        out["gbps"] = nbytes / med / 1e9
    if peaks:
        if flops and med > 0 and peaks.get("sgemm_gflops"):
            out["frac_sgemm_peak"] = out["gflops"] / peaks["sgemm_gflops"]
        if nbytes and med > 0 and peaks.get("memcpy_gbps"):
            out["frac_memcpy_peak"] = out["gbps"] / peaks["memcpy_gbps"]
        key = "frac_sgemm_peak" if bound == "compute" else "frac_memcpy_peak"
        if key in out:
            out["frac_peak"] = out[key]
    return out


def run_case(case: Case, targets: list[Target], config: RunConfig, peaks: dict | None = None,
             log=None) -> list[dict]:
    """Time one case on every target, interleaved; returns one record per target."""
    subjects = [_Subject(case, t) for t in targets]
    live = []
    for s in subjects:
        try:
            s.fn = case.setup(s.target)
            s.clock = s.target.clock()
            s.first_s = s.clock.time(s.fn, 1)
            if case.number is None:  # fixed-count cases (an epoch) take the first call as warm-up
                for _ in range(config.warmup):
                    s.fn()
            s.target.sync()
            if case.number is not None:
                s.number = case.number
            else:
                s.number = calibrate(s.clock, s.fn, config.sample_s, first_s=None)
            live.append(s)
        except Skip as exc:
            s.status, s.reason = "skipped", str(exc)
        except Exception as exc:  # a broken case must not end the run; the record says why
            s.status = "error"
            s.reason = f"{type(exc).__name__}: {exc}"
            if log:
                log("    " + traceback.format_exc().strip().replace("\n", "\n    "))
    reps = case.repeats or config.repeats
    if live:
        # estimated seconds per round: the sum of one sample of each live target
        per_round = sum(s.number * (s.first_s if case.number else _est(s)) for s in live)
        if per_round > 0 and per_round * reps > config.max_case_s:
            reps = max(config.min_repeats, int(config.max_case_s / per_round))
    probe = LoadProbe() if config.busy_threshold else None
    loads, discarded, waited = [], 0, 0.0
    r = 0
    while r < reps and live:
        k = r % len(live)
        order = live[k:] + live[:k]
        if r % 2:
            order.reverse()
        a = probe.snap() if probe else None
        got = []
        for s in order:
            try:
                got.append((s, s.clock.time(s.fn, s.number)))
            except Exception as exc:
                s.status, s.reason = "error", f"{type(exc).__name__}: {exc}"
                live = [x for x in live if x is not s]
        if probe:
            load = probe.others(a, probe.snap())
            if load > config.busy_threshold and waited < config.max_wait_s:
                discarded += 1  # another process took CPU time during this round: redo it
                waited += probe.wait_idle(config.busy_threshold, config.max_wait_s - waited)
                continue
            loads.append(load)
        for s, t in got:
            s.stats.samples.append(t)
        r += 1
    host = {"rounds_discarded": discarded, "waited_s": round(waited, 2)}
    if loads:
        srt = sorted(loads)
        host["others_cpus_median"] = round(srt[len(srt) // 2], 3)
        host["others_cpus_max"] = round(srt[-1], 3)
    records = [_record(s, peaks) for s in subjects]
    if probe:
        for rec in records:
            rec["host_load"] = host
    for s in subjects:
        s.fn = None
    gc.collect()
    return records


def _est(s: _Subject) -> float:
    """Per-call estimate after calibration: a sample lasts about number * this."""
    try:
        return s.clock.time(s.fn, 1)
    except Exception:
        return s.first_s


def run_cases(cases, targets, config: RunConfig, peaks=None, log=print) -> list[dict]:
    out = []
    for i, case in enumerate(cases):
        t0 = time.perf_counter()
        recs = run_case(case, targets, config, peaks, log)
        out.extend(recs)
        if log:
            parts = []
            for r in recs:
                if r["status"] == "ok":
                    parts.append(f"{r['target']} {fmt_time(r['median_s'])}")
                else:
                    parts.append(f"{r['target']} {r['status']}")
            host = recs[0].get("host_load") if recs else None
            note = ""
            if host and host["rounds_discarded"]:
                note = (f", {host['rounds_discarded']} rounds redone (host busy), "
                        f"waited {host['waited_s']:.0f}s")
            log(f"[{i + 1}/{len(cases)}] {case.name}: {', '.join(parts)} "
                f"({time.perf_counter() - t0:.1f}s{note})")
    return out


def fmt_time(s) -> str:
    s = nan_to_none(s)
    if s is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
        if s >= scale or unit == "ns":
            v = s / scale
            return f"{v:.3g} {unit}" if v < 1000 else f"{v:.0f} {unit}"
    return f"{s:.3g} s"
