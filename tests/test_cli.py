"""The `nnx` command line."""

from __future__ import annotations

import pytest

from nnx.cli import main


def test_train_default_on_embedded_sample(capsys, tmp_path):
    path = tmp_path / "mlp.npz"
    assert main(["train", "--epochs", "1", "--quiet", "--save", str(path)]) == 0
    out = capsys.readouterr().out
    assert "backend numpy" in out and "data sample (6000 train / 1000 test)" in out
    acc = float(out.split("test accuracy ")[1].split()[0])
    assert acc > 0.8  # one epoch on 6000 real digits
    import nnx

    assert nnx.load(path).count_params() == 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10


def test_train_errors(capsys):
    assert main(["train", "--model", "resnet152"]) == 2
    assert "unknown model 'resnet152'" in capsys.readouterr().err
    assert main(["train", "--backend", "cupy", "--epochs", "1"]) in (0, 2)


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for key in ("python:", "numpy:", "numba:", "cupy:", "blas:", "available_backends: numpy"):
        assert key in out


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "train" in capsys.readouterr().out


def test_help_lists_train_options(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--backend" in out and "--data" in out and "--batch-size" in out
