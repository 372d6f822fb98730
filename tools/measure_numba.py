"""Measure the Numba backend against the NumPy reference (and PyTorch CPU, if importable).

    .venv/bin/python tools/measure_numba.py                # 2 threads + a 1-thread child run
    .venv/bin/python tools/measure_numba.py --compile      # also cold / cached compile times
    .venv/bin/python tools/measure_numba.py --quick        # fewer rounds (a smoke run)

fp32 throughout. nnx's contenders are interleaved in many short rounds inside one process
(rotating the order each round) and the median per-round time is reported: on a small shared VM
the host moves vCPUs and neighbours come and go, so back-to-back blocks of A then B would mostly
measure the weather. PyTorch never runs in nnx's process: which runtime a process loaded first
changes its thread pools (torch's OpenMP runtime, loaded before nnx, once made the numba step
2.3-3.2x slower, and a same-process comparison hid it), so the PyTorch comparison runs every
contender in a process of its own, in alternating slices, and reports medians of per-round
ratios (tools/measure_procs.py). The CPU time other processes used during the run is printed
too, to tell a quiet measurement from a noisy one.

What is measured
1. GEMM peak: np.matmul float32 at 2048^3 (best and median of a few).
2. Dense forward at (128x784)@(784x512): bare np.matmul into a fresh array vs
   NumbaOps.dense_forward(..., "relu") (GEMM + fused bias/ReLU) vs the reference.
3. MLP 784-512-256-10 train step (ReLU, softmax CE, Adam, batch 128) written directly with the
   ops over a flat parameter buffer: numpy Ops, NumbaOps (as shipped, all-serial and
   all-parallel kernel drivers) and the same step's 8 GEMMs alone (the floor). samples/s and
   fraction of the GEMM peak.
4. Serial vs parallel kernel drivers across sizes (the PAR_MIN_ELEMS crossover).
5. The same 1-3 in a child process with NUMBA_NUM_THREADS=1 and OPENBLAS_NUM_THREADS=1.
6. nnx (numba, numpy: model.train_step) vs PyTorch eager (fused and default Adam) on the same
   step, 2 and 1 threads, each in its own process, alternating: medians of per-round ratios.
7. (--compile) warmup() seconds in a fresh process with an empty NUMBA_CACHE_DIR (cold) and
   again in a second process with that cache (cached).
"""

from __future__ import annotations

# isort: off
import os

# The user's own settings, before `import nnx` sets them (the PyTorch children get these).
_USER_OMP_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY")
_USER_OPENBLAS_THREAD_TIMEOUT = os.environ.get("OPENBLAS_THREAD_TIMEOUT")

import nnx  # noqa: E402, F401  (sets OMP_WAIT_POLICY=passive before any pool starts)

# isort: on
import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402
from nnx.kernels import numba_cpu  # noqa: E402
from nnx.kernels.numba_cpu import NumbaOps  # noqa: E402
from nnx.kernels.reference import Ops  # noqa: E402

SIZES = (784, 512, 256, 10)
BATCH = 128
ACTS = ("relu", "relu", "identity")


# -- CPU accounting (how much of the box did others take while we measured) ---------------
def _cpu_ticks():
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    idle = vals[3] + vals[4]
    total = sum(vals[:8])
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    own = int(fields[11]) + int(fields[12])  # utime + stime, all threads
    return total, idle, own


class CpuWatch:
    def __enter__(self):
        self.start = _cpu_ticks()
        return self

    def __exit__(self, *exc):
        t1, i1, o1 = _cpu_ticks()
        t0, i0, o0 = self.start
        total = max(t1 - t0, 1)
        self.busy = (total - (i1 - i0)) / total
        self.own = (o1 - o0) / total
        self.others = max(self.busy - self.own, 0.0)


# -- interleaved timing ---------------------------------------------------------------------
QUIET = 0.10  # a round counts as quiet when other processes used <= 10% of the box during it


