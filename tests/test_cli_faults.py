"""The `nnx` command line against invalid values and failures (issue 14): every invalid value is
refused before any work with one line naming the flag and exit code 2; destinations are checked
(and missing directories created) before work; --dropout reaches every zoo model; later errors
print one line `nnx: error: ...` and exit 1; --debug / NNX_DEBUG=1 show the traceback.

No test downloads: urlopen is stubbed wherever MNIST could be fetched."""

from __future__ import annotations

import functools
import socket
import urllib.error
import urllib.request

import numpy as np
import pytest

import nnx
import nnx.commands.bench as bench_cmd
import nnx.commands.profile as profile_cmd
import nnx.commands.train as train_cmd
import nnx.datasets as ds
from nnx.backend import available_backends, backend_names
from nnx.cli import main


def _no_work(*args, **kwargs):
    raise AssertionError("work started although the command line was invalid")


@pytest.fixture
def guarded(monkeypatch):
    """Any start of work (data, model, benchmark, a command's run) fails the test."""
    monkeypatch.setattr(train_cmd, "load_data", _no_work)
    monkeypatch.setattr(bench_cmd.bench, "run", _no_work)
    monkeypatch.setattr(bench_cmd.report, "merge_runs", _no_work)
    for mod in nnx.models.names():
        monkeypatch.setattr(nnx.models.get(mod), "build", _no_work)


def _tiny_data(which, input_kind, n=16):
    rng = np.random.default_rng(0)
    x = rng.random((n, 28, 28), dtype=np.float32)
    if input_kind == "image":
        x = x[:, None]
    y = np.arange(n, dtype=np.int64) % 10
    return (x, y), (x, y)


def _one_line_error(err: str, *needles: str) -> str:
    line = err.strip()
    assert line and "\n" not in line, f"expected one line, got {err!r}"
    assert "Traceback" not in line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


PARSE_ERRORS = [
    (["train", "--epochs", "-1"], "--epochs"),
    (["train", "--epochs", "0"], "--epochs"),
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--batch-size", "-8"], "--batch-size"),
    (["train", "--lr", "-1"], "--lr"),
    (["train", "--lr", "0"], "--lr"),
    (["train", "--lr", "nan"], "--lr"),
    (["train", "--lr", "inf"], "--lr"),
    (["train", "--lr", "abc"], "--lr"),
    (["train", "--seed", "-1"], "--seed"),
    (["train", "--seed", "1.5"], "--seed"),
    (["train", "--hidden", "0"], "--hidden"),
    (["train", "--hidden", "abc"], "--hidden"),
    (["train", "--hidden", "1,,2"], "--hidden"),
    (["train", "--hidden", ""], "--hidden"),
    (["train", "--hidden", "8,"], "--hidden"),
    (["train", "--hidden", "100000000"], "--hidden"),
    (["train", "--dropout", "1.5"], "--dropout"),
    (["train", "--dropout", "-0.5"], "--dropout"),
    (["train", "--dropout", "1"], "--dropout"),
    (["train", "--dropout", "nan"], "--dropout"),
    (["train", "--model", "resnet152"], "unknown model 'resnet152'"),
    (["train", "--backend", "bogus"], "--backend"),
    (["bench", "--threads", "0"], "--threads"),
    (["bench", "--repeats", "0"], "--repeats"),
    (["bench", "--repeats", "-1"], "--repeats"),
    (["bench", "--backends", "bogus"], "--backends"),
    (["bench", "--backends", "numpy", "bogus"], "bogus"),
    (["bench", "--suite", "nope"], "--suite"),
    (["bench", "--threshold", "nan"], "--threshold"),
    (["bench", "--max-wait", "0"], "--max-wait"),
    (["bench", "--wait-quiet", "-1"], "--wait-quiet"),
    (["profile", "--epochs", "-1"], "--epochs"),
    (["profile", "--batch-size", "0"], "--batch-size"),
    (["profile", "--top", "-5"], "--top"),
    (["profile", "--top", "0"], "--top"),
    (["profile", "--seed", "-1"], "--seed"),
    (["profile", "--hidden", "abc"], "--hidden"),
    (["profile", "--model", "nope"], "--model"),
]


@pytest.mark.parametrize("argv,needle", PARSE_ERRORS, ids=[" ".join(a) for a, _ in PARSE_ERRORS])
def test_invalid_values_are_refused_while_parsing(argv, needle, capsys, guarded):
    """These ended in tracebacks (exit 1), ran with a silently changed value, or did nothing."""
    assert main(argv) == 2
    out, err = capsys.readouterr()
    line = _one_line_error(err, needle, f"nnx {argv[0]}: error: argument ")
    assert out == "", line


