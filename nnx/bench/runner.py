"""Runs cases on targets: warm-up (timed apart, reported as compile/first-call time), calibration,
then interleaved rounds across targets.

Interleaving: each round takes one sample of every target of a case, in an order rotated every
round, so that slow phases of the host (vCPU migration, a neighbour's burst) hit all targets
alike instead of whichever happened to run then. Speed-ups are per-round ratios: in each
round, a baseline's time (numpy, torch) over the target's, and the median of those over the
rounds (`speedup_over` in the records).

Remote targets (nnx.bench.remote: the torch targets always) take their samples in a worker
process of their own while this one sleeps on the pipe; a short gap before each remote sample,
and before the first local sample after it, lets the previous process's thread pools go idle.
"""

from __future__ import annotations

import gc
import math
import os
import time
import traceback
from dataclasses import dataclass

from .machine import LoadProbe
from .registry import Case, Skip, nan_to_none
from .remote import WorkerError
from .timing import Stats, calibrate


@dataclass
class RunConfig:
    """How a case is measured: rounds, sample length, warm-up, time budget, host-load
    checks, the gap around remote samples (`quick()`: the CI smoke-test settings)."""
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
    # Sleep before a remote target's sample and before the first local sample after it, so
    # that the spinning thread pools of the process that ran last quiet down first.
    remote_gap_s: float = 0.1

    @classmethod
    def quick(cls, repeats: int | None = None):
        """Small samples, few rounds, no host-load checks: tests the harness, not the speed."""
        return cls(repeats=repeats or 3, sample_s=0.004, warmup=1, max_case_s=6.0, min_repeats=2,
                   busy_threshold=None, remote_gap_s=0.02)


def prepare(case: Case, target, warmup: int, sample_s: float):
    """Set `case` up on a local target: (fn, clock, first_s, number, per_call_s). The first
    call is timed on its own; then `warmup` untimed calls (not for fixed-count cases, whose
    first call is their warm-up) and calibration to samples of about `sample_s`. `per_call_s`
    estimates one steady-state call (for the case's time budget). Raises what setup raises
    (Skip with the reason). The worker of a remote target runs this same function."""
    fn = case.setup(target)
    clock = target.clock()
    first_s = clock.time(fn, 1)
    if case.number is None:
        for _ in range(warmup):
            fn()
    target.sync()
    if case.number is not None:
        return fn, clock, first_s, case.number, first_s
    number = calibrate(clock, fn, sample_s, first_s=None)
    try:
        per_call = clock.time(fn, 1)
    except Exception:
        per_call = first_s
    return fn, clock, first_s, number, per_call


class _Subject:
    """One target's part in one case, in this process."""

    remote = False

    def __init__(self, case: Case, target):
        self.case, self.target = case, target
        self.fn = None
        self.clock_kind = None
        self.number = 1
        self.first_s = math.nan
        self.per_call_s = math.nan
        self.stats = Stats()
        self.rounds: list[int] = []  # the round of each sample (for per-round ratios)
        self.status = "ok"
        self.reason = ""
        self.pid = os.getpid()

    def prepare(self, config: RunConfig, log=None) -> None:
        """Setup, first call, warm-up, calibration; sets status/reason on Skip or an error."""
        try:
            self.fn, clock, self.first_s, self.number, self.per_call_s = prepare(
                self.case, self.target, config.warmup, config.sample_s)
            self._clock = clock
            self.clock_kind = clock.kind
        except Skip as exc:
            self.status, self.reason = "skipped", str(exc)
        except Exception as exc:  # a broken case must not end the run; the record says why
            self.status = "error"
            self.reason = f"{type(exc).__name__}: {exc}"
            if log:
                log("    " + traceback.format_exc().strip().replace("\n", "\n    "))

    def sample(self) -> float:
        """Seconds per call over one sample of `number` calls."""
        return self._clock.time(self.fn, self.number)

    def release(self) -> None:
        """Drop the case's function (and with it its arrays)."""
        self.fn = None


class _RemoteSubject(_Subject):
    """One remote target's part in one case: the worker does the work, this waits on the pipe."""

    remote = True

    def prepare(self, config: RunConfig, log=None) -> None:
        """Ask the worker to set the case up; its reply sets status, number and estimates."""
        res = self.target.setup(self.case, config.warmup, config.sample_s)
        self.status = res.get("status", "error")
        if self.status != "ok":
            self.reason = res.get("reason") or f"bad reply {res!r}"
            if log and self.status == "error":
                log("    [worker] " + (res.get("traceback") or self.reason).strip()
                    .replace("\n", "\n    "))
            return
        self.first_s, self.number = float(res["first_s"]), int(res["number"])
        self.per_call_s = float(res.get("per_call_s") or res["first_s"])
        self.clock_kind = res.get("clock")
        self.pid = res.get("pid")

    def sample(self) -> float:
        """One sample taken by the worker (this process sleeps on the pipe)."""
        return self.target.time(self.number)

    def release(self) -> None:
        """Drop the case in the worker."""
        self.target.release()


