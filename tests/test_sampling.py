"""Sampling (the VAE's reparameterization trick) and its KL term through `Layer.add_loss`.

1. z = mean + exp(log_var / 2) * eps with eps from the model's seeded generator: the right
   distribution, reproducible, (N, ..., 2L) -> (N, ..., L).
2. The KL term: its value is the closed form; it is part of the training loss and its
   gradient (gradcheck of the whole loss, KL included, against float64 central differences,
   through the training step's `loss_and_grads`, and through the layer's own backprop); outside
   a step (plain forward) there is neither term nor extra gradient.
3. In fit / evaluate the history shows `kl` (and `val_kl`) and the loss includes it.
4. A model with Sampling saves and loads like any other.
"""

from __future__ import annotations

import numpy as np
import pytest

import nnx
from nnx.errors import ShapeError
from nnx.layers.sampling import Sampling
from nnx.testing import build
from nnx.training import collect_loss_terms

CPU = [b for b in ("numpy", "numba") if b in nnx.available_backends()]


def kl_closed_form(mean, log_var, weight=1.0):
    per_sample = -0.5 * (1 + log_var - mean**2 - np.exp(log_var))
    return weight * per_sample.reshape(len(mean), -1).sum(axis=1).mean()


# -- 1. the draw --------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", CPU)
def test_samples_have_the_posterior_distribution(backend):
    layer = Sampling(2)
    ops, _ = build(layer, backend, "float64", seed=3)
    n = 20000
    x = np.tile([1.5, -2.0, np.log(0.25), np.log(4.0)], (n, 1))  # means, log-variances
    z = ops.to_host(layer.forward(ops.asarray(x), training=True))
    assert z.shape == (n, 2)
    np.testing.assert_allclose(z.mean(axis=0), [1.5, -2.0], atol=0.05)
    np.testing.assert_allclose(z.std(axis=0), [0.5, 2.0], rtol=0.03)


@pytest.mark.parametrize("backend", CPU)
def test_draws_come_from_the_seeded_generator(backend):
    x = np.random.default_rng(0).standard_normal((4, 3, 6))  # (N, T, 2L): any leading axes

    def draw(seed):
        layer = Sampling(3)
        ops, _ = build(layer, backend, "float32", seed=seed)
        return ops.to_host(layer.forward(ops.asarray(x)))

    a = draw(1)
    assert a.shape == (4, 3, 3)
    np.testing.assert_array_equal(a, draw(1))
    assert not np.allclose(a, draw(2))


def test_bad_config_and_inputs_name_the_argument():
    with pytest.raises(ValueError, match="latent_dim"):
        Sampling(0)
    with pytest.raises(ValueError, match="kl_weight"):
        Sampling(2, kl_weight=-1.0)
    layer = Sampling(3, name="z")
    ops, _ = build(layer)
    with pytest.raises(ShapeError, match=r"'z'.*\(batch, \.\.\., 6\).*2 \* latent_dim"):
        layer.forward(ops.zeros((2, 5)))
    assert layer.output_shape((6,)) == (3,)
    with pytest.raises(ShapeError):
        layer.output_shape((5,))


# -- 2. the KL term and its gradient ------------------------------------------------------------
def test_kl_term_is_the_closed_form_and_only_inside_a_step():
    layer = Sampling(3, kl_weight=0.3)
    ops, _ = build(layer)
    x = np.random.default_rng(1).standard_normal((5, 6))
    with collect_loss_terms() as terms:
        layer.forward(ops.asarray(x))
    assert set(terms) == {"kl"}
    np.testing.assert_allclose(float(terms["kl"]), kl_closed_form(x[:, :3], x[:, 3:], 0.3),
                               rtol=1e-12)
    # outside a step: no term, and the input gradient is the reparameterization's alone
    ops.seed(0)
    z, backprop = layer.begin_update(ops.asarray(x))
    dz = np.ones((5, 3))
    dx = ops.to_host(backprop(ops.asarray(dz)))
    eps = (ops.to_host(z) - x[:, :3]) / np.exp(0.5 * x[:, 3:])
    np.testing.assert_allclose(dx[:, :3], dz, rtol=1e-12)
    np.testing.assert_allclose(dx[:, 3:], 0.5 * np.exp(0.5 * x[:, 3:]) * eps, rtol=1e-10)


def _numeric_grad(f, x, eps=1e-6):
    g = np.zeros_like(x)
    for i in range(x.size):
        a, b = x.copy().ravel(), x.copy().ravel()
        a[i] += eps
        b[i] -= eps
        g.ravel()[i] = (f(a.reshape(x.shape)) - f(b.reshape(x.shape))) / (2 * eps)
    return g


