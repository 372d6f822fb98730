"""Separate-process measurements: every variant runs in a process of its own, the processes take
turns (one timed slice each per round, the order rotated every round, the others asleep on a
pipe meanwhile), and each round's times are divided by the baseline's of the same round; the
report gives the medians of those per-round ratios, over all rounds and over the quiet ones.

    .venv/bin/python tools/measure_procs.py import-order       # torch imported first or not
    .venv/bin/python tools/measure_procs.py torch              # nnx numba/numpy vs PyTorch
    .venv/bin/python tools/measure_procs.py torch --model cnn  # the zoo CNN's step (or lstm)
    .venv/bin/python tools/measure_procs.py busy               # with one competing busy process
    .venv/bin/python tools/measure_procs.py shared-runtime     # one OpenMP runtime, loaded first
    .venv/bin/python tools/measure_procs.py blas-timeout       # OPENBLAS_THREAD_TIMEOUT honoured?
    ... [--rounds 40] [--slice 0.3] [--threads 2 1] [--json out.json]

Why separate processes: which libraries a process imported, and in which order, changes how
its thread pools behave (PyTorch's OpenMP runtime, loaded before nnx set OMP_WAIT_POLICY, made
the numba step 2.3-3.2x slower); a comparison inside one process measures that process, not the
libraries. Why short alternating slices and per-round ratios: on a shared machine the load
changes from second to second; variants timed in the same round see about the same load. Before
each slice the parent sleeps `--gap` seconds so that the previous process's spinning workers
(OpenBLAS's and OpenMP's wait loops) are not charged to the next. A round is "quiet" when, in
every slice of it, other processes (all CPUs' busy time minus the timed process's own CPU time;
the parent and the waiting variants sleep) kept fewer than QUIET CPUs busy.

The step (`--model`, default mlp) is one training step at batch 128, fp32, softmax
cross-entropy, Adam: `model.train_step` of the nnx model, or PyTorch eager with `Adam(fused=True)`
(its fastest Adam) or the default Adam. mlp: 784-512-256-10 (ReLU) on random inputs; cnn and
lstm: the zoo models' default builds (nnx.models.cnn, nnx.models.lstm) on the bundled MNIST
sample's first 128 images, and for PyTorch the same architecture with the same initial weights
(nnx.bench.suites.zoo.torch_mirror, weights copied by nnx.interop.to_torch; the torch child
imports torch before nnx). Several models: `--model mlp cnn lstm`, one table per model and
thread count. Threads: NUMBA_NUM_THREADS, OPENBLAS_NUM_THREADS, OMP_NUM_THREADS,
MKL_NUM_THREADS and torch.set_num_threads set to the same count. This parent process imports
neither nnx nor torch, and its children get the environment the user started it with (nnx sets
OMP_WAIT_POLICY in its own process; a child must not inherit that).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SIZES = (784, 512, 256, 10)
BATCH = 128
THREAD_VARS = ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
QUIET = 0.3  # a slice is quiet when other processes kept fewer than 0.3 CPUs busy during it
_TCK = os.sysconf("SC_CLK_TCK")

# variant -> (what the child does, extra environment)
VARIANTS = {
    "numba": ("nnx:numba", {}),
    "numba torch-first": ("torch-first nnx:numba", {}),
    "numba torch-first, no isolation": ("torch-first nnx:numba", {"NNX_OPENMP_ISOLATE": "0"}),
    "numba numpy-first": ("numpy-first nnx:numba", {}),
    # the system libgomp (the one Numba's layer links) loaded globally before nnx, as one shared
    # OpenMP runtime is in conda environments: nnx falls back to serial Numba kernels
    "numba gomp-first (serial fallback)": ("gomp-first nnx:numba", {}),
    "numba gomp-first, no isolation": ("gomp-first nnx:numba", {"NNX_OPENMP_ISOLATE": "0"}),
    # what ThreadMonitor(adapt=True) leaves while others take a core: 1 BLAS thread, Numba's kept
    "numba, BLAS 1 thread": ("nnx:numba", {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
                                          "MKL_NUM_THREADS": "1"}),
    # OpenBLAS reads OPENBLAS_THREAD_TIMEOUT when it loads: set before NumPy is imported
    "numba, BLAS timeout at start": ("nnx:numba", {"OPENBLAS_THREAD_TIMEOUT": "4"}),
    "numpy": ("nnx:numpy", {}),
    "torch fused Adam": ("torch:fused", {}),
    "torch Adam": ("torch:default", {}),
}
SUITES = {
    "import-order": ["numba", "numba torch-first", "numba torch-first, no isolation",
                     "numba numpy-first"],
    "torch": ["numba", "numpy", "torch fused Adam", "torch Adam"],
    "busy": ["numba", "numba, BLAS 1 thread", "numpy", "torch fused Adam"],
    "shared-runtime": ["numba", "numba gomp-first (serial fallback)",
                       "numba gomp-first, no isolation"],
    "blas-timeout": ["numba", "numba, BLAS timeout at start"],
}


def _cpu():
    """(total, idle) jiffies of all CPUs (steal counts as busy)."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    return sum(vals[:8]), vals[3] + vals[4]


