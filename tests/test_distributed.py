"""nnx.distributed: the world of one in this process, and `mpiexec -n 2` runs of the scripts in
tests/mpi_scripts/ (marked `mpi`; skipped with a reason without mpiexec or mpi4py).

Each mpiexec run has a timeout and runs in its own process group, killed whole on timeout, so
a rank stuck in a collective fails the test instead of hanging CI."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import nnx
import nnx.distributed as dist
from nnx import compat

HERE = Path(__file__).resolve().parent
SCRIPTS = HERE / "mpi_scripts"
TIMEOUT = 120
LAUNCH_VARS = dist.launch.SIZE_VARS + dist.launch.RANK_VARS  # what an MPI launcher sets


def _mpiexec() -> str | None:
    local = Path(sys.executable).parent / "mpiexec"
    return str(local) if local.exists() else shutil.which("mpiexec")


MPIEXEC = _mpiexec()
NO_MPI = ("mpiexec not found (pip install mpich)" if MPIEXEC is None else
          "mpi4py not installed (pip install mpi4py)" if not compat.has_mpi4py else "")
needs_mpi = pytest.mark.skipif(bool(NO_MPI), reason=NO_MPI)


def mpirun(args, n=2, timeout=TIMEOUT, env_extra=None):
    """Run `mpiexec -n N python args...`; returns (returncode, stdout, stderr, seconds)."""
    env = dict(os.environ)
    env.pop("NNX_DIST_TIMEOUT", None)
    env.update(env_extra or {})
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = "1"
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", PYTHONUNBUFFERED="1")
    for var in LAUNCH_VARS:  # pytest itself may run under a launcher
        env.pop(var, None)
    cmd = [MPIEXEC, "-n", str(n), *args]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=str(HERE.parent), start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} did not finish within {timeout}s (a rank hangs?)\n"
                    f"stdout:\n{out}\nstderr:\n{err}")
    return proc.returncode, out, err, time.perf_counter() - t0


def run_script(name, *args, **kw):
    return mpirun([sys.executable, str(SCRIPTS / name), *args], **kw)


# -- under mpiexec -n 2 ---------------------------------------------------------------------------
@pytest.mark.mpi
@needs_mpi
@pytest.mark.parametrize("script", ["equivalence", "checkpoint_resume", "collectives"])
def test_mpi_script(script):
    rc, out, err, _ = run_script(f"{script}.py")
    assert rc == 0, f"stdout:\n{out}\nstderr:\n{err}"
    assert f"OK {script}" in out, out


@pytest.mark.mpi
@needs_mpi
def test_mpi_empty_share_with_sync_batchnorm():
    """Three ranks, so that a global batch of 2 leaves one rank without samples."""
    rc, out, err, _ = run_script("empty_share.py", n=3)
    assert rc == 0, f"stdout:\n{out}\nstderr:\n{err}"
    assert "OK empty_share" in out, out


FAILURES = {
    # case: text that must appear in the output
    "architecture": ["differs across ranks", "rank 1 differs from rank 0: layer 0",
                     "out_features=16", "out_features=24"],
    "optimizer": ["differs across ranks", "optimizer", "'lr': 0.2"],
    "data": ["different data", "rank 1: x", "shard()",
             "rank 1: x differs from rank 0's (shape (40, 20) float64) first at row 0"],
    "data_shape": ["different data", "rank 1: x has shape (39, 20) float64, rank 0's has shape "
                   "(40, 20) float64", "rank 1: y has shape (39,)"],
    "bad_input": ["rank 1 of 2 failed", "InputError", "NaN"],
    "raise": ["rank 1 of 2 failed", "RuntimeError: boom on rank 1"],
    "exit": ["rank 1 of 2 exited with status 3"],
}


@pytest.mark.mpi
@needs_mpi
@pytest.mark.parametrize("case", list(FAILURES))
def test_failure_stops_every_rank(case):
    """A rank that raises (or disagrees) ends the job within seconds, non-zero, with its error."""
    rc, out, err, seconds = run_script("mismatch.py", case, timeout=60)
    assert rc != 0, f"stdout:\n{out}\nstderr:\n{err}"
    assert "no error raised" not in out
    text = out + err
    for expected in FAILURES[case]:
        assert expected in text, f"{expected!r} not in:\n{text}"
    assert seconds < 30, f"took {seconds:.1f}s to stop"


TIMEOUT_CASES = {
    # case: (ranks, environment, text that must appear in the output)
    "stall": (3, {}, ["of 3: collective timeout: waited", "rank 0 of 3", "rank 2 of 3",
                      "in allreduce #", "on communicator 'world' (float64[400], sum)",
                      "rank 1 did not arrive: it is outside nnx's collectives",
                      "time.sleep(600)", "ranks that did not arrive: 1", "NNX_DIST_TIMEOUT"]),
    "fewer_steps": (2, {"NNX_DIST_TIMEOUT": "15"}, [
        "rank 0 of 2: collective timeout", "rank 1 did not arrive: its script ended after",
        "ranks that did not arrive: 1", "model.train_step("]),
    "stall_serialized": (2, {}, [  # no MPI_THREAD_MULTIPLE: the wait polls, nobody serves
        "rank 0 of 2: collective timeout: waited", "(timeout 5 s)",
        "rank 1 did not arrive: it did not answer", "ranks that did not arrive: 1"]),
}


@pytest.mark.mpi
@needs_mpi
@pytest.mark.parametrize("case", list(TIMEOUT_CASES))
def test_collective_timeout_ends_a_hung_job(case):
    """A rank that stalls, or a loop in which one rank takes one step fewer, used to hang the
    job forever; with timeout=15 it ends non-zero well within 90 s, naming the collective and
    the rank that did not arrive (also without MPI_THREAD_MULTIPLE, with timeout=5)."""
    n, env, expected = TIMEOUT_CASES[case]
    rc, out, err, seconds = run_script("timeout.py", case, n=n, timeout=85, env_extra=env)
    text = out + err
    assert rc == dist.watchdog.EXIT_STATUS, f"rc={rc}\n{text}"
    assert "no timeout" not in out
    for needle in expected:
        assert needle in text, f"{needle!r} not in:\n{text}"
    assert seconds < 90, f"took {seconds:.1f}s"


@pytest.mark.mpi
@needs_mpi
def test_cli_train_distributed(tmp_path):
    ckpt = tmp_path / "cli.npz"
    rc, out, err, _ = mpirun([sys.executable, "-m", "nnx.cli", "train", "--distributed",
                              "--epochs", "1", "--hidden", "16", "--quiet", "--save", str(ckpt)])
    assert rc == 0, f"stdout:\n{out}\nstderr:\n{err}"
    assert out.count("test accuracy") == 1, out  # only rank 0 reports
    assert ckpt.exists()


# -- the world of one, in this process ------------------------------------------------------------
@pytest.fixture
def world_of_one(monkeypatch):
    for var in LAUNCH_VARS + ("NNX_DISTRIBUTED",):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(dist.launch, "_WORLD", {})
    return dist.init()


def _mlp(seed=0, **kw):
    return nnx.Sequential([nnx.Dense(20, 16, "relu"), nnx.Dense(16, 3)], seed=seed,
                          dtype="float64", **kw)


def _data(n=45, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 20)), rng.integers(0, 3, n)


def test_init_outside_mpiexec_is_a_world_of_one(world_of_one):
    comm = world_of_one
    assert isinstance(comm, dist.LocalCommunicator)
    assert (comm.rank, comm.size, comm.local_rank, comm.backend, comm.is_chief) == \
        (0, 1, 0, "local", True)
    assert dist.init() is comm
    assert isinstance(dist.init("local"), dist.LocalCommunicator)
    with pytest.raises(ValueError, match="unknown distributed backend"):
        dist.init("gloo")


def test_local_collectives(world_of_one):
    comm = world_of_one
    a = np.arange(4.0)
    s = comm.allreduce(a)
    assert s is not a and np.array_equal(s, a)
    assert comm.allreduce(a, op="mean", inplace=True) is a
    assert np.array_equal(comm.allreduce(np.array([1, 2]), op="mean"), [1.0, 2.0])
    assert comm.allreduce(3) == 3 and comm.allreduce(3, op="mean") == 3.0
    out = comm.allreduce([a, 2.0], op="sum")
    assert np.array_equal(out[0], a) and out[1] == 2.0
    assert np.array_equal(comm.allreduce(a, compression="bf16"), a)
    assert comm.iallreduce(a).wait().done
    assert comm.bcast(a) is a and comm.bcast({"k": 1}) == {"k": 1}
    assert comm.allgather(5) == [5] and comm.gather(5) == [5]
    comm.barrier()
    with pytest.raises(ValueError, match="unknown reduction op"):
        comm.allreduce(a, op="prod")
    with pytest.raises(ValueError, match="unknown compression"):
        comm.allreduce(a, compression="int8")
    with pytest.raises(ValueError, match="C-contiguous"):
        comm.iallreduce(np.zeros((4, 4))[:, 0])


def test_no_mpi4py_needed_outside_mpiexec():
    """`import nnx.distributed` and init() outside mpiexec never import mpi4py."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    code = ("import sys, nnx.distributed as d; c = d.init(); "
            "assert 'mpi4py' not in sys.modules, 'mpi4py imported'; print(c.size)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "1", res.stderr


