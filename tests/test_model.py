"""Model API end to end: fit/evaluate/predict, low-level steps, weights, checkpoints, callbacks,
and the errors bad input gets."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

import nnx
from nnx.errors import (
    CheckpointError,
    InputError,
    ShapeError,
    TrainingDivergedError,
    UnknownNameError,
)


def blobs(rng, n=240, d=6, k=3):
    centers = rng.standard_normal((k, d)) * 3
    y = rng.integers(0, k, n)
    x = centers[y] + rng.standard_normal((n, d))
    return x.astype(np.float32), y


def mlp(backend="numpy", seed=0, dropout=0.0, **kw):
    layers = [nnx.Dense(6, 16, "relu")]
    if dropout:
        layers.append(nnx.Dropout(dropout))
    layers.append(nnx.Dense(16, 3))
    return nnx.Sequential(layers, backend=backend, seed=seed, **kw)


def test_fit_learns_and_reports(backend, rng):
    x, y = blobs(rng)
    model = mlp(backend).compile(nnx.Adam(1e-2), "softmax_cross_entropy", ["accuracy"])
    hist = model.fit(x, y, epochs=8, batch_size=32, validation_data=(x, y), verbose=0)
    h = hist.history
    assert h["loss"][-1] < h["loss"][0] * 0.5
    assert h["val_accuracy"][-1] > 0.9
    assert set(h) >= {"loss", "accuracy", "time", "samples_per_s", "val_loss", "val_accuracy"}
    ev = model.evaluate(x, y)
    assert ev["accuracy"] == pytest.approx(h["val_accuracy"][-1])
    probs = model.predict(x[:5])
    assert isinstance(probs, np.ndarray) and probs.shape == (5, 3)


def test_same_seed_same_backend_identical_weights(backend, rng):
    x, y = blobs(rng)
    runs = []
    for _ in range(2):
        m = mlp(backend, seed=7, dropout=0.2).compile("adam", "softmax_cross_entropy")
        m.fit(x, y, epochs=2, batch_size=16, verbose=0)
        runs.append(m.get_weights())
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_initial_weights_identical_across_backends():
    ws = [mlp(b, seed=3).get_weights() for b in nnx.available_backends()]
    for other in ws[1:]:
        for a, b in zip(ws[0], other):
            np.testing.assert_array_equal(a, b)


def test_backends_train_alike(rng):
    """Without dropout, every backend follows the numpy trajectory to float32 tolerance."""
    x, y = blobs(rng)
    finals = {}
    for b in nnx.available_backends():
        m = mlp(b).compile(nnx.Adam(1e-2), "softmax_cross_entropy")
        m.fit(x, y, epochs=2, batch_size=32, shuffle=False, verbose=0)
        finals[b] = m.get_weights()
    for b, ws in finals.items():
        for a, c in zip(finals["numpy"], ws):
            np.testing.assert_allclose(c, a, rtol=1e-3, atol=1e-4, err_msg=b)


def test_train_step_and_loss_and_grads(backend, rng):
    x, y = blobs(rng, n=32)
    model = mlp(backend).compile(nnx.SGD(0.01), "softmax_cross_entropy")
    loss0, grads = model.loss_and_grads(x, y)
    weights = model.get_weights()
    assert [g.shape for g in grads] == [w.shape for w in weights]
    assert all(isinstance(g, np.ndarray) for g in grads)
    loss1 = model.train_step(x, y)
    assert loss1 == pytest.approx(loss0, rel=1e-5)
    for w0, g, w1 in zip(weights, grads, model.get_weights()):  # plain SGD: w1 = w0 - lr g
        np.testing.assert_allclose(w1, w0 - 0.01 * g, rtol=1e-4, atol=1e-6)
    assert model.train_step(x, y) < loss0


def test_weights_order_and_set_weights_errors():
    model = mlp()
    shapes = [w.shape for w in model.get_weights()]
    assert shapes == [(6, 16), (16,), (16, 3), (3,)]  # W then b per Dense
    with pytest.raises(ValueError, match="expected 4 arrays, got 3"):
        model.set_weights(model.get_weights()[:3])
    bad = model.get_weights()
    bad[2] = np.zeros((16, 4))
    with pytest.raises(ShapeError, match=r"dense_\d+\.W expects shape \(16, 3\), got \(16, 4\)"):
        model.set_weights(bad)


def test_bad_input_errors(rng):
    x, y = blobs(rng, n=20)
    model = mlp().compile("adam", "softmax_cross_entropy")
    with pytest.raises(ShapeError, match=r"Dense 'dense_\d+'.*in_features=6.*\(20, 5\)"):
        model.fit(x[:, :5], y, verbose=0)
    with pytest.raises(InputError, match="label 3 out of range for 3 classes"):
        model.fit(x, np.where(y == 0, 3, y), verbose=0)
    with pytest.raises(InputError, match="label -1 out of range"):
        model.fit(x, y - 1, verbose=0)
    with pytest.raises(InputError, match="must be integers.*float"):
        model.fit(x, y.astype(np.float32), verbose=0)
    bad = x.copy()
    bad[4, 2] = np.nan
    with pytest.raises(InputError, match=r"x contains NaN or inf \(first at index \(4, 2\)\)"):
        model.fit(bad, y, verbose=0)
    with pytest.raises(ShapeError, match="x has 20 samples but y has 19"):
        model.fit(x, y[:-1], verbose=0)
    with pytest.raises(ShapeError, match=r"\(N,\) or \(N, 3\)"):
        model.fit(x, np.eye(4)[y], verbose=0)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        model.fit(x, y, batch_size=0)


def test_unknown_names():
    with pytest.raises(UnknownNameError, match="unknown activation of Dense .*'relu6'.*gelu"):
        nnx.Dense(3, 2, activation="relu6")
    with pytest.raises(UnknownNameError, match="unknown loss 'hinge'"):
        mlp().compile("adam", "hinge")
    with pytest.raises(UnknownNameError, match="unknown optimizer 'adamax'.*adam"):
        mlp().compile("adamax", "mse")
    with pytest.raises(UnknownNameError, match="unknown initializer 'uniformish'"):
        nnx.Dense(3, 2, kernel_initializer="uniformish")
    with pytest.raises(ValueError, match="in_features must be a positive int, got 0"):
        nnx.Dense(0, 2)
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\), got 1.5"):
        nnx.Dropout(1.5)


def test_divergence_stops_with_clear_message(rng):
    x, y = blobs(rng, n=64)
    model = mlp().compile(nnx.SGD(1e6), "mse", [])
    with pytest.raises(TrainingDivergedError, match="loss became (nan|inf).*learning rate"):
        model.fit(x * 1e3, np.eye(3)[y] * 1e3, epochs=5, batch_size=8, verbose=0)


def test_compile_required():
    with pytest.raises(RuntimeError, match="compile"):
        mlp().fit(np.zeros((2, 6)), np.zeros(2, int))


# -- checkpoints ------------------------------------------------------------------------------


@pytest.mark.parametrize("target", nnx.available_backends())
def test_save_load_across_backends_resumes_identically(tmp_path, rng, target):
    x, y = blobs(rng)
    src = nnx.available_backends()[-1]
    model = mlp(src, dropout=0.0, dtype="float32").compile(
        nnx.Adam(1e-2), "softmax_cross_entropy", ["accuracy"]
    )
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    path = tmp_path / "m.npz"
    model.save(path)
    loaded = nnx.load(path, backend=target)
    assert loaded.backend == target and loaded.optimizer.step == model.optimizer.step
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    # Optimizer state came along: one more identical step gives the same weights.
    model.train_step(x[:32], y[:32])
    loaded.train_step(x[:32], y[:32])
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_save_is_atomic(tmp_path, rng, monkeypatch):
    model = mlp().compile("adam", "softmax_cross_entropy")
    path = tmp_path / "m.npz"
    model.save(path)
    before = path.read_bytes()

    def crash(*a, **k):
        raise OSError("disk full (simulated)")

    model.set_weights([w + 1 for w in model.get_weights()])
    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError, match="simulated"):
        model.save(path)
    assert path.read_bytes() == before  # the previous checkpoint is intact
    assert os.listdir(tmp_path) == ["m.npz"]  # no temporary left behind


def test_corrupt_and_truncated_checkpoints(tmp_path):
    model = mlp().compile("adam", "softmax_cross_entropy")
    path = tmp_path / "m.npz"
    model.save(path)
    data = path.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        nnx.load(tmp_path / "trunc.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        nnx.load(tmp_path / "junk.npz")
    buf = io.BytesIO()
    np.savez(buf, a=np.zeros(3))
    (tmp_path / "other.npz").write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="not an nnx checkpoint"):
        nnx.load(tmp_path / "other.npz")


def _rewrite_header(path, out, edit):
    import json

    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(bytes(arrays["__nnx__"]).decode())
    edit(header)
    arrays["__nnx__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    np.savez(out, **arrays)


def test_untrusted_checkpoint_cannot_name_arbitrary_classes(tmp_path):
    model = mlp().compile("adam", "softmax_cross_entropy")
    path = tmp_path / "m.npz"
    model.save(path)

    def evil(h):
        h["model"]["net"]["config"]["layers"][0]["class"] = "os.system"

    _rewrite_header(path, tmp_path / "evil.npz", evil)
    with pytest.raises(CheckpointError, match="unknown layer class 'os.system'"):
        nnx.load(tmp_path / "evil.npz")

    def wrong_shape(h):
        h["model"]["net"]["config"]["layers"][0]["config"]["out_features"] = 17

    _rewrite_header(path, tmp_path / "shape.npz", wrong_shape)
    with pytest.raises(CheckpointError, match=r"expects shape \(6, 17\), got \(6, 16\)"):
        nnx.load(tmp_path / "shape.npz")


# -- callbacks --------------------------------------------------------------------------------


def test_early_stopping_restores_best(rng):
    x, y = blobs(rng)
    xv, yv = blobs(np.random.default_rng(99))
    model = mlp().compile(nnx.SGD(0.05), "softmax_cross_entropy", ["accuracy"])
    stopper = nnx.EarlyStopping(monitor="val_loss", patience=1, min_delta=10.0)
    hist = model.fit(x, y, epochs=20, validation_data=(xv, yv), callbacks=[stopper], verbose=0)
    assert len(hist.history["loss"]) == 2 and stopper.stopped_epoch == 1
    assert model.evaluate(xv, yv)["loss"] == pytest.approx(hist.history["val_loss"][0], rel=1e-5)


def test_model_checkpoint_best_only(tmp_path, rng):
    x, y = blobs(rng)
    model = mlp().compile(nnx.Adam(1e-2), "softmax_cross_entropy")
    cb = nnx.ModelCheckpoint(tmp_path / "ep{epoch}.npz", monitor="loss", save_best_only=True)
    model.fit(x, y, epochs=3, callbacks=[cb], verbose=0)
    assert cb.saved == [str(tmp_path / f"ep{i}.npz") for i in (1, 2, 3)]  # loss falls each epoch
    assert nnx.load(cb.saved[-1]).optimizer.step == model.optimizer.step


def test_progress_bar_prints_epoch_lines(rng, capsys):
    x, y = blobs(rng, n=64)
    mlp().compile("adam", "softmax_cross_entropy", ["accuracy"]).fit(x, y, epochs=2, verbose=1)
    out = capsys.readouterr().out
    assert "epoch 1/2" in out and "epoch 2/2" in out and "samples/s" in out and "accuracy" in out


def test_summary_lists_layers_and_params():
    text = mlp().summary(print_fn=None)
    assert "Dense" in text and "Total params: 163" in text and "(None, 16)" in text


def test_binary_and_regression_tasks(backend, rng):
    x = rng.standard_normal((128, 6)).astype(np.float32)
    t = (x[:, :1] + x[:, 1:2] > 0).astype(np.float32)
    model = nnx.Sequential([nnx.Dense(6, 8, "tanh"), nnx.Dense(8, 1)], backend=backend)
    model.compile(nnx.Adam(0.05), "binary_cross_entropy", ["accuracy"])
    hist = model.fit(x, t[:, 0], epochs=15, batch_size=32, verbose=0)
    assert hist.history["accuracy"][-1] > 0.9
    reg = nnx.Sequential([nnx.Dense(6, 1)], backend=backend).compile(nnx.Adam(0.05), "mse", [])
    target = x @ np.arange(6, dtype=np.float32)[:, None]
    hist = reg.fit(x, target, epochs=30, batch_size=32, verbose=0)
    assert hist.history["loss"][-1] < 0.05 * hist.history["loss"][0]


def test_repeated_fit_calls_shuffle_differently(rng):
    """fit(epochs=1) twice equals fit(epochs=2): the shuffle generator persists across calls."""
    x, y = blobs(rng, n=64)
    a = mlp().compile(nnx.SGD(0.01), "softmax_cross_entropy")
    a.fit(x, y, epochs=1, batch_size=8, verbose=0)
    a.fit(x, y, epochs=1, batch_size=8, verbose=0)
    b = mlp().compile(nnx.SGD(0.01), "softmax_cross_entropy")
    b.fit(x, y, epochs=2, batch_size=8, verbose=0)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)


def test_resumed_fit_continues_the_shuffle_order(tmp_path, rng):
    x, y = blobs(rng, n=64)
    model = mlp().compile(nnx.Adam(0.01), "softmax_cross_entropy")
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    model.save(tmp_path / "m.npz")
    loaded = nnx.load(tmp_path / "m.npz")
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    loaded.fit(x, y, epochs=1, batch_size=8, verbose=0)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_backward_skips_input_gradient_before_first_trainable_layer(monkeypatch, rng):
    """Flatten first: the first Dense is asked for no dx (the unused GEMM is skipped)."""
    model = nnx.Sequential([nnx.Flatten(), nnx.Dense(6, 4, "relu"), nnx.Dense(4, 3)])
    model.compile("sgd", "softmax_cross_entropy")
    calls = []
    orig = type(model.ops).dense_backward

    def spy(self, dy, x, W, saved, activation="identity", need_dx=True, dW_out=None, db_out=None):
        calls.append(need_dx)
        return orig(self, dy, x, W, saved, activation, need_dx, dW_out, db_out)

    monkeypatch.setattr(type(model.ops), "dense_backward", spy)
    model.train_step(rng.standard_normal((5, 2, 3)), rng.integers(0, 3, 5))
    assert calls == [True, False]
