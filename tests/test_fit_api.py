"""The Keras-style fit API (issue 15, items 2-4): validation_split, sample_weight (per sample and
per position), class_weight, metrics by name and object with val_ copies, batch sources
(iterables and generators, steps_per_epoch, prefetching, running out, errors), and the
generated compile documentation."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

import nnx
from nnx import compat, losses, metrics, optim
from nnx.data_iter import BatchSourceError
from nnx.errors import InputError, ShapeError


def blobs(rng, n=96, d=6, k=3):
    centers = rng.standard_normal((k, d)) * 2
    y = rng.integers(0, k, n)
    return (centers[y] + rng.standard_normal((n, d))).astype(np.float32), y


def mlp(seed=0, k=3, last=None, dtype="float64", **kw):
    return nnx.Sequential([nnx.Dense(6, 8, "tanh"), nnx.Dense(8, k, last)], seed=seed,
                          dtype=dtype, **kw)


def same_weights(a, b, rtol=1e-10):
    for u, v in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_allclose(u, v, rtol=rtol, atol=1e-12)


# -- validation_split -------------------------------------------------------------------------
def test_validation_split_holds_out_the_last_fraction_before_shuffling(rng):
    x, y = blobs(rng, n=50)
    a = mlp().compile(nnx.SGD(0.1), "softmax_cross_entropy", ["acc"])
    b = mlp().compile(nnx.SGD(0.1), "softmax_cross_entropy", ["acc"])
    ha = a.fit(x, y, epochs=2, batch_size=8, validation_split=0.2, verbose=0)
    hb = b.fit(x[:40], y[:40], epochs=2, batch_size=8, validation_data=(x[40:], y[40:]),
               verbose=0)
    for key in ("loss", "acc", "val_loss", "val_acc"):
        np.testing.assert_allclose(ha.history[key], hb.history[key], rtol=1e-12)
    same_weights(a, b)
    with pytest.raises(ValueError, match="validation_split must be a number in \\(0, 1\\)"):
        a.fit(x, y, validation_split=1.0, verbose=0)
    with pytest.raises(ValueError, match="leaves 0 for training and 1 for validation"):
        a.fit(x[:1], y[:1], validation_split=0.1, verbose=0)
    with pytest.raises(ValueError, match="validation_data or validation_split, not both"):
        a.fit(x, y, validation_split=0.1, validation_data=(x, y), verbose=0)


# -- sample_weight ----------------------------------------------------------------------------
def test_zero_weights_equal_training_on_the_rest(rng):
    """Full-batch SGD with 0/1 sample weights takes exactly the steps of the kept samples."""
    x, y = blobs(rng, n=40)
    keep = rng.random(40) > 0.4
    a = mlp().compile(nnx.SGD(0.2), "softmax_cross_entropy", ["acc"])
    b = mlp().compile(nnx.SGD(0.2), "softmax_cross_entropy", ["acc"])
    ha = a.fit(x, y, epochs=3, batch_size=40, sample_weight=keep * 1.0, verbose=0)
    hb = b.fit(x[keep], y[keep], epochs=3, batch_size=40, verbose=0)
    same_weights(a, b)
    np.testing.assert_allclose(ha.history["loss"], hb.history["loss"], rtol=1e-12)
    np.testing.assert_allclose(ha.history["acc"], hb.history["acc"], rtol=1e-12)
    ea = a.evaluate(x, y, sample_weight=keep * 1.0)
    eb = b.evaluate(x[keep], y[keep])
    assert ea == pytest.approx(eb, rel=1e-12)
    # train_step and loss_and_grads take weights too
    la, ga = a.loss_and_grads(x, y, sample_weight=keep * 1.0)
    lb, gb = b.loss_and_grads(x[keep], y[keep])
    assert la == pytest.approx(lb, rel=1e-12)
    for u, v in zip(ga, gb, strict=True):
        np.testing.assert_allclose(u, v, rtol=1e-9, atol=1e-12)


def test_padding_mask_per_timestep(rng):
    """(N, T) weights mask padding: what the targets say at masked positions changes
    nothing (loss, weights, metrics), and the metrics count only unmasked positions."""
    ids = rng.integers(1, 6, (12, 5))
    mask = np.ones((12, 5))
    mask[:, 3:] = 0
    y = np.roll(ids, -1, axis=1)
    y_other = y.copy()
    y_other[:, 3:] = 0

    def model():
        return nnx.Sequential([nnx.Embedding(6, 4), nnx.GRU(None, 5, return_sequences=True),
                               nnx.Dense(None, 6, "softmax")], dtype="float64", seed=2)

    a = model().compile(nnx.Adam(0.02), "sparse_categorical_crossentropy", ["acc", "f1"])
    b = model().compile(nnx.Adam(0.02), "sparse_categorical_crossentropy", ["acc", "f1"])
    ha = a.fit(ids, y, epochs=3, batch_size=4, sample_weight=mask, verbose=0)
    hb = b.fit(ids, y_other, epochs=3, batch_size=4, sample_weight=mask, verbose=0)
    same_weights(a, b)
    for key in ("loss", "acc", "f1"):
        np.testing.assert_allclose(ha.history[key], hb.history[key], rtol=1e-12)
    ev = a.evaluate(ids, y, sample_weight=mask)
    pred = a.predict(ids).argmax(-1)
    assert ev["acc"] == pytest.approx((pred == y)[:, :3].mean())
    unmasked = a.evaluate(ids, y)
    assert unmasked["acc"] == pytest.approx((pred == y).mean())


def test_bad_sample_weights_are_refused(rng):
    x, y = blobs(rng, n=10)
    model = mlp().compile("adam", "softmax_cross_entropy")
    with pytest.raises(ShapeError, match=r"sample_weight: expected shape \(10,\) \(a weight per "
                                         r"sample\), got \(9,\)"):
        model.fit(x, y, sample_weight=np.ones(9), verbose=0)
    with pytest.raises(InputError, match="weights must be >= 0, got -1.0 at index \\(3,\\)"):
        model.fit(x, y, sample_weight=np.where(np.arange(10) == 3, -1.0, 1.0), verbose=0)
    with pytest.raises(InputError, match="sample_weight contains NaN or inf"):
        model.fit(x, y, sample_weight=np.full(10, np.nan), verbose=0)


# -- class_weight -----------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["labels", "onehot"])
def test_class_weight_equals_the_sample_weights_of_each_class(rng, form):
    x, y = blobs(rng, n=48)
    cw = {0: 2.0, 2: 0.25}  # class 1 missing: weight 1, as Keras
    t = y if form == "labels" else np.eye(3)[y]
    loss = "sparse_categorical_crossentropy" if form == "labels" else "categorical_crossentropy"
    a = mlp(last="softmax").compile(nnx.Adam(0.05), loss, ["acc"])
    b = mlp(last="softmax").compile(nnx.Adam(0.05), loss, ["acc"])
    sw = rng.random(48)
    ha = a.fit(x, t, epochs=2, batch_size=16, class_weight=cw, sample_weight=sw, verbose=0)
    hb = b.fit(x, t, epochs=2, batch_size=16, verbose=0,
               sample_weight=sw * np.array([2.0, 1.0, 0.25])[y])
    same_weights(a, b)
    np.testing.assert_allclose(ha.history["loss"], hb.history["loss"], rtol=1e-12)
    with pytest.raises(ValueError, match="class_weight needs a classification loss, not mse"):
        nnx.Sequential([nnx.Dense(6, 1)]).compile("adam", "mse").fit(
            x, y[:, None] * 1.0, class_weight={0: 1.0}, verbose=0)
    with pytest.raises(ValueError, match="the weight of class 0 must be a finite number >= 0"):
        a.fit(x, t, class_weight={0: -1}, verbose=0)


def test_class_weight_for_binary_targets(rng):
    x = rng.standard_normal((40, 6))
    t = (x[:, 0] > 0.5) * 1.0
    a = nnx.Sequential([nnx.Dense(6, 1, "sigmoid")], dtype="float64")
    b = nnx.Sequential([nnx.Dense(6, 1, "sigmoid")], dtype="float64")
    a.compile(nnx.SGD(0.3), "binary_crossentropy", ["acc"])
    b.compile(nnx.SGD(0.3), "binary_crossentropy", ["acc"])
    a.fit(x, t, epochs=2, batch_size=10, class_weight={1: 4.0}, verbose=0)
    b.fit(x, t, epochs=2, batch_size=10, sample_weight=np.where(t > 0, 4.0, 1.0), verbose=0)
    same_weights(a, b)


# -- metrics ----------------------------------------------------------------------------------
def test_metrics_by_name_and_object_with_validation_copies(rng):
    x, y = blobs(rng, n=60)
    model = mlp(last="softmax").compile(
        nnx.Adam(0.05), "sparse_categorical_crossentropy",
        ["acc", "precision", "recall", "f1", metrics.TopKAccuracy(k=2, name="top2")])
    hist = model.fit(x, y, epochs=2, batch_size=16, validation_data=(x[:20], y[:20]),
                     verbose=0)
    names = ["acc", "precision", "recall", "f1", "top2"]
    assert model.metric_names == tuple(names)
    assert set(hist.history) == {"loss", "time", "samples_per_s", "val_loss",
                                 *names, *[f"val_{n}" for n in names]}
    ev = model.evaluate(x[:20], y[:20])
    out = model.predict(x[:20])
    for name in names:
        assert hist.history[f"val_{name}"][-1] == pytest.approx(ev[name])
        ref = metrics.get(name if name != "top2" else metrics.TopKAccuracy(k=2))
        ref.update(model.ops, out, y[:20])
        assert ev[name] == pytest.approx(ref.result()), name
    reg = nnx.Sequential([nnx.Dense(6, 2)]).compile("adam", "mse", ["mae", "mse", "rmse"])
    target = x[:, :2] * 2.0
    res = reg.evaluate(x, target)
    err = reg.predict(x) - target
    assert res["mae"] == pytest.approx(np.abs(err).mean(), rel=1e-5)
    assert res["rmse"] == pytest.approx(np.sqrt((err ** 2).mean()), rel=1e-5)
    assert res["loss"] == pytest.approx(res["mse"], rel=1e-5)


def test_metric_names_are_checked_at_compile(rng):
    with pytest.raises(nnx.UnknownNameError, match="unknown metric 'accuracy_score'"):
        mlp().compile("adam", "softmax_cross_entropy", ["accuracy_score"])
    with pytest.raises(ValueError, match="report under 'acc'"):
        mlp().compile("adam", "softmax_cross_entropy", ["acc", metrics.Accuracy(name="acc")])
    model = mlp().compile("adam", "softmax_cross_entropy", "acc")  # one name, not a list
    assert model.metric_names == ("acc",)
    assert mlp().compile("adam", "mse", None).metric_names == ()
    assert mlp().compile("adam", "softmax_cross_entropy").metric_names == ("accuracy",)


def test_compile_doc_lists_every_registered_name():
    doc = nnx.Model.compile.__doc__
    for name in (*losses.LOSSES, *optim.OPTIMIZERS, *metrics.METRICS):
        assert f'"{name}"' in doc, name
    assert "probabilities" in doc and "log-probabilities" in doc


# -- batch sources ----------------------------------------------------------------------------
class Counting:
    """A generator of (x, y) batches that counts reads and remembers the reading threads."""

    def __init__(self, x, y, batch, forever=True, extra=()):
        self.x, self.y, self.batch, self.forever, self.extra = x, y, batch, forever, extra
        self.reads, self.threads = 0, set()

    def __iter__(self):
        return self

    def __next__(self):
        if not self.forever and self.reads * self.batch >= len(self.x):
            raise StopIteration
        s = (self.reads * self.batch) % len(self.x)
        self.reads += 1
        self.threads.add(threading.current_thread().name)
        return (self.x[s:s + self.batch], self.y[s:s + self.batch],
                *[e[s:s + self.batch] for e in self.extra])


@pytest.mark.parametrize("thread", [False, True], ids=["inline", "prefetch_thread"])
def test_generator_with_steps_trains_like_arrays(rng, monkeypatch, thread):
    """The same steps as arrays, read inline (CPU backends' default) or by the prefetch
    thread (GPU backends' default, forced here), never past steps_per_epoch * epochs."""
    monkeypatch.setattr(nnx.data_iter, "PREFETCH_ON_HOST", thread)
    x, y = blobs(rng, n=48)
    w = rng.random(48)
    a = mlp().compile(nnx.SGD(0.1), "softmax_cross_entropy", ["acc"])
    b = mlp().compile(nnx.SGD(0.1), "softmax_cross_entropy", ["acc"])
    source = Counting(x, y, 16, extra=(w,))
    ha = a.fit(source, epochs=3, steps_per_epoch=3, validation_data=(x, y), verbose=0)
    hb = b.fit(x, y, epochs=3, batch_size=16, shuffle=False, sample_weight=w,
               validation_data=(x, y), verbose=0)
    same_weights(a, b)
    for key in ("loss", "acc", "val_loss", "val_acc"):
        np.testing.assert_allclose(ha.history[key], hb.history[key], rtol=1e-12)
    assert source.reads == 9  # never read past steps_per_epoch * epochs
    assert ("nnx-batch-prefetch" in source.threads) == thread
    assert a.evaluate(Counting(x, y, 16, forever=False)) == pytest.approx(b.evaluate(x, y))
    np.testing.assert_allclose(a.predict(Counting(x, y, 10, forever=False)), a.predict(x))
    assert a.predict(iter([(x[:5],), (x[5:9],)])).shape == (9, 3)
    assert not [t for t in threading.enumerate() if t.name == "nnx-batch-prefetch"]


def test_reiterable_sources_restart_each_epoch(rng):
    x, y = blobs(rng, n=30)
    batches = [(x[s:s + 10], y[s:s + 10]) for s in range(0, 30, 10)]

    class Dataset:  # re-iterable: a fresh iterator per epoch
        def __iter__(self):
            return iter(batches)

    a = mlp().compile(nnx.SGD(0.1), "softmax_cross_entropy")
    b = mlp().compile(nnx.SGD(0.1), "softmax_cross_entropy")
    a.fit(Dataset(), epochs=3, verbose=0)
    b.fit(x, y, epochs=3, batch_size=10, shuffle=False, verbose=0)
    same_weights(a, b)


@pytest.mark.parametrize("thread", [False, True], ids=["inline", "prefetch_thread"])
def test_a_source_that_runs_out_stops_training_with_a_warning(rng, monkeypatch, thread):
    monkeypatch.setattr(nnx.data_iter, "PREFETCH_ON_HOST", thread)
    x, y = blobs(rng, n=30)
    source = Counting(x, y, 10, forever=False)
    model = mlp().compile(nnx.SGD(0.1), "softmax_cross_entropy")
    with pytest.warns(UserWarning, match=r"ran out of data after 1 batch\(es\) in epoch 2, "
                                         r"expected 2 steps"):
        hist = model.fit(source, epochs=4, steps_per_epoch=2, verbose=0)
    assert hist.epochs == [0, 1] and source.reads == 3
    # a generator without steps_per_epoch is used up after one epoch (Keras's behaviour)
    source = Counting(x, y, 10, forever=False)
    with pytest.warns(UserWarning, match=r"after 0 batch\(es\) in epoch 2"):
        hist = mlp().compile("sgd", "softmax_cross_entropy").fit(source, epochs=3, verbose=0)
    assert hist.epochs == [0]
    with pytest.raises(InputError, match="fit: the batch source produced no batches"):
        model.fit(iter([]), verbose=0)


@pytest.mark.parametrize("thread", [False, True], ids=["inline", "prefetch_thread"])
def test_source_errors_name_the_batch(rng, monkeypatch, thread):
    monkeypatch.setattr(nnx.data_iter, "PREFETCH_ON_HOST", thread)
    x, y = blobs(rng, n=30)

    def failing():
        yield x[:10], y[:10]
        yield x[10:20], y[10:20]
        raise KeyError("disk gone")

    model = mlp().compile(nnx.SGD(0.1), "softmax_cross_entropy")
    with pytest.raises(BatchSourceError, match="fit: the batch source raised KeyError while "
                                               "producing batch 3 of epoch 1: 'disk gone'") as e:
        model.fit(failing(), epochs=1, verbose=0)
    assert isinstance(e.value.__cause__, KeyError)
    bad = x.copy()
    bad[13, 2] = np.nan
    with pytest.raises(InputError, match=r"fit: batch 2: x contains NaN or inf \(first at index "
                                         r"\(3, 2\)\)"):
        model.fit(Counting(bad, y, 10), steps_per_epoch=3, verbose=0)
    with pytest.raises(InputError, match="batch 1 must be a tuple \\(x, y\\)"):
        model.fit(iter([x[:4]]), verbose=0)
    with pytest.raises(ValueError, match="pass y=None"):
        model.fit(Counting(x, y, 10), y, verbose=0)
    with pytest.raises(ValueError, match="validation_data is an iterator.*validation_steps"):
        model.fit(x, y, epochs=2, validation_data=Counting(x, y, 10), verbose=0)
    hist = model.fit(x, y, epochs=2, validation_data=Counting(x, y, 10), validation_steps=3,
                     verbose=0)
    assert len(hist.history["val_loss"]) == 2
    assert not [t for t in threading.enumerate() if t.name == "nnx-batch-prefetch"]


def test_an_unbuilt_model_builds_from_the_first_batch_of_a_source(rng):
    x, y = blobs(rng, n=32)
    lazy = nnx.Sequential([nnx.Dense(None, 8, "tanh"), nnx.Dense(None, 3)], dtype="float64")
    lazy.compile(nnx.SGD(0.1), "softmax_cross_entropy")
    lazy.fit(Counting(x, y, 8), steps_per_epoch=4, epochs=2, verbose=0)
    ref = mlp().compile(nnx.SGD(0.1), "softmax_cross_entropy")
    ref.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0)
    same_weights(lazy, ref)


# -- data parallelism (2 processes) -----------------------------------------------------------
def _mpiexec():
    local = Path(sys.executable).parent / "mpiexec"
    return str(local) if local.exists() else shutil.which("mpiexec")


@pytest.mark.mpi
@pytest.mark.skipif(_mpiexec() is None or not compat.has_mpi4py,
                    reason="needs mpiexec and mpi4py (pip install -e '.[distributed]')")
def test_weighted_fit_with_metrics_under_two_processes_equals_one():
    """tests/mpi_scripts/fit_api.py: sample and class weights, a fused Keras loss and five
    metrics under DataParallel (arrays, and a generator of global batches) give one
    process's weights and history."""
    here = Path(__file__).resolve().parent
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               NUMBA_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for var in nnx.distributed.launch.SIZE_VARS + nnx.distributed.launch.RANK_VARS:
        env.pop(var, None)
    env.pop("NNX_DIST_TIMEOUT", None)
    proc = subprocess.Popen([_mpiexec(), "-n", "2", sys.executable,
                             str(here / "mpi_scripts" / "fit_api.py")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=str(here), start_new_session=True)
    try:
        out, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"mpiexec did not finish\n{out}\n{err}")
    assert proc.returncode == 0 and "OK fit_api" in out, f"{out}\n{err}"


def test_no_warnings_from_a_plain_fit(rng):
    x, y = blobs(rng, n=20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mlp().compile("adam", "softmax_cross_entropy").fit(x, y, epochs=1, verbose=0)