def test_missing_mpi4py_says_how_to_install(monkeypatch):
    monkeypatch.setattr(dist.launch, "_WORLD", {})
    monkeypatch.setattr(compat, "has_mpi4py", False)
    monkeypatch.setenv("PMI_SIZE", "4")
    with pytest.raises(dist.DistributedError, match="pip install mpi4py"):
        dist.init()
    with pytest.raises(dist.DistributedError, match="pip install mpi4py"):
        dist.init("mpi")
    monkeypatch.setenv("PMI_SIZE", "1")  # mpiexec -n 1 without mpi4py: fine
    assert dist.init().size == 1
    assert not dist.is_available()


def test_distributed_optimizer_in_a_world_of_one_changes_nothing(world_of_one, tmp_path):
    x, y = _data()
    ref = _mlp()
    ref.compile(nnx.Adam(0.01), "softmax_cross_entropy", ["accuracy"])
    h_ref = ref.fit(x, y, epochs=2, batch_size=8, verbose=0)
    model = _mlp()
    opt = dist.DistributedOptimizer(nnx.Adam(0.01))
    model.compile(opt, "softmax_cross_entropy", ["accuracy"])
    h = model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    for a, b in zip(model.get_weights(), ref.get_weights(), strict=True):
        assert np.array_equal(a, b)
    assert h.history["loss"] == h_ref.history["loss"]
    # the wrapped optimizer's state is what gets saved; a checkpoint loads as a plain Adam
    assert opt.step == ref.optimizer.step and opt.beta1 == 0.9 and opt.is_chief
    assert opt.get_config() == ref.optimizer.get_config()
    path = tmp_path / "m.npz"
    model.save(path)
    loaded = nnx.load(path)
    assert type(loaded.optimizer) is nnx.Adam and loaded.optimizer.step == opt.step
    opt2 = dist.distribute(loaded)
    assert loaded.optimizer is opt2 and opt2.step == opt.step
    loaded.fit(x, y, epochs=1, batch_size=8, verbose=0)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    for a, b in zip(model.get_weights(), loaded.get_weights(), strict=True):
        assert np.allclose(a, b, rtol=1e-12)