# -- the child: one variant, serving timed slices --------------------------------------------------
def _data(np):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, SIZES[0]), dtype=np.float32)
    y = rng.integers(0, SIZES[-1], BATCH)
    return x, y


def _zoo(model_name: str, backend):
    """(nnx model of the zoo's default build on `backend`, x, y): the first BATCH images of the
    bundled MNIST sample, shaped as the model takes them."""
    from nnx import models
    from nnx.bench.suites.zoo import inputs_for, sample_batch

    zoo = models.get(model_name)
    model = zoo.build(backend=backend, seed=0)
    x_all, y_all = sample_batch()
    return zoo, model, inputs_for(zoo, x_all[:BATCH]), y_all[:BATCH]


def _nnx_step(backend: str, model_name: str = "mlp"):
    # nnx before NumPy, as nnx asks (its OPENBLAS_THREAD_TIMEOUT must reach OpenBLAS before it
    # loads); the "numpy-first" variants import NumPy earlier, in `build`
    import nnx  # isort: skip

    import numpy as np

    if model_name == "mlp":
        layers = [nnx.Dense(SIZES[i], SIZES[i + 1], activation="relu" if i < 2 else None)
                  for i in range(3)]
        model = nnx.Sequential(layers, backend=backend, seed=0)
        loss = "softmax_cross_entropy"
        x, y = _data(np)
    else:
        zoo, model, x, y = _zoo(model_name, backend)
        loss = zoo.LOSS
    model.compile(nnx.Adam(1e-3), loss, [])
    if backend == "numba":
        from nnx.backends.numba import warmup

        warmup()
    return lambda: model.train_step(x, y)


def _torch_model(torch, model_name: str):
    """(nn.Module, x, y as numpy): the MLP, or the torch mirror of a zoo model with the nnx
    build's initial weights (torch is already imported: nnx loads after it)."""
    import numpy as np

    if model_name == "mlp":
        nn = torch.nn
        net = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
                            nn.Linear(256, 10))
        return net, *_data(np)
    from nnx.bench.suites.zoo import torch_mirror
    from nnx.interop import to_torch

    _zoo_mod, model, x, y = _zoo(model_name, "numpy")
    net = torch_mirror(model, torch)
    to_torch(model, net)
    return net, x, y


def _torch_step(fused: bool, threads: int, model_name: str = "mlp"):
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    nn = torch.nn
    model, x, y = _torch_model(torch, model_name)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.asarray(y).astype(np.int64))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(xt), yt)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def build(what: str, threads: int, model_name: str = "mlp"):
    """(step, info) for the variant `what` training `model_name`: imports in the order it
    names."""
    words = what.split()
    if "torch-first" in words:
        import torch  # noqa: F401  (before nnx: the order under test)
    if "numpy-first" in words:
        import numpy  # noqa: F401
    if "gomp-first" in words:
        import ctypes

        ctypes.CDLL("libgomp.so.1", mode=ctypes.RTLD_GLOBAL)
    kind, _, arg = words[-1].partition(":")
    step = (_nnx_step(arg, model_name) if kind == "nnx"
            else _torch_step(arg == "fused", threads, model_name))
    info = {}
    if kind == "nnx":
        from nnx import threads as nnx_threads

        info = {"openmp": nnx_threads.openmp_status().get("state"),
                "threads": nnx_threads.summary()}
    return step, info


