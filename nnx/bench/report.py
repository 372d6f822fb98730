"""Results as JSON, as tables (text and Markdown), and the comparison of two runs."""

from __future__ import annotations

import json
import math
import os
import time
from collections import OrderedDict

from .runner import fmt_time

SCHEMA = "nnx-bench/1"


# -- JSON -------------------------------------------------------------------------------------
def _clean(o):
    """JSON-safe: NaN/inf -> None, tuples -> lists, numpy scalars -> Python."""
    if isinstance(o, float):
        return None if (math.isnan(o) or math.isinf(o)) else o
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if hasattr(o, "item") and callable(o.item):  # numpy scalar
        return _clean(o.item())
    return o


def make_run(results, machine=None, peaks=None, settings=None, targets=None, skipped_targets=None,
             crossover=None, argv=None) -> dict:
    """The run as the JSON-able dict `nnx bench` writes (schema nnx-bench/1)."""
    run = {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": list(argv) if argv is not None else None,
        "settings": settings or {},
        "machine": machine or {},
        "peaks": peaks or {},
        "targets": list(targets or sorted({r["target"] for r in results})),
        "skipped_targets": skipped_targets or {},
        "results": results,
    }
    if crossover is not None:
        run["crossover"] = crossover
    return _clean(run)


def write_json(run: dict, path) -> str:
    """Write atomically (a temporary file, then rename): a crash leaves no half file."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(_clean(run), f, indent=1, sort_keys=False, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)
    return path


def load_json(path) -> dict:
    """Read a bench.json, refusing files of another schema (--compare, --merge)."""
    with open(path) as f:
        run = json.load(f)
    if not isinstance(run, dict) or "results" not in run:
        raise ValueError(f"{path}: not an nnx bench result (no 'results')")
    if run.get("schema") != SCHEMA:
        raise ValueError(f"{path}: schema {run.get('schema')!r}, expected {SCHEMA!r}")
    return run


def merge_runs(runs) -> dict:
    """One run from several (dicts or paths) of the same machine: later results replace earlier
    ones of the same (case, target); machine and peaks come from the first run (fractions of
    peak are recomputed against them), each source's settings and peaks are kept under
    settings["merged_from"]."""
    runs = [load_json(r) if isinstance(r, (str, os.PathLike)) else r for r in runs]
    if not runs:
        raise ValueError("merge_runs: no runs")
    results: OrderedDict = OrderedDict()
    targets: list = []
    skipped: dict = {}
    for run in runs:
        for r in run["results"]:
            results[(r["case"], r["target"])] = r
        targets += [t for t in run.get("targets", []) if t not in targets]
        skipped.update(run.get("skipped_targets", {}))
    first = runs[0]
    peaks = dict(first.get("peaks") or {})
    for key in ("sgemm_gflops", "memcpy_gbps"):  # the peak is the best sample
        if peaks.get(key + "_best"):
            peaks[key] = peaks[key + "_best"]
    recs = [_refraction(dict(r), peaks) for r in results.values()]
    merged = make_run(recs, first.get("machine"), peaks,
                      dict(first.get("settings", {})), targets, skipped,
                      next((r["crossover"] for r in reversed(runs) if r.get("crossover")), None),
                      first.get("argv"))
    merged["settings"]["merged_from"] = [
        {"created": r.get("created"), "argv": r.get("argv"), "settings": r.get("settings"),
         "peaks": r.get("peaks"), "loadavg": r.get("machine", {}).get("loadavg")} for r in runs]
    return merged


def _refraction(r: dict, peaks: dict) -> dict:
    """Recompute a record's fractions of peak against `peaks` (one yardstick for a merge)."""
    if r.get("status") != "ok":
        return r
    for k in ("frac_sgemm_peak", "frac_memcpy_peak", "frac_peak"):
        r.pop(k, None)
    if r.get("gflops") and peaks.get("sgemm_gflops"):
        r["frac_sgemm_peak"] = r["gflops"] / peaks["sgemm_gflops"]
    if r.get("gbps") and peaks.get("memcpy_gbps"):
        r["frac_memcpy_peak"] = r["gbps"] / peaks["memcpy_gbps"]
    key = "frac_sgemm_peak" if r.get("bound") == "compute" else "frac_memcpy_peak"
    if key in r:
        r["frac_peak"] = r[key]
    return r


