"""CUDA graph capture and replay (kernels/cupy_graphs.py), on a GPU and on the strict emulation,
whose capture records device work instead of running it (tests/fake_cuda_runtime.py).

- A replayed optimizer step uses the scalars of ITS step: Adam's bias correction follows the
  replays (it was frozen at the captured step: ~0.32x the intended second step), and
  `replay(lr=schedule)` keeps a schedule going.
- Ordering: the capture stream waits on the caller's stream before the warm-up, the caller's
  stream waits on the warm-up, and replay launches on the caller's CURRENT stream, after the
  scalar buffers are written on that same stream.
"""

from __future__ import annotations

import cuda_helpers
import numpy
import pytest
from cuda_helpers import H, close
from fake_cuda_runtime import STATE, CaptureError, Stream, reset_log
from nnx.kernels import cupy_gpu
from nnx.kernels.reference import Ops

from nnx import compat

emu_cupy = cuda_helpers.emu_cupy
make_ops = cuda_helpers.make_ops


def _adam_problem(ops, size=1000, seed=0):
    rng = numpy.random.default_rng(seed)
    p = rng.standard_normal(size).astype(numpy.float32)
    g = rng.standard_normal(size).astype(numpy.float32)
    return p, g, (ops.asarray(p), ops.asarray(g), ops.zeros(size), ops.zeros(size))


@pytest.mark.parametrize("wd,decoupled", [(0.0, False), (0.01, True)])
def test_replayed_adam_follows_the_step_count(make_ops, wd, decoupled):
    ops = make_ops(seed=0)
    p, g, (P, G, M, V) = _adam_problem(ops)
    state = {"step": 0}

    def step():
        state["step"] += 1
        ops.adam_update(P, G, M, V, state["step"], 1e-2, 0.9, 0.999, 1e-8, wd, decoupled)
        return P

    graph = cupy_gpu.capture_graph(step, ops=ops, warmup_runs=1)  # runs step 1, records 2
    for _ in range(4):
        graph.replay()  # steps 2..5
    ref = Ops()
    m, v = numpy.zeros_like(p), numpy.zeros_like(p)
    for s in range(1, 6):
        ref.adam_update(p, g, m, v, s, 1e-2, 0.9, 0.999, 1e-8, wd, decoupled)
    close(H(ops, P), p, 2e-5)
    close(H(ops, M), m, 2e-5)


def test_replay_takes_the_scheduled_learning_rate(make_ops):
    ops = make_ops(seed=0)
    p, g, (P, G, M, V) = _adam_problem(ops, seed=1)
    schedule = lambda s: 0.1 / s  # noqa: E731 - a schedule: lr of step s

    state = {"step": 0}

    def step():  # as an optimizer does: count the step, ask the schedule
        state["step"] += 1
        ops.adam_update(P, G, M, V, state["step"], schedule(state["step"]), 0.9, 0.999, 1e-8)
        return P

    graph = cupy_gpu.capture_graph(step, ops=ops, warmup_runs=1)
    for _ in range(3):
        graph.replay(lr=schedule)
    ref = Ops()
    m, v = numpy.zeros_like(p), numpy.zeros_like(p)
    for s in range(1, 5):
        ref.adam_update(p, g, m, v, s, schedule(s), 0.9, 0.999, 1e-8)
    close(H(ops, P), p, 2e-5)
    # SGD: a schedule changes its lr too; `step=` pins a replay's step number
    P2, V2 = ops.asarray(numpy.zeros(10, numpy.float32)), ops.zeros(10)
    G2 = ops.asarray(numpy.ones(10, numpy.float32))
    graph = cupy_gpu.capture_graph(lambda: ops.sgd_update(P2, G2, V2, 1.0), ops=ops)
    graph.replay(step=2, lr=schedule)  # lr 0.05
    graph.replay(lr=0.25)
    close(H(ops, P2), numpy.full(10, -1.0 - 0.05 - 0.25), 1e-6)


def test_capture_and_replay_stream_ordering(emu_cupy):
    """The emulation logs waits, records, launches and copies per stream."""
    ops = cuda_helpers.emu_ops_class(emu_cupy)(seed=0)
    _p, _g, (P, G, M, V) = _adam_problem(ops, size=64)

    def step():
        ops.adam_update(P, G, M, V, 1, 1e-3, 0.9, 0.999, 1e-8)
        return P

    reset_log()
    graph = cupy_gpu.capture_graph(step, ops=ops)
    log = list(STATE.log)
    first_kernel = next(i for i, e in enumerate(log) if e[0] == "kernel")
    private = log[first_kernel][1]
    assert private != "null"  # warm-up on the private stream ...
    waits = [e for e in log[:first_kernel] if e[0] == "wait"]
    assert ("wait", private, "null") in waits  # ... after it waited on the caller's stream
    assert ("wait", "null", private) in log[first_kernel:]  # the caller waits on the warm-up
    user = Stream(name="user")
    reset_log()
    with user:
        graph.replay()
    kinds = [(e[0], e[1]) for e in STATE.log]
    assert kinds.index(("set", "user")) < kinds.index(("graph_launch", "user"))
    assert not any(e[1] == private for e in STATE.log)  # nothing on the private stream


def test_the_emulated_capture_refuses_host_syncs(emu_cupy):
    ops = cuda_helpers.emu_ops_class(emu_cupy)(seed=0)
    x = ops.asarray(numpy.ones(4, numpy.float32))

    def step():
        return float(ops.xp.sum(x))  # a device->host read: not capturable

    with pytest.raises(CaptureError, match="host synchronization"):
        cupy_gpu.capture_graph(step, ops=ops, warmup_runs=0)
    assert STATE.capture is None


@pytest.mark.gpu
@pytest.mark.skipif(not compat.has_cupy_gpu(), reason="no CUDA GPU")
def test_replay_is_ordered_with_the_callers_stream_on_a_gpu():
    """Inputs written on a user stream right before replay() are seen by the replay."""
    cp = compat.cupy
    ops = cupy_gpu.CupyOps(seed=0)
    p, g = ops.zeros(1 << 20), ops.zeros(1 << 20)
    vel = ops.zeros(1 << 20)
    graph = cupy_gpu.capture_graph(lambda: ops.sgd_update(p, g, vel, 1.0), ops=ops)
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        g.fill(1.0)  # queued on s, not on the default stream
        graph.replay()
        s.synchronize()
    numpy.testing.assert_array_equal(ops.to_host(p)[:8], -1.0)