def test_distributed_optimizer_arguments(world_of_one):
    with pytest.raises(ValueError, match="data must be"):
        dist.DistributedOptimizer(nnx.SGD(), data="split")
    with pytest.raises(ValueError, match="unknown compression"):
        dist.DistributedOptimizer(nnx.SGD(), compression="int8")
    with pytest.raises(ValueError, match="bucket_mb"):
        dist.DistributedOptimizer(nnx.SGD(), bucket_mb=0)
    with pytest.raises(TypeError, match="already"):
        dist.DistributedOptimizer(dist.DistributedOptimizer(nnx.SGD()))
    with pytest.raises(TypeError, match="Communicator"):
        dist.DistributedOptimizer(nnx.SGD(), comm=object())
    assert isinstance(dist.DistributedOptimizer("adam").optimizer, nnx.Adam)
    with pytest.raises(RuntimeError, match="compile"):
        dist.distribute(_mlp())


def test_buckets_follow_layers_in_reverse(world_of_one):
    model = nnx.Sequential([nnx.Dense(20, 16, "relu"), nnx.Dense(16, 16, "relu",
                                                                 kernel_regularizer=nnx.L2(1e-3)),
                            nnx.Dense(16, 3)], seed=0)
    opt = dist.DistributedOptimizer(nnx.SGD(), overlap=True, bucket_mb=1e-6)
    model.compile(opt, "softmax_cross_entropy")
    layers = model.layers
    spans = [(b.lo, b.hi, [layers.index(la) for la in b.layers], b.deferred)
             for b in opt.strategy.buckets]
    # the last layer first, the regularized one last; together they tile the flat buffer
    assert [s[2] for s in spans] == [[2], [0], [1]]
    assert spans[-1][3] and not spans[0][3]
    assert sorted((lo, hi) for lo, hi, *_ in spans)[0][0] == 0
    assert sum(hi - lo for lo, hi, *_ in spans) == model.store.size
    big = dist.DistributedOptimizer(nnx.SGD(), overlap=True)
    model2 = nnx.Sequential([nnx.Dense(20, 16), nnx.Dense(16, 3)], seed=0)
    model2.compile(big, "softmax_cross_entropy")
    assert len(big.strategy.buckets) == 1


