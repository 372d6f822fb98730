"""The foundation's acceptance run on the full real MNIST (read from NNX_DATA_DIR, which
conftest points at ../shared/data/mnist): `nnx train --data mnist --epochs 5` reaches >= 97.5%."""

from __future__ import annotations

import pytest
from conftest import real_mnist_available

from nnx.cli import main

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not real_mnist_available(), reason="real MNIST not found (NNX_DATA_DIR)"),
]


def test_mlp_reaches_97_5_percent_on_full_mnist(capsys):
    assert main(["train", "--data", "mnist", "--epochs", "5", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "60000 train / 10000 test" in out
    acc = float(out.split("test accuracy ")[1].split()[0])
    assert acc >= 0.975, out
