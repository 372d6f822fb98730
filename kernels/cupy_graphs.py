"""EXPERIMENTAL CUDA graph capture and replay for the CuPy backend (`capture_graph`).

Kept apart from the kernel overrides: it drives any callable (e.g. one train step over a
CupyOps) through CuPy's stream capture and needs nothing from the Ops but its device.

Stream ordering. The warm-up and the capture run on a private non-blocking stream (the legacy
default stream cannot be captured), and a non-blocking stream is NOT ordered against the
legacy default stream, where `ops.asarray` / `ops.zeros` queue their uploads and memsets. So
the private stream first waits on the caller's current stream (an event), and the caller's
stream waits on the private one after the warm-up. `replay()` launches the graph on the
caller's CURRENT stream, so it is ordered with the caller's in-place input updates before it
and the reads of the outputs after it, as any other kernel launch would be.

Step-dependent scalars. A graph freezes kernel arguments at capture. The optimizer kernels
therefore read their step-dependent scalars (Adam's bias corrections and decay, the scheduled
learning rate) from a small device buffer while a capture is recording (`recording()` tells
the Ops so), and `replay()` rewrites each buffer before launching: the captured step number
advances by one per replay (so Adam's bias correction keeps following the steps), and
`replay(lr=...)` passes the learning rate of that step (a float, or a callable of the step
number, e.g. the optimizer's schedule). Host-side state of the captured Python code (the
optimizer's `step` attribute, Python counters) does not advance on replay: a graph re-runs the
recorded device work, not the Python.
"""

from __future__ import annotations

import contextvars

import numpy

from nnx import compat
from nnx.errors import BackendUnavailableError

from .cupy_device import INSTALL_HINT

_RECORDER: contextvars.ContextVar = contextvars.ContextVar("cuda_graph_recorder", default=None)


class HyperSlot:
    """One captured optimizer launch's scalars: the device buffer the kernel reads, and
    `compute(step, lr) -> float64 values` that fills it for a replayed step."""

    __slots__ = ("buffer", "compute", "step", "lr")

    def __init__(self, buffer, compute, step: int, lr: float):
        self.buffer = buffer
        self.compute = compute
        self.step = int(step)  # the step number the captured call was made with
        self.lr = float(lr)


class GraphRecorder:
    """Collects the HyperSlots of the optimizer launches made while a graph is captured."""

    def __init__(self, xp, device_id: int):
        self.xp = xp
        self.device_id = device_id
        self.slots: list[HyperSlot] = []

    def hyper_buffer(self, size: int, compute, step: int, lr: float):
        """A device buffer of `size` float64 for one optimizer launch; replay() fills it with
        `compute(step, lr)` before every launch. Returns the buffer (for the kernel)."""
        buf = self.xp.empty((int(size),), dtype=numpy.float64)
        self.slots.append(HyperSlot(buf, compute, step, lr))
        return buf


def recording(ops=None) -> GraphRecorder | None:
    """The recorder of the capture in progress in this context (None outside a capture, or
    when the capture is for another device than `ops`')."""
    rec = _RECORDER.get()
    if rec is not None and ops is not None and getattr(ops, "device", rec.device_id) != (
        rec.device_id
    ):
        return None
    return rec


class CapturedGraph:
    """EXPERIMENTAL. A CUDA graph captured from a callable (see `capture_graph`)."""

    def __init__(self, xp, graph, pool, outputs, device_id, slots, stream=None):
        self.xp = xp
        self.graph = graph
        self.pool = pool  # private memory pool: keeps the graph's temporaries alive
        self.outputs = outputs
        self.device_id = device_id
        self.slots = list(slots)  # the optimizer scalars rewritten before each launch
        self.capture_stream = stream  # kept alive with the graph; replay does not use it
        self.replays = 0

    def replay(self, synchronize: bool = False, *, step: int | None = None, lr=None):
        """Launch the captured work again, on the caller's current stream (same input and
        output buffers); returns the outputs of the captured call (the same arrays,
        overwritten).

        `step`: the optimizer step number of this replay (default: the captured call's step
        plus the number of replays so far). `lr`: the learning rate of this replay, a float or
        a callable of the step number (default: the captured call's). Both only matter for
        captured optimizer updates."""
        xp = self.xp
        with xp.cuda.Device(self.device_id):
            stream = xp.cuda.get_current_stream()
            for slot in self.slots:
                s = slot.step + self.replays if step is None else int(step)
                rate = slot.lr if lr is None else float(lr(s) if callable(lr) else lr)
                host = numpy.ascontiguousarray(slot.compute(s, rate), dtype=numpy.float64)
                slot.buffer.set(host, stream=stream)  # ordered before the launch below
            self.graph.launch(stream=stream)
            self.replays += 1
            if synchronize:
                stream.synchronize()
        return self.outputs


def capture_graph(fn, *args, ops=None, warmup_runs: int = 1, **kwargs) -> CapturedGraph:
    """EXPERIMENTAL: capture `fn(*args, **kwargs)` (e.g. one train step) into a CUDA graph.

    `fn` runs `warmup_runs` times first (kernel compilation and cuBLAS setup cannot be
    captured), then once under stream capture with a private memory pool, so temporaries keep
    their addresses for every replay. Rules: inputs must be updated in place between replays
    (the graph reads the same buffers), `fn` must not sync with the host (no .get(), float(),
    printing device values), and results are the arrays `fn` returned, overwritten by each
    `replay()`. The captured call itself is recorded, not run: the first replay performs it.
    Returns a CapturedGraph. Unverified on hardware in this version.
    """
    xp = ops.xp if ops is not None else compat.cupy
    if xp is None:
        raise BackendUnavailableError(f"capture_graph needs CuPy: {INSTALL_HINT}")
    device_id = ops.device if ops is not None else int(xp.cuda.runtime.getDevice())
    with xp.cuda.Device(device_id):
        caller = xp.cuda.get_current_stream()
        stream = xp.cuda.Stream(non_blocking=True)
        # the private stream sees everything queued before (uploads, memsets of the inputs)
        stream.wait_event(caller.record())
        with stream:
            for _ in range(int(warmup_runs)):
                fn(*args, **kwargs)
        # and the caller's stream sees the warm-up's writes
        caller.wait_event(stream.record())
        stream.synchronize()
        pool = xp.cuda.MemoryPool()
        recorder = GraphRecorder(xp, device_id)
        token = _RECORDER.set(recorder)
        try:
            with xp.cuda.using_allocator(pool.malloc), stream:
                stream.begin_capture()
                try:
                    outputs = fn(*args, **kwargs)
                finally:
                    graph = stream.end_capture()
        finally:
            _RECORDER.reset(token)
    return CapturedGraph(xp, graph, pool, outputs, device_id, recorder.slots, stream)