@pytest.mark.parametrize("backend", CPU)
def test_gradcheck_of_the_layer_with_its_kl_term(backend):
    """d/dx of sum(z * dz) + kl: the reparameterization path and the KL term together."""
    layer = Sampling(3, kl_weight=0.7)
    ops, _ = build(layer, backend, "float64")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 6))
    dz = rng.standard_normal((4, 3))

    def objective(xh):
        ops.seed(11)
        with collect_loss_terms() as terms:
            z = layer.forward(ops.asarray(xh), training=True)
        return float((ops.to_host(z) * dz).sum() + float(terms["kl"]))

    ops.seed(11)
    with collect_loss_terms():
        _, backprop = layer.begin_update(ops.asarray(x))
    dx = ops.to_host(backprop(ops.asarray(dz)))
    np.testing.assert_allclose(dx, _numeric_grad(objective, x), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("backend", CPU)
def test_gradcheck_of_a_vae_loss_with_kl_through_the_training_step(backend):
    """loss_and_grads (the training step's forward/backward) against central differences of
    the same loss in every weight: the KL term is in the loss and in its gradient."""
    model = nnx.Sequential([nnx.Dense(5, 4, "tanh"), nnx.Dense(4, 4), Sampling(2, kl_weight=0.5),
                            nnx.Dense(2, 5)], backend=backend, dtype="float64", seed=4)
    model.compile(nnx.SGD(0.1), "mse")
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((6, 5)), rng.standard_normal((6, 5))

    def loss_at(weights):
        model.set_weights(weights)
        model.ops.seed(21)  # the same eps in every evaluation
        return model.loss_and_grads(x, y)

    w0 = model.get_weights()
    loss, grads = loss_at(w0)
    # the reported loss is mse + kl
    model.ops.seed(21)
    with collect_loss_terms() as terms:
        out = model.ops.to_host(model.net.forward(model.ops.asarray(x), training=True))
    np.testing.assert_allclose(loss, ((out - y) ** 2).mean() + float(terms["kl"]), rtol=1e-12)
    assert float(terms["kl"]) > 0.01  # the term matters in this check
    for k, w in enumerate(w0):
        def f(wk, k=k):
            ws = [v.copy() for v in w0]
            ws[k] = wk
            return loss_at(ws)[0]

        np.testing.assert_allclose(grads[k], _numeric_grad(f, w), rtol=1e-5, atol=1e-8,
                                   err_msg=f"weight {k}")


# -- 3. fit and evaluate report kl --------------------------------------------------------------
def vae(backend="numpy", latent=2, kl_weight=1 / 16):
    return nnx.Sequential([
        nnx.Dense(16, 12, "relu"), nnx.Dense(12, 2 * latent), Sampling(latent, kl_weight),
        nnx.Dense(latent, 12, "relu"), nnx.Dense(12, 16),
    ], backend=backend, seed=0)


@pytest.mark.parametrize("backend", CPU)
def test_history_reports_kl_and_the_loss_includes_it(backend):
    rng = np.random.default_rng(0)
    x = (rng.random((96, 16)) > 0.5).astype(np.float32)
    model = vae(backend)
    model.compile(nnx.Adam(1e-2), "binary_cross_entropy", metrics=[])
    hist = model.fit(x, x, epochs=3, batch_size=32, validation_data=(x, x), verbose=0)
    h = hist.history
    assert {"loss", "kl", "val_loss", "val_kl"} <= set(h)
    assert all(k > 0 for k in h["kl"]) and all(np.isfinite(h["loss"]))
    res = model.evaluate(x, x)
    assert set(res) == {"loss", "kl"}
    # the reported loss is reconstruction + kl: without the KL term the loss is smaller
    no_kl = vae(backend, kl_weight=0.0)
    no_kl.set_weights(model.get_weights())
    no_kl.compile(nnx.Adam(1e-2), "binary_cross_entropy", metrics=[])
    model.ops.seed(5)
    no_kl.ops.seed(5)
    with_kl, without = model.evaluate(x, x), no_kl.evaluate(x, x)
    assert "kl" not in without
    np.testing.assert_allclose(with_kl["loss"], without["loss"] + with_kl["kl"], rtol=1e-5)


# -- 4. checkpoints ------------------------------------------------------------------------------
def test_model_with_sampling_saves_and_loads(tmp_path):
    model = vae(kl_weight=0.25)
    model.compile(nnx.Adam(1e-3), "mse", metrics=[])
    x = np.random.default_rng(0).random((8, 16)).astype(np.float32)
    model.fit(x, x, epochs=1, batch_size=4, verbose=0)
    path = tmp_path / "vae.npz"
    model.save(path)
    loaded = nnx.load(path)
    layer = next(la for la in loaded.layers if isinstance(la, Sampling))
    assert (layer.latent_dim, layer.kl_weight) == (2, 0.25)
    for a, b in zip(model.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    model.ops.seed(1)
    loaded.ops.seed(1)
    np.testing.assert_allclose(loaded.predict(x), model.predict(x), rtol=1e-6)
    assert nnx.Sampling is Sampling


@pytest.mark.gpu
def test_cupy_kl_gradient_matches_numpy():
    x = np.random.default_rng(4).standard_normal((5, 8))
    dz = np.random.default_rng(5).standard_normal((5, 4))
    got = {}
    for backend in ("numpy", "cupy"):
        layer = Sampling(4, kl_weight=0.5)
        ops, _ = build(layer, backend, "float64")
        with collect_loss_terms() as terms:
            z, backprop = layer.begin_update(ops.asarray(x))
        eps = (ops.to_host(z) - x[:, :4]) / np.exp(0.5 * x[:, 4:])
        dx = ops.to_host(backprop(ops.asarray(dz)))
        # the KL part of dx does not depend on the draw: remove the reparameterization part
        dx[:, :4] -= dz
        dx[:, 4:] -= dz * 0.5 * np.exp(0.5 * x[:, 4:]) * eps
        got[backend] = (float(terms["kl"]), dx)
    np.testing.assert_allclose(got["cupy"][0], got["numpy"][0], rtol=1e-12)
    np.testing.assert_allclose(got["cupy"][1], got["numpy"][1], rtol=1e-10, atol=1e-12)
