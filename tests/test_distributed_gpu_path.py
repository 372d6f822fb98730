"""The GPU path of nnx.distributed, with fakes (no GPU, no MPI): the NCCL channel (one
communicator and one stream for a communicator and its duplicates, created under the buffer's
device, operations watched by the collective timeout), the NCCL install hint and CuPy's import
warning, SyncBatchNorm's global count on the host (no device read per layer per step), and the
order of reductions of a rank with an empty share (on one NCCL stream it must be the others')."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from nnx.kernels.reference import Ops

import nnx
import nnx.distributed as dist
from nnx import compat
from nnx.distributed import launch
from nnx.distributed import nccl as nccl_mod
from nnx.distributed.comm import DONE, Communicator, Request
from nnx.distributed.strategy import backward_order
from nnx.layers.batchnorm import BatchNorm1d, BatchNorm2d
from nnx.testing import build

LAUNCH_VARS = dist.launch.SIZE_VARS + dist.launch.RANK_VARS


# -- NCCL with fakes ------------------------------------------------------------------------------
class FakeEvent:
    def __init__(self):
        self.done, self.stream = False, None


class FakeStream:
    def __init__(self, cuda, name, device):
        self.cuda, self.name, self.device = cuda, name, device
        self.ptr = id(self)

    def record(self, event=None):
        event = event or FakeEvent()
        event.stream = self
        self.cuda.log.append(("record", self.name, self.device))
        return event

    def wait_event(self, event):
        self.cuda.log.append(("wait", self.name, event.stream.name, self.device))


class FakeDevice:
    def __init__(self, cuda, device):
        self.cuda, self.id = cuda, device

    def __enter__(self):
        self.prev, self.cuda.current = self.cuda.current, self.id
        return self

    def __exit__(self, *exc):
        self.cuda.current = self.prev
        return False


class FakeCuda:
    def __init__(self):
        self.current, self.log, self.compute = 0, [], {}

    def Device(self, device):
        return FakeDevice(self, device)

    def get_current_stream(self):
        return self.compute.setdefault(self.current, FakeStream(self, "compute", self.current))

    def Stream(self, non_blocking=False):
        assert non_blocking
        return FakeStream(self, "nccl", self.current)

    def Event(self, block=False, disable_timing=False):
        return FakeEvent()


class FakeNcclComm:
    def __init__(self, nccl, size, uid, rank):
        self.nccl, self.device = nccl, nccl.cuda.current
        self.args, self.aborted = (size, uid, rank), False
        nccl.comms.append(self)

    def allReduce(self, src, dst, n, dtype, op, stream):
        self.nccl.ops.append(("allreduce", self, n, dtype, op, stream))

    def bcast(self, ptr, n, dtype, root, stream):
        self.nccl.ops.append(("bcast", self, n, dtype, root, stream))

    def abort(self):
        self.aborted = True


class FakeNccl:
    NCCL_SUM, NCCL_MAX, NCCL_MIN = "sum", "max", "min"
    NCCL_FLOAT32, NCCL_FLOAT64, NCCL_FLOAT16, NCCL_BFLOAT16 = "f32", "f64", "f16", "bf16"

    def __init__(self, cuda):
        self.cuda, self.comms, self.ops = cuda, [], []

    def get_unique_id(self):
        return "uid"

    def NcclCommunicator(self, size, uid, rank):
        return FakeNcclComm(self, size, uid, rank)


class FakeGpuArray:
    __cuda_array_interface__: dict = {}

    def __init__(self, n, device, dtype="float32"):
        self.size, self.dtype = n, np.dtype(dtype)
        self.device, self.data = SimpleNamespace(id=device), SimpleNamespace(ptr=1000 + n)


class FakeWatch:
    def __init__(self):
        self.registered, self.on_abort, self.ops, self.seq = [], [], [], 0

    def register(self, name):
        self.registered.append(name)
        return name

    def enter(self, cid, kind, detail=""):
        self.seq += 1
        return (cid, self.seq, kind, detail)

    def device_op(self, op, event, device):
        self.ops.append((op, event, device))


def _channel(rank=0, size=2):
    cuda = FakeCuda()
    nccl = FakeNccl(cuda)
    watch = FakeWatch()
    bcasts = []

    def bcast_object(obj, root):
        bcasts.append((obj, root))
        return "uid"

    ch = nccl_mod.NcclChannel(rank, size, bcast_object, watch, cupy=SimpleNamespace(cuda=cuda),
                              nccl=nccl)
    return ch, cuda, nccl, watch, bcasts


def test_nccl_communicator_is_created_under_the_arrays_device():
    ch, cuda, nccl, watch, bcasts = _channel(rank=1)
    assert cuda.current == 0
    assert ch.allreduce(FakeGpuArray(8, device=1), "sum") is DONE
    (comm,) = nccl.comms
    assert comm.device == 1 and comm.args == (2, "uid", 1)  # not bound to device 0
    assert bcasts == [(None, 0)]  # rank 1 receives rank 0's unique id
    stream = ch.devices[1][1]
    assert stream.device == 1 and cuda.current == 0  # the caller's device is restored
    # the NCCL stream waits for the compute stream of device 1, and the compute stream for it
    assert cuda.log == [("record", "compute", 1), ("wait", "nccl", "compute", 1),
                        ("record", "nccl", 1), ("wait", "compute", "nccl", 1)]


def test_nccl_operations_of_all_callers_share_one_communicator_and_stream():
    """Statistics (blocking) and gradient buckets (non-blocking) go through one channel: one
    NCCL communicator, one stream, in the order they were issued."""
    ch, cuda, nccl, watch, _ = _channel()
    bucket = ch.allreduce(FakeGpuArray(100, 0), "sum", blocking=False)
    assert isinstance(bucket, Request) and not bucket.done
    ch.allreduce(FakeGpuArray(9, 0, "float64"), "sum")  # SyncBatchNorm's sums meanwhile
    ch.allreduce(FakeGpuArray(50, 0), "sum", "bf16", blocking=False)
    ch.bcast(FakeGpuArray(7, 0), root=0)
    (comm,) = nccl.comms
    streams = {op[-1] for op in nccl.ops}
    assert len(streams) == 1 and streams == {ch.devices[0][1].ptr}
    assert all(op[1] is comm for op in nccl.ops)
    assert [(op[0], op[2], op[3]) for op in nccl.ops] == [
        ("allreduce", 100, "f32"), ("allreduce", 9, "f64"), ("allreduce", 50, "bf16"),
        ("bcast", 7, "f32")]
    assert not bucket.test()  # its event has not completed
    cuda.log.clear()
    bucket.wait()
    assert cuda.log == [("wait", "compute", "nccl", 0)]  # no host synchronization
    assert [op[0][1:3] for op in watch.ops] == [(1, "allreduce"), (2, "allreduce"),
                                                (3, "allreduce"), (4, "bcast")]
    assert watch.registered == ["nccl"]
    ch.abort()  # what a collective timeout does before MPI_Abort
    assert comm.aborted and watch.on_abort == [ch.abort]
    with pytest.raises(TypeError, match="NCCL cannot reduce arrays of dtype bool"):
        ch.allreduce(FakeGpuArray(3, 0, "bool"), "sum")


class FakeMpiComm:
    """What MPICommunicator.dup() asks of an mpi4py communicator."""

    def Idup(self):
        return FakeMpiComm(), SimpleNamespace(Wait=lambda: None, Test=lambda: True)


def test_a_duplicate_communicator_reduces_on_the_same_nccl_channel():
    """SyncBatchNorm's statistics use `comm.dup()`; with NCCL its reductions must go through
    the parent's communicator and stream, not a second communicator on another stream."""
    from nnx.distributed.mpi import MPICommunicator

    ch, cuda, nccl, _watch, _ = _channel()
    comm = MPICommunicator.__new__(MPICommunicator)  # no MPI here: the fields dup() reads
    comm.__dict__.update(rank=0, size=2, local_rank=0, local_size=1, backend="nccl",
                         _comm=FakeMpiComm(), _watch=None, _cid="world", _dups=[0],
                         _use_nccl=True, _nccl=ch)
    twin = comm.dup()
    assert twin._nccl is ch and twin._cid == "world.dup1" and twin._comm is not comm._comm
    assert comm.dup()._cid == "world.dup2"
    req = comm._reduce_buffer(FakeGpuArray(64, 0), "sum", None, blocking=False)
    twin._reduce_buffer(FakeGpuArray(5, 0, "float64"), "sum", None, blocking=True)
    req.wait()
    twin._bcast_buffer(FakeGpuArray(3, 0), 0)
    (nc,) = nccl.comms
    assert [(op[0], op[1], op[-1]) for op in nccl.ops] == [
        ("allreduce", nc, ch.devices[0][1].ptr), ("allreduce", nc, ch.devices[0][1].ptr),
        ("bcast", nc, ch.devices[0][1].ptr)]


