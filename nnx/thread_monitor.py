"""`ThreadMonitor`: says in the progress output when other processes oversubscribe the host, and
(opt-in) lowers the BLAS thread count while they do.

Why: a multi-threaded BLAS on a host whose cores other processes also want slows down far more
than the CPU it loses. On the 2-vCPU development machine, with one competing busy process, the
numba MLP step (batch 128) took 35-59 ms with 2 BLAS threads and 5-12 ms with 1 (OpenBLAS's
caller spin-waits for a worker that is not running); PyTorch's step degrades the same way.
The monitor is a callback (`model.fit` adds it next to the progress bar on the chief process):

    on_train_begin   prints the thread plan when nnx chose the counts (`nnx.threads.summary()`)
    on_batch_end     at most every `interval_s` seconds: how many CPUs other processes used
                     (all CPUs' busy time from /proc/stat, steal included, minus this process's
                     own CPU time) against the cores this process leaves them
    on_epoch_end     one line when the host was oversubscribed during the epoch

Adapting is opt-in (`adapt=True`, or NNX_ADAPT_THREADS=1): OpenBLAS's results differ in the last
bits between thread counts, so a count that follows the load would make two runs with the same
seed differ. With it, the BLAS count drops to the cores the others leave free (at least 1) while
they take them, and returns to the planned count after two quiet windows. Numba's count is left
alone (its reductions are chunked per thread). Linux only (/proc/stat); elsewhere it is silent.
"""

from __future__ import annotations

import os
import sys
import time

from . import threads
from .callbacks import Callback