def test_models_of_other_data_are_refused_by_name(capsys, guarded, monkeypatch):
    """A zoo model that does not read MNIST was fed digits and failed late. `nnx train` trains
    text models too (nnx/commands/train_text.py); `nnx profile` only MNIST ones."""
    import types

    text = types.SimpleNamespace(INPUT="text", LOSS="mse", TARGET="labels", build=_no_work)
    audio = types.SimpleNamespace(INPUT="audio", LOSS="mse", TARGET="labels", build=_no_work)
    fakes = {"textmodel": text, "audiomodel": audio}
    monkeypatch.setattr(nnx.models, "names", lambda: ["mlp", "textmodel", "audiomodel"])
    real_get = nnx.models.get
    monkeypatch.setattr(nnx.models, "get", lambda n: fakes.get(n) or real_get(n))
    assert main(["profile", "--model", "textmodel"]) == 2
    _one_line_error(capsys.readouterr().err, "--model", "'text'", "mlp")
    for cmd in ("train", "profile"):
        assert main([cmd, "--model", "audiomodel"]) == 2
        _one_line_error(capsys.readouterr().err, "--model", "'audio'", "mlp")


def test_unavailable_backend_is_refused(capsys, guarded):
    missing = [b for b in backend_names() if b not in available_backends()]
    if not missing:
        pytest.skip("every backend is available here")
    assert main(["train", "--backend", missing[0]]) == 2
    _one_line_error(capsys.readouterr().err, "--backend", "not available")
    assert main(["bench", "--backends", missing[0]]) == 2
    _one_line_error(capsys.readouterr().err, "--backends", "not available")


USAGE_ERRORS = [
    (["train", "--model", "transformer", "--hidden", "8"], "--hidden"),
    (["train", "--model", "cnn", "--hidden", "8,8"], "--hidden"),
    (["train", "--save", "/dev/null/model.npz"], "--save"),
    (["bench", "--quick", "--out", "/dev/null/x"], "--out"),
    (["profile", "--trace", "/dev/null/t.json"], "--trace"),
    (["profile", "--json", "/dev/null/s.json"], "--json"),
    (["bench", "--backends", "numpy", "torch", "--no-torch"], "torch"),
]


@pytest.mark.parametrize("argv,needle", USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS])
def test_option_and_destination_errors_come_before_any_work(argv, needle, capsys, guarded):
    """--save into /dev/null/x trained fully, then died; --out after the benchmark ran."""
    assert main(argv) == 2
    _one_line_error(capsys.readouterr().err, needle)


def test_destination_that_is_a_directory_is_refused(tmp_path, capsys, guarded):
    assert main(["train", "--save", str(tmp_path)]) == 2
    _one_line_error(capsys.readouterr().err, "--save", "is a directory")


ZOO = ["mlp", "cnn", "lstm", "autoencoder", "transformer"]


@pytest.fixture
def spy_builds(monkeypatch):
    """Record each zoo build's options (the real build still runs); data is 16 tiny samples."""
    calls = []
    for name in ZOO:
        mod = nnx.models.get(name)
        orig = mod.build

        @functools.wraps(orig)
        def spy(*args, _orig=orig, _name=name, **kwargs):
            calls.append((_name, kwargs))
            return _orig(*args, **kwargs)

        monkeypatch.setattr(mod, "build", spy)
    monkeypatch.setattr(train_cmd, "load_data", _tiny_data)
    return calls


@pytest.mark.parametrize("model", ZOO)
def test_dropout_reaches_every_zoo_model(model, spy_builds, capsys):
    """--dropout was silently ignored for every model but the MLP."""
    argv = ["train", "--model", model, "--epochs", "1", "--batch-size", "8", "--quiet"]
    assert main([*argv, "--dropout", "0.3"]) == 0, capsys.readouterr().err
    assert spy_builds[-1][0] == model and spy_builds[-1][1]["dropout"] == 0.3
    assert main(argv) == 0
    assert "dropout" not in spy_builds[-1][1]  # not given: the model's own default (cnn: 0.25)


@pytest.mark.parametrize("model", ["lstm", "autoencoder"])
def test_zoo_dropout_builds_dropout_layers(model):
    net = nnx.models.get(model).build(dropout=0.3)
    rates = [layer.rate for layer in net.layers if isinstance(layer, nnx.Dropout)]
    assert rates and all(r == 0.3 for r in rates)
    assert not any(isinstance(la, nnx.Dropout) for la in nnx.models.get(model).build().layers)