def test_nccl_install_hint_names_cuda12_and_cuda13_wheels():
    hint = nccl_mod.install_hint()
    assert "nvidia-nccl-cu12" in hint and "nvidia-nccl-cu13" in hint
    assert nccl_mod.install_hint(13).index("cu13") < nccl_mod.install_hint(13).index("cu12")
    assert nccl_mod.install_hint(12).index("cu12") < nccl_mod.install_hint(12).index("cu13")


def test_missing_libnccl_warns_nowhere_and_is_reported_once(tmp_path):
    """CuPy warns when `cupy.cuda.nccl` cannot load libnccl (once per rank); nnx silences that
    warning and says it once, on rank 0, with both wheels. A fake cupy package stands in."""
    pkg = tmp_path / "cupy"
    (pkg / "cuda").mkdir(parents=True)
    (pkg / "__init__.py").write_text("__version__ = '14.0.0'\nfrom . import cuda\n")
    (pkg / "cuda" / "__init__.py").write_text(textwrap.dedent("""
        class runtime:
            @staticmethod
            def getDeviceCount():
                return 1

            @staticmethod
            def runtimeGetVersion():
                return 13000
    """))
    (pkg / "cuda" / "nccl.py").write_text(
        "import warnings\nwarnings.warn('CuPy failed to load libnccl.so.2')\navailable = False\n")
    code = textwrap.dedent("""
        import warnings
        warnings.simplefilter("always")
        from nnx.distributed import launch, nccl
        ok, why = nccl.nccl_status()
        assert not ok and nccl.nccl_status() == (ok, why)
        print("WHY", why)

        class Comm:
            rank = 1
        launch._report_nccl_once(Comm())   # another rank: quiet
        Comm.rank = 0
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            launch._report_nccl_once(Comm())
        print("WARNINGS", len(seen), seen[0].category.__name__, seen[0].message)
    """)
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert "libnccl.so.2" not in res.stderr, res.stderr  # CuPy's own warning: silenced
    why = res.stdout.split("WHY ", 1)[1].splitlines()[0]
    assert "built for CUDA 13" in why and why.index("nvidia-nccl-cu13") < \
        why.index("nvidia-nccl-cu12")
    assert "WARNINGS 1 RuntimeWarning nnx.distributed: NCCL is not available" in res.stdout


