"""Losses with Keras semantics (issue 15, item 1-2): the Keras names take probabilities, the
fused from-logits path when the output ends in softmax / sigmoid, clipped probabilities
otherwise, nll and log_softmax, per-position targets and weights; gradients against float64
central differences, values against PyTorch where it is installed."""

from __future__ import annotations

import numpy as np
import pytest

import nnx
from nnx import losses
from nnx.errors import InputError, ShapeError
from nnx.testing import gradcheck, gradcheck_loss

CPU = [b for b in ("numpy", "numba") if b in nnx.available_backends()]


def _fd(loss, ops, out, t, w=None, eps=1e-6):
    """Central differences of the (weighted) loss w.r.t. its output (float64)."""
    num = np.zeros_like(out)
    for i in np.ndindex(out.shape):
        a, b = out.copy(), out.copy()
        a[i] += eps
        b[i] -= eps
        fa = ops.to_float(loss(ops, ops.asarray(a), t, w)[0])
        fb = ops.to_float(loss(ops, ops.asarray(b), t, w)[0])
        num[i] = (fa - fb) / (2 * eps)
    return num


def _probs(rng, shape):
    p = rng.random(shape) + 0.05
    return p / p.sum(-1, keepdims=True)


# -- names and objects ------------------------------------------------------------------------
def test_keras_names_take_probabilities_and_nnx_names_take_logits():
    takes = {name: losses.get(name).takes for name in losses.LOSSES}
    assert takes["categorical_crossentropy"] == "probabilities"
    assert takes["sparse_categorical_crossentropy"] == "probabilities"
    assert takes["binary_crossentropy"] == "probabilities"
    assert takes["softmax_cross_entropy"] == takes["cross_entropy"] == "logits"
    assert takes["binary_cross_entropy"] == takes["bce"] == takes["sigmoid_cross_entropy"] \
        == "logits"
    assert takes["nll"] == "log-probabilities"
    assert losses.get("sigmoid_cross_entropy").name == "sigmoid_cross_entropy"
    assert isinstance(losses.get("binary_cross_entropy"), losses.SigmoidCrossEntropy)
    assert losses.CategoricalCrossentropy().from_logits is False
    assert losses.CategoricalCrossentropy(from_logits=True).takes == "logits"
    assert losses.SparseCategoricalCrossentropy().name == "sparse_categorical_crossentropy"
    assert losses.BinaryCrossentropy(from_logits=True).logits_loss() is None
    with pytest.raises(ValueError, match="from_logits must be True or False"):
        losses.CategoricalCrossentropy(from_logits="yes")


@pytest.mark.parametrize("loss", [losses.CategoricalCrossentropy(from_logits=True),
                                  losses.BinaryCrossentropy(), "nll", "mse", "bce"])
def test_get_config_round_trips(loss):
    loss = losses.get(loss)
    again = losses.get(loss.get_config())
    assert type(again) is type(loss) and again.name == loss.name
    assert again.from_logits == loss.from_logits
    with pytest.raises(nnx.UnknownNameError, match="unknown loss class"):
        losses.get({"class": "Loss", "config": {}})


def test_probability_loss_values_match_the_formulas(rng):
    ops = nnx.get_ops("numpy", dtype="float64")
    p = _probs(rng, (5, 4))
    y = rng.integers(0, 4, 5)
    want = -np.log(p[np.arange(5), y]).mean()
    for name in ("categorical_crossentropy", "sparse_categorical_crossentropy"):
        got = ops.to_float(losses.get(name)(ops, ops.asarray(p), ops.asarray(y))[0])
        assert got == pytest.approx(want, rel=1e-12)
    # Keras normalizes each row first: scaling the probabilities changes nothing
    got = losses.get("categorical_crossentropy")(ops, ops.asarray(3 * p), np.eye(4)[y])[0]
    assert ops.to_float(got) == pytest.approx(want, rel=1e-12)
    # and clips to [1e-7, 1 - 1e-7]: a zero probability costs -log(1e-7), not inf
    zero = np.eye(4)[(y + 1) % 4]
    got = losses.get("categorical_crossentropy")(ops, ops.asarray(zero), ops.asarray(y))[0]
    assert ops.to_float(got) == pytest.approx(-np.log(1e-7), rel=1e-6)
    q = rng.random((5, 3)) * 0.9 + 0.05
    t = (rng.random((5, 3)) > 0.5).astype(float)
    want = -(t * np.log(q) + (1 - t) * np.log(1 - q)).mean()
    got = losses.get("binary_crossentropy")(ops, ops.asarray(q), ops.asarray(t))[0]
    assert ops.to_float(got) == pytest.approx(want, rel=1e-12)
    got = losses.get("binary_crossentropy")(ops, ops.asarray(np.ones((2, 1))), np.zeros((2, 1)))
    assert ops.to_float(got[0]) == pytest.approx(-np.log(1e-7), rel=1e-6)