def test_shard_in_a_world_of_one(world_of_one):
    x, y = _data(10)
    xs, ys = dist.shard(x, y)
    assert np.array_equal(xs, x) and np.array_equal(ys, y)
    assert dist.shard(7) == slice(0, 7)
    with pytest.raises(nnx.ShapeError):
        dist.shard(x, y[:5])


def _bn_layers(norm=None):
    from nnx.layers.batchnorm import BatchNorm1d

    norm = norm or BatchNorm1d
    return [nnx.Dense(20, 16, use_bias=False), norm(16), nnx.ReLU(), nnx.Dense(16, 3)]


def test_sync_batchnorm_is_batchnorm_in_one_process(world_of_one):
    x, y = _data(40)
    ref = nnx.Sequential(_bn_layers(), seed=3, dtype="float64")
    layers = dist.sync_batchnorm(_bn_layers())
    assert [type(la).__name__ for la in layers] == ["Dense", "SyncBatchNorm", "ReLU", "Dense"]
    model = nnx.Sequential(layers, seed=3, dtype="float64")
    ref.compile(nnx.Adam(0.01), "softmax_cross_entropy")
    model.compile(dist.DistributedOptimizer(nnx.Adam(0.01)), "softmax_cross_entropy")
    assert model.layers[1].sync is None  # a world of one: no peers, the fused kernels
    ref.fit(x, y, epochs=2, batch_size=8, verbose=0)
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    for a, b in zip(model.get_weights(), ref.get_weights(), strict=True):
        assert np.array_equal(a, b)
    for a, b in zip(model.get_buffers().values(), ref.get_buffers().values(), strict=True):
        assert np.array_equal(a, b)
    layer = dist.SyncBatchNorm(4)
    assert nnx.layers.layer_from_dict(nnx.layers.layer_to_dict(layer)).num_features == 4
    assert nnx.layers.SyncBatchNorm is dist.SyncBatchNorm


class _EchoComm:
    """Peers that contribute nothing: the reduced sums are this process's own, so SyncBatchNorm's
    "from sums" path (the one it takes with peers) must equal plain batch norm."""

    size = 2

    def __init__(self):
        self.calls = 0

    def allreduce(self, x, inplace=False):
        self.calls += 1
        return x


