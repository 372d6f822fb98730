"""Crossover sweep: which backend wins at which batch size x layer width.

Two workloads per cell: a Dense layer's forward + backward (x (batch, width) @ W (width, width),
ReLU, input gradient included) and the MLP training step 784-width-width-10 (Adam, softmax
cross-entropy). Each cell is an interleaved case like any other; the winner is the target with
the lowest median, marked "~" (a tie) when its IQR overlaps the runner-up's.
"""

from __future__ import annotations

import math
import os

from .plots import _color, _plt
from .registry import Case, fmt_shape, gemm_flops
from .runner import RunConfig, fmt_time, run_case
from .suites.common import randn
from .suites.zoo import model_flops, nnx_step, sample_batch, torch_mirror, torch_step, zoo_model

BATCHES = (1, 8, 32, 128, 512)
WIDTHS = (32, 128, 512, 1024)
QUICK_BATCHES = (4, 64)
QUICK_WIDTHS = (16, 64)


def dense_cell(batch, width) -> Case:
    def setup(t):
        x = t.array(randn((batch, width), 1))
        W = t.array(randn((width, width), 2, 1 / math.sqrt(width)))
        b = t.array(randn((width,), 3, 0.1))
        dy = t.array(randn((batch, width), 4))
        if t.kind == "torch":
            torch = t.torch
            aten = torch.ops.aten
            dW, db = torch.empty_like(W), torch.empty_like(b)

            def fb():
                y = torch.addmm(b, x, W).relu_()
                dz = aten.threshold_backward(dy, y, 0)
                torch.mm(x.t(), dz, out=dW)
                torch.sum(dz, 0, out=db)
                return torch.mm(dz, W.t())

            return fb
        ops = t.ops
        dW, db = ops.zeros((width, width)), ops.zeros(width)

        def fb():
            _y, saved = ops.dense_forward(x, W, b, "relu")
            return ops.dense_backward(dy, x, W, saved, "relu", True, dW, db)

        return fb

    return Case(name=f"dense fwd+bwd {fmt_shape(batch, width, width)}", suite="crossover",
                setup=setup, flops=3 * gemm_flops(batch, width, width),
                params={"workload": "dense", "batch": batch, "width": width}, group="crossover")


def mlp_cell(batch, width) -> Case:
    x_all, y_all = sample_batch()
    hidden = (width, width)

    def setup(t):
        zoo, model = zoo_model(t, "mlp", hidden=hidden)
        xh, yh = x_all[:batch], y_all[:batch]
        if t.kind == "torch":
            step = torch_step(t.torch, torch_mirror(model, t.torch), t.device)
            xb, yb = t.array(xh), t.array(yh)
            return lambda: step(xb, yb)
        return nnx_step(model, zoo, xh, yh)  # model.trainer.step on device arrays

    per_sample, _info = model_flops("mlp", x_all, hidden=hidden)
    return Case(name=f"mlp step 784-{width}-{width}-10 b{batch}", suite="crossover", setup=setup,
                flops=per_sample * batch if per_sample else None,
                params={"workload": "mlp", "batch": batch, "width": width}, group="crossover")


def sweep(targets, quick=False, batches=None, widths=None, config: RunConfig | None = None,
          peaks=None, log=print) -> dict:
    """Run both workloads over the grid on every target; returns the JSON-able sweep."""
    batches = tuple(batches or (QUICK_BATCHES if quick else BATCHES))
    widths = tuple(widths or (QUICK_WIDTHS if quick else WIDTHS))
    config = config or (RunConfig.quick() if quick else RunConfig(repeats=9, max_case_s=12.0))
    records = []
    n = 2 * len(batches) * len(widths)
    i = 0
    for _workload, make in (("dense", dense_cell), ("mlp", mlp_cell)):
        for b in batches:
            for w in widths:
                i += 1
                case = make(b, w)
                recs = run_case(case, targets, config, peaks, log)
                records.extend(recs)
                if log:
                    log(f"[crossover {i}/{n}] {case.name}: " + ", ".join(
                        f"{r['target']} {fmt_time(r.get('median_s'))}" for r in recs))
    return {"batches": list(batches), "widths": list(widths),
            "targets": [t.name for t in targets], "results": records,
            "winners": winners(records, batches, widths)}