def _cpu_times():
    """(total, busy) jiffies of all CPUs (busy counts steal time: the hypervisor's other
    guests take those cycles too)."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    total = sum(vals[:8])  # user nice system idle iowait irq softirq steal (guest is in user)
    return total, total - vals[3] - vals[4]


class LoadProbe:
    """CPUs used by other processes between two `snap()`s."""

    def __init__(self):
        self.tck = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        try:
            _cpu_times()
            self.ok = True
        except (OSError, ValueError, IndexError):
            self.ok = False

    def clock(self) -> float:
        """Seconds, for the windows (monotonic)."""
        return time.monotonic()

    def snap(self):
        if not self.ok:
            return None
        _, busy = _cpu_times()
        return self.clock(), busy, time.process_time()

    def others(self, a, b) -> float | None:
        """Average number of CPUs others kept busy between snaps `a` and `b` (None: unknown)."""
        if a is None or b is None or b[0] - a[0] <= 0:
            return None
        busy = (b[1] - a[1]) / self.tck
        return max(0.0, busy - (b[2] - a[2])) / (b[0] - a[0])


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


class ThreadMonitor(Callback):
    """Warn (and with `adapt`, lower the BLAS threads) while other processes oversubscribe
    the host.

    verbose: 0 prints nothing (adapting still works). adapt: change the BLAS thread count with
    the load (default: NNX_ADAPT_THREADS=1 turns it on). interval_s: seconds per measurement
    window (>= 0.1). margin: CPUs of slack before the host counts as oversubscribed: others use
    more than `cores - this process's threads + margin`. stream: where lines go (stdout).
    show_plan: print `nnx.threads.summary()` when training starts if nnx chose the thread
    counts (MPI ranks, a CPU quota) or gave Numba its own OpenMP runtime.
    `events` lists (epoch, CPUs others used in the window, action) per oversubscribed window.
    """

    def __init__(self, verbose: int = 1, adapt: bool | None = None, interval_s: float = 1.0,
                 margin: float = 0.5, stream=None, probe: LoadProbe | None = None,
                 show_plan: bool = True):
        if not isinstance(interval_s, (int, float)) or not interval_s >= 0.1:
            raise ValueError(f"ThreadMonitor: interval_s must be a number >= 0.1 seconds, got "
                             f"{interval_s!r}")
        if not isinstance(margin, (int, float)) or not 0 <= margin < 64:
            raise ValueError(f"ThreadMonitor: margin must be a number of CPUs in [0, 64), got "
                             f"{margin!r}")
        self.verbose, self.show_plan = verbose, bool(show_plan)
        self.adapt = _env_flag("NNX_ADAPT_THREADS") if adapt is None else bool(adapt)
        self.interval_s, self.margin = float(interval_s), float(margin)
        self.stream = stream
        self.probe = probe or LoadProbe()
        self.events: list[tuple[int, float, str]] = []
        self.planned_blas: int | None = None
        self.blas_now: int | None = None
        self.cores = threads.usable_cores()[0]

    def _write(self, line: str) -> None:
        if self.verbose:
            stream = self.stream or sys.stdout
            stream.write(line + "\n")
            stream.flush()

    # -- callback points --------------------------------------------------------------------
    def on_train_begin(self, info):
        st = threads.status()
        self.cores = st.get("cores") or self.cores
        self.planned_blas = self.blas_now = st["now"].get("blas")
        self.numba_threads = st["now"].get("numba") or 1
        self.epoch, self.quiet_windows = 0, 0
        chose = any((st.get(lib) or {}).get("set_by") == "nnx" for lib in ("numba", "blas"))
        if self.show_plan and (chose or st.get("oversubscribed") or
                               st.get("openmp", {}).get("state") in ("isolated", "serial")):
            self._write(threads.summary())
        self._last = self.probe.snap()
        self._epoch_others: list[float] = []

    def on_epoch_begin(self, epoch):
        # windows run on across epochs (an epoch may be shorter than a window); a window counts
        # for the epoch in which it ends
        self.epoch = epoch
        self._epoch_others = []

    def own_threads(self) -> int:
        """The threads whose waits suffer when a core is taken: the BLAS's (its caller
        spin-waits for its workers). Numba's workers sleep when idle (OMP_WAIT_POLICY=passive)
        and its parallel kernels are short, so Numba counts only without a known BLAS count."""
        return self.blas_now or self.numba_threads or 1

    def on_batch_end(self, batch, state):
        last = getattr(self, "_last", None)
        if last is None or self.probe.clock() - last[0] < self.interval_s:
            return
        now = self.probe.snap()
        self._last = now
        others = self.probe.others(last, now)
        if others is None:
            return
        self.window(others)

    def window(self, others: float) -> None:
        """One measurement window in which other processes used `others` CPUs."""
        free = self.cores - others
        if others > self.cores - self.own_threads() + self.margin:
            self._epoch_others.append(others)
            self.quiet_windows = 0
            action = ""
            want = max(1, int(free + self.margin))
            if self.adapt and self.blas_now and want < self.blas_now:
                if threads.set_blas_threads(want):
                    action = f"BLAS threads {self.blas_now} -> {want}"
                    self._write(f"nnx: host oversubscribed (other processes use {others:.1f} "
                                f"of {self.cores} cores): {action}")
                    self.blas_now = want
            self.events.append((self.epoch, others, action))
        elif self.adapt and self.blas_now != self.planned_blas and self.planned_blas:
            if others <= self.cores - self.planned_blas + self.margin:
                self.quiet_windows += 1
                if self.quiet_windows >= 2 and threads.set_blas_threads(self.planned_blas):
                    self._write(f"nnx: host no longer oversubscribed: BLAS threads "
                                f"{self.blas_now} -> {self.planned_blas}")
                    self.events.append((self.epoch, others, f"BLAS threads {self.blas_now} -> "
                                                            f"{self.planned_blas}"))
                    self.blas_now = self.planned_blas

    def on_epoch_end(self, epoch, logs):
        if not self._epoch_others:
            return
        worst, own = max(self._epoch_others), self.own_threads()
        line = (f"  host oversubscribed during epoch {epoch + 1}: other processes used up to "
                f"{worst:.1f} of {self.cores} cores while this process runs {own} "
                f"thread{'s' if own != 1 else ''} (BLAS {self.blas_now}, Numba "
                f"{self.numba_threads}); ")
        if self.adapt:
            line += "BLAS threads follow the load (adapt=True)"
        else:
            line += ("multi-threaded steps slow down several-fold: set OPENBLAS_NUM_THREADS=1 "
                     "(or NNX_ADAPT_THREADS=1)")
        self._write(line)
