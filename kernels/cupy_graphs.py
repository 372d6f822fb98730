"""EXPERIMENTAL CUDA graph capture and replay for the CuPy backend (`capture_graph`).

Kept apart from the kernel overrides: it drives any callable (e.g. one train step over a
CupyOps) through CuPy's stream capture and needs nothing from the Ops but its device.
"""

from __future__ import annotations

from nnx import compat
from nnx.errors import BackendUnavailableError

from .cupy_device import INSTALL_HINT


class CapturedGraph:
    """EXPERIMENTAL. A CUDA graph captured from a callable (see `capture_graph`)."""

    def __init__(self, xp, graph, stream, pool, outputs, device_id):
        self.xp = xp
        self.graph = graph
        self.stream = stream
        self.pool = pool  # private memory pool: keeps the graph's temporaries alive
        self.outputs = outputs
        self.device_id = device_id

    def replay(self, synchronize: bool = False):
        """Launch the captured work again (same input and output buffers); returns the
        outputs of the captured call (the same arrays, overwritten)."""
        with self.xp.cuda.Device(self.device_id):
            self.graph.launch(stream=self.stream)
            if synchronize:
                self.stream.synchronize()
        return self.outputs


def capture_graph(fn, *args, ops=None, warmup_runs: int = 1, **kwargs) -> CapturedGraph:
    """EXPERIMENTAL: capture `fn(*args, **kwargs)` (e.g. one train step) into a CUDA graph.

    `fn` runs `warmup_runs` times first (kernel compilation and cuBLAS setup cannot be
    captured), then once under stream capture with a private memory pool, so temporaries keep
    their addresses for every replay. Rules: inputs must be updated in place between replays
    (the graph reads the same buffers), `fn` must not sync with the host (no .get(), float(),
    printing device values), and results are the arrays `fn` returned, overwritten by each
    `replay()`. Unverified on hardware in this version.
    """
    xp = ops.xp if ops is not None else compat.cupy
    if xp is None:
        raise BackendUnavailableError(f"capture_graph needs CuPy: {INSTALL_HINT}")
    device_id = ops.device if ops is not None else int(xp.cuda.runtime.getDevice())
    with xp.cuda.Device(device_id):
        stream = xp.cuda.Stream(non_blocking=True)
        with stream:
            for _ in range(int(warmup_runs)):
                fn(*args, **kwargs)
        stream.synchronize()
        pool = xp.cuda.MemoryPool()
        with xp.cuda.using_allocator(pool.malloc), stream:
            stream.begin_capture()
            try:
                outputs = fn(*args, **kwargs)
            finally:
                graph = stream.end_capture()
    return CapturedGraph(xp, graph, stream, pool, outputs, device_id)