def _record(s: _Subject, peaks: dict | None) -> dict:
    """The JSON record of one target's part in a case (statistics, throughput, where it ran)."""
    case = s.case
    rec = {
        "case": case.name, "suite": case.suite, "target": s.target.name,
        "params": case.params, "flops": case.flops, "bytes": case.bytes, "bound": case.bound,
        "group": case.group, "x": case.x, "status": s.status, "reason": s.reason,
        "why": dict(case.why),
        "process": "worker" if s.remote else "main",
    }
    if s.status != "ok":
        return rec
    st = s.stats
    med = st.median
    rec.update(st.to_dict())
    rec.update({
        "number": s.number, "repeats": st.n, "clock": s.clock_kind,
        "first_call_s": s.first_s, "pid": s.pid,
        # what the first call cost beyond a steady-state call: JIT compilation (or loading it
        # from Numba's cache), first-touch page faults, thread-pool start-up
        "compile_s": max(0.0, s.first_s - med),
    })
    rec.update(throughput(case.flops, case.bytes, st, peaks, case.bound))
    return rec


def throughput(flops, nbytes, st: Stats, peaks: dict | None, bound: str) -> dict:
    """GFLOP/s, GB/s and fractions of the measured peaks for the median time."""
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


def run_case(case: Case, targets: list, config: RunConfig, peaks: dict | None = None,
             log=None) -> list[dict]:
    """Time one case on every target, interleaved; returns one record per target. Targets
    are `Target`s (run here) or `RemoteTarget`s (run in their worker: this process sleeps on
    the pipe meanwhile, after a gap of `config.remote_gap_s`, and sleeps that gap again before
    the next sample taken here)."""
    subjects = [(_RemoteSubject if getattr(t, "remote", False) else _Subject)(case, t)
                for t in targets]
    gap = _Gap(config.remote_gap_s)
    for s in subjects:
        gap.before(s)
        s.prepare(config, log)
    live = [s for s in subjects if s.status == "ok"]
    reps = case.repeats or config.repeats
    if live:
        # estimated seconds per round: one sample of each live target, and the gaps
        per_round = sum(s.number * s.per_call_s for s in live)
        per_round += 2 * gap.seconds * sum(s.remote for s in live)
        if per_round > 0 and per_round * reps > config.max_case_s:
            reps = max(config.min_repeats, int(config.max_case_s / per_round))
    probe = None
    if config.busy_threshold:  # the workers' CPU time is the benchmark's own, not load
        workers = [s.target for s in subjects if s.remote]
        probe = LoadProbe(pids=lambda: [w.pid for w in workers])
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
            gap.before(s)
            try:
                got.append((s, s.sample()))
            except WorkerError as exc:  # already "Type: text" from the worker
                s.status, s.reason = "error", str(exc)
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
            s.rounds.append(r)
        r += 1
    host = {"rounds_discarded": discarded, "waited_s": round(waited, 2)}
    if loads:
        srt = sorted(loads)
        host["others_cpus_median"] = round(srt[len(srt) // 2], 3)
        host["others_cpus_max"] = round(srt[-1], 3)
    records = [_record(s, peaks) for s in subjects]
    for s, rec in zip(subjects, records, strict=True):
        if rec["status"] == "ok":
            ratios = speedups(s, subjects)
            if ratios:
                rec["speedup_over"] = ratios
    if probe:
        for rec in records:
            rec["host_load"] = host
    for s in subjects:
        s.release()
    gc.collect()
    return records


class _Gap:
    """Sleeps before a remote sample, and before the first local one after it: the thread
    pools of the process that ran last (OpenMP and OpenBLAS workers spin for a while after
    their work) must quiet down before the next one is timed."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.last_remote = False

    def before(self, s) -> None:
        """Sleep if `s` is remote or the last subject was."""
        if self.seconds > 0 and (s.remote or self.last_remote):
            time.sleep(self.seconds)
        self.last_remote = s.remote


SPEEDUP_BASELINES = ("numpy", "torch")


def round_ratios(base: _Subject, other: _Subject) -> list[float]:
    """base's time / other's time, for every round both took a sample in."""
    mine = dict(zip(other.rounds, other.stats.samples, strict=True))
    return [b / mine[r] for r, b in zip(base.rounds, base.stats.samples, strict=True)
            if r in mine and mine[r] > 0]


def ratio_stats(ratios) -> dict:
    """{"median", "q1", "q3", "iqr", "rounds"} of per-round ratios."""
    st = Stats(list(ratios))
    return {"median": st.median, "q1": st.q1, "q3": st.q3, "iqr": st.iqr, "rounds": st.n}


def speedups(s: _Subject, subjects) -> dict:
    """{baseline: ratio_stats} of `s` over each baseline target (numpy, torch) of the case:
    per round, the baseline's time over this target's; the median of those, with their IQR
    (a ratio of medians would pair samples from different rounds, i.e. different loads)."""
    out = {}
    for base in subjects:
        name = base.target.name
        if name in SPEEDUP_BASELINES and base is not s and base.status == "ok":
            ratios = round_ratios(base, s)
            if ratios:
                out[name] = ratio_stats(ratios)
    return out


def run_cases(cases, targets, config: RunConfig, peaks=None, log=print) -> list[dict]:
    """run_case over `cases`, one progress line each; the records of all, in order."""
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
    """Seconds with three significant digits in the unit that fits (s, ms, us, ns)."""
    s = nan_to_none(s)
    if s is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
        if s >= scale or unit == "ns":
            v = s / scale
            return f"{v:.3g} {unit}" if v < 1000 else f"{v:.0f} {unit}"
    return f"{s:.3g} s"
