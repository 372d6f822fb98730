"""Run under `mpiexec -n 3`: a global batch of 2 leaves rank 0 with an empty share, and the
SyncBatchNorm reductions still match (DataParallel.empty_step: the layer takes part with zero
sums), with and without overlap; the result is one process's with the same batch."""

from _common import assert_close, assert_same_on_all_ranks, data, dist, done, nnx, np

from nnx.layers.batchnorm import BatchNorm1d

comm = dist.init()
rank = comm.rank
assert comm.size == 3, comm


def layers():
    return [nnx.Dense(20, 16, use_bias=False), BatchNorm1d(16), nnx.ReLU(), nnx.Dense(16, 3)]


for overlap in (False, True):
    x, y = data(42)  # batches of 8, the last of 2: shares 0, 1, 1
    ref = nnx.Sequential(layers(), seed=9, dtype="float64")
    ref.compile(nnx.Adam(0.01), "softmax_cross_entropy", ["accuracy"])
    h_ref = ref.fit(x, y, epochs=2, batch_size=8, verbose=0)
    model = nnx.Sequential(dist.sync_batchnorm(layers()), seed=9 + rank, dtype="float64")
    opt = dist.DistributedOptimizer(nnx.Adam(0.01), comm, overlap=overlap, bucket_mb=1e-6)
    model.compile(opt, "softmax_cross_entropy", ["accuracy"])
    h = model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    what = f"empty share, overlap={overlap}"
    assert_close(model.get_weights(), ref.get_weights(), what)
    assert_close(list(model.get_buffers().values()), list(ref.get_buffers().values()),
                 what + " (running statistics)")
    assert np.allclose(h.history["loss"], h_ref.history["loss"], rtol=1e-9), what
    assert_same_on_all_ranks(comm, model.get_weights(), what)
    assert opt.stats["steps"] == ref.optimizer.step

done(comm, "empty_share")