def winners(records, batches, widths) -> dict:
    """{workload: [[cell per width] per batch]}, cell = {winner, tie, ratio, times}; ratio is
    the runner-up's median over the winner's (>= 1)."""
    out = {}
    for workload in ("dense", "mlp"):
        grid = []
        for b in batches:
            row = []
            for w in widths:
                recs = [r for r in records if r["params"].get("workload") == workload
                        and r["params"]["batch"] == b and r["params"]["width"] == w
                        and r.get("status") == "ok"]
                recs.sort(key=lambda r: r["median_s"])
                if not recs:
                    row.append(None)
                    continue
                best = recs[0]
                times = {r["target"]: r["median_s"] for r in recs}
                cell = {"winner": best["target"], "times": times, "ratio": 1.0, "tie": False}
                if len(recs) > 1:
                    second = recs[1]
                    cell["ratio"] = second["median_s"] / best["median_s"]
                    cell["runner_up"] = second["target"]
                    cell["tie"] = best["q3_s"] >= second["q1_s"]
                row.append(cell)
            grid.append(row)
        out[workload] = grid
    return out


def format_crossover(sw: dict, markdown: bool = False) -> str:
    lines = []
    for workload, title in (("dense", "Dense fwd+bwd (batch x width x width, ReLU)"),
                            ("mlp", "MLP 784-w-w-10 train step (Adam)")):
        grid = sw["winners"][workload]
        head = ["batch \\ width"] + [str(w) for w in sw["widths"]]
        rows = []
        for b, row in zip(sw["batches"], grid, strict=False):
            cells = []
            for c in row:
                if c is None:
                    cells.append("-")
                else:
                    cells.append(f"{'~' if c['tie'] else ''}{c['winner']} {c['ratio']:.2f}x")
            rows.append([str(b)] + cells)
        if markdown:
            lines += [f"### crossover: {title}", "", "| " + " | ".join(head) + " |",
                      "|" + "|".join(["---"] * len(head)) + "|"]
            lines += ["| " + " | ".join(r) + " |" for r in rows]
        else:
            colw = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
            lines += [f"crossover: {title}"]
            lines += ["  ".join(c.rjust(w) for c, w in zip(r, colw, strict=True))
                      for r in [head, *rows]]
        lines.append("")
    lines.append("cell: winner and its speed-up over the runner-up; "
                 "~ = within noise (IQRs overlap)")
    return "\n".join(lines)


def plot_crossover(sw: dict, outdir) -> list[str]:
    """One heat map per workload: colour = winning target, shade = how clearly it wins."""
    from matplotlib.colors import to_rgb  # matplotlib is optional: imported when plotting

    plt = _plt()
    os.makedirs(outdir, exist_ok=True)
    paths = []
    targets = sw["targets"]
    for workload in ("dense", "mlp"):
        grid = sw["winners"][workload]
        nb, nw = len(sw["batches"]), len(sw["widths"])
        img = [[(1, 1, 1)] * nw for _ in range(nb)]
        fig, ax = plt.subplots(figsize=(1.3 * nw + 2.5, 0.8 * nb + 1.8))
        for i, row in enumerate(grid):
            for j, c in enumerate(row):
                if c is None:
                    continue
                base = to_rgb(_color(c["winner"], targets.index(c["winner"])))
                # mix with white: 1.0x -> pale, >= 2x -> full colour
                a = 0.25 if c["tie"] else min(1.0, 0.35 + 0.65 * math.log2(max(c["ratio"], 1.0)))
                img[i][j] = tuple(1 - a * (1 - ch) for ch in base)
                ax.text(j, i, f"{c['winner']}\n{c['ratio']:.2f}x" + (" ~" if c["tie"] else ""),
                        ha="center", va="center", fontsize=8)
        ax.imshow(img, aspect="auto")
        ax.set_xticks(range(nw))
        ax.set_xticklabels(sw["widths"])
        ax.set_yticks(range(nb))
        ax.set_yticklabels(sw["batches"])
        ax.set_xlabel("layer width")
        ax.set_ylabel("batch size")
        what = ("Dense fwd+bwd" if workload == "dense" else "MLP 784-w-w-10 train step")
        ax.set_title(f"crossover: {what}\nwinner and speed-up over runner-up (~ tie)", fontsize=9)
        fig.tight_layout()
        path = os.path.join(outdir, f"crossover_{workload}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
