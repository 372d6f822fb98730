"""Hostile and careless use of the model API (issue 14): hyperparameters, inputs, targets, weights
and arguments that used to give silent wrong results or unclear errors; float16 training with
defaults; activations at the dtype's extremes; per-position softmax cross-entropy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from nnx.kernels.reference import ACTIVATIONS

import nnx
from nnx.errors import InputError, ShapeError
from nnx.testing import gradcheck_loss

CPU = [b for b in ("numpy", "numba") if b in nnx.available_backends()]


def data(n=48, f=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, f)).astype(np.float32), rng.integers(0, k, n)


def mlp(backend="numpy", dtype="float32", **kw):
    return nnx.Sequential([nnx.Dense(6, 8, "relu"), nnx.Dense(8, 3)], backend=backend,
                          dtype=dtype, **kw)


def compiled(backend="numpy", **kw):
    return mlp(backend, **kw).compile(nnx.Adam(1e-2), "softmax_cross_entropy")


# -- optimizer hyperparameters --------------------------------------------------------------------
nan, inf = float("nan"), float("inf")


@pytest.mark.parametrize("make, match", [
    (lambda: nnx.Adam(lr=nan), "lr must be a positive number.*nan"),
    (lambda: nnx.Adam(lr=inf), "lr must be a positive number.*inf"),
    (lambda: nnx.SGD(lr=inf), "lr must be a positive number.*inf"),
    (lambda: nnx.SGD(lr=-inf), "lr must be a positive number"),
    (lambda: nnx.AdamW(lr=True), "lr must be a positive number"),
    (lambda: nnx.Adam(lr="0.1"), "lr must be a positive number"),
    (lambda: nnx.Adam(beta1=nan), "beta1 must be in"),
    (lambda: nnx.Adam(beta1=-0.1), "beta1 must be in"),
    (lambda: nnx.Adam(beta2=1.0), r"beta2 must be in \[0, 1\)"),
    (lambda: nnx.Adam(eps=0), r"eps must be in \(0, inf\)"),
    (lambda: nnx.Adam(eps=nan), "eps must be in"),
    (lambda: nnx.Adam(eps=inf), "eps must be in"),
    (lambda: nnx.Adam(weight_decay=-1e-4), "weight_decay must be in"),
    (lambda: nnx.AdamW(weight_decay=nan), "weight_decay must be in"),
    (lambda: nnx.SGD(0.1, momentum=nan), "momentum must be in"),
    (lambda: nnx.SGD(0.1, momentum=1.0), "momentum must be in"),
    (lambda: nnx.SGD(0.1, momentum=True), "momentum must be in"),
    (lambda: nnx.SGD(0.1, weight_decay=inf), "weight_decay must be in"),
    (lambda: nnx.SGD(0.1, momentum=0.9, nesterov="yes"), "nesterov must be True or False"),
    (lambda: nnx.StepDecay(nan, 10), "StepDecay: lr must be in"),
    (lambda: nnx.StepDecay(0.1, 0), "step_size must be an int >= 1"),
    (lambda: nnx.StepDecay(0.1, 2.5), "step_size must be an int >= 1"),
    (lambda: nnx.StepDecay(0.1, 10, gamma=inf), "gamma must be in"),
    (lambda: nnx.StepDecay(0.1, 10, gamma=2.0), r"gamma must be in \(0, 1\]"),
    (lambda: nnx.CosineDecay(inf, 10), "CosineDecay: lr must be in"),
    (lambda: nnx.CosineDecay(0.1, 0), "decay_steps must be an int >= 1"),
    (lambda: nnx.CosineDecay(0.1, 10, min_lr=-1), "min_lr must be in"),
    (lambda: nnx.CosineDecay(0.1, 10, min_lr=1.0), r"min_lr must be in \[0, 0.1\]"),
    (lambda: nnx.CosineDecay(0.1, 10, warmup_steps=-1), "warmup_steps must be an int >= 0"),
])
def test_hyperparameters_are_finite_and_in_range(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_numpy_numbers_are_accepted_as_hyperparameters():
    opt = nnx.Adam(np.float32(1e-3), beta1=np.float64(0.9), eps=np.float32(1e-7))
    assert isinstance(opt.lr, float) and opt.beta1 == 0.9
    assert nnx.StepDecay(0.1, np.int64(3)).step_size == 3


def test_a_schedule_returning_nan_stops_at_the_step():
    model = compiled()
    model.compile(nnx.SGD(lambda step: nan if step > 1 else 0.1), "softmax_cross_entropy")
    x, y = data(8)
    model.train_step(x, y)
    before = model.get_weights()
    with pytest.raises(ValueError, match="schedule .* returned nan at step 2"):
        model.train_step(x, y)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)  # the weights were not touched


# -- inputs: dtypes and ranges --------------------------------------------------------------------
@pytest.mark.parametrize("backend", CPU)
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.uint64, bool])
def test_integer_inputs_run_in_the_models_dtype(backend, dtype):
    model = compiled(backend)
    xi = (np.arange(24).reshape(4, 6) % 3).astype(dtype)
    out = model.predict(xi)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, model.predict(xi.astype(np.float32)))
    assert model(xi).dtype == np.float32
    y = np.array([0, 1, 2, 0])
    assert np.isfinite(model.train_step(xi, y))
    twin = compiled(backend)
    model2 = compiled(backend)
    model2.fit(xi, y, epochs=2, batch_size=2, verbose=0)
    twin.fit(xi.astype(np.float32), y, epochs=2, batch_size=2, verbose=0)
    for a, b in zip(model2.get_weights(), twin.get_weights()):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, b)
    assert model2.evaluate(xi, y) == twin.evaluate(xi.astype(np.float32), y)


def test_embedding_ids_stay_integers():
    """ids of an Embedding-first model are not cast: 2049 is not a float16 number."""
    model = nnx.Sequential([nnx.Embedding(5000, 4), nnx.SequencePool("mean")], dtype="float16")
    table = model.get_weights()[0]
    ids = np.array([[2049], [4097]])
    np.testing.assert_array_equal(model.predict(ids), table[[2049, 4097]])


@pytest.mark.parametrize("backend", CPU)
@pytest.mark.parametrize("dtype, value", [("float32", 1e39), ("float32", -3.5e38),
                                          ("float16", 7e4), ("float16", -65520.0)])
def test_inputs_beyond_the_models_dtype_are_refused(backend, dtype, value):
    model = mlp(backend, dtype).compile("adam", "softmax_cross_entropy")
    x, y = data(8)
    x = x.astype(np.float64)
    x[3, 2] = value
    match = rf"value .* at index \(3, 2\) is beyond the range of the model's dtype {dtype}"
    for call in (lambda: model.predict(x), lambda: model.fit(x, y, verbose=0),
                 lambda: model.evaluate(x, y), lambda: model.train_step(x, y),
                 lambda: model.fit(x[:4] * 0, y[:4], validation_data=(x, y), verbose=0)):
        with pytest.raises(InputError, match=match):
            call()
    assert model.optimizer.step == 0


def test_integers_beyond_float16_are_refused():
    model = mlp(dtype="float16")
    with pytest.raises(InputError, match="70000 at index"):
        model.predict(np.full((2, 6), 70000, np.int64))
    assert np.isfinite(model.predict(np.full((2, 6), 1000, np.int64))).all()


@pytest.mark.parametrize("bad, err, match", [
    (np.array([["a"] * 6] * 2), InputError, "expected a numeric array, got dtype <U1"),
    (np.zeros((2, 6), complex), InputError, "expected a numeric array, got dtype complex"),
    ([[1, 2], [3]], InputError, "expected a numeric array, could not convert"),
    (np.zeros(6), ShapeError, r"expected a batch of shape \(N, features...\)"),
])
def test_non_numeric_inputs(bad, err, match):
    with pytest.raises(err, match=match):
        mlp().predict(bad)


# -- targets ---------------------------------------------------------------------------------------
def test_probability_targets_are_validated():
    model = compiled()
    x, y = data(8)
    onehot = np.eye(3, dtype=np.float32)[y]
    with pytest.raises(InputError, match=r"probabilities >= 0 .*got -1.0 at index \(2, 1\)"):
        bad = onehot.copy()
        bad[2] = [0, -1, 2]
        model.fit(x, bad, verbose=0)
    with pytest.raises(InputError, match="each row .* must sum to 1.*row 0 sums to 5"):
        model.fit(x, 5 * onehot, verbose=0)
    with pytest.raises(InputError, match="row 4 sums to 0.5"):
        half = onehot.copy()
        half[4] *= 0.5
        model.evaluate(x, half)
    smooth = onehot * 0.9 + 0.1 / 3  # label smoothing: fine
    assert np.isfinite(model.evaluate(x, smooth)["loss"])
    assert model.evaluate(x, onehot.astype(np.int64))["loss"] == pytest.approx(
        model.evaluate(x, y)["loss"], rel=1e-6)


def test_a_negative_loss_is_impossible_now():
    """Before: negative one-hot targets gave a negative cross-entropy, silently."""
    model = compiled()
    x, y = data(8)
    with pytest.raises(InputError):
        model.evaluate(x, -np.eye(3)[y])


def test_target_dtype_and_shape_errors():
    x, y = data(8)
    bce = nnx.Sequential([nnx.Dense(6, 1)]).compile("adam", "binary_cross_entropy")
    with pytest.raises(InputError, match="targets of binary_cross_entropy must be numbers, got "
                                         "dtype <U1 .strings."):
        bce.fit(x, np.array(["1", "0"] * 4), verbose=0)
    with pytest.raises(InputError, match=r"must lie in \[0, 1\]"):
        bce.fit(x, np.full(8, 2.0), verbose=0)
    sce = compiled()
    with pytest.raises(ShapeError, match="expected one target per sample.*got a scalar 3"):
        sce.fit(x, 3, verbose=0)
    with pytest.raises(ShapeError, match="got a scalar"):
        sce.evaluate(x, np.int64(1))
    with pytest.raises(InputError, match="must be numbers, got dtype object"):
        sce.fit(x, np.array([None] * 8), verbose=0)


# -- weights ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, match", [
    (np.array([["0.5"] * 8] * 6), "must be an array of real numbers, got dtype <U3"),
    (np.zeros((6, 8), complex), "must be an array of real numbers, got dtype complex128"),
    (np.zeros((6, 8), "datetime64[s]"), "must be an array of real numbers, got dtype datetime"),
    (np.array([[None] * 8] * 6), "must be an array of real numbers, got dtype object"),
    (np.full((6, 8), np.nan), r"contains a value that is not finite in float32: nan at index "
                              r"\(0, 0\)"),
    (np.full((6, 8), -np.inf), "contains a value that is not finite in float32: -inf"),
    (np.full((6, 8), 1e39), r"contains a value that is not finite in float32: 1e\+39"),
])
def test_set_weights_refuses_non_real_and_non_finite_arrays(bad, match):
    model = mlp()
    before = model.get_weights()
    weights = model.get_weights()
    weights[2] = weights[2] + 1  # a valid change before the bad one: nothing is written
    weights[0] = bad
    with pytest.raises(InputError, match=r"set_weights: dense_\d+\.W " + match):
        model.set_weights(weights)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_set_weights_accepts_integer_and_float64_arrays():
    model = mlp()
    weights = [np.ones(w.shape, np.int64) for w in model.get_weights()]
    model.set_weights(weights)
    assert all(w.dtype == np.float32 and (w == 1).all() for w in model.get_weights())


# -- batch sizes, sample counts, integer arguments ----------------------------------------------
@pytest.mark.parametrize("call", ["fit", "evaluate", "predict"])
@pytest.mark.parametrize("bs", [0, -1, -8, 2.5, 4.0, True, "4", None])
def test_bad_batch_sizes(call, bs):
    model = compiled()
    x, y = data(8)
    args = (x,) if call == "predict" else (x, y)
    kw = {"verbose": 0} if call == "fit" else {}
    with pytest.raises(ValueError, match=rf"{call}: batch_size must be a positive int, got"):
        getattr(model, call)(*args, batch_size=bs, **kw)


def test_numpy_integers_are_accepted_and_bools_refused_everywhere():
    model = compiled()
    x, y = data(8)
    hist = model.fit(x, y, epochs=np.int64(2), batch_size=np.int64(4), initial_epoch=np.int32(1),
                     check_every=np.uint8(1), verbose=0)
    assert hist.epochs == [1]
    model.evaluate(x, y, batch_size=np.int16(3))
    model.predict(x, batch_size=np.uint32(5))
    for kw in ({"epochs": True}, {"batch_size": True}, {"initial_epoch": False},
               {"check_every": True}, {"epochs": 2.0}, {"shuffle": 1}, {"verbose": -1}):
        with pytest.raises(ValueError, match=f"{next(iter(kw))} must be"):
            model.fit(x, y, **{"verbose": 0, **kw})


@pytest.mark.parametrize("call", ["fit", "evaluate", "train_step", "loss_and_grads"])
def test_zero_samples_are_an_error(call):
    model = compiled()
    x, y = data(8)
    kw = {"verbose": 0} if call == "fit" else {}
    with pytest.raises(InputError, match=r"x: no samples \(shape \(0, 6\)\)"):
        getattr(model, call)(x[:0], y[:0], **kw)
    assert model.optimizer.step == 0
    with pytest.raises(InputError, match="validation_data: no samples"):
        model.fit(x, y, validation_data=(x[:0], y[:0]), verbose=0)
    assert model.predict(x[:0]).shape == (0, 3)  # predicting nothing is fine


def test_an_empty_share_under_a_hook_that_takes_empty_steps_is_allowed():
    class Takes(nnx.StepHooks):
        def __init__(self):
            self.empty = 0

        def empty_step(self, model):
            self.empty += 1

    model = compiled()
    hook = model.add_hooks(Takes())
    x, y = data(8)
    assert model.train_step(x[:0], y[:0]) == 0.0
    assert hook.empty == 1


def test_validation_data_and_seed_messages():
    model = compiled()
    x, y = data(8)
    with pytest.raises(ValueError, match=r"validation_data must be a tuple \(x_val, y_val\), "
                                         r"got a tuple of 1 item"):
        model.fit(x, y, validation_data=(x,), verbose=0)
    with pytest.raises(ValueError, match="got a ndarray"):
        model.fit(x, y, validation_data=x, verbose=0)
    for seed in (-1, "a", 1.5, True, 2**64):
        with pytest.raises(ValueError, match=r"Sequential: seed must be None or an int in "
                                             r"\[0, 2\*\*64\), got"):
            mlp(seed=seed)
        with pytest.raises(ValueError, match="Model: seed must be"):
            nnx.Model(nnx.Dense(2, 2), seed=seed)
    assert mlp(seed=np.int64(3)).seed == 3 and mlp(seed=None).seed is None


def test_early_stopping_without_validation_data_fails_at_fit_start():
    model = compiled()
    x, y = data(8)
    with pytest.raises(ValueError, match="EarlyStopping: 'val_loss' needs validation data.*"
                                         "validation_data="):
        model.fit(x, y, epochs=3, callbacks=[nnx.EarlyStopping()], verbose=0)
    assert model.optimizer.step == 0  # before any training
    plain = nnx.Sequential([nnx.Dense(6, 1)]).compile("adam", "mse")
    with pytest.raises(ValueError, match="needs the 'accuracy' metric"):
        plain.fit(x, y[:, None], callbacks=[nnx.EarlyStopping("accuracy")], verbose=0)
    with pytest.raises(ValueError, match="'bogus' is not in this epoch's logs"):
        model.fit(x, y, callbacks=[nnx.EarlyStopping("bogus")], verbose=0)
    for kw, match in (({"patience": 1.5}, "patience must be"), ({"min_delta": nan}, "min_delta"),
                      ({"mode": "up"}, "mode must be"), ({"monitor": ""}, "monitor must be")):
        with pytest.raises(ValueError, match=match):
            nnx.EarlyStopping(**kw)


# -- float16 with defaults ----------------------------------------------------------------------
@pytest.mark.parametrize("backend", CPU)
@pytest.mark.parametrize("opt", ["adam", "adamw", nnx.SGD(0.05, momentum=0.9)])
def test_float16_trains_with_default_optimizers(backend, opt):
    x, y = data(64)
    x[:, 0] = 0  # a column with zero gradient: Adam's 0 / (0 + eps) was 0/0 with eps -> 0
    model = mlp(backend, "float16").compile(opt, "softmax_cross_entropy")
    hist = model.fit(x, y, epochs=4, batch_size=16, verbose=0)
    assert all(np.isfinite(w).all() and w.dtype == np.float16 for w in model.get_weights())
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    state = model.optimizer.state
    assert all(v.dtype == np.float32 for v in state.values())


def test_float16_optimizer_state_round_trips(tmp_path):
    x, y = data(32)
    model = mlp(dtype="float16").compile("adam", "softmax_cross_entropy")
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    model.save(tmp_path / "m.npz")
    again = nnx.load(tmp_path / "m.npz")
    for k, v in model.optimizer.state.items():
        assert again.optimizer.state[k].dtype == np.float32
        np.testing.assert_array_equal(again.optimizer.state[k], v)


# -- activations at the dtype's extremes ---------------------------------------------------------
def extremes(dtype):
    fmax = float(np.finfo(dtype).max)
    big = 1e4 if dtype == "float16" else 1e30
    return np.array([[-fmax, -big, -30, -20, -1, 0, 1, 20, 30, big, fmax],
                     [fmax] * 11, [-fmax] * 11], dtype=dtype)


CASES = [(b, d) for b in CPU for d in ("float32", "float64")] + [("numpy", "float16")]


@pytest.mark.parametrize("backend, dtype", CASES)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_activations_are_finite_up_to_the_dtype_max(backend, dtype, act):
    ops = nnx.get_ops(backend, dtype=dtype)
    x = extremes(dtype)
    dy = np.ones_like(x)
    y, saved = ops.activation_forward(x, act)
    dx = ops.activation_backward(dy, saved, act)
    assert np.isfinite(y).all() and np.isfinite(dx).all(), (y, dx)
    if act != "identity":
        y2 = getattr(ops, act)(x)
        dx2 = getattr(ops, "backprop_" + act)(dy, x if act == "gelu" else y2)
        assert np.isfinite(y2).all() and np.isfinite(dx2).all()
    # through a Dense with an identity W: z = x exactly. One row and dy = 0.25, so that the
    # weight gradient x * dz (up to max * 0.25 * 1.13 for gelu) is itself representable.
    n = x.shape[1]
    model = nnx.Sequential([nnx.Dense(n, n, activation=act)], backend=backend, dtype=dtype)
    model.set_weights([np.eye(n), np.zeros(n)])
    layer = model.layers[0]
    out, backprop = layer.begin_update(ops.asarray(x[:1]), training=True)
    din = backprop(ops.asarray(dy[:1] * 0.25), need_dx=True)
    assert np.isfinite(ops.to_host(out)).all() and np.isfinite(ops.to_host(din)).all()
    assert np.isfinite(ops.to_host(layer.grads["b"])).all()


def test_gelu_derivative_limits():
    from nnx.kernels.reference import Ops

    for dtype in ("float16", "float32", "float64"):
        ops = Ops(dtype=dtype)
        x = extremes(dtype)[0]
        d = ops.backprop_gelu(np.ones_like(x), x)
        np.testing.assert_array_equal(d[x >= 20], 1)
        np.testing.assert_array_equal(d[x <= -20], 0)
        np.testing.assert_array_equal(ops.gelu(x)[x >= 20], x[x >= 20])
        xs = np.linspace(-19.9, 19.9, 397).astype(dtype)  # below the clip: the plain formula
        k = math.sqrt(2 / math.pi)  # a Python float, as in the kernel (keeps the dtype)
        t = np.tanh(k * (xs + 0.044715 * xs * xs * xs))
        np.testing.assert_array_equal(ops.gelu(xs), 0.5 * xs * (1 + t))
        dt = (1 - t * t) * k * (1 + 3 * 0.044715 * xs * xs)
        np.testing.assert_array_equal(ops.backprop_gelu(np.ones_like(xs), xs),
                                      1 * (0.5 * (1 + t) + 0.5 * xs * dt))


@pytest.mark.skipif("numba" not in CPU, reason="numba not available")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numba_gelu_kernels_are_finite_and_match_the_reference(dtype):
    from nnx.kernels.numba_common import GELU
    from nnx.kernels.numba_dense import _act_grad_ser, _act_ser
    from nnx.kernels.reference import Ops

    x = np.concatenate([extremes(dtype).ravel(), np.linspace(-25, 25, 101, dtype=dtype),
                        np.array([np.nan], dtype)])
    y, dx = np.empty_like(x), np.empty_like(x)
    _act_ser(x, y, GELU)
    _act_grad_ser(np.ones_like(x), x, GELU, dx)
    ref = Ops(dtype=dtype)
    assert np.isfinite(y[:-1]).all() and np.isfinite(dx[:-1]).all()
    assert np.isnan(y[-1]) and np.isnan(dx[-1])  # NaN still propagates
    np.testing.assert_allclose(y, ref.gelu(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, ref.backprop_gelu(np.ones_like(x), x), rtol=1e-5, atol=1e-6)


# -- per-position softmax cross-entropy ------------------------------------------------------------
def seq_data(n=6, t=5, c=4, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n, t, c))
    labels = rng.integers(0, c, (n, t))
    return logits, labels, np.eye(c)[labels]


@pytest.mark.parametrize("backend", CPU)
def test_sequence_cross_entropy_is_the_mean_over_positions(backend):
    logits, labels, onehot = seq_data()
    loss = nnx.losses.get("softmax_cross_entropy")
    ops = nnx.get_ops(backend, dtype="float64")
    flat, _ = loss(ops, ops.asarray(logits.reshape(-1, 4)), ops.asarray(labels.reshape(-1)))
    for targets in (labels, onehot):
        value, grad = loss(ops, ops.asarray(logits), ops.asarray(targets))
        assert float(value) == pytest.approx(float(flat), rel=1e-12)
        assert grad.shape == logits.shape
    hits = int((logits.argmax(-1) == labels).sum())
    assert float(loss.correct(ops, ops.asarray(logits), ops.asarray(labels))) == \
        pytest.approx(hits / 5)


@pytest.mark.parametrize("backend", CPU)
@pytest.mark.parametrize("form", ["labels", "onehot"])
def test_sequence_cross_entropy_gradcheck(backend, form):
    logits, labels, onehot = seq_data(n=3, t=4, c=3)
    gradcheck_loss("softmax_cross_entropy", logits, labels if form == "labels" else onehot,
                   backend=backend)


@pytest.mark.parametrize("backend", CPU)
def test_sequence_model_trains_with_per_position_targets(backend):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 5, 4)).astype(np.float32)
    y = (x[..., 0] > 0).astype(np.int64)  # per-position labels (N, T)
    model = nnx.Sequential([nnx.Dense(4, 8, "tanh"), nnx.Dense(8, 2)], backend=backend)
    model.compile(nnx.Adam(0.05), "softmax_cross_entropy", ["accuracy"])
    hist = model.fit(x, y, epochs=15, batch_size=8, verbose=0)
    acc = hist.history["accuracy"][-1]
    assert 0.9 < acc <= 1.0  # the fraction of positions right
    ev = model.evaluate(x, np.eye(2, dtype=np.float32)[y])
    assert ev["accuracy"] == pytest.approx(
        float((model.predict(x).argmax(-1) == y).mean()))
    with pytest.raises(InputError, match=r"labels must be integers \(N, 5\)"):
        model.fit(x, y.astype(np.float32), verbose=0)
    with pytest.raises(InputError, match="label 2 out of range"):
        model.fit(x, y * 2, verbose=0)
    with pytest.raises(ShapeError, match=r"targets must have shape \(N, 5\) or \(N, 5, 2\)"):
        model.fit(x, y[:, :3], verbose=0)