def test_report_nccl_once_is_quiet_without_a_gpu(monkeypatch):
    monkeypatch.setattr(compat, "has_cupy_gpu", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        launch._report_nccl_once(SimpleNamespace(rank=0))


# -- SyncBatchNorm's count on the host -------------------------------------------------------------
class CountingOps(Ops):
    """The numpy backend, counting reads of device values to the host."""

    reads = 0

    def to_float(self, x) -> float:
        CountingOps.reads += 1
        return super().to_float(x)


class TwinPeer:
    """A peer whose batch equals this process's: every reduction doubles the sums."""

    size = 2

    def allreduce(self, x, inplace=False):
        x *= 2
        return x


@pytest.mark.parametrize("shape", [(6, 4), (3, 4, 5), (2, 4, 3, 3)])
def test_sync_batchnorm_takes_the_global_count_from_the_host(shape):
    rng = np.random.default_rng(1)
    x, dy = rng.standard_normal(shape), rng.standard_normal(shape)
    whole = np.concatenate([x, x])  # what one process with both ranks' batches sees
    plain = BatchNorm2d(4) if len(shape) == 4 else BatchNorm1d(4)
    sync = dist.SyncBatchNorm(4)
    stores = [build(plain)[1], build(sync, backend=CountingOps(seed=0, dtype="float64"))[1]]
    n = shape[0]
    ctx = dist.SyncContext(TwinPeer(), weight=0.5, n_local=n, n_global=2 * n)
    assert ctx.global_count(int(np.prod(shape)) // 4) == 2 * int(np.prod(shape)) // 4
    sync.use_sync(ctx)
    CountingOps.reads = 0
    y, bp = sync.begin_update(x, training=True)
    dx = bp(dy)
    assert CountingOps.reads == 0  # no read of the reduced count from the device
    y_ref, bp_ref = plain.begin_update(whole, training=True)
    dx_ref = bp_ref(np.concatenate([dy, dy]))
    assert np.allclose(y, y_ref[:n], rtol=1e-12, atol=1e-12)
    assert np.allclose(dx, dx_ref[:n], rtol=1e-10, atol=1e-12)
    for k in ("running_mean", "running_var"):
        assert np.allclose(sync.buffers[k], plain.buffers[k], rtol=1e-12, atol=1e-14)
    # a user's own loop (no global count known): the reduced count is read, and still exact
    ctx.n_global = None
    y2, _ = sync.begin_update(x, training=True)
    assert CountingOps.reads == 1 and np.allclose(y2, y_ref[:n], rtol=1e-12, atol=1e-12)
    del stores


def test_sync_context_global_count():
    ctx = dist.SyncContext(TwinPeer(), n_local=3, n_global=7)
    assert ctx.global_count(3 * 25) == 7 * 25  # 25 values per sample on every rank
    assert ctx.global_count(3 * 5 * 4) == 7 * 20  # a layer that folds time into the batch
    assert ctx.global_count(10) is None  # not a whole number of values per sample
    assert dist.SyncContext(TwinPeer()).global_count(10) is None  # outside a step
    assert dist.SyncContext(TwinPeer(), n_local=0, n_global=4).global_count(0) is None


# -- the order of reductions on a rank with an empty share -----------------------------------------
class RecordingComm(Communicator):
    """Two ranks as seen from rank 0, each reduction logged with its communicator's label (the
    statistics use a duplicate); the peer adds 4 to every element (a count above one)."""

    size = 2

    def __init__(self, log, label="grads"):
        self.log, self.label = log, label

    def _reduce_buffer(self, buf, op, kind=None, blocking=True):
        self.log.append((self.label, "blocking" if blocking else "started", int(buf.size)))
        buf += 4
        return DONE

    def allgather(self, obj):
        return [obj, obj]

    def dup(self):
        return RecordingComm(self.log, "stats")


def _bn_net():
    return [nnx.Dense(6, 8, use_bias=False), BatchNorm1d(8), nnx.ReLU(),
            nnx.Dense(8, 8, use_bias=False), BatchNorm1d(8), nnx.ReLU(), nnx.Dense(8, 3)]


@pytest.mark.parametrize("overlap", [False, True])
def test_an_empty_share_makes_the_same_reductions_in_the_same_order(overlap):
    """With NCCL every reduction of a step runs on one stream, so a rank without samples must
    issue them in the order the others do: statistics and gradient buckets interleaved."""
    logs = []
    rng = np.random.default_rng(0)
    for n in (4, 0):
        log: list = []
        model = nnx.Sequential(dist.sync_batchnorm(_bn_net()), seed=0, dtype="float64")
        opt = dist.DistributedOptimizer(nnx.SGD(0.1), RecordingComm(log), overlap=overlap,
                                        bucket_mb=1e-6)
        model.compile(opt, "softmax_cross_entropy")
        log.clear()
        x = model.ops.asarray(rng.standard_normal((n, 6)))
        y = model.loss.device_targets(model.ops, np.arange(n) % 3)
        model.trainer.step(x, y, 8)
        logs.append(log)
    assert logs[0] == logs[1], f"with samples:\n{logs[0]}\nwithout:\n{logs[1]}"
    kinds = [entry[:2] for entry in logs[0]]
    if overlap:  # a bucket starts between the two batch norms' backward reductions
        first_bucket = kinds.index(("grads", "started"))
        assert ("stats", "blocking") in kinds[first_bucket:]
    else:
        assert kinds[-1] == ("grads", "blocking")


def test_backward_order_is_the_order_backward_runs():
    from nnx.hooks import StepHooks

    class Order(StepHooks):
        leaf_events = True

        def __init__(self):
            self.seen = []

        def after_leaf_backward(self, layer):
            self.seen.append(layer)

    shared = nnx.Dense(8, 8)
    net = [nnx.Dense(6, 8), nnx.Parallel(nnx.Chain([nnx.Dense(8, 8), nnx.ReLU()]),
                                         nnx.Chain([shared, nnx.Activation("tanh")]),
                                         merge="add"),
           nnx.Residual([nnx.Dense(8, 8), nnx.ReLU(), shared]), nnx.Dense(8, 3)]
    model = nnx.Sequential(net, seed=0, dtype="float64")
    model.compile(nnx.SGD(0.1), "softmax_cross_entropy")
    order = model.add_hooks(Order())
    rng = np.random.default_rng(0)
    model.train_step(rng.standard_normal((5, 6)), np.arange(5) % 3)
    assert [id(la) for la in order.seen] == [id(la) for la in backward_order(model.net)]
