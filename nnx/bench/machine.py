"""What the benchmarks ran on: CPU, cores, BLAS, versions, thread settings, measured peaks.

Thread counts are set for every library at once (`set_threads`): Numba (`numba.set_num_threads`),
the BLAS NumPy links (OpenBLAS's `*_set_num_threads`, found among the loaded shared objects,
as threadpoolctl does); PyTorch, which runs in a worker process of its own (nnx.bench.remote),
gets the same count there (`torch.set_num_threads`), so that the comparison is at equal thread
counts.

Peaks are measured, not looked up: a large SGEMM through NumPy's BLAS (GFLOP/s) and a large
memcpy (`numpy.copyto`, GB/s counted as bytes read + bytes written). Every case reports its
throughput as a fraction of these.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import sys
import time

from nnx import threads as nnx_threads
from nnx.sysinfo import collect

from .timing import HostClock, Stats

THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
              "OMP_WAIT_POLICY", "NUMBA_THREADING_LAYER", "OMP_PROC_BIND")


# -- BLAS threads: nnx.threads finds and drives the loaded OpenBLAS / MKL -------------------
def blas_threads() -> int | None:
    """NumPy's BLAS thread count, or None when no known BLAS is found."""
    import numpy  # noqa: F401  (make sure NumPy's BLAS is loaded)

    return nnx_threads.blas_threads()


def set_blas_threads(n: int) -> bool:
    """Set NumPy's BLAS thread count; False when no known BLAS is loaded."""
    import numpy  # noqa: F401

    return nnx_threads.set_blas_threads(n)


def numba_threads() -> int | None:
    from nnx import compat

    if not compat.has_numba:
        return None
    return int(compat.numba.get_num_threads())


def set_threads(n: int | None, torch_too: bool = True) -> dict:
    """Set Numba, BLAS (and torch, if imported or `torch_too`) to `n` threads; None: leave them,
    but align torch with Numba. Returns the counts in force afterwards."""
    from nnx import compat

    if n is not None:
        if compat.has_numba:
            n_nb = min(int(n), int(compat.numba.config.NUMBA_NUM_THREADS))
            compat.numba.set_num_threads(n_nb)
        set_blas_threads(n)
    want_torch = n if n is not None else (numba_threads() or blas_threads() or os.cpu_count())
    if torch_too and compat.has_torch:
        import torch

        torch.set_num_threads(int(want_torch))
    return thread_counts()


@functools.lru_cache(maxsize=1)
def torch_info(timeout_s: float = 300.0) -> dict:
    """{"version", "cuda", "threads"} of the installed PyTorch, asked of a child process (the
    benchmark's own process never imports torch: see nnx.bench.remote), or {"error": reason}."""
    code = ("import json, torch; print(json.dumps({'version': torch.__version__, "
            "'cuda': bool(torch.cuda.is_available()), 'threads': torch.get_num_threads()}))")
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"import torch failed (status {done.returncode}): {last}"}
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"unexpected output: {done.stdout[-200:]!r}"}


def thread_counts() -> dict:
    out = {"numba": numba_threads(), "blas": blas_threads()}
    if "torch" in sys.modules:
        out["torch"] = int(sys.modules["torch"].get_num_threads())
    return out