# -- tables -----------------------------------------------------------------------------------
def _by_case(results):
    cases: OrderedDict = OrderedDict()
    for r in results:
        cases.setdefault(r["case"], {})[r["target"]] = r
    return cases


def _cell(r) -> str:
    if r is None:
        return "-"
    if r.get("status") != "ok":
        return r.get("status", "?")
    med = r["median_s"]
    spread = r["iqr_s"] / med * 100 if med else 0.0
    return f"{fmt_time(med)} ±{spread:.0f}%"


SPEEDUP_HEADER = ("x<target> = speed-up over numpy, <target> vs torch = speed-up over torch: "
                  "medians over rounds of (baseline time / target time) within a round "
                  "(* = ratio of medians: a record from before per-round ratios)")


def speedup(base: dict | None, r: dict | None, baseline: str) -> tuple[float | None, bool]:
    """(speed-up of record `r` over the `baseline` record, whether it is a per-round ratio
    median): `r["speedup_over"][baseline]["median"]` where the run recorded it, else the ratio
    of the two medians (older bench.json files); (None, False) when either is not ok."""
    if not (base and r and base.get("status") == "ok" and r.get("status") == "ok"):
        return None, False
    per_round = ((r.get("speedup_over") or {}).get(baseline) or {}).get("median")
    if per_round is not None:
        return per_round, True
    if base.get("median_s") and r.get("median_s"):
        return base["median_s"] / r["median_s"], False
    return None, False


def _speedup_cell(base, r, baseline) -> str:
    x, per_round = speedup(base, r, baseline)
    if x is None:
        return "-"
    return f"{x:.2f}x" + ("" if per_round else "*")


def table_rows(results, targets=None, baseline="numpy"):
    """(header, rows, notes): rows = cases; columns = per-target median time ±IQR/median,
    speed-up of each other target over the baseline (`x<target>`) and, when torch ran, of each
    nnx target over torch (`<target> vs torch`), both medians of per-round ratios (see
    SPEEDUP_HEADER), and the fraction of the machine's peak (SGEMM for compute-bound cases,
    memcpy for memory-bound)."""
    cases = _by_case(results)
    targets = list(targets or OrderedDict.fromkeys(r["target"] for r in results))
    if baseline not in targets:
        baseline = targets[0] if targets else baseline
    others = [t for t in targets if t != baseline]
    vs_torch = ([t for t in targets if not t.startswith("torch")] if "torch" in targets
                and baseline != "torch" else [])
    header = (["case"] + targets + [f"x{t}" for t in others]
              + [f"{t} vs torch" for t in vs_torch] + [f"%peak {t}" for t in targets])
    rows, notes = [], OrderedDict()
    for name, per in cases.items():
        row = [name] + [_cell(per.get(t)) for t in targets]
        row += [_speedup_cell(per.get(baseline), per.get(t), baseline) for t in others]
        row += [_speedup_cell(per.get("torch"), per.get(t), "torch") for t in vs_torch]
        for t in targets:
            r = per.get(t)
            fp = r.get("frac_peak") if r and r.get("status") == "ok" else None
            row.append(f"{fp * 100:.0f}%" if fp is not None else "-")
        rows.append(row)
        for t in vs_torch:  # slower than the yardstick: the case says why (or that it does not)
            if t == baseline:  # the reference backend is not expected to beat torch
                continue
            x, _ = speedup(per.get("torch"), per.get(t), "torch")
            if x is not None and x < 1:
                why = (per[t].get("why") or {}).get(t) or "no explanation recorded"
                notes.setdefault(f"{t} slower than torch: {why}", []).append(f"{name} ({x:.2f}x)")
        for t in targets:
            r = per.get(t)
            if r and r.get("status") in ("skipped", "error"):
                notes.setdefault(f"{r['status']}: {r.get('reason', '')}", []).append(
                    f"{name} [{t}]")
    return header, rows, notes