@pytest.mark.parametrize("shape", [(12, 5), (6, 5, 4), (4, 5, 3, 3)])
def test_sync_batchnorm_from_sums_equals_batchnorm(shape):
    from nnx.layers.batchnorm import BatchNorm1d, BatchNorm2d
    from nnx.testing import build

    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal(shape), rng.standard_normal(shape)
    plain = BatchNorm2d(5) if len(shape) == 4 else BatchNorm1d(5)
    sync = dist.SyncBatchNorm(5)
    stores = [build(layer)[1] for layer in (plain, sync)]  # float64; alive while tested
    for layer in (plain, sync):
        layer.params["gamma"][...] = np.linspace(0.5, 1.5, 5)
        layer.params["beta"][...] = np.linspace(-1, 1, 5)
    comm = _EchoComm()
    sync.use_sync(dist.SyncContext(comm, weight=1.0))
    assert not sync.fused_training()
    for _ in range(2):  # twice: the running statistics follow too
        y_ref, bp_ref = plain.begin_update(x, training=True)
        y, bp = sync.begin_update(x, training=True)
        assert np.allclose(y, y_ref, rtol=1e-12, atol=1e-12)
        assert np.allclose(bp(dy), bp_ref(dy), rtol=1e-10, atol=1e-12)
        for k in ("gamma", "beta"):
            assert np.allclose(sync.grads[k], plain.grads[k], rtol=1e-12, atol=1e-12)
        for k in ("running_mean", "running_var"):
            assert np.allclose(sync.buffers[k], plain.buffers[k], rtol=1e-12, atol=1e-14)
    assert comm.calls == 6  # per step: sums, centred squares, gradient sums
    assert np.allclose(sync.forward(x), plain.forward(x), rtol=1e-12)  # inference: no peers
    assert comm.calls == 6
    sync.use_sync(None)
    assert sync.fused_training()
    with pytest.raises(TypeError, match="SyncContext"):
        sync.use_sync(comm)
    del stores


def test_sync_batchnorm_converts_layers_not_models(world_of_one):
    from nnx.layers.batchnorm import BatchNorm2d

    dense, bn = nnx.Dense(4, 4), nnx.layers.BatchNorm1d(4, momentum=0.2, eps=1e-3, name="bn_a")
    out = dist.sync_batchnorm([dense, bn, nnx.ReLU(), bn])  # a batch norm used twice
    assert out[0] is dense and out[1] is out[3]
    assert type(out[1]) is dist.SyncBatchNorm and type(bn) is nnx.layers.BatchNorm1d
    assert out[1].get_config() == bn.get_config()
    chain = nnx.Chain([nnx.Dense(4, 4), nnx.Chain([nnx.layers.BatchNorm1d(4)]),
                       nnx.Residual([nnx.Dense(4, 4), nnx.layers.BatchNorm1d(4)])], name="net")
    conv = dist.sync_batchnorm(chain)
    assert isinstance(conv, nnx.Chain) and conv is not chain and conv.name == "net"
    assert conv.layers[0] is chain.layers[0]
    kinds = [type(leaf).__name__ for leaf in conv.leaves()]
    assert kinds == ["Dense", "SyncBatchNorm", "Dense", "SyncBatchNorm"], kinds
    assert type(dist.sync_batchnorm(BatchNorm2d(3))) is dist.SyncBatchNorm
    model = nnx.Sequential(dist.sync_batchnorm([nnx.Dense(20, 4), BatchNorm2d(4)]))
    with pytest.raises(TypeError, match="before building the model"):
        dist.sync_batchnorm(model)
    built = nnx.Sequential([nnx.Dense(20, 4), nnx.layers.BatchNorm1d(4)])
    with pytest.raises(ValueError, match="already belongs to"):
        dist.sync_batchnorm(built.net)
    with pytest.raises(TypeError, match="list of layers"):
        dist.sync_batchnorm("bn")


def _attributes(obj) -> tuple:
    return type(obj), sorted(vars(obj))


