"""Float64 central-difference gradient checks of the foundation's layers, activations and losses,
on every available backend (Chainer-style: non-contiguous inputs, inputs kept off kinks)."""

from __future__ import annotations

import numpy as np
import pytest
from nnx.kernels.reference import ACTIVATIONS

import nnx
from nnx.testing import GradcheckError, avoid_kinks, gradcheck, gradcheck_loss


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_dense_each_activation(backend, activation, rng):
    x = avoid_kinks(rng.standard_normal((4, 5)))
    gradcheck(nnx.Dense(5, 3, activation=activation), x, backend)


def test_dense_no_bias_3d_input(backend, rng):
    x = rng.standard_normal((2, 3, 5))
    gradcheck(nnx.Dense(5, 4, activation="tanh", use_bias=False), x, backend)


def test_dense_non_contiguous_input(backend, rng):
    big = rng.standard_normal((6, 12))
    x = big[::2, 1::2]  # strided rows and columns
    assert not x.flags.c_contiguous
    gradcheck(nnx.Dense(6, 3, activation="sigmoid"), x, backend)
    gradcheck(nnx.Dense(3, 3), big.T[1::2, ::2], backend)  # a transposed view


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_layers(backend, name, rng):
    x = avoid_kinks(rng.standard_normal((3, 7)))
    gradcheck(nnx.Activation(name), x, backend)


@pytest.mark.parametrize("cls", [nnx.ReLU, nnx.LeakyReLU, nnx.Sigmoid, nnx.Tanh, nnx.Softmax,
                                 nnx.GELU, nnx.Identity])
def test_named_activation_classes(backend, cls, rng):
    gradcheck(cls(), avoid_kinks(rng.standard_normal((2, 4))), backend)


def test_dropout_training_and_inference(backend, rng):
    x = rng.standard_normal((8, 16))
    gradcheck(nnx.Dropout(0.3), x, backend, training=True)
    gradcheck(nnx.Dropout(0.3), x, backend, training=False)


def test_flatten_and_chain(backend, rng):
    x = avoid_kinks(rng.standard_normal((3, 2, 2, 2)))
    net = nnx.Chain([nnx.Flatten(), nnx.Dense(8, 5, "relu"), nnx.Dropout(0.2),
                     nnx.Dense(5, 3, "gelu"), nnx.Dense(3, 2)])
    gradcheck(net, x, backend, training=True)


def test_regularized_dense_gradient_through_model(backend, rng):
    """L1/L2 penalties: the model's loss_and_grads includes the penalty's exact gradient."""
    x = rng.standard_normal((6, 4))
    y = rng.integers(0, 3, 6)
    model = nnx.Sequential([nnx.Dense(4, 3, kernel_regularizer=nnx.L1L2(0.01, 0.02))],
                           backend=backend, dtype="float64")
    model.compile("sgd", "softmax_cross_entropy")
    _, grads = model.loss_and_grads(x, y)
    W, b = model.get_weights()
    eps = 1e-6
    for i, j in [(0, 0), (3, 2), (1, 1)]:
        Wp, Wm = W.copy(), W.copy()
        Wp[i, j] += eps
        Wm[i, j] -= eps
        model.set_weights([Wp, b])
        fp, _ = model.loss_and_grads(x, y)
        model.set_weights([Wm, b])
        fm, _ = model.loss_and_grads(x, y)
        assert abs((fp - fm) / (2 * eps) - grads[0][i, j]) < 1e-6


@pytest.mark.parametrize("labels", ["int32", "int64", "onehot", "soft"])
def test_softmax_cross_entropy(backend, labels, rng):
    logits = rng.standard_normal((5, 4)) * 3
    y = rng.integers(0, 4, 5)
    if labels == "onehot":
        y = np.eye(4)[y]
    elif labels == "soft":
        y = rng.dirichlet(np.ones(4), 5)
    else:
        y = y.astype(labels)
    gradcheck_loss("softmax_cross_entropy", logits, y, backend)


def test_binary_cross_entropy(backend, rng):
    logits = rng.standard_normal((6, 3)) * 4
    gradcheck_loss("binary_cross_entropy", logits, rng.random((6, 3)), backend)


def test_mse(backend, rng):
    gradcheck_loss("mse", rng.standard_normal((4, 3)), rng.standard_normal((4, 3)), backend)


def test_losses_stable_at_extreme_logits(backend):
    ops = nnx.get_ops(backend, dtype="float32")
    logits = ops.asarray(np.array([[1000.0, -1000.0, 0.0], [-800.0, 800.0, 5.0]]))
    loss, grad = ops.softmax_cross_entropy(logits, ops.asarray(np.array([0, 0])))
    assert np.isfinite(ops.to_float(loss)) and abs(ops.to_float(loss) - 800.0) < 1e-2
    assert np.isfinite(ops.to_host(grad)).all()
    loss, grad = ops.binary_cross_entropy(logits, ops.asarray(np.ones((2, 3))))
    assert np.isfinite(ops.to_float(loss)) and np.isfinite(ops.to_host(grad)).all()


class _WrongDense(nnx.Dense):
    def call(self, x, training):
        y, backprop = super().call(x, training)

        def wrong_backprop(dy, need_dx=True):
            dx = backprop(dy, need_dx)
            self.grads["W"][...] *= 1.01  # a 1% error: the check must catch it
            return dx

        return y, wrong_backprop


def test_gradcheck_catches_a_wrong_gradient(rng):
    with pytest.raises(GradcheckError, match="W"):
        gradcheck(_WrongDense(4, 3), rng.standard_normal((5, 4)))