def interleave(fns: dict, rounds: int, reps: int, warm: int = 3) -> dict:
    """Seconds per call of each fn, timed in `rounds` rounds of `reps` calls, the contenders
    interleaved and the order rotated every round. Reports the median over all rounds, the
    best round, and the median over the quiet rounds (other processes <= QUIET of the CPU)."""
    for f in fns.values():
        for _ in range(warm):
            f()
    names = list(fns)
    times = {n: [] for n in names}
    others = []
    for r in range(rounds):
        k = r % len(names)
        t0_total, t0_idle, t0_own = _cpu_ticks()
        for n in names[k:] + names[:k]:
            f = fns[n]
            t0 = time.perf_counter()
            for _ in range(reps):
                f()
            times[n].append((time.perf_counter() - t0) / reps)
        t1_total, t1_idle, t1_own = _cpu_ticks()
        total = max(t1_total - t0_total, 1)
        busy = total - (t1_idle - t0_idle)
        others.append(max(busy - (t1_own - t0_own), 0) / total)
    quiet = [i for i, o in enumerate(others) if o <= QUIET]
    out = {}
    for n, v in times.items():
        out[n] = {
            "median": statistics.median(v),
            "best": min(v),
            "quiet_median": statistics.median([v[i] for i in quiet]) if quiet else None,
            "quiet_rounds": len(quiet),
            "rounds": len(v),
        }
    return out


# -- 1. GEMM peak ---------------------------------------------------------------------------
def gemm_peak(n=2048, reps=5):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    np.matmul(a, b, out=c)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        np.matmul(a, b, out=c)
        ts.append(time.perf_counter() - t0)
    flops = 2.0 * n**3
    return {
        "best_gflops": flops / min(ts) / 1e9,
        "median_gflops": flops / statistics.median(ts) / 1e9,
    }


# -- 2. dense forward -----------------------------------------------------------------------
def dense_forward_bench(rounds, reps):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((128, 784), dtype=np.float32)
    W = (rng.standard_normal((784, 512), dtype=np.float32) * 0.05).astype(np.float32)
    b = rng.standard_normal(512, dtype=np.float32)
    nb, ref = NumbaOps(seed=0), Ops(seed=0)

    def bare():
        out = np.empty((128, 512), np.float32)
        np.matmul(x, W, out=out)

    res = interleave(
        {
            "bare_gemm": bare,
            "numba_dense_relu": lambda: nb.dense_forward(x, W, b, "relu"),
            "numpy_dense_relu": lambda: ref.dense_forward(x, W, b, "relu"),
        },
        rounds,
        reps,
    )
    for k in ("numba", "numpy"):
        res[f"{k}_overhead_vs_gemm"] = (
            res[f"{k}_dense_relu"]["median"] / res["bare_gemm"]["median"] - 1
        )
    return res


# -- 3. train step --------------------------------------------------------------------------
def step_flops():
    pairs = list(zip(SIZES[:-1], SIZES[1:], strict=True))
    fwd = sum(2 * BATCH * a * b for a, b in pairs)
    dw = fwd
    dx = sum(2 * BATCH * a * b for a, b in pairs[1:])  # the first layer needs no dx
    return fwd + dw + dx


def _data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, SIZES[0]), dtype=np.float32)
    y = rng.integers(0, SIZES[-1], BATCH)
    return x, y


def make_ops_step(ops):
    """The MLP train step written directly with the ops: params/grads/m/v are flat buffers and
    the layers' W/b are views of them, as nnx models keep them."""
    rng = np.random.default_rng(0)
    pairs = list(zip(SIZES[:-1], SIZES[1:], strict=True))
    total = sum(a * b + b for a, b in pairs)
    P, G, M, V = (np.zeros(total, np.float32) for _ in range(4))
    layers, grads, o = [], [], 0
    for a, b in pairs:
        W, gW = P[o : o + a * b].reshape(a, b), G[o : o + a * b].reshape(a, b)
        o += a * b
        bb, gb = P[o : o + b], G[o : o + b]
        o += b
        W[...] = rng.standard_normal((a, b)) * np.sqrt(2.0 / a)
        layers.append((W, bb))
        grads.append((gW, gb))
    x, y = _data()
    state = {"t": 0}

    def step():
        h, inputs, saved = x, [], []
        for (W, b), act in zip(layers, ACTS, strict=True):
            inputs.append(h)
            h, s = ops.dense_forward(h, W, b, act)
            saved.append(s)
        loss, d = ops.softmax_cross_entropy(h, y)
        for i in (2, 1, 0):
            d, _, _ = ops.dense_backward(
                d, inputs[i], layers[i][0], saved[i], ACTS[i], i > 0, grads[i][0], grads[i][1]
            )
        state["t"] += 1
        ops.adam_update(P, G, M, V, state["t"], 1e-3, 0.9, 0.999, 1e-8)
        return loss

    return step