def test_compile_replaces_nothing_on_the_model(world_of_one):
    """The strategy works through the seam: compile with a DistributedOptimizer adds no
    instance attribute (no wrapped method) to the model, its layers or its optimizers, and
    changes no class."""
    def build():
        return nnx.Sequential(dist.sync_batchnorm(_bn_layers()) + [nnx.Dropout(0.1)], seed=0,
                              dtype="float64")

    plain, model = build(), build()
    inner = nnx.Adam(0.01)
    opt = dist.DistributedOptimizer(inner, overlap=True, bucket_mb=1e-6)
    objects = [model, *model.store.layers]
    before = [_attributes(o) for o in objects] + [_attributes(opt)]
    model.compile(opt, "softmax_cross_entropy")
    plain.compile(nnx.Adam(0.01), "softmax_cross_entropy")
    after = [_attributes(o) for o in objects] + [_attributes(opt)]
    assert after == before
    assert _attributes(inner) == _attributes(plain.optimizer)  # as a plain compile leaves it
    for name in ("fit", "_step", "save", "train_step"):
        assert name not in vars(model)
    for layer in model.store.layers:
        assert "backward" not in vars(layer) and "call" not in vars(layer)
    assert "update" not in vars(opt) and "update" not in vars(inner)
    assert model.optimizer is opt and list(model.hooks) == [opt.strategy]
    x, y = _data(16)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert [_attributes(o) for o in objects] + [_attributes(opt)] == before
    assert opt.stats is opt.strategy.stats and opt.stats["steps"] == 2
    model.compile(nnx.SGD(0.1), "softmax_cross_entropy")  # recompiling drops the strategy
    assert list(model.hooks) == []


def test_data_parallel_strategy_without_the_optimizer(world_of_one):
    x, y = _data()
    ref = _mlp()
    ref.compile(nnx.SGD(0.1), "softmax_cross_entropy")
    model = _mlp()
    model.compile(nnx.SGD(0.1), "softmax_cross_entropy")
    strategy = model.add_hooks(dist.DataParallel(world_of_one))
    assert isinstance(strategy, nnx.StepHooks) and not strategy.leaf_events
    assert dist.DataParallel(world_of_one, overlap=True).leaf_events is False  # no peers
    assert model.is_chief and strategy.split_batch(np.arange(5)).tolist() == [0, 1, 2, 3, 4]
    ref.fit(x, y, epochs=1, batch_size=8, verbose=0)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    for a, b in zip(model.get_weights(), ref.get_weights(), strict=True):
        assert np.array_equal(a, b)
    assert strategy.stats["steps"] == 6
    with pytest.raises(ValueError, match="already serves"):
        _mlp().add_hooks(strategy)


def test_bf16_keeps_nan_inf_and_rounds_to_nearest_even():
    from nnx.distributed.compression import compress, decompress, from_bf16, to_bf16

    bits = np.array([0x7FFFFFFF, 0xFFFFFFFF, 0x7F800001, 0xFF800001, 0x7FC00000, 0x7F800000,
                     0xFF800000, 0x3F808000, 0x3F818000, 0x3F808001, 0x7F7FFFFF, 0x00000000],
                    dtype=np.uint32)
    x = bits.view(np.float32)
    low = to_bf16(x)
    assert low.dtype == np.uint16
    out = np.empty(len(x), np.float32)
    from_bf16(low, out)
    assert np.isnan(out[:5]).all()  # full and tiny mantissas alike: NaN, not 0 / inf
    assert list(np.signbit(out[:5])) == [False, True, False, True, False]
    assert (low[:5] & 0x0040).all()  # quiet NaNs
    assert low[4] == 0x7FC0
    assert out[5] == np.inf and out[6] == -np.inf
    # ties to even: 1.00390625 -> 1.0, 1.01171875 -> 1.015625; just above a tie rounds up
    assert list(low[7:10]) == [0x3F80, 0x3F82, 0x3F81]
    assert out[10] == np.inf and out[11] == 0.0  # float32 max rounds to inf, as in PyTorch
    buf = x[:2].copy()  # the round trip a compressed reduction makes
    decompress(compress(buf, "bf16"), buf, "bf16")
    assert np.isnan(buf).all() and list(np.signbit(buf)) == [False, True]
