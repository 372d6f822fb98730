"""Timing done right: synchronized clocks, calibrated samples, medians and IQRs.

- A *sample* is one clock reading around `number` back-to-back calls (calibrated so a sample
  lasts about `target_s`); its value is seconds per call. Short samples matter on a host that
  migrates vCPUs every few seconds: a disturbance spoils one sample, not the whole figure.
- Clocks synchronize before they read: `HostClock` calls the backend's `synchronize()` before
  the start and before the stop reading (a no-op on the CPU backends); `CudaEventClock` records
  CUDA events around the calls on the timed device (joining any side streams, such as NCCL's)
  and reads the device-side elapsed time.
- Statistics are order statistics (median, quartiles, IQR), robust to the long right tail that
  preemption produces; means are reported only for completeness.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field


def quantile(sorted_xs, q: float) -> float:
    """Linear-interpolation quantile of an already sorted sequence (NumPy's default method)."""
    n = len(sorted_xs)
    if n == 0:
        return math.nan
    pos = (n - 1) * q
    lo = int(math.floor(pos))
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * frac


@dataclass
class Stats:
    """Order statistics of a list of per-call times (seconds)."""

    samples: list = field(default_factory=list)

    @property
    def sorted(self):
        return sorted(self.samples)

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def median(self) -> float:
        return quantile(self.sorted, 0.5)

    @property
    def q1(self) -> float:
        return quantile(self.sorted, 0.25)

    @property
    def q3(self) -> float:
        return quantile(self.sorted, 0.75)

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @property
    def min(self) -> float:
        return min(self.samples) if self.samples else math.nan

    @property
    def max(self) -> float:
        return max(self.samples) if self.samples else math.nan

    @property
    def mean(self) -> float:
        return sum(self.samples) / len(self.samples) if self.samples else math.nan

    def to_dict(self) -> dict:
        return {"median_s": self.median, "q1_s": self.q1, "q3_s": self.q3, "iqr_s": self.iqr,
                "min_s": self.min, "max_s": self.max, "mean_s": self.mean, "n": self.n,
                "samples_s": list(self.samples)}


class HostClock:
    """perf_counter around `number` calls, with `sync()` before each reading."""

    kind = "perf_counter"

    def __init__(self, sync=None):
        self.sync = sync or (lambda: None)

    def time(self, fn, number: int = 1) -> float:
        """Seconds per call, averaged over `number` back-to-back calls."""
        sync = self.sync
        sync()
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        sync()
        return (time.perf_counter() - t0) / number


class CudaEventClock:
    """CUDA events around `number` calls (device time, no host jitter), on the right device
    and covering every stream the work runs on.

    `device`: the device the timed work runs on (an int, e.g. `ops.device`; None: the current
    one when `time` is called). Events are created, recorded and read under that device, so
    work on a non-current device is timed on its own clock. `streams`: the other streams the
    work uses besides the device's current stream (e.g. an NCCL side stream), or a callable
    returning them at timing time. They wait on the start event, so none of their work can
    begin before it, and the end event is recorded after the current stream has waited on an
    event of each, so it completes only when all of them have. The host synchronizes the
    device first so that earlier queued work is not counted."""

    kind = "cuda_events"

    def __init__(self, cupy_module, sync=None, device: int | None = None, streams=()):
        self.cp = cupy_module
        self.device = device
        self.streams = streams
        self._sync = sync

    def sync(self) -> None:
        """Wait for the timed device (the `sync` given, else the device's own)."""
        if self._sync is not None:
            self._sync()
        else:
            self.cp.cuda.Device(self.device).synchronize()

    def _side_streams(self) -> list:
        s = self.streams() if callable(self.streams) else self.streams
        return [x for x in (s or ()) if x is not None]

    def time(self, fn, number: int = 1) -> float:
        """Seconds per call, averaged over `number` back-to-back calls."""
        cp = self.cp
        self.sync()
        with cp.cuda.Device(self.device):
            main = cp.cuda.get_current_stream()
            side = self._side_streams()
            start, end = cp.cuda.Event(), cp.cuda.Event()
            start.record(main)
            for s in side:
                s.wait_event(start)
            for _ in range(number):
                fn()
            for s in side:
                main.wait_event(s.record())
            end.record(main)
            end.synchronize()
            return cp.cuda.get_elapsed_time(start, end) / 1e3 / number


class TorchCudaEventClock(CudaEventClock):
    """The same with torch.cuda events (for the torch-cuda yardstick)."""

    def __init__(self, torch_module):
        self.torch = torch_module

    def sync(self) -> None:
        self.torch.cuda.synchronize()

    def time(self, fn, number: int = 1) -> float:
        torch = self.torch
        self.sync()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(number):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / number


def calibrate(clock, fn, target_s: float, max_number: int = 1 << 16, first_s: float | None = None):
    """The number of calls per sample so that one sample lasts about `target_s`.

    `first_s` is a per-call estimate already in hand (e.g. from the warm-up call)."""
    per_call = first_s if first_s and first_s > 0 else clock.time(fn, 1)
    number = 1
    # one more measurement with a few calls: the first call is often slow (cold caches)
    if per_call < target_s / 4:
        n_probe = max(1, min(max_number, int(target_s / 4 / max(per_call, 1e-9))))
        per_call = clock.time(fn, n_probe)
    if per_call > 0:
        number = int(target_s / per_call)
    return max(1, min(max_number, number))


def timed(clock, fn) -> tuple[float, object]:
    """(seconds, return value) of one synchronized call."""
    box = []
    s = clock.time(lambda: box.append(fn()), 1)
    return s, (box[0] if box else None)