def time_slice(step, seconds: float, group: int = 5) -> dict:
    """Run `step` for about `seconds` in groups of `group` steps (at least 3 groups);
    {"median_s" (of the groups' per-step times), "steps", "cpu_s_per_step", "others_cpus"}."""
    times = []
    load0, c0 = _cpu(), time.process_time()
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < 3:
        t0 = time.perf_counter()
        for _ in range(group):
            step()
        times.append((time.perf_counter() - t0) / group)
    own, load1 = time.process_time() - c0, _cpu()
    wall = (load1[0] - load0[0]) / _TCK / (os.cpu_count() or 1)
    busy = (load1[0] - load0[0] - (load1[1] - load0[1])) / _TCK
    return {"median_s": statistics.median(times), "steps": group * len(times),
            "cpu_s_per_step": own / (group * len(times)),
            "others_cpus": max(0.0, busy - own) / wall if wall > 0 else 0.0}


def warm_up(step, max_steps: int = 30, max_s: float = 3.0) -> float:
    """Untimed steps (at least 3; at most `max_steps` or about `max_s` seconds); returns the
    last step's seconds."""
    t_end = time.perf_counter() + max_s
    last = 0.0
    for i in range(max_steps):
        t0 = time.perf_counter()
        step()
        last = time.perf_counter() - t0
        if i >= 2 and time.perf_counter() > t_end:
            break
    return last


def serve(what: str, threads: int, model_name: str = "mlp") -> None:
    """The child's loop: build and warm up, say "ready", then time one slice per "run S" line
    read from stdin (a JSON line back each), until EOF. Steps are timed in groups of up to 5
    lasting about 15 ms (one step per group for steps longer than that: the CNN's)."""
    step, info = build(what, threads, model_name)
    per_step = warm_up(step)
    group = max(1, min(5, int(0.015 / per_step) if per_step > 0 else 5))
    print(json.dumps({"ready": True, "group": group, **info}), flush=True)
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd != "run":
            break
        print(json.dumps(time_slice(step, float(arg), group)), flush=True)


# -- the parent ------------------------------------------------------------------------------------
def child_env(threads: int, extra: dict, base: dict | None = None) -> dict:
    """`base` (default: this process's environment) with every thread variable set to
    `threads`, plus `extra`."""
    env = dict(os.environ if base is None else base)
    env.update({v: str(threads) for v in THREAD_VARS})
    env.update(extra)
    return env


