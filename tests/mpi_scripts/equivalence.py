"""N ranks with global batch B end with the weights of one process with batch B over the same
data: SGD (momentum) and Adam; B divisible and not by the number of ranks; n divisible and not
by B (including a last batch of one sample: an empty share on rank 1); per-rank initial seeds
made equal by the broadcast; regularizers; overlap with per-layer buckets; train_step; sharded
data; fp16/bf16 compression (loose tolerance)."""

from _common import assert_close, assert_same_on_all_ranks, data, dist, done, mlp, nnx, np

comm = dist.init()
assert comm.size == 2, comm
rank = comm.rank


def optimizers():
    return [lambda: nnx.SGD(0.1, momentum=0.9), lambda: nnx.Adam(0.01)]


def run(make_opt, n, B, epochs=3, reg=None, **options):
    x, y = data(n)
    ref = mlp(seed=100, reg=reg)
    ref.compile(make_opt(), "softmax_cross_entropy", ["accuracy"])
    h_ref = ref.fit(x, y, epochs=epochs, batch_size=B, verbose=0)

    model = mlp(seed=100 + rank, reg=reg)  # different initial weights per rank
    opt = dist.DistributedOptimizer(make_opt(), comm, **options)
    model.compile(opt, "softmax_cross_entropy", ["accuracy"])
    assert_same_on_all_ranks(comm, model.get_weights(), "after compile (broadcast)")
    assert_close(model.get_weights(), mlp(seed=100, reg=reg).get_weights(),
                 "initial weights = rank 0's")
    h = model.fit(x, y, epochs=epochs, batch_size=B, verbose=0)
    what = f"{type(opt.optimizer).__name__} n={n} B={B} {options}"
    assert_same_on_all_ranks(comm, model.get_weights(), what)
    tol = dict(rtol=1e-9, atol=1e-11) if not options.get("compression") else \
        dict(rtol=0, atol=5e-3)
    assert_close(model.get_weights(), ref.get_weights(), what, **tol)
    if not options.get("compression"):
        for key in ("loss", "accuracy"):
            assert np.allclose(h.history[key], h_ref.history[key], rtol=1e-9), \
                (what, key, h.history[key], h_ref.history[key])
    assert opt.stats["steps"] == ref.optimizer.step, (opt.stats, ref.optimizer.step)
    return model, opt


for make_opt in optimizers():
    for n, B in ((45, 8), (41, 8), (40, 7), (3, 8)):
        run(make_opt, n, B)
    run(make_opt, 45, 7, reg=nnx.L2(1e-3))

# overlap: per-layer buckets (tiny bucket size), with and without a regularized layer
_m, opt = run(optimizers()[1], 45, 8, overlap=True, bucket_mb=1e-6)
assert opt.stats["buckets"] == 2, opt.stats
run(optimizers()[0], 41, 8, reg=nnx.L2(1e-3), overlap=True, bucket_mb=1e-6)
run(optimizers()[1], 45, 8, overlap=True)  # one bucket

# a tied layer (used twice) with overlap: its bucket waits for both uses' backward
def tied_model(seed):
    shared = nnx.Dense(16, 16, "tanh", name="shared")
    return nnx.Sequential([nnx.Dense(20, 16, "relu"), shared, shared, nnx.Dense(16, 3)],
                          seed=seed, dtype="float64")


x, y = data(45)
ref = tied_model(8)
ref.compile(nnx.SGD(0.1, momentum=0.9), "softmax_cross_entropy")
ref.fit(x, y, epochs=2, batch_size=8, verbose=0)
model = tied_model(8 + rank)
opt = dist.DistributedOptimizer(nnx.SGD(0.1, momentum=0.9), comm, overlap=True, bucket_mb=1e-6)
model.compile(opt, "softmax_cross_entropy")
assert [b.uses for b in opt.strategy.buckets] == [1, 2, 1], [b.uses for b in opt.strategy.buckets]
model.fit(x, y, epochs=2, batch_size=8, verbose=0)
assert_close(model.get_weights(), ref.get_weights(), "tied layer, overlap")
assert_same_on_all_ranks(comm, model.get_weights(), "tied layer, overlap")

# float32 on the numba backend: the same up to float32 rounding
x, y = data(45)
ref = mlp(seed=5, backend="numba", dtype="float32")
ref.compile(nnx.Adam(0.01), "softmax_cross_entropy")
ref.fit(x, y, epochs=2, batch_size=8, verbose=0)
model = mlp(seed=5, backend="numba", dtype="float32")
model.compile(dist.DistributedOptimizer(nnx.Adam(0.01), comm), "softmax_cross_entropy")
model.fit(x, y, epochs=2, batch_size=8, verbose=0)
assert_close(model.get_weights(), ref.get_weights(), "numba float32", rtol=1e-4, atol=1e-5)
assert_same_on_all_ranks(comm, model.get_weights(), "numba float32")

# 16-bit compression: close to the exact result, not equal
run(optimizers()[0], 45, 8, compression="fp16")
run(optimizers()[1], 45, 8, compression="bf16", overlap=True, bucket_mb=1e-6)

# train_step in a user's loop: each rank passes its own half; gradients are averaged
x, y = data(32)
ref = mlp(seed=7)
ref.compile(nnx.Adam(0.01), "softmax_cross_entropy")
model = mlp(seed=7)
model.compile(dist.DistributedOptimizer(nnx.Adam(0.01), comm), "softmax_cross_entropy")
for step in range(4):
    idx = np.arange(step * 8, step * 8 + 8)
    ref.train_step(x[idx], y[idx])
    mine = idx[rank * 4:(rank + 1) * 4]
    model.train_step(x[mine], y[mine])
assert_close(model.get_weights(), ref.get_weights(), "train_step")

# sharded data: each rank holds half; batch_size is per rank (global batch 2 * 5)
x, y = data(44)
xs, ys = dist.shard(x, y, comm=comm)
assert len(xs) == 22 and np.array_equal(xs, x[rank * 22:(rank + 1) * 22])
model = mlp(seed=3)
model.compile(dist.DistributedOptimizer(nnx.SGD(0.1, momentum=0.9), comm, data="sharded"),
              "softmax_cross_entropy")
model.fit(xs, ys, epochs=2, batch_size=5, verbose=0)
ref = mlp(seed=3)
ref.compile(nnx.SGD(0.1, momentum=0.9), "softmax_cross_entropy")
order_rng = np.random.default_rng(3)
for _epoch in range(2):
    order = order_rng.permutation(22)
    for start in range(0, 22, 5):
        local = order[start:start + 5]
        idx = np.concatenate([local + r * 22 for r in range(2)])
        ref.train_step(x[idx], y[idx])
assert_close(model.get_weights(), ref.get_weights(), "sharded")
assert_same_on_all_ranks(comm, model.get_weights(), "sharded")

done(comm, "equivalence")
