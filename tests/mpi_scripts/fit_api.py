"""Under `mpiexec -n 2`, fit with sample and class weights, Keras-style losses and several
metrics ends where one process ends: the weighted loss of each rank's share is rescaled so the
gradient is the global weighted mean's (data_iter.split_scale), the metrics' sums are reduced
at each epoch end (DataParallel.end_epoch), and the reported loss is the global weighted mean.
Global batches that leave one rank an empty share are included (n=3, B=8), and a generator of
global (x, y, w) batches, split like arrays."""

from _common import assert_close, assert_same_on_all_ranks, data, dist, done, nnx, np

comm = dist.init()
assert comm.size == 2, comm
rank = comm.rank
METRICS = ["acc", "f1", "precision", "top_k_accuracy", "recall"]


def model(seed):
    return nnx.Sequential([nnx.Dense(None, 12, "tanh"), nnx.Dense(None, 4, "softmax")],
                          seed=seed, dtype="float64", input_shape=(20,))


def run(n, B, epochs=3, **fit_kw):
    x, y = data(n, classes=4)
    w = np.random.default_rng(7).random(n) * (np.arange(n) % 3 != 0)
    kw = dict(epochs=epochs, batch_size=B, verbose=0, sample_weight=w,
              class_weight={0: 3.0, 2: 0.5}, **fit_kw)
    ref = model(100).compile(nnx.Adam(0.01), "sparse_categorical_crossentropy", METRICS)
    h_ref = ref.fit(x, y, **kw)
    mod = model(100 + rank)
    mod.compile(dist.DistributedOptimizer(nnx.Adam(0.01), comm),
                "sparse_categorical_crossentropy", METRICS)
    h = mod.fit(x, y, **kw)
    what = f"n={n} B={B} {fit_kw}"
    assert_same_on_all_ranks(comm, mod.get_weights(), what)
    assert_close(mod.get_weights(), ref.get_weights(), what)
    for key, values in h_ref.history.items():
        if key in ("time", "samples_per_s"):
            continue
        assert np.allclose(h.history[key], values, rtol=1e-9), (what, key, h.history[key],
                                                                values)


for n, B in ((45, 8), (41, 16), (3, 8)):
    run(n, B)
x_val, y_val = data(17, seed=5, classes=4)
run(45, 8, validation_data=(x_val, y_val))

# a generator of global batches (x, y, w): each rank trains on its share of every batch
x, y = data(40, classes=4)
w = np.random.default_rng(3).random(40)
ref = model(100).compile(nnx.Adam(0.01), "sparse_categorical_crossentropy", METRICS)
h_ref = ref.fit(x, y, epochs=2, batch_size=10, shuffle=False, sample_weight=w, verbose=0)
mod = model(100 + rank).compile(dist.DistributedOptimizer(nnx.Adam(0.01), comm),
                                "sparse_categorical_crossentropy", METRICS)


def batches():
    while True:
        for s in range(0, 40, 10):
            yield x[s:s + 10], y[s:s + 10], w[s:s + 10]


h = mod.fit(batches(), epochs=2, steps_per_epoch=4, verbose=0)
assert_same_on_all_ranks(comm, mod.get_weights(), "generator")
assert_close(mod.get_weights(), ref.get_weights(), "generator")
for key in ("loss", *METRICS):
    assert np.allclose(h.history[key], h_ref.history[key], rtol=1e-9), (key, h.history[key])
done(comm, "fit_api")
