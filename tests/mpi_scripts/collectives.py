"""The communicator's collectives (numbers, arrays, lists, in place, 16-bit, non-blocking,
bcast of arrays and objects), the low-level training loop (loss_and_grads + allreduce),
broadcast_model, shard(n) and SyncBatchNorm against one process's BatchNorm on the whole batch."""

import numpy as np
from _common import assert_close, assert_same_on_all_ranks, data, dist, done, mlp, nnx

from nnx.layers.batchnorm import BatchNorm1d

comm = dist.init()
rank, size = comm.rank, comm.size
assert (size, comm.local_size, comm.backend) == (2, 2, "mpi"), comm
assert comm.local_rank == rank and comm.is_chief == (rank == 0)
assert dist.init() is comm
assert comm.timeout == 600.0, comm.timeout  # the default (the test clears NNX_DIST_TIMEOUT)

# -- the collective timeout: a late rank within the timeout is fine; duplicates share it ----
import time  # noqa: E402

comm.set_timeout(5)
assert dist.init(timeout=4) is comm and comm.timeout == 4.0
if rank == 1:
    time.sleep(1.0)  # rank 0 waits in the barrier meanwhile, well within the timeout
comm.barrier()
twin = comm.dup()
assert twin._watch is comm._watch and twin._nccl is comm._nccl and twin.timeout == 4.0
assert twin._cid.startswith("world.dup") and twin._cid != comm._cid
assert twin.allgather(rank) == [0, 1]
comm.set_timeout(600)
gathered = comm.gather({"rank": rank, "pad": "x" * (100 * rank)}, root=1)
assert gathered is None if rank == 0 else [g["rank"] for g in gathered] == [0, 1], gathered
assert comm.allgather("r" * rank) == ["", "r"]
assert comm.bcast({"from": rank}, root=1) == {"from": 1}

# -- numbers, arrays, lists ------------------------------------------------------------------
assert comm.allreduce(rank + 1) == 3
assert comm.allreduce(float(rank), op="mean") == 0.5
assert comm.allreduce(rank, op="max") == 1 and comm.allreduce(rank, op="min") == 0
big = comm.allreduce(2**70 + rank)  # beyond int64: reduced as Python objects, exactly
assert big == 2**71 + 1 and type(big) is int, big
assert comm.allreduce(True) == 2 and comm.allreduce(rank == 1, op="max") is True
f32 = comm.allreduce(np.float32(0.25 + rank))
assert type(f32) is np.float32 and f32 == 1.5, f32
assert comm.allreduce(1j * rank) == 1j and type(comm.allreduce(2.5)) is float
a = np.arange(6, dtype=np.float32).reshape(2, 3) + rank
s = comm.allreduce(a)
assert s is not a and s.dtype == np.float32
assert np.array_equal(s, 2 * np.arange(6).reshape(2, 3) + 1)
m = comm.allreduce(np.array([rank, 3]), op="mean")
assert m.dtype == np.float64 and np.array_equal(m, [0.5, 3.0]), m
b = a.copy()
assert comm.allreduce(b, op="mean", inplace=True) is b and np.allclose(b, a - rank + 0.5)
strided = np.zeros((4, 3), np.float64)[:, 1]
strided[:] = rank
comm.allreduce(strided, inplace=True)
assert np.array_equal(strided, [1, 1, 1, 1])
g = [np.full((2, 2), rank, np.float32), np.full(3, 2.0 * rank), float(rank)]
r = comm.allreduce(g, op="mean")
assert r[0].dtype == np.float32 and np.allclose(r[0], 0.5) and np.allclose(r[1], 1.0)
assert r[2] == 0.5 and g[0][0, 0] == rank  # not in place
comm.allreduce(g[:2], op="sum", inplace=True)
assert np.allclose(g[0], 1.0) and np.allclose(g[1], 2.0)
try:
    comm.allreduce("text")
except TypeError:
    pass
else:
    raise AssertionError("allreduce of a string should raise")

# 16-bit: native MPI float16 and the user-defined ops (bf16; fp16 where MPI lacks it)
base = np.linspace(-1, 1, 1001).astype(np.float32) * (rank + 1)
exact = np.linspace(-1, 1, 1001).astype(np.float32) * 3
for compression, tol in (("fp16", 2e-3), ("bf16", 2e-2)):
    out = comm.allreduce(base, compression=compression)
    assert np.max(np.abs(out - exact)) < tol, (compression, np.max(np.abs(out - exact)))
comm._fp16_native = False
out = comm.allreduce(base, op="mean", compression="fp16")
assert np.max(np.abs(out - exact / 2)) < 2e-3
comm._fp16_native = True
h = np.full(5, 0.5 + rank, np.float16)
comm.allreduce(h, inplace=True)
assert h.dtype == np.float16 and np.all(h == 2.0)
comm.allreduce(h, op="max", inplace=True)

# non-blocking, several in flight, completed in any order
bufs = [np.full(1000, float(rank + i), np.float64) for i in range(3)]
reqs = [comm.iallreduce(buf, "sum") for buf in bufs]
for req in reversed(reqs):
    req.wait()
assert all(np.all(buf == 2 * i + 1) for i, buf in enumerate(bufs))

# bcast: arrays in place, arrays to a rank that passes None, objects
x = np.full(4, rank, np.int64)
assert comm.bcast(x) is x and np.all(x == 0)
got = comm.bcast(np.arange(3.0) if rank == 0 else None)
assert np.array_equal(got, [0.0, 1.0, 2.0])
assert comm.bcast({"rank": rank}, root=1) == {"rank": 1}
assert comm.allgather(rank) == [0, 1] and comm.gather(rank) == ([0, 1] if rank == 0 else None)

