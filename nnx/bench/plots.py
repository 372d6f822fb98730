"""PNG plots with matplotlib's Agg backend (no display needed).

- one figure per suite: throughput per target, GFLOP/s for compute-bound cases (with the
  measured SGEMM peak as a horizontal line) or GB/s for memory-bound ones (memcpy peak), against
  the size where the cases have one (square GEMMs), else as grouped bars per case; error bars
  are the interquartile range;
- the crossover heat maps (see `crossover.py`).

matplotlib is optional (the `bench` extra): `available()` says whether it can be imported, and
`nnx bench` checks it before running any suite, so a plain install writes the JSON and tables
and says in one line how to get the plots (`MISSING`) instead of failing after the benchmarks.
"""

from __future__ import annotations

import os
import textwrap
from collections import OrderedDict

from nnx import compat

INSTALL_HINT = "pip install nnx-framework[bench]"
MISSING = f"matplotlib is not installed: no PNG plots (JSON and tables only); {INSTALL_HINT}"

COLORS = {"numpy": "#4c72b0", "numba": "#dd8452", "cupy": "#55a868", "torch": "#8c8c8c",
          "torch-cuda": "#c44e52"}


def available() -> bool:
    """Whether matplotlib can be imported here (looked up, not imported)."""
    return compat.has_matplotlib()


def _plt():
    """matplotlib.pyplot on the Agg backend; ModuleNotFoundError naming the extra to install
    when matplotlib is missing."""
    if not available():
        raise ModuleNotFoundError(f"plots need matplotlib, which is not installed: "
                                  f"{INSTALL_HINT}", name="matplotlib")
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _color(t, i):
    return COLORS.get(t, f"C{i % 10}")


def _metric(recs):
    """('gflops' | 'gbps' | 'time') for a list of records of one plot."""
    ok = [r for r in recs if r.get("status") == "ok"]
    if ok and all(r.get("gflops") for r in ok) and all(r.get("bound") == "compute" for r in ok):
        return "gflops"
    if ok and all(r.get("gbps") for r in ok):
        return "gbps"
    if ok and all(r.get("gflops") for r in ok):
        return "gflops"
    return "time"


def _value(r, metric):
    if metric == "gflops":
        med = r["gflops"]
        lo, hi = r.get("gflops_q1", med), r.get("gflops_q3", med)
    elif metric == "gbps":
        med = r["gbps"]
        lo = med * r["median_s"] / r["q3_s"] if r.get("q3_s") else med
        hi = med * r["median_s"] / r["q1_s"] if r.get("q1_s") else med
    else:
        med, lo, hi = r["median_s"] * 1e3, r["q1_s"] * 1e3, r["q3_s"] * 1e3
    return med, max(med - lo, 0.0), max(hi - med, 0.0)


LABELS = {"gflops": "GFLOP/s (higher is better)", "gbps": "GB/s (higher is better)",
          "time": "median time, ms (lower is better)"}


def plot_suite(name, recs, peaks, targets, path, subtitle=""):
    """One figure for the records of one suite; returns the path."""
    plt = _plt()
    metric = _metric(recs)
    cases = list(OrderedDict.fromkeys(r["case"] for r in recs))
    per = {(r["case"], r["target"]): r for r in recs}
    xs = {r["case"]: r.get("x") for r in recs}
    numeric = all(xs[c] is not None for c in cases) and len(cases) > 1
    fig, ax = plt.subplots(figsize=(max(6.5, 1.2 * len(cases) + 3), 4.6))
    if numeric:
        for i, t in enumerate(targets):
            pts = [(xs[c], *_value(per[(c, t)], metric)) for c in cases
                   if per.get((c, t), {}).get("status") == "ok"]
            if not pts:
                continue
            pts.sort()
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts],
                        yerr=[[p[2] for p in pts], [p[3] for p in pts]], marker="o", capsize=3,
                        label=t, color=_color(t, i))
        ax.set_xscale("log", base=2)
        ax.set_xticks([xs[c] for c in cases])
        ax.set_xticklabels([str(int(xs[c])) for c in cases])
        ax.set_xlabel("size n (n x n x n)")
    else:
        width = 0.8 / max(len(targets), 1)
        for i, t in enumerate(targets):
            vals, lo, hi, pos = [], [], [], []
            for j, c in enumerate(cases):
                r = per.get((c, t))
                if r and r.get("status") == "ok":
                    v, e1, e2 = _value(r, metric)
                    vals.append(v)
                    lo.append(e1)
                    hi.append(e2)
                    pos.append(j + (i - (len(targets) - 1) / 2) * width)
            if vals:
                ax.bar(pos, vals, width, yerr=[lo, hi], capsize=2, label=t, color=_color(t, i))
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels([c.replace(" ", "\n", 2) for c in cases], fontsize=7)
        if metric == "time":
            ax.set_yscale("log")
    if peaks and metric == "gflops" and peaks.get("sgemm_gflops"):
        ax.axhline(peaks["sgemm_gflops"], ls="--", color="k", lw=1,
                   label=f"SGEMM peak {peaks['sgemm_gflops']:.0f} GFLOP/s")
    if peaks and metric == "gbps" and peaks.get("memcpy_gbps"):
        ax.axhline(peaks["memcpy_gbps"], ls="--", color="k", lw=1,
                   label=f"memcpy {peaks['memcpy_gbps']:.1f} GB/s")
    ax.set_ylabel(LABELS[metric])
    sub = "\n".join(textwrap.wrap(subtitle, 100)) if subtitle else ""
    ax.set_title(f"nnx bench: {name}" + (f"\n{sub}" if sub else ""), fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return os.fspath(path)


def plot_results(results, peaks, targets, outdir, subtitle="") -> list[str]:
    """One PNG per suite (and per plot group inside the gemm suite); returns the paths."""
    os.makedirs(outdir, exist_ok=True)
    groups: OrderedDict = OrderedDict()
    for r in results:
        key = r["suite"] if r["suite"] != "gemm" else (r.get("group") or "gemm")
        groups.setdefault(key, []).append(r)
    paths = []
    for key, recs in groups.items():
        if not any(r.get("status") == "ok" for r in recs):
            continue
        path = os.path.join(outdir, f"{key}.png")
        paths.append(plot_suite(key, recs, peaks, targets, path, subtitle))
    return paths