# -- description ------------------------------------------------------------------------------
def _cpuinfo() -> dict:
    info: dict = {}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return {"model": platform.processor() or platform.machine()}
    first = text.split("\n\n")[0]
    for line in first.splitlines():
        if ":" not in line:
            continue
        k, v = (s.strip() for s in line.split(":", 1))
        if k == "model name":
            info["model"] = v
        elif k == "cpu family":
            info["family"] = v
        elif k == "model":
            info["model_number"] = v
        elif k == "flags":
            flags = set(v.split())
            info["simd"] = [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw",
                                        "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]
        elif k == "cpu MHz":
            info["mhz"] = float(v)
        elif k == "cache size":
            info["cache"] = v
    info["logical_cpus"] = text.count("processor\t:") or os.cpu_count()
    return info


def _meminfo_gb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def _loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def busy_warning() -> str | None:
    """A warning when other processes keep the CPUs busy (timings will not be representative:
    on a 2-vCPU box, a 2-thread BLAS slows down 10-20x when one vCPU is taken)."""
    load = _loadavg()
    cpus = os.cpu_count() or 1
    if load and load[0] > 0.5 * cpus:
        return (f"the machine is busy (load average {load[0]:.1f} on {cpus} CPUs): other processes "
                "compete for the cores and multi-threaded timings will be unreliable")
    return None


def _cpu_times():
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    return sum(vals), idle


def process_cpu_s(pid: int, tck: int = 100) -> float:
    """CPU seconds (user + system, all threads) process `pid` has used (Linux /proc); 0 when it
    cannot be read (gone, not Linux)."""
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tck
    except (OSError, ValueError, IndexError):
        return 0.0


class LoadProbe:
    """CPU time used by *other* processes: all CPUs' busy time (/proc/stat) minus this
    process's own CPU time (all its threads: BLAS, Numba and torch workers included) and that
    of the benchmark's own worker processes (`pids`: a list, or a callable returning one, of the
    processes the remote targets run in), so that a worker's samples do not count as load."""

    def __init__(self, pids=()):
        self.tck = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.pids = pids
        self.ok = True
        try:
            _cpu_times()
        except (OSError, ValueError, IndexError):
            self.ok = False

    def _own(self) -> float:
        pids = self.pids() if callable(self.pids) else self.pids
        return time.process_time() + sum(process_cpu_s(p, self.tck) for p in pids or () if p)

    def snap(self):
        """(monotonic time, busy seconds of all CPUs, own CPU seconds) now."""
        if not self.ok:
            return (time.monotonic(), 0, self._own())
        total, idle = _cpu_times()
        return (time.monotonic(), total - idle, self._own())

    def others(self, a, b) -> float:
        """Average number of CPUs other processes kept busy between two snaps."""
        wall = b[0] - a[0]
        if not self.ok or wall <= 0:
            return 0.0
        busy = (b[1] - a[1]) / self.tck
        own = b[2] - a[2]
        return max(0.0, busy - own) / wall

    def wait_idle(self, threshold: float, timeout_s: float, interval: float = 0.5,
                  streak: int = 4) -> float:
        """Sleep until others use < `threshold` CPUs for `streak` intervals in a row (or the
        timeout); returns the seconds waited."""
        t0 = time.monotonic()
        n = 0
        while time.monotonic() - t0 < timeout_s:
            a = self.snap()
            time.sleep(interval)
            n = n + 1 if self.others(a, self.snap()) < threshold else 0
            if n >= streak:
                break
        return time.monotonic() - t0


def cpu_busy_fraction(interval: float = 1.0) -> float | None:
    """Fraction of all CPUs busy over `interval` seconds (Linux /proc/stat), else None."""
    try:
        t0, i0 = _cpu_times()
        time.sleep(interval)
        t1, i1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (i1 - i0) / max(t1 - t0, 1)


def wait_quiet(timeout_s: float, threshold: float = 0.25, quiet_s: int = 3, log=None) -> bool:
    """Wait (up to `timeout_s`) until the CPUs have been less than `threshold` busy for `quiet_s`
    consecutive seconds. Returns whether it got quiet."""
    deadline = time.monotonic() + timeout_s
    streak = 0
    last_log = 0.0
    while time.monotonic() < deadline:
        busy = cpu_busy_fraction(1.0)
        if busy is None:
            return False
        streak = streak + 1 if busy < threshold else 0
        if streak >= quiet_s:
            return True
        if log and time.monotonic() - last_log > 30:
            log(f"waiting for a quiet machine: CPUs {busy * 100:.0f}% busy")
            last_log = time.monotonic()
    return False


def describe() -> dict:
    """The machine and software, for the JSON: CPU model, cores, memory, versions, BLAS, threads."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        affinity = os.cpu_count()
    d = {
        "cpu": _cpuinfo(),
        "cpus": os.cpu_count(),
        "cpus_usable": affinity,
        "memory_gb": _meminfo_gb(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "nnx_info": collect(),
        "threads": thread_counts(),
        "loadavg": _loadavg(),
        "thread_env": {k: os.environ.get(k) for k in THREAD_ENV},
    }
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        d["torch"] = {"version": torch.__version__,
                      "cuda": bool(torch.cuda.is_available()),
                      "threads": torch.get_num_threads()}
    return d


def one_line(desc: dict) -> str:
    cpu = desc.get("cpu", {})
    th = desc.get("threads", {})
    info = desc.get("nnx_info", {})
    blas = info.get("blas", {}).get("name", "?") if isinstance(info.get("blas"), dict) else "?"
    return (f"{cpu.get('model', '?')} ({desc.get('cpus_usable')} CPUs, "
            f"{'/'.join(cpu.get('simd', [])[-2:]) or '?'}), {blas}, numpy {info.get('numpy')}, "
            f"numba {info.get('numba')}, threads numba={th.get('numba')} blas={th.get('blas')}"
            + (f" torch={th['torch']}" if "torch" in th else ""))


# -- peaks ------------------------------------------------------------------------------------
def measure_peaks(quick: bool = False, repeats: int | None = None) -> dict:
    """Large SGEMM GFLOP/s and large memcpy GB/s through NumPy, medians over repeats."""
    import numpy as np

    clock = HostClock()
    n = 512 if quick else 2048
    reps = repeats or (3 if quick else 7)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    np.matmul(a, b, out=c)  # warm-up (thread pool start, page faults)
    number = 1 if not quick else 4
    gemm = Stats([clock.time(lambda: np.matmul(a, b, out=c), number) for _ in range(reps)])
    flops = 2.0 * n**3

    mb = 32 if quick else 256
    src = np.ones(mb * 1024**2 // 4, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    copy = Stats([clock.time(lambda: np.copyto(dst, src), 1) for _ in range(reps)])
    nbytes = 2.0 * src.nbytes  # read + write
    # a peak is what the machine can do: the best sample, not the median (a neighbour's burst
    # during the measurement would otherwise push cases above 100% of "peak")
    return {
        "sgemm_gflops": flops / gemm.min / 1e9,
        "sgemm_gflops_median": flops / gemm.median / 1e9,
        "sgemm_gflops_best": flops / gemm.min / 1e9,
        "sgemm_n": n,
        "sgemm_iqr_s": gemm.iqr,
        "memcpy_gbps": nbytes / copy.min / 1e9,
        "memcpy_gbps_median": nbytes / copy.median / 1e9,
        "memcpy_gbps_best": nbytes / copy.min / 1e9,
        "memcpy_mb": mb,
        "threads": thread_counts(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
