"""nnx.profile: per-layer call counts, times within the wall time, a valid Chrome trace, and no
wrapper left behind once the block ends."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest

import nnx
from nnx.model import Model
from nnx.profile import Profiler, profile


def _data(rng, n=32):
    return rng.standard_normal((n, 6)).astype(np.float32), rng.integers(0, 3, n)


def _mlp(backend):
    model = nnx.Sequential([nnx.Dense(6, 8, "relu"), nnx.Dense(8, 3)], backend=backend, seed=0)
    return model.compile(nnx.Adam(1e-2), "softmax_cross_entropy")


def _kernel_names(ops):
    cls = type(ops)
    return [n for n in dir(cls) if not n.startswith("_") and callable(getattr(cls, n))
            and not isinstance(inspect.getattr_static(cls, n), (staticmethod, classmethod, type))]


def _assert_clean(model):
    ops = model.ops
    for name in _kernel_names(ops):
        assert name not in vars(ops), f"wrapper left on ops.{name}"
        assert getattr(getattr(ops, name), "__func__", None) is getattr(type(ops), name), name
    for layer in model.layers:
        for what in ("forward", "backward"):
            assert what not in vars(layer), f"wrapper left on {layer.name}.{what}"
            assert getattr(layer, what).__func__ is getattr(type(layer), what)
    assert "update" not in vars(model.optimizer)
    assert "compile" not in vars(model)
    assert isinstance(model.loss, nnx.losses.Loss)


def test_counts_per_layer_calls_for_three_steps(backend, rng):
    model = _mlp(backend)
    x, y = _data(rng)
    model.train_step(x, y)  # warm-up (JIT) outside the profile
    with profile(model) as prof:
        for _ in range(3):
            model.train_step(x, y)
    s = prof.summary()
    names = [layer.name for layer in model.layers]
    assert list(s["layers"]) == names
    for name in names:
        d = s["layers"][name]
        assert d["type"] == "Dense"
        assert d["forward_calls"] == 3 and d["backward_calls"] == 3
    assert s["kernels"]["dense_forward"]["calls"] == 6
    assert s["kernels"]["dense_backward"]["calls"] == 6
    assert s["kernels"]["adam_update"]["calls"] == 3
    assert list(s["optimizer"].values())[0]["calls"] == 3
    assert s["loss"]["softmax_cross_entropy"]["calls"] == 3
    assert s["sync_points"] == 3  # train_step reads the loss once per step
    # layer times (and all phases) fit inside the wall time
    layer_total = sum(d["forward_s"] + d["backward_s"] for d in s["layers"].values())
    assert 0 < layer_total <= s["wall_s"]
    assert sum(s["phases"].values()) == pytest.approx(s["wall_s"], rel=1e-6)
    assert s["kernel_time_s"] <= s["wall_s"]
    for k in s["kernels"].values():
        assert 0 <= k["self_s"] <= k["total_s"] + 1e-12
    assert 0 <= s["gemm_share"] <= 1
    text = prof.report()
    assert all(n in text for n in names) and "GEMM share" in text
    _assert_clean(model)


def test_chrome_trace_is_valid(tmp_path, rng):
    model = _mlp("numpy")
    x, y = _data(rng)
    with profile(model) as prof:
        model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    path = prof.export_chrome_trace(tmp_path / "trace.json")
    doc = json.loads(open(path).read())
    events = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    assert events
    names = {e["name"] for e in events}
    assert f"layer:{model.layers[0].name} forward" in names
    assert f"layer:{model.layers[1].name} backward" in names
    assert "kernel:dense_forward" in names and "kernel:adam_update" in names
    for e in events:
        assert e["ts"] >= 0 and e["dur"] >= 0
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int)
        assert {"name", "cat", "ph", "ts", "dur", "pid", "tid"} <= set(e)
    # 4 batches: forward per layer per batch
    assert sum(1 for e in events if e["name"] == f"layer:{model.layers[0].name} forward") == 4


def test_profiling_off_leaves_no_wrappers(rng):
    model = _mlp("numpy")
    x, y = _data(rng)
    with pytest.raises(RuntimeError, match="inside"):
        with profile(model):
            model.train_step(x, y)
            assert "dense_forward" in vars(model.ops)  # hooked while active
            raise RuntimeError("an error inside the block")
    _assert_clean(model)
    model.train_step(x, y)  # still trains


def test_profile_without_a_model_hooks_models_used_in_the_block(rng):
    originals = {n: Model.__dict__[n] for n in ("__init__", "fit", "train_step", "evaluate")}
    x, y = _data(rng)
    before = _mlp("numpy")  # created before, used inside
    with profile() as prof:
        inside = _mlp("numpy")  # created and compiled inside
        inside.train_step(x, y)
        before.fit(x, y, epochs=1, batch_size=16, verbose=0)
    s = prof.summary()
    assert s["layers"][inside.layers[0].name]["forward_calls"] == 1
    assert s["layers"][before.layers[0].name]["forward_calls"] == 2
    for n, f in originals.items():
        assert Model.__dict__[n] is f, f"Model.{n} not restored"
    _assert_clean(inside)
    _assert_clean(before)


def test_compile_inside_the_block_keeps_the_new_loss(rng):
    model = nnx.Sequential([nnx.Dense(6, 3)], backend="numpy")
    model.compile("sgd", "mse", metrics=())
    x, _y = _data(rng)
    with profile(model) as prof:
        model.compile(nnx.Adam(1e-2), "softmax_cross_entropy")
        model.train_step(x, _y)
    assert model.loss.name == "softmax_cross_entropy"
    assert prof.summary()["kernels"]["adam_update"]["calls"] == 1
    _assert_clean(model)


def test_profilers_do_not_nest():
    with Profiler():
        with pytest.raises(RuntimeError, match="already active"):
            with Profiler():
                pass


def test_nnx_profile_command(tmp_path, capsys):
    from nnx.cli import main

    trace = tmp_path / "t.json"
    rc = main(["profile", "--epochs", "1", "--hidden", "16", "--batch-size", "500",
               "--trace", str(trace), "--json", str(tmp_path / "s.json")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "dense_1" in out or "dense" in out
    assert "measured:" in out and "GEMM share" in out
    assert json.loads(trace.read_text())["traceEvents"]
    assert json.loads((tmp_path / "s.json").read_text())["layers"]