def test_losses_against_torch(rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    ops = nnx.get_ops("numpy", dtype="float64")
    z = rng.standard_normal((6, 5))
    y = rng.integers(0, 5, 6)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    want = F.nll_loss(torch.tensor(logp), torch.tensor(y)).item()
    assert ops.to_float(losses.get("nll")(ops, logp, y)[0]) == pytest.approx(want, rel=1e-12)
    want = F.cross_entropy(torch.tensor(z), torch.tensor(y)).item()
    got = losses.get("sparse_categorical_crossentropy")(ops, np.exp(logp), y)[0]
    assert ops.to_float(got) == pytest.approx(want, rel=1e-10)
    p = rng.random((6, 2)) * 0.9 + 0.05
    t = rng.random((6, 2))
    want = F.binary_cross_entropy(torch.tensor(p), torch.tensor(t)).item()
    got = losses.get("binary_crossentropy")(ops, p, t)[0]
    assert ops.to_float(got) == pytest.approx(want, rel=1e-12)
    # per-timestep: (N, T, C) with (N, T) labels is PyTorch's (N, C, T) cross-entropy
    zt = rng.standard_normal((3, 4, 5))
    yt = rng.integers(0, 5, (3, 4))
    want = F.cross_entropy(torch.tensor(zt).permute(0, 2, 1), torch.tensor(yt)).item()
    for name, out in (("softmax_cross_entropy", zt),
                      ("nll", zt - np.log(np.exp(zt).sum(-1, keepdims=True)))):
        assert ops.to_float(losses.get(name)(ops, out, yt)[0]) == pytest.approx(want, rel=1e-10)


# -- gradients --------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", CPU)
@pytest.mark.parametrize("name", ["categorical_crossentropy", "sparse_categorical_crossentropy",
                                  "nll", "binary_crossentropy"])
def test_probability_loss_gradients(backend, rng, name):
    if name == "binary_crossentropy":
        out, t = rng.random((4, 3)) * 0.9 + 0.05, rng.random((4, 3))
    else:
        out, t = _probs(rng, (4, 5)), rng.integers(0, 5, 4)
        out = np.log(out) if name == "nll" else out * (1.7 if name[0] == "c" else 1.0)
    gradcheck_loss(name, out, t, backend)


@pytest.mark.parametrize("name", ["categorical_crossentropy", "sparse_categorical_crossentropy",
                                  "softmax_cross_entropy", "nll"])
@pytest.mark.parametrize("weights", [None, "per_sample", "per_position"])
def test_sequence_targets_and_weights_gradients(rng, name, weights):
    """(N, T, C) outputs with (N, T) labels (and (N, T, C) one-hot for the categorical loss),
    weighted per sample or per timestep: value and gradient against central differences."""
    ops = nnx.get_ops("numpy", dtype="float64")
    loss = losses.get(name)
    p = _probs(rng, (3, 4, 5))
    out = {"nll": np.log(p), "softmax_cross_entropy": rng.standard_normal((3, 4, 5))}.get(name, p)
    labels = rng.integers(0, 5, (3, 4))
    w = {"per_sample": rng.random(3), "per_position": (rng.random((3, 4)) > 0.3) * 1.0}.get(weights)
    targets = [labels] + ([np.eye(5)[labels]] if name == "categorical_crossentropy" else [])
    for t in targets:
        value, grad = loss(ops, ops.asarray(out), t, w)
        np.testing.assert_allclose(grad, _fd(loss, ops, out, t, w), atol=1e-7, rtol=1e-5)
        per = -np.log(p if name != "softmax_cross_entropy" else
                      np.exp(out) / np.exp(out).sum(-1, keepdims=True))
        per = np.take_along_axis(per, labels[..., None], -1)[..., 0]
        wb = np.ones((3, 4)) if w is None else np.broadcast_to(w.reshape(3, -1), (3, 4))
        assert float(value) == pytest.approx((per * wb).sum() / wb.sum(), rel=1e-9)


@pytest.mark.parametrize("name", ["binary_crossentropy", "binary_cross_entropy", "mse"])
def test_weighted_elementwise_losses_gradients(rng, name):
    ops = nnx.get_ops("numpy", dtype="float64")
    loss = losses.get(name)
    out = rng.random((4, 3, 2)) * 0.9 + 0.05
    t = (rng.random((4, 3, 2)) > 0.5) * 1.0
    for w in (rng.random(4), rng.random((4, 3))):
        value, grad = loss(ops, out, t, w)
        np.testing.assert_allclose(grad, _fd(loss, ops, out, t, w), atol=1e-8, rtol=1e-6)
    mask = np.zeros((4, 3))
    mask[0, 0] = 1
    value, _ = loss(ops, out, t, mask)  # a mask keeps one position: its loss alone
    assert float(value) == pytest.approx(float(loss(ops, out[:1, :1], t[:1, :1])[0]))


def test_all_zero_weights_give_zero_loss_and_gradient(rng):
    ops = nnx.get_ops("numpy", dtype="float64")
    loss, total = losses.get("softmax_cross_entropy"), None
    value, grad, total = loss.weighted(ops, rng.standard_normal((3, 4)), np.zeros(3, np.int64),
                                       np.zeros(3))
    assert float(value) == 0 and float(total) == 0 and not grad.any()


def test_weights_of_the_wrong_shape_are_refused(rng):
    ops = nnx.get_ops("numpy", dtype="float64")
    with pytest.raises(ShapeError, match=r"sample_weight of shape \(3,\) or \(3, 4\), got "
                                         r"shape \(4,\)"):
        losses.get("nll")(ops, np.zeros((3, 4, 5)), np.zeros((3, 4), np.int64), np.ones(4))


# -- log_softmax ------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", CPU)
def test_log_softmax_activation_gradcheck_and_stability(backend, rng):
    x = rng.standard_normal((5, 6)) * 3
    gradcheck(nnx.LogSoftmax(), x, backend)
    gradcheck(nnx.Dense(6, 4, "log_softmax"), x, backend)
    ops = nnx.get_ops(backend, dtype="float32")
    big = ops.asarray(np.array([[1e30, 0.0, -1e30], [80.0, 0.0, -80.0]], np.float32))
    y, saved = ops.activation_forward(big, "log_softmax")
    y = ops.to_host(y)
    assert np.isfinite(y).all() and y[0, 0] == 0 and y[1, 1] == pytest.approx(-80, rel=1e-6)
    dx = ops.to_host(ops.activation_backward(ops.asarray(np.ones((2, 3), np.float32)), saved,
                                             "log_softmax"))
    assert np.isfinite(dx).all()
    np.testing.assert_allclose(dx[0], [-2.0, 1.0, 1.0])  # dy - p * sum(dy), p = (1, 0, 0)


def test_log_softmax_backends_agree(rng):
    nnx.testing.assert_backends_agree(nnx.Dense(6, 5, "log_softmax"), rng.standard_normal((4, 6)))
    nnx.testing.assert_backends_agree(nnx.LogSoftmax(), rng.standard_normal((2, 3, 5)))


# -- the model: fused path, probabilities path, refusals --------------------------------------
def _data(rng, n=96, d=6, k=3):
    centers = rng.standard_normal((k, d)) * 2
    y = rng.integers(0, k, n)
    return (centers[y] + rng.standard_normal((n, d))).astype(np.float32), y


def _net(last_activation=None, k=3, seed=0, backend="numpy"):
    return nnx.Sequential([nnx.Dense(6, 8, "tanh"), nnx.Dense(8, k, last_activation)],
                          seed=seed, backend=backend, dtype="float64")


@pytest.mark.parametrize("backend", CPU)
@pytest.mark.parametrize("loss,activation,targets", [
    ("categorical_crossentropy", "softmax", "onehot"),
    ("sparse_categorical_crossentropy", "softmax", "labels"),
    ("nll", "log_softmax", "labels"),
])
def test_keras_port_trains_exactly_as_the_from_logits_model(backend, rng, loss, activation,
                                                            targets):
    """The issue's first bug: Dense(..., activation="softmax") + "categorical_crossentropy"
    trained a double softmax. Now it takes the fused path: the same losses, gradients and
    weights as the linear model with "softmax_cross_entropy", and predict gives
    probabilities (log-probabilities for log_softmax)."""
    x, y = _data(rng)
    t = np.eye(3)[y] if targets == "onehot" else y
    keras = _net(activation, backend=backend).compile(nnx.SGD(0.1), loss, ["acc"])
    assert keras.fused_loss is not None
    plain = _net(None, backend=backend).compile(nnx.SGD(0.1), "softmax_cross_entropy", ["acc"])
    hk = keras.fit(x, t, epochs=3, batch_size=16, verbose=0, shuffle=False)
    hp = plain.fit(x, y, epochs=3, batch_size=16, verbose=0, shuffle=False)
    np.testing.assert_allclose(hk.history["loss"], hp.history["loss"], rtol=1e-10)
    assert hk.history["acc"] == hp.history["acc"]
    for a, b in zip(keras.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    out = keras.predict(x[:4])
    probs = np.exp(out) if activation == "log_softmax" else out
    np.testing.assert_allclose(probs.sum(-1), 1, rtol=1e-12)
    ev_k, ev_p = keras.evaluate(x, t), plain.evaluate(x, y)
    assert ev_k["loss"] == pytest.approx(ev_p["loss"], rel=1e-10) and ev_k["acc"] == ev_p["acc"]
    lk, gk = keras.loss_and_grads(x[:8], t[:8])
    lp, gp = plain.loss_and_grads(x[:8], y[:8])
    assert lk == pytest.approx(lp, rel=1e-12)
    for a, b in zip(gk, gp, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_fused_path_is_stable_where_probabilities_underflow(rng):
    """Logits of +-200: softmax underflows to exactly 0 in float64 for the true class, so a
    loss on the probabilities would be -log(1e-7) with zero gradient; the fused path gives
    the exact loss and a useful gradient."""
    model = nnx.Sequential([nnx.Dense(2, 2, "softmax")], dtype="float64")
    model.set_weights([np.array([[100.0, -100.0], [0.0, 0.0]]), np.zeros(2)])
    model.compile(nnx.SGD(0.1), "sparse_categorical_crossentropy")
    x, y = np.array([[2.0, 0.0]]), np.array([1])
    loss, grads = model.loss_and_grads(x, y)
    assert loss == pytest.approx(400.0, rel=1e-9)
    assert np.abs(grads[0]).max() == pytest.approx(2.0, rel=1e-9)


def test_sigmoid_output_with_binary_crossentropy_fuses(rng):
    x = rng.standard_normal((64, 4))
    t = (x[:, :1] > 0).astype(np.float64)
    sig = nnx.Sequential([nnx.Dense(4, 1, "sigmoid")], dtype="float64", seed=3)
    lin = nnx.Sequential([nnx.Dense(4, 1)], dtype="float64", seed=3)
    sig.compile(nnx.SGD(0.5), "binary_crossentropy", ["acc"])
    lin.compile(nnx.SGD(0.5), "binary_cross_entropy", ["acc"])
    hs = sig.fit(x, t[:, 0], epochs=3, batch_size=16, shuffle=False, verbose=0)
    hl = lin.fit(x, t[:, 0], epochs=3, batch_size=16, shuffle=False, verbose=0)
    np.testing.assert_allclose(hs.history["loss"], hl.history["loss"], rtol=1e-10)
    assert hs.history["acc"] == hl.history["acc"] and hs.history["acc"][-1] > 0.8
    assert ((sig.predict(x) > 0) & (sig.predict(x) < 1)).all()


def test_probability_loss_without_a_known_activation_uses_clipped_probabilities(rng):
    """A Softmax after a Reshape (the output layer's activation unknown to the model): no
    fused path; the loss on the clipped probabilities still trains, with the same value."""
    x, y = _data(rng)
    model = nnx.Sequential([nnx.Dense(6, 3), nnx.Softmax(), nnx.Reshape((3,))], dtype="float64")
    model.compile(nnx.Adam(0.05), "sparse_categorical_crossentropy", ["acc"])
    assert model.fused_loss is None
    before = model.evaluate(x, y)["loss"]
    hist = model.fit(x, y, epochs=15, batch_size=16, verbose=0)
    assert hist.history["loss"][-1] < 0.6 * before and hist.history["acc"][-1] > 0.8


def test_compile_refuses_outputs_the_loss_cannot_use():
    with pytest.raises(ValueError, match=r"'categorical_crossentropy' takes probabilities, but "
                                         r"the model's output ends in 'identity' \(Dense"):
        _net(None).compile("adam", "categorical_crossentropy")
    with pytest.raises(ValueError, match="softmax would be applied twice.*categorical_crossent"):
        _net("softmax").compile("adam", "softmax_cross_entropy")
    with pytest.raises(ValueError, match="sigmoid would be applied twice.*'binary_crossentropy"):
        _net("sigmoid").compile("adam", "binary_cross_entropy")
    with pytest.raises(ValueError, match="'nll' takes log-probabilities.*log_softmax"):
        _net("softmax").compile("adam", "nll")
    model = _net("softmax").compile("adam", "categorical_crossentropy")
    with pytest.raises(ValueError):  # a failed compile leaves the previous one in place
        model.compile("sgd", "softmax_cross_entropy")
    assert model.loss.name == "categorical_crossentropy" and model.fused_loss is not None
    # a from-logits loss after log_softmax is fine (softmax(log_softmax(z)) = softmax(z))
    _net("log_softmax").compile("adam", "softmax_cross_entropy")


def test_target_checks_of_the_new_losses(rng):
    x, y = _data(rng, n=8)
    sparse = _net("softmax").compile("adam", "sparse_categorical_crossentropy")
    with pytest.raises(ShapeError, match=r"takes integer labels \(N,\).*categorical_crossentropy"):
        sparse.fit(x, np.eye(3)[y], verbose=0)
    sparse.fit(x, y[:, None], verbose=0)  # Keras's (N, 1) labels
    cat = _net("softmax").compile("adam", "categorical_crossentropy")
    with pytest.raises(InputError, match="each row of categorical_crossentropy targets must sum"):
        cat.fit(x, np.full((8, 3), 0.5), verbose=0)
    with pytest.raises(InputError, match="label 3 out of range for 3 classes"):
        cat.fit(x, np.full(8, 3), verbose=0)
    bce = nnx.Sequential([nnx.Dense(6, 1, "sigmoid")]).compile("adam", "binary_crossentropy")
    with pytest.raises(InputError, match=r"binary_crossentropy targets must lie in \[0, 1\]"):
        bce.fit(x, np.full(8, 2.0), verbose=0)


def test_checkpoint_keeps_the_loss_object(tmp_path, rng):
    x, y = _data(rng, n=16)
    model = _net("softmax").compile(nnx.Adam(0.01), losses.SparseCategoricalCrossentropy(),
                                    ["acc", nnx.metrics.TopKAccuracy(k=2)])
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "m.npz")
    again = nnx.load(tmp_path / "m.npz")
    assert isinstance(again.loss, losses.SparseCategoricalCrossentropy)
    assert again.fused_loss is not None and again.metric_names == ("acc", "top_k_accuracy")
    assert again.evaluate(x, y) == pytest.approx(model.evaluate(x, y))


@pytest.mark.gpu
@pytest.mark.parametrize("precision", [None, "fp16"])
def test_cupy_fused_weighted_and_sequence_losses_match_numpy(rng, precision):
    """On the GPU: the fused path, the probability and nll losses on (N, T, C) outputs with
    (N, T) weights, log_softmax, a generator source and the metrics give numpy's numbers
    (fp16: mixed precision, loosely; the loss scale must not leak into the gradients)."""
    ids = rng.integers(0, 7, (24, 5))
    mask = (rng.random((24, 5)) > 0.2).astype(np.float32)
    tol = dict(rtol=2e-2, atol=2e-3) if precision else dict(rtol=1e-4, atol=1e-6)
    results = {}
    for backend in ("numpy", "cupy"):
        opts = {"precision": precision} if backend == "cupy" and precision else {}
        ops = nnx.get_ops(backend, dtype="float32", **opts)
        for loss, last in (("sparse_categorical_crossentropy", "softmax"), ("nll", "log_softmax"),
                           ("softmax_cross_entropy", None)):
            model = nnx.Sequential([nnx.Embedding(7, 8), nnx.Dense(None, 7, last)], backend=ops,
                                   seed=3)
            model.compile(nnx.Adam(0.01), loss, ["acc", "f1"])
            hist = model.fit(ids, ids, epochs=2, batch_size=8, sample_weight=mask, verbose=0,
                             shuffle=False)
            ev = model.evaluate(iter([(ids[:12], ids[:12], mask[:12])]))
            results.setdefault(loss, []).append((hist.history, ev, model.get_weights(),
                                                 model.predict(ids[:4])))
    for loss, ((h0, e0, w0, p0), (h1, e1, w1, p1)) in results.items():
        for key in ("loss", "acc", "f1"):
            np.testing.assert_allclose(h1[key], h0[key], **tol, err_msg=f"{loss} {key}")
            assert e1[key] == pytest.approx(e0[key], rel=tol["rtol"], abs=tol["atol"])
        for a, b in zip(w1, w0, strict=True):
            np.testing.assert_allclose(a, b, **tol, err_msg=loss)
        np.testing.assert_allclose(p1, p0, **tol, err_msg=loss)