# shard(n): the index range of this rank
assert dist.shard(11, comm=comm) == slice(rank * 5, rank * 5 + 5)
idx = dist.shard(10, comm=comm, seed=0)
both = np.concatenate(comm.allgather(idx))
assert sorted(both) == list(range(10))

# -- the low-level loop: loss_and_grads + one allreduce of the flat gradient buffer ---------
x, y = data(32)
model = mlp(seed=50 + rank)
model.compile(nnx.SGD(0.1, momentum=0.9), "softmax_cross_entropy")
dist.broadcast_model(model, comm)
ref = mlp(seed=50)
ref.compile(nnx.SGD(0.1, momentum=0.9), "softmax_cross_entropy")
assert_close(model.get_weights(), ref.get_weights(), "broadcast_model")
for step in range(4):
    idx = np.arange(step * 8, step * 8 + 8)
    ref.train_step(x[idx], y[idx])
    mine = idx[rank * 4:(rank + 1) * 4]
    loss, grads = model.loss_and_grads(x[mine], y[mine])
    if step % 2:  # the flat buffer, in place: one call, no copy
        comm.allreduce(model.store.grads, op="mean", inplace=True)
    else:  # the list loss_and_grads returns: one call over a packed buffer
        grads = comm.allreduce(grads, op="mean")
        for (layer, name), gr in zip(model.store.views(), grads, strict=True):
            layer.grads[name][...] = gr
    model.optimizer.update(model.store.params, model.store.grads)
assert_close(model.get_weights(), ref.get_weights(), "low-level loop")


# -- SyncBatchNorm: N ranks normalize like one process with the whole batch ----------------
def bn_layers(norm):
    return [nnx.Dense(20, 16, use_bias=False), norm(16), nnx.ReLU(), nnx.Dense(16, 3)]


def bn_model(seed, norm):
    return nnx.Sequential(bn_layers(norm), seed=seed, dtype="float64")


def attributes(objects):
    return [(type(o), sorted(vars(o))) for o in objects]


for n, B in ((45, 8), (42, 8), (40, 7)):
    x, y = data(n)
    ref = bn_model(9, BatchNorm1d)
    ref.compile(nnx.Adam(0.01), "softmax_cross_entropy", ["accuracy"])
    ref.fit(x, y, epochs=2, batch_size=B, verbose=0)
    layers = dist.sync_batchnorm(bn_layers(BatchNorm1d))
    assert sum(isinstance(la, dist.SyncBatchNorm) for la in layers) == 1
    model = nnx.Sequential(layers, seed=9 + rank, dtype="float64")
    opt = dist.DistributedOptimizer(nnx.Adam(0.01), comm, overlap=(B == 7), bucket_mb=1e-6)
    objects = [model, *model.store.layers, opt]
    before = attributes(objects)
    model.compile(opt, "softmax_cross_entropy", ["accuracy"])
    # the strategy works through the seam: nothing of the model, its layers or its optimizer
    # is replaced (no instance attribute added, no class changed), with 2 ranks and overlap
    assert attributes(objects) == before, (attributes(objects), before)
    assert "fit" not in vars(model) and "save" not in vars(model)
    assert layers[1].sync is opt.strategy.sync_context and layers[1].sync.comm is not comm
    model.fit(x, y, epochs=2, batch_size=B, verbose=0)
    assert attributes(objects) == before
    assert_close(model.get_weights(), ref.get_weights(), f"SyncBatchNorm n={n} B={B}")
    assert_close(list(model.get_buffers().values()), list(ref.get_buffers().values()),
                 "SyncBatchNorm running statistics")
    assert_same_on_all_ranks(comm, model.get_weights(), "SyncBatchNorm")
    assert np.allclose(model.predict(x), ref.predict(x), atol=1e-9)

# NCHW: SyncBatchNorm after a convolution
from nnx.layers.batchnorm import BatchNorm2d  # noqa: E402
from nnx.layers.conv2d import Conv2D  # noqa: E402


def conv_model(seed, sync):
    bn = dist.SyncBatchNorm(4) if sync else BatchNorm2d(4)
    return nnx.Sequential([Conv2D(1, 4, 3, padding="same", use_bias=False), bn, nnx.ReLU(),
                           nnx.Flatten(), nnx.Dense(4 * 6 * 6, 3)], seed=seed, dtype="float64")


rng = np.random.default_rng(0)
x, y = rng.standard_normal((30, 1, 6, 6)), rng.integers(0, 3, 30)
ref = conv_model(2, sync=False)
ref.compile(nnx.SGD(0.05, momentum=0.9), "softmax_cross_entropy")
ref.fit(x, y, epochs=2, batch_size=8, verbose=0)
model = conv_model(2, sync=True)
model.compile(dist.DistributedOptimizer(nnx.SGD(0.05, momentum=0.9), comm),
              "softmax_cross_entropy")
model.fit(x, y, epochs=2, batch_size=8, verbose=0)
assert_close(model.get_weights(), ref.get_weights(), "SyncBatchNorm NCHW")
assert_close(list(model.get_buffers().values()), list(ref.get_buffers().values()),
             "SyncBatchNorm NCHW running statistics")

# plain BatchNorm: per-rank statistics; the running statistics are averaged at epoch end
x, y = data(48)
model = bn_model(9, BatchNorm1d)
model.compile(dist.DistributedOptimizer(nnx.Adam(0.01), comm, overlap=True, bucket_mb=1e-6),
              "softmax_cross_entropy")
model.fit(x, y, epochs=2, batch_size=8, verbose=0)
assert_same_on_all_ranks(comm, model.get_weights() + list(model.get_buffers().values()),
                         "BatchNorm (per-rank statistics)")

done(comm, "collectives")