class Variant:
    """One variant's process, started once, timed slice by slice."""

    def __init__(self, name: str, threads: int, base_env: dict | None = None,
                 model: str = "mlp"):
        what, extra = VARIANTS[name]
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve", what, "--threads",
             str(threads), "--model", model], env=child_env(threads, extra, base_env),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"variant {self.name!r} exited (status {self.proc.wait()})")
        return json.loads(line)

    def slice(self, seconds: float) -> dict:
        """Have the child time one slice of about `seconds`; its JSON reply."""
        self.proc.stdin.write(f"run {seconds}\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        """Let the child exit (closing its stdin)."""
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def run_rounds(names: list[str], threads: int, rounds: int, seconds: float, gap: float = 0.15,
               log=print, base_env: dict | None = None, model: str = "mlp") -> dict:
    """`rounds` rounds, one slice per variant each (order rotated per round), every variant
    training `model`; the children's
    environment is `base_env` (default: this process's) with the thread variables set; returns
    {"per_variant": {name: [median_s per round]}, "ratios": {name: [ratio to names[0]]},
    "others": [max CPUs others used in a slice of the round], "quiet_rounds": [...],
    "summary": {name: {...}}, "info": {name: {openmp, threads}}}."""
    procs = {}
    try:
        for n in names:  # started one after the other: imports do not overlap the timing
            procs[n] = Variant(n, threads, base_env, model)
        per = {n: [] for n in names}
        cpu = {n: [] for n in names}
        others, quiet = [], []
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            worst = 0.0
            for n in order:
                time.sleep(gap)
                res = procs[n].slice(seconds)
                per[n].append(res["median_s"])
                cpu[n].append(res["cpu_s_per_step"])
                worst = max(worst, res["others_cpus"])
            others.append(worst)
            if worst < QUIET:
                quiet.append(r)
            if log and (r % 10 == 9 or r == rounds - 1):
                log(f"  round {r + 1}/{rounds} ({threads} thr, others up to {worst:.2f} CPUs): "
                    + ", ".join(f"{n} {per[n][-1] * 1e3:.2f} ms" for n in names))
        info = {n: p.info for n, p in procs.items()}
    finally:
        for p in procs.values():
            p.close()
    base = names[0]
    ratios = {n: [v / b for v, b in zip(per[n], per[base], strict=True)] for n in names}
    summary = {}
    for n in names:
        q = [ratios[n][i] for i in quiet]
        summary[n] = {
            "median_ms": statistics.median(per[n]) * 1e3, "best_ms": min(per[n]) * 1e3,
            "ratio": statistics.median(ratios[n]),
            "ratio_q1": statistics.quantiles(ratios[n], n=4)[0] if rounds > 1 else None,
            "ratio_q3": statistics.quantiles(ratios[n], n=4)[2] if rounds > 1 else None,
            "quiet_ratio": statistics.median(q) if q else None,
            "quiet_median_ms": statistics.median(per[n][i] for i in quiet) * 1e3 if q else None,
            "cpu_ms_per_step": statistics.median(cpu[n]) * 1e3}
    return {"per_variant": per, "ratios": ratios, "others": others, "quiet_rounds": quiet,
            "summary": summary, "info": info, "threads": threads, "rounds": rounds,
            "slice_s": seconds, "model": model}


def format_summary(res: dict, title: str) -> str:
    """The table of one run_rounds result: per variant, median and best step times, CPU time
    per step, and the per-round ratio of its time to the first variant's (median, IQR), over
    all rounds and over the quiet ones."""
    names = list(res["summary"])
    nq = len(res["quiet_rounds"])
    label = f"time / {names[0]}'s (per-round median, IQR)"
    width = max(32, len(label))
    lines = [f"{title} [{res.get('model', 'mlp')}]: {res['threads']} thread(s), "
             f"{res['rounds']} rounds of {res['slice_s']} s slices; other processes kept a "
             f"median {statistics.median(res['others']):.2f} CPUs busy (max per round); {nq} "
             f"quiet rounds (< {QUIET} CPUs in every slice)",
             f"  {'variant':32s} {'median ms':>9s} {'best ms':>8s} {'CPU ms':>7s}  "
             f"{label:{width}s}  quiet: ms, x"]
    for n in names:
        s = res["summary"][n]
        iqr = (f"({s['ratio_q1']:.2f}-{s['ratio_q3']:.2f})" if s["ratio_q1"] is not None
               else "")
        q = f"{s['quiet_median_ms']:.2f}, {s['quiet_ratio']:.2f}x" if nq else "-"
        omp = res["info"].get(n, {}).get("openmp")
        ratio = f"{s['ratio']:5.2f}x {iqr}"
        lines.append(f"  {n:32s} {s['median_ms']:9.2f} {s['best_ms']:8.2f} "
                     f"{s['cpu_ms_per_step']:7.2f}  {ratio:{width}s}  {q}"
                     + (f"  [OpenMP {omp}]" if omp else ""))
    return "\n".join(lines)


class BusyProcess:
    """One competing process that keeps one CPU busy while the block runs."""

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait()
        return False


MODELS = ("mlp", "cnn", "lstm")


def main(argv=None) -> int:
    """Run the suite per model and thread count and print one table each."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("suite", nargs="?", choices=sorted(SUITES), default="import-order")
    ap.add_argument("--model", nargs="+", choices=MODELS, default=["mlp"],
                    help="the training step every variant runs (default mlp); several: one "
                         "table per model")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    ap.add_argument("--slice", type=float, default=0.3, help="timed seconds per slice")
    ap.add_argument("--gap", type=float, default=0.15, help="sleep before each slice (s)")
    ap.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=None,
                    help="instead of the suite's (the first is the baseline)")
    ap.add_argument("--json", help="write the results here ({model: {'<n>_threads': ...}})")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve(args.serve, args.threads[0], args.model[0])
        return 0
    out = {}
    for model in args.model:
        names = args.variants or SUITES[args.suite]
        if model != "mlp" and not args.variants:  # the zoo models: fused Adam only (shorter)
            names = [n for n in names if n != "torch Adam"]
        out[model] = {}
        for t in args.threads:
            if args.suite == "busy":
                with BusyProcess():
                    res = run_rounds(names, t, args.rounds, args.slice, args.gap, model=model)
            else:
                res = run_rounds(names, t, args.rounds, args.slice, args.gap, model=model)
            out[model][f"{t}_threads"] = res
            title = args.suite + (" (one competing busy process)" if args.suite == "busy"
                                  else "")
            print(format_summary(res, title), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