def make_gemm_floor():
    """Only the step's 8 GEMMs (3 forward, 3 dW, 2 dx), into preallocated outputs."""
    rng = np.random.default_rng(0)
    pairs = list(zip(SIZES[:-1], SIZES[1:], strict=True))
    Ws = [rng.standard_normal(p, dtype=np.float32) for p in pairs]
    x, _ = _data()
    hs = [x] + [np.empty((BATCH, b), np.float32) for _, b in pairs]
    dWs = [np.empty(p, np.float32) for p in pairs]
    dxs = [np.empty((BATCH, a), np.float32) for a, _ in pairs]

    def step():
        for i in range(3):
            np.matmul(hs[i], Ws[i], out=hs[i + 1])
        for i in (2, 1, 0):
            np.matmul(hs[i].T, hs[i + 1], out=dWs[i])
            if i > 0:
                np.matmul(hs[i + 1], Ws[i].T, out=dxs[i])

    return step


class _Serial(NumbaOps):
    @staticmethod
    def _chunks(work):
        return 1


class _Parallel(NumbaOps):
    @staticmethod
    def _chunks(work):
        return numba.get_num_threads()


def train_step_bench(rounds, reps):
    fns = {
        "numpy": make_ops_step(Ops(seed=0)),
        "numba": make_ops_step(NumbaOps(seed=0)),
        "numba_all_serial": make_ops_step(_Serial(seed=0)),
        "numba_all_parallel": make_ops_step(_Parallel(seed=0)),
        "gemm_floor": make_gemm_floor(),
    }
    res = interleave(fns, rounds, reps)
    for r in res.values():
        r["samples_per_s"] = BATCH / r["median"]
    return res


