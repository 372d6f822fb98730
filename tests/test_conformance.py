"""The backend conformance kit: the same layer, same weights, every backend vs numpy."""

from __future__ import annotations

import numpy as np
import pytest

import nnx
from nnx.testing import assert_backends_agree, avoid_kinks


@pytest.mark.parametrize(
    "make",
    [
        lambda: nnx.Dense(7, 5, "relu"),
        lambda: nnx.Dense(7, 5, "gelu", use_bias=False),
        lambda: nnx.Chain([nnx.Dense(7, 6, "tanh"), nnx.Dense(6, 4, "softmax")]),
        lambda: nnx.Chain(
            [nnx.Dense(7, 6, "leaky_relu"), nnx.Dropout(0.5), nnx.Dense(6, 3, "sigmoid")]
        ),
    ],
)
def test_layers_agree_across_backends(make, rng):
    x = avoid_kinks(rng.standard_normal((9, 7)))
    report = assert_backends_agree(make(), x)
    assert set(report) == set(nnx.available_backends()) - {"numpy"}


def test_float32_agreement(rng):
    x = rng.standard_normal((16, 7))
    assert_backends_agree(nnx.Dense(7, 5, "relu"), x, dtype="float32", rtol=1e-4, atol=1e-5)


def test_disagreement_is_reported(monkeypatch, rng):
    if len(nnx.available_backends()) < 2:
        pytest.skip("needs a second backend")
    other = nnx.available_backends()[1]
    cls = type(nnx.get_ops(other))
    orig = cls.activation_forward

    def wrong(self, x, activation):
        y, saved = orig(self, x, activation)
        return y * 1.001, saved

    monkeypatch.setattr(cls, "activation_forward", wrong)
    with pytest.raises(AssertionError, match=f"backend '{other}' disagrees"):
        assert_backends_agree(nnx.Activation("relu"), np.abs(rng.standard_normal((3, 4))) + 0.1)