def format_table(results, targets=None, baseline="numpy", markdown=False, title=None) -> str:
    """The table of `table_rows` as aligned text or Markdown, with the skip/error notes."""
    header, rows, notes = table_rows(results, targets, baseline)
    if markdown:
        lines = [f"### {title}", ""] if title else []
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    else:
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]

        def fmt(r):
            return "  ".join((str(c).ljust(w) if i == 0 else str(c).rjust(w))
                             for i, (c, w) in enumerate(zip(r, widths, strict=True)))

        lines = [title, ""] if title else []
        lines += [fmt(header), "-" * len(fmt(header))] + [fmt(r) for r in rows]
    if notes:
        lines.append("")
        for reason, where in notes.items():
            shown = ", ".join(where[:4]) + (f" (+{len(where) - 4} more)" if len(where) > 4 else "")
            lines.append(("- " if markdown else "  ") + f"{reason} -- {shown}")
    return "\n".join(lines)


def format_peaks(peaks: dict) -> str:
    """One line: the measured SGEMM and memcpy peaks every case is compared with."""
    if not peaks:
        return ""
    med = peaks.get("sgemm_gflops_median")
    mmed = peaks.get("memcpy_gbps_median")
    return (f"measured peaks (best of the samples): SGEMM {peaks['sgemm_gflops']:.1f} GFLOP/s "
            f"(n={peaks['sgemm_n']}" + (f", median {med:.1f}" if med else "") + "), "
            f"memcpy {peaks['memcpy_gbps']:.1f} GB/s ({peaks['memcpy_mb']} MB, read+write"
            + (f", median {mmed:.1f}" if mmed else "") + ")")


# -- comparison of two runs ---------------------------------------------------------------------
def compare(old, new, threshold: float = 0.05) -> dict:
    """What got faster or slower from `old` to `new` (runs as dicts or JSON paths).

    A change counts when the median moved by more than `threshold` (relative) AND the two
    interquartile ranges do not overlap; anything else is noise. Returns
    {"faster": [...], "slower": [...], "unchanged": [...], "only_old": [...], "only_new": [...]},
    entries {case, target, old_s, new_s, ratio (new/old)} sorted by ratio."""
    old = load_json(old) if isinstance(old, (str, os.PathLike)) else old
    new = load_json(new) if isinstance(new, (str, os.PathLike)) else new
    key = lambda r: (r["case"], r["target"])  # noqa: E731
    o = {key(r): r for r in old["results"] if r.get("status") == "ok"}
    n = {key(r): r for r in new["results"] if r.get("status") == "ok"}
    out = {"faster": [], "slower": [], "unchanged": [], "threshold": threshold,
           "only_old": sorted(f"{c} [{t}]" for c, t in o.keys() - n.keys()),
           "only_new": sorted(f"{c} [{t}]" for c, t in n.keys() - o.keys())}
    for k in [k for k in n if k in o]:
        a, b = o[k], n[k]
        ratio = b["median_s"] / a["median_s"]
        entry = {"case": k[0], "target": k[1], "old_s": a["median_s"], "new_s": b["median_s"],
                 "ratio": ratio}
        if ratio < 1 - threshold and b["q3_s"] < a["q1_s"]:
            out["faster"].append(entry)
        elif ratio > 1 + threshold and b["q1_s"] > a["q3_s"]:
            out["slower"].append(entry)
        else:
            out["unchanged"].append(entry)
    for k in ("faster", "slower", "unchanged"):
        out[k].sort(key=lambda e: e["ratio"])
    out["slower"].reverse()
    return out


def format_compare(cmp: dict) -> str:
    """The result of `compare` as text: slower, faster, unchanged, only in one run."""
    lines = [f"changes beyond noise (median moved > {cmp['threshold'] * 100:.0f}% and the IQRs "
             "do not overlap):"]
    for what, _sign in (("slower", "+"), ("faster", "-")):
        lines.append(f"{what}: {len(cmp[what])}")
        for e in cmp[what]:
            pct = (e["ratio"] - 1) * 100
            lines.append(f"  {e['case']} [{e['target']}]: {fmt_time(e['old_s'])} -> "
                         f"{fmt_time(e['new_s'])} ({pct:+.0f}%, x{1 / e['ratio']:.2f} speed)")
    lines.append(f"unchanged (within noise): {len(cmp['unchanged'])}")
    for k in ("only_old", "only_new"):
        if cmp[k]:
            lines.append(f"{k.replace('_', ' in ')}: {', '.join(cmp[k][:10])}"
                         + (" ..." if len(cmp[k]) > 10 else ""))
    return "\n".join(lines)
