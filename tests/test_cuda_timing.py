"""nnx.bench.timing.CudaEventClock on the fake CUDA runtime: events are recorded on the timed
device (not whichever is current), and side streams (e.g. NCCL's) are joined before the end
event, so their work is inside the measured interval."""

from __future__ import annotations

from fake_cuda_runtime import STATE, EmuDevice, Stream, current_device, reset_log
from fake_cupy import FakeCupy

from nnx.bench.timing import CudaEventClock


def test_events_on_the_timed_device_and_side_streams_joined():
    cp = FakeCupy(compiler=None, device_count=2)
    with EmuDevice(1):
        side = Stream(name="nccl")
    devices = []
    clock = CudaEventClock(cp, device=1, streams=lambda: [side])
    reset_log()
    with EmuDevice(0):  # the caller's current device is 0
        per_call = clock.time(lambda: devices.append(current_device()), number=3)
    assert per_call >= 0 and devices == [1, 1, 1]  # the work ran with device 1 current
    log = list(STATE.log)
    records = [e for e in log if e[0] == "record"]
    assert records and all(e[2] == 1 for e in records)  # every event on device 1
    assert ("wait", "nccl", "null") in log  # the side stream starts after the start event
    end = max(i for i, e in enumerate(log) if e[0] == "record" and e[1] == "null")
    joined = [i for i, e in enumerate(log) if e == ("wait", "null", "nccl")]
    assert joined and joined[0] < end  # ... and the end event waits for it
    assert ("device_sync", "device1", None) in log  # the timed device was synchronized


def test_default_clock_times_the_current_device_and_stream():
    cp = FakeCupy(compiler=None, device_count=2)
    reset_log()
    with EmuDevice(1):
        CudaEventClock(cp).time(lambda: None)
    assert all(e[2] == 1 for e in STATE.log if e[0] == "record")