# -- 4. serial vs parallel drivers ----------------------------------------------------------
def _crossover_fns(n: int, nt: int) -> dict:
    rng = np.random.default_rng(2)
    z = rng.standard_normal((n // 512, 512), dtype=np.float32)
    b = np.zeros(512, np.float32)
    dz = np.empty_like(z)
    db = np.empty(512, np.float32)
    p, g, m = (rng.standard_normal(n, dtype=np.float32) for _ in range(3))
    v = np.abs(rng.standard_normal(n, dtype=np.float32))
    sc = np.array([0.9, 0.1, 0.999, 0.001, 1e-6, 0.5, 1e-8, 0, 1], np.float32)
    k = numba_cpu
    return {
        "epilogue_ser": lambda: k._epilogue_ser(z, b, k.RELU, z),
        "epilogue_par": lambda: k._epilogue_par(z, b, k.RELU, z, nt),
        "dense_grad_ser": lambda: k._dense_grad_ser(z, z, k.RELU, dz, db),
        "dense_grad_par": lambda: k._dense_grad_par(z, z, k.RELU, dz, db, nt),
        "adam_ser": lambda: k._adam_ser(p, g, m, v, sc, 0),
        "adam_par": lambda: k._adam_par(p, g, m, v, sc, 0, nt),
    }


def crossover_bench(rounds, reps):
    nt = numba.get_num_threads()
    out = {}
    for n in (1 << 12, 1 << 14, 1 << 16, 1 << 18, 1 << 20):
        res = interleave(_crossover_fns(n, nt), rounds, max(1, reps * (1 << 16) // n))
        out[n] = {k: r["median"] * 1e6 for k, r in res.items()}
    return out


# -- runs -----------------------------------------------------------------------------------
def torch_rounds(args) -> dict:
    """nnx vs PyTorch, each contender in a process of its own, alternating slices, at 2 and 1
    threads (tools/measure_procs.py); the children get the user's environment, without what
    `import nnx` set in this process (torch must load with its own OpenMP defaults)."""
    import measure_procs

    base = dict(os.environ)
    for var, user in (("OMP_WAIT_POLICY", _USER_OMP_WAIT_POLICY),
                      ("OPENBLAS_THREAD_TIMEOUT", _USER_OPENBLAS_THREAD_TIMEOUT)):
        if user is None:
            base.pop(var, None)
        else:
            base[var] = user
    rounds = 6 if args.quick else args.rounds
    out = {}
    for threads in (2, 1):
        res = measure_procs.run_rounds(measure_procs.SUITES["torch"], threads, rounds,
                                       0.1 if args.quick else 0.3, base_env=base, log=None)
        out[f"{threads}_threads"] = res
        print(measure_procs.format_summary(res, "MLP train step, nnx vs PyTorch"), flush=True)
    return out


def measure(args) -> dict:
    numba_cpu.warmup()
    rounds, reps = (6, 3) if args.quick else (args.rounds, args.steps)
    with CpuWatch() as w:
        out = {
            "threads": {
                "numba": numba.get_num_threads(),
                "numba_layer": _threading_layer(),
                "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
                "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
            },
            "gemm_peak": gemm_peak(),
            "dense_forward": dense_forward_bench(rounds * 2, reps * 5),
            "train_step": train_step_bench(rounds, reps),
        }
        # The peak is the best of a few tries: measured again at the end, keep the faster.
        again = gemm_peak()
        if again["best_gflops"] > out["gemm_peak"]["best_gflops"]:
            out["gemm_peak"] = again
        if not args.child and not args.no_crossover:
            out["crossover_us"] = crossover_bench(max(5, rounds // 2), reps * 2)
    out["cpu"] = {"busy": w.busy, "own": w.own, "others": w.others, "loadavg": os.getloadavg()}
    out["step_gflop"] = step_flops() / 1e9
    return out


def _threading_layer():
    try:
        return numba.threading_layer()
    except Exception:
        return "not started"


def _has_torch():
    """Looked up, not imported: torch never loads into the process that measures nnx."""
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def child_run(args, env_extra: dict, flag: str = "--child") -> dict:
    env = {**os.environ, **env_extra}
    env = {k: v for k, v in env.items() if v is not None}
    cmd = [
        sys.executable,
        __file__,
        flag,
        "--rounds",
        str(args.rounds),
        "--steps",
        str(args.steps),
    ]
    cmd += ["--quick"] if args.quick else []
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def compile_times() -> dict:
    code = "import json; from nnx.kernels.numba_cpu import warmup; print(json.dumps(warmup()))"
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for label in ("cold", "cached"):
            t0 = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
            )
            wall = time.perf_counter() - t0
            per = json.loads(done.stdout.strip().splitlines()[-1])
            out[label] = {"total_s": sum(per.values()), "process_wall_s": wall, "per_kernel": per}
    return out


def _sps(v, key):
    return BATCH / v[key] if v.get(key) else float("nan")


def report(title, r):
    peak = r["gemm_peak"]["best_gflops"]
    th = r["threads"]
    print(
        f"\n=== {title}: numba threads={th['numba']} ({th['numba_layer']}), "
        f"OPENBLAS_NUM_THREADS={th['OPENBLAS_NUM_THREADS']}, "
        f"OMP_WAIT_POLICY={th['OMP_WAIT_POLICY']}"
    )
    c = r["cpu"]
    print(
        f"box busy {c['busy']:.0%} (this process {c['own']:.0%}, other processes "
        f"{c['others']:.0%}); loadavg {c['loadavg'][0]:.2f}"
    )
    print(
        f"GEMM peak (2048^3 fp32): best {peak:.1f} GFLOP/s, median "
        f"{r['gemm_peak']['median_gflops']:.1f}"
    )
    d = r["dense_forward"]
    nq = d["bare_gemm"]["quiet_rounds"]
    print(
        f"dense forward (128x784)@(784x512) + bias + relu, us "
        f"(median / quiet median of {nq} / best):"
    )
    for k in ("bare_gemm", "numba_dense_relu", "numpy_dense_relu"):
        q = d[k]["quiet_median"]
        print(
            f"  {k:18s} {d[k]['median'] * 1e6:9.1f} / "
            f"{q * 1e6 if q else float('nan'):9.1f} / {d[k]['best'] * 1e6:9.1f}"
        )
    for k in ("numba", "numpy"):
        m = d[f"{k}_dense_relu"]
        b = d["bare_gemm"]
        line = f"  {k} overhead vs bare GEMM: median {m['median'] / b['median'] - 1:+.1%}"
        if b["quiet_median"]:
            line += f", quiet {m['quiet_median'] / b['quiet_median'] - 1:+.1%}"
        line += f", best {m['best'] / b['best'] - 1:+.1%}"
        print(line)
    t = r["train_step"]
    gf = r["step_gflop"]
    nq = t["numpy"]["quiet_rounds"]
    print(
        f"MLP 784-512-256-10 train step, batch {BATCH} ({gf * 1e3:.0f} MFLOP/step), "
        f"samples/s: median of {t['numpy']['rounds']} rounds / quiet median of {nq} / "
        f"best round; % of GEMM peak from the median"
    )
    for k, v in t.items():
        frac = gf / v["median"] / peak
        print(
            f"  {k:20s} {_sps(v, 'median'):9.0f} / {_sps(v, 'quiet_median'):9.0f} / "
            f"{_sps(v, 'best'):9.0f}   {frac:6.1%}"
        )
    for key, label in (("median", "median"), ("quiet_median", "quiet"), ("best", "best")):
        if not t["numba"].get(key):
            continue
        nb = _sps(t["numba"], key)
        line = f"  [{label:6s}] numba/numpy = {nb / _sps(t['numpy'], key):.2f}x (target 1.5)"
        line += f"; numba step / GEMM floor = {t['numba'][key] / t['gemm_floor'][key]:.2f}"
        print(line)
    if "crossover_us" in r:
        print("serial vs parallel drivers, median us (elements: ser / par):")
        for n, v in r["crossover_us"].items():
            print(
                f"  {int(n):8d}: epilogue {v['epilogue_ser']:8.1f} / {v['epilogue_par']:8.1f}"
                f"   dense_grad {v['dense_grad_ser']:8.1f} / {v['dense_grad_par']:8.1f}"
                f"   adam {v['adam_ser']:8.1f} / {v['adam_par']:8.1f}"
            )


def wait_quiet(max_s: float) -> float:
    """Wait (up to max_s seconds) for 2 s in which other processes use <= QUIET of the box."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < max_s:
        a = _cpu_ticks()
        time.sleep(2.0)
        b = _cpu_ticks()
        total = max(b[0] - a[0], 1)
        others = (total - (b[1] - a[1]) - (b[2] - a[2])) / total
        if others <= QUIET:
            break
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=40, help="interleaved rounds (default 40)")
    ap.add_argument("--steps", type=int, default=10, help="calls per contender per round")
    ap.add_argument("--quick", action="store_true", help="a few rounds only (smoke run)")
    ap.add_argument("--no-torch", action="store_true", help="skip PyTorch even if importable")
    ap.add_argument("--no-crossover", action="store_true", help="skip the driver crossover table")
    ap.add_argument("--no-single", action="store_true", help="skip the 1-thread child run")
    ap.add_argument("--compile", action="store_true", help="also measure cold/cached compiles")
    ap.add_argument("--json", help="write all results to this file")
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        metavar="S",
        help="first wait up to S seconds for the box to be quiet",
    )
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        print(json.dumps(measure(args)))
        return
    if args.wait_quiet:
        print(f"waited {wait_quiet(args.wait_quiet):.0f} s for a quiet box")
    results = {"default": measure(args)}
    report("2 threads (defaults)", results["default"])
    if not args.no_single:
        one = {
            "NUMBA_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        results["one_thread"] = child_run(args, one)
        report("1 thread (NUMBA_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1)", results["one_thread"])
    if _has_torch() and not args.no_torch:
        print("\n=== nnx vs PyTorch: own processes, alternating slices, per-round ratios")
        results["torch"] = torch_rounds(args)
    if args.compile:
        results["compile"] = ct = compile_times()
        print(
            f"\nwarmup() in a fresh process: cold (empty cache) {ct['cold']['total_s']:.1f} s "
            f"(process {ct['cold']['process_wall_s']:.1f} s), cached "
            f"{ct['cached']['total_s']:.2f} s (process {ct['cached']['process_wall_s']:.1f} s)"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
    main()