def test_hidden_reaches_single_size_models(spy_builds, capsys):
    assert main(["train", "--model", "cnn", "--hidden", "16", "--epochs", "1", "--quiet"]) == 0
    assert spy_builds[-1][1]["hidden"] == 16
    assert main(["train", "--hidden", "16,8", "--epochs", "1", "--quiet"]) == 0
    assert spy_builds[-1][1]["hidden"] == (16, 8)


def test_save_into_missing_directory_creates_it_before_training(tmp_path, monkeypatch, capsys):
    """The model was trained, then lost to a FileNotFoundError traceback."""
    monkeypatch.setattr(train_cmd, "load_data", _tiny_data)
    path = tmp_path / "runs" / "today" / "mlp.npz"
    argv = ["train", "--hidden", "8", "--epochs", "1", "--quiet", "--save", str(path)]
    assert main(argv) == 0, capsys.readouterr().err
    assert nnx.load(path).count_params() == 784 * 8 + 8 + 8 * 10 + 10


def test_profile_trace_into_missing_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train_cmd, "load_data", _tiny_data)
    trace = tmp_path / "new" / "t.json"
    argv = ["profile", "--hidden", "8", "--batch-size", "8", "--no-baseline", "--trace",
            str(trace), "--json", str(tmp_path / "other" / "s.json")]
    assert main(argv) == 0, capsys.readouterr().err
    assert trace.is_file() and (tmp_path / "other" / "s.json").is_file()


def test_bench_out_is_created_before_the_run(tmp_path, monkeypatch, capsys):
    out = tmp_path / "a" / "b"
    seen = []

    def fake_run(**kwargs):
        seen.append(out.is_dir())
        raise nnx.NNXError("stop here")

    monkeypatch.setattr(bench_cmd.bench, "run", fake_run)
    assert main(["bench", "--quick", "--no-torch", "--out", str(out)]) == 1
    assert seen == [True]
    _one_line_error(capsys.readouterr().err, "nnx: error: stop here")


def test_bench_compare_of_missing_files_is_a_usage_error(tmp_path, capsys):
    assert main(["bench", "--compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 2
    _one_line_error(capsys.readouterr().err, "nnx bench: error: argument --compare:")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """MNIST nowhere, and no network: every lookup of a host name fails at once."""
    calls = []

    def no_dns(url, timeout=None):
        calls.append(url)
        raise urllib.error.URLError(socket.gaierror(socket.EAI_NONAME, "Name does not resolve"))

    monkeypatch.setattr(urllib.request, "urlopen", no_dns)
    monkeypatch.setattr(ds, "_sleep", _no_work)
    monkeypatch.setenv("NNX_DATA_DIR", str(tmp_path / "data" / "mnist"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("NNX_DEBUG", raising=False)
    return calls


def test_mnist_offline_is_one_short_line(offline, tmp_path, capsys):
    """Offline this retried every URL 3 times (26 s), printed each, and left directories."""
    assert main(["train", "--data", "mnist", "--epochs", "1"]) == 1
    line = _one_line_error(capsys.readouterr().err, "nnx: error: MNIST files not found",
                           str(tmp_path / "data" / "mnist"), "NNX_DATA_DIR", "--data sample",
                           "Name does not resolve")
    assert len(line) < 1200 and line.count("https://") == 1
    assert len(offline) == len(ds.MIRRORS)  # each host asked once
    assert not (tmp_path / "data").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("how", ["flag-after", "flag-before", "env"])
def test_debug_shows_the_traceback(offline, monkeypatch, how):
    argv = ["train", "--data", "mnist"]
    if how == "flag-after":
        argv.append("--debug")
    elif how == "flag-before":
        argv.insert(0, "--debug")
    else:
        monkeypatch.setenv("NNX_DEBUG", "1")
    with pytest.raises(ds.DatasetNotFoundError):
        main(argv)


def test_unexpected_errors_are_one_line_with_their_type(monkeypatch, capsys):
    def broken(which, input_kind):
        raise KeyError("boom")

    monkeypatch.setattr(train_cmd, "load_data", broken)
    monkeypatch.delenv("NNX_DEBUG", raising=False)
    assert main(["train", "--epochs", "1"]) == 1
    _one_line_error(capsys.readouterr().err, "nnx: error: KeyError: 'boom'", "--debug")


def test_profile_refuses_hidden_for_a_model_without_it(capsys, guarded):
    assert profile_cmd is not None
    assert main(["profile", "--model", "transformer", "--hidden", "8"]) == 2
    _one_line_error(capsys.readouterr().err, "--hidden", "transformer")
