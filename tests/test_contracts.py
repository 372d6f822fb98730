"""The core contracts (issue: reentrant layers, one training-step seam, checkpoints as pure I/O):
each case of the issue's first list, on every CPU backend available."""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest

import nnx
from nnx import models
from nnx.errors import ShapeError
from nnx.hooks import StepHooks
from nnx.testing import gradcheck
from nnx.training import collect_loss_terms

CPU = [b for b in nnx.available_backends() if b in ("numpy", "numba")]


def data(n=192, f=20, c=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((c, f)) * 2
    y = rng.integers(0, c, n)
    x = (centers[y] + rng.standard_normal((n, f))).astype(np.float32)
    return x, y


def snapshot(obj) -> dict:
    """The attribute names of an object and the identity of each value."""
    return {k: id(v) for k, v in vars(obj).items()}


# -- a layer belongs to one model -----------------------------------------------------------------
@pytest.mark.parametrize("second", CPU)
def test_layer_list_given_to_a_second_model_raises_and_the_first_is_untouched(second):
    x, y = data()
    layers = [nnx.Dense(20, 16, "relu"), nnx.Dense(16, 3)]
    first = nnx.Sequential(layers, backend="numpy", name="first")
    before = first.get_weights()
    ops_before = [layer.ops for layer in first.layers]
    with pytest.raises(ValueError, match=r"Dense '.+' already belongs to Sequential 'first'"):
        nnx.Sequential(layers, backend=second, name="second")
    assert all(np.array_equal(a, b) for a, b in zip(before, first.get_weights(), strict=True))
    assert [layer.ops for layer in first.layers] == ops_before
    first.compile(nnx.Adam(1e-2), "softmax_cross_entropy")
    hist = first.fit(x, y, epochs=3, batch_size=32, verbose=0)
    assert hist.history["loss"][-1] < 0.7 * hist.history["loss"][0]  # it learns


def test_layers_of_a_collected_model_can_be_reused():
    layers = [nnx.Dense(4, 2)]
    nnx.Sequential(layers, backend="numpy")
    gc.collect()
    model = nnx.Sequential(layers, backend="numpy")  # the first owner is gone
    assert model.layers[0].owner is model


def test_two_layers_with_one_name_are_refused():
    with pytest.raises(ValueError, match="two different layers are named 'fc'"):
        nnx.Sequential([nnx.Dense(4, 4, name="fc"), nnx.Dense(4, 2, name="fc")])


# -- reentrancy: inference during fit ------------------------------------------------------------
def _fit_weights(backend, disturb_batch=None):
    x, y = data(n=512)
    model = nnx.Sequential([nnx.Dense(20, 32, "relu"), nnx.Dropout(0.2), nnx.Dense(32, 3)],
                           backend=backend, seed=3)
    model.compile(nnx.Adam(1e-2), "softmax_cross_entropy", ["accuracy"])
    stop = threading.Event()
    calls = [0]

    def disturb():
        xs = x[:disturb_batch]
        while not stop.is_set():
            model.predict(xs, batch_size=disturb_batch)
            model.evaluate(xs, y[:disturb_batch], batch_size=disturb_batch)
            calls[0] += 1

    thread = None
    if disturb_batch:
        thread = threading.Thread(target=disturb)
        thread.start()
    try:
        model.fit(x, y, epochs=4, batch_size=32, verbose=0)
    finally:
        stop.set()
        if thread:
            thread.join()
    return model.get_weights(), calls[0]


@pytest.mark.parametrize("backend", CPU)
@pytest.mark.parametrize("disturb_batch", [32, 7])  # the same batch size as fit, and another
def test_predict_in_another_thread_leaves_training_bit_identical(backend, disturb_batch):
    ref, _ = _fit_weights(backend)
    got, calls = _fit_weights(backend, disturb_batch)
    assert calls > 0
    for a, b in zip(ref, got, strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("name", ["mlp", "cnn", "lstm", "autoencoder", "transformer"])
def test_inference_stores_nothing_on_layers(name):
    model = models.get(name).build(backend="numpy")
    nodes = list(model.store.layers)
    before = [snapshot(layer) for layer in nodes]
    shape = {"image": (2, 1, 28, 28)}.get(models.get(name).INPUT, (2, 28, 28))
    x = np.random.default_rng(0).random(shape).astype(np.float32)
    model.predict(x)
    model.net.forward(model.ops.asarray(x), training=False)
    assert [snapshot(layer) for layer in nodes] == before


# -- weight tying ---------------------------------------------------------------------------------
def test_tied_layer_gradients_pass_gradcheck():
    d = nnx.Dense(6, 6, "tanh")
    x = np.random.default_rng(0).standard_normal((5, 6))
    gradcheck(nnx.Chain([d, d, nnx.Dense(6, 3)]), x)
    e = nnx.Dense(6, 6, "tanh")
    gradcheck(nnx.Chain([e, nnx.Residual(nnx.Chain([nnx.LayerNorm(6), e]))]), x)


@pytest.mark.parametrize("backend", CPU)
def test_tied_model_counts_saves_and_trains_once(backend, tmp_path):
    d = nnx.Dense(20, 20, "tanh")
    model = nnx.Sequential([d, d, nnx.Dense(20, 3)], backend=backend, dtype="float64")
    assert model.count_params() == 20 * 20 + 20 + 20 * 3 + 3
    assert len(model.get_weights()) == 4 and len(model.layers) == 2
    model.compile(nnx.SGD(0.05), "softmax_cross_entropy")
    x, y = data()
    loss, grads = model.loss_and_grads(x[:16], y[:16])
    # the tied gradient is the sum of both uses: compare with a numeric derivative of the loss
    w = model.get_weights()
    eps, i, j = 1e-6, 3, 5
    for sign in (1, -1):
        w2 = [a.copy() for a in w]
        w2[0][i, j] += sign * eps
        model.set_weights(w2)
        if sign == 1:
            up = model.loss_and_grads(x[:16], y[:16])[0]
        else:
            down = model.loss_and_grads(x[:16], y[:16])[0]
    model.set_weights(w)
    assert grads[0][i, j] == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-9)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    path = tmp_path / "tied.npz"
    model.save(path)
    again = nnx.load(path, backend=backend)
    assert again.count_params() == model.count_params()
    assert again.layers[0] is again.net.layers[0] is again.net.layers[1]
    np.testing.assert_array_equal(again.predict(x), model.predict(x))


# -- losses check ranks ---------------------------------------------------------------------------
@pytest.mark.parametrize("backend", CPU)
def test_sequence_logits_with_per_sample_labels_are_a_shape_error(backend):
    model = nnx.Sequential([nnx.Dense(4, 3)], backend=backend)
    model.compile("adam", "softmax_cross_entropy")
    x = np.zeros((8, 5, 4), np.float32)
    with pytest.raises(ShapeError, match=r"logits of shape \(N, classes\)"):
        model.fit(x, np.zeros(8, np.int64), verbose=0)
    with pytest.raises(ShapeError, match="softmax_cross_entropy"):
        model.loss(model.ops, model.ops.asarray(np.zeros((8, 5, 3), np.float32)),
                   model.ops.asarray(np.zeros(8, np.int64)))


# -- the training-step seam -----------------------------------------------------------------------
class Recorder(StepHooks):
    leaf_events = True

    def __init__(self):
        self.events = []

    def __getattribute__(self, name):
        attr = object.__getattribute__(self, name)
        if name in ("begin_step", "before_loss", "after_loss", "before_update", "after_update",
                    "end_step", "before_leaf_forward", "after_leaf_backward", "end_epoch",
                    "begin_fit", "end_fit"):
            events = object.__getattribute__(self, "events")

            def record(*args):
                arg = args[0]
                events.append((name, getattr(arg, "name", None)))
                return attr(*args)

            return record
        return attr


def test_hook_points_run_in_order_and_per_leaf_use():
    d = nnx.Dense(4, 4, "relu", name="tied")
    model = nnx.Sequential([d, d, nnx.Dense(4, 2, name="out")], backend="numpy", name="m")
    model.compile(nnx.SGD(0.1), "softmax_cross_entropy")
    rec = model.add_hooks(Recorder())
    model.train_step(np.ones((3, 4), np.float32), np.array([0, 1, 0]))
    assert rec.events == [
        ("begin_step", "m"), ("before_leaf_forward", "tied"), ("before_leaf_forward", "tied"),
        ("before_leaf_forward", "out"), ("before_loss", "m"), ("after_loss", "m"),
        ("after_leaf_backward", "out"), ("after_leaf_backward", "tied"),
        ("after_leaf_backward", "tied"), ("before_update", "m"), ("after_update", "m"),
        ("end_step", "m"),
    ]
    model.compile(nnx.Adam(), "softmax_cross_entropy")  # recompiling keeps added hooks
    assert rec in list(model.hooks)
    model.remove_hooks(rec)
    assert rec not in list(model.hooks)


@pytest.mark.parametrize("backend", CPU)
def test_fit_and_compile_replace_no_attribute_of_model_layers_or_optimizer(backend):
    x, y = data()
    model = nnx.Sequential([nnx.Dense(20, 8, "relu"), nnx.Dense(8, 3)], backend=backend)
    opt = nnx.Adam(1e-2)
    model.compile(opt, "softmax_cross_entropy")
    before = (snapshot(model), [snapshot(layer) for layer in model.store.layers],
              sorted(vars(opt)))
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    model.predict(x)
    after = (snapshot(model), [snapshot(layer) for layer in model.store.layers],
             sorted(vars(opt)))
    assert after == before


# -- checkpoints: validated against the architecture before anything is allocated ----------------
def _rewrite(path, out, edit_header=None, extra=None):
    import json

    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(bytes(arrays["__nnx__"]).decode())
    if edit_header:
        edit_header(header)
    arrays["__nnx__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    arrays.update(extra or {})
    np.savez(out, **arrays)


def test_checkpoint_declaring_a_huge_layer_fails_before_allocating(tmp_path):
    import tracemalloc

    model = nnx.Sequential([nnx.Dense(6, 4)], backend="numpy").compile("adam", "mse")
    model.save(tmp_path / "m.npz")

    def huge(h):
        h["model"]["net"]["config"]["layers"][0]["config"].update(in_features=12000,
                                                                   out_features=12000)

    _rewrite(tmp_path / "m.npz", tmp_path / "huge.npz", huge)
    tracemalloc.start()
    with pytest.raises(nnx.CheckpointError, match=r"expects shape \(12000, 12000\), got \(6, 4\)"):
        nnx.load(tmp_path / "huge.npz")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20 * 2**20  # the 576 MB of parameters were never allocated


def test_checkpoint_members_are_checked(tmp_path):
    model = nnx.Sequential([nnx.Dense(6, 4)], backend="numpy").compile("adam", "mse")
    model.save(tmp_path / "m.npz")
    _rewrite(tmp_path / "m.npz", tmp_path / "extra.npz", extra={"junk": np.zeros(10)})
    with pytest.raises(nnx.CheckpointError, match="members its header does not name"):
        nnx.load(tmp_path / "extra.npz")
    _rewrite(tmp_path / "m.npz", tmp_path / "obj.npz",
             extra={"w/0000": np.array(["1"] * 24).reshape(6, 4)})
    with pytest.raises(nnx.CheckpointError, match="expected a numeric array|dtype"):
        nnx.load(tmp_path / "obj.npz")
    _rewrite(tmp_path / "m.npz", tmp_path / "nan.npz",
             extra={"w/0000": np.full((6, 4), np.nan, np.float32)})
    with pytest.raises(nnx.CheckpointError, match="NaN or inf"):
        nnx.load(tmp_path / "nan.npz")

    def deep(h):
        h["model"]["net"] = {"class": "Chain", "config": {"layers": []}}
        node = h["model"]["net"]
        for _ in range(500):
            inner = {"class": "Chain", "config": {"layers": []}}
            node["config"]["layers"].append(inner)
            node = inner

    import sys

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10000)  # only for writing the crafted header
    try:
        _rewrite(tmp_path / "m.npz", tmp_path / "deep.npz", deep)
    finally:
        sys.setrecursionlimit(limit)
    with pytest.raises(nnx.CheckpointError, match="nested more than"):
        nnx.load(tmp_path / "deep.npz")

    def negative_step(h):
        h["optimizer_step"] = -1

    _rewrite(tmp_path / "m.npz", tmp_path / "step.npz", negative_step)
    with pytest.raises(nnx.CheckpointError, match="optimizer_step"):
        nnx.load(tmp_path / "step.npz")


# -- Layer.add_loss: auxiliary terms in the loss, its gradient and the history --------------------
class ActivityPenalty(nnx.Layer):
    """Identity that adds w * mean over samples of sum(x^2) through add_loss."""

    def __init__(self, w=0.1, name=None):
        super().__init__(name)
        self.w = w

    def call(self, x, training):
        n = x.shape[0]
        self.add_loss((x * x).sum() * (self.w / n), "act")

        def backprop(dy, need_dx=True):
            return dy + x * (2 * self.w / n) if need_dx else None

        return x, backprop

    def get_config(self):
        return {"w": self.w, "name": self.name}


@pytest.mark.parametrize("backend", CPU)
def test_add_loss_terms_enter_loss_gradient_and_history(backend):
    x, y = data(n=48, f=5)
    model = nnx.Sequential([nnx.Dense(5, 8, "tanh"), ActivityPenalty(0.3), nnx.Dense(8, 3)],
                           backend=backend, dtype="float64")
    model.compile(nnx.SGD(0.1), "softmax_cross_entropy")
    loss, grads = model.loss_and_grads(x, y)
    bare = nnx.Sequential([nnx.Dense(5, 8, "tanh"), nnx.Dense(8, 3)], backend=backend,
                          dtype="float64").compile(nnx.SGD(0.1), "softmax_cross_entropy")
    bare.set_weights(model.get_weights())
    h = np.tanh(x.astype(np.float64) @ model.get_weights()[0] + model.get_weights()[1])
    assert loss == pytest.approx(bare.loss_and_grads(x, y)[0] + 0.3 * (h * h).sum() / 48,
                                 rel=1e-12)
    w = model.get_weights()
    eps = 1e-6
    for idx in [(0, 0), (2, 5), (4, 7)]:
        vals = []
        for sign in (1, -1):
            w2 = [a.copy() for a in w]
            w2[0][idx] += sign * eps
            model.set_weights(w2)
            vals.append(model.loss_and_grads(x, y)[0])
        model.set_weights(w)
        assert grads[0][idx] == pytest.approx((vals[0] - vals[1]) / (2 * eps), rel=1e-6)
    hist = model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert len(hist.history["act"]) == 2 and hist.history["act"][0] > 0
    assert hist.history["loss"][0] > hist.history["act"][0]
    result = model.evaluate(x, y)
    assert result["act"] > 0 and result["loss"] > result["act"]
    with pytest.raises(ValueError, match="add_loss name"):
        with collect_loss_terms():
            ActivityPenalty(name="p").add_loss(1.0, "loss")
