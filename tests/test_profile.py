"""nnx.profile: per-layer call counts, times within the wall time, a valid Chrome trace, and
nothing changed on the model, its layers, its Ops or any class, during or after the block (the
profiler uses the model's hooks and `bind_ops`, it patches nothing)."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

import nnx
from nnx.model import Model
from nnx.profile import ProfiledOps, Profiler, ProfilerHooks, profile
from nnx.profile.ops_proxy import kernel_names


def _data(rng, n=32):
    return rng.standard_normal((n, 6)).astype(np.float32), rng.integers(0, 3, n)


def _mlp(backend):
    model = nnx.Sequential([nnx.Dense(6, 8, "relu"), nnx.Dense(8, 3)], backend=backend, seed=0)
    return model.compile(nnx.Adam(1e-2), "softmax_cross_entropy")


def _ops(model):
    """The model's own Ops (unwrapped while a profiler has it bound to its proxy)."""
    return model.ops.wrapped if isinstance(model.ops, ProfiledOps) else model.ops


def _classes(model):
    """Every class whose dict a patch could change: the model's, its layers', its Ops', its
    optimizer's and loss's, with their bases."""
    objs = [model, _ops(model), model.optimizer, model.loss, *model.store.layers]
    return {c for o in objs if o is not None for c in type(o).__mro__ if c is not object}


def _state(model):
    """Attribute names of the model, its layers, its Ops and optimizer, and the class dicts."""
    return {
        "model": sorted(vars(model)),
        "layers": [(layer.name, sorted(vars(layer))) for layer in model.store.layers],
        "ops": sorted(vars(_ops(model))),
        "optimizer": sorted(vars(model.optimizer)) if model.optimizer is not None else None,
        "classes": {c: dict(vars(c)) for c in _classes(model)},
    }


def _values(model):
    """The attribute values, by identity (after the block they are the same objects)."""
    out = {("model", k): id(v) for k, v in vars(model).items()}
    for layer in model.store.layers:
        out.update({(layer.name, k): id(v) for k, v in vars(layer).items()})
    out.update({("ops", k): id(v) for k, v in vars(model.ops).items()})
    return out


def _assert_clean(model, before=None):
    ops = model.ops
    assert not isinstance(ops, ProfiledOps), "model still bound to the profiler's ops"
    assert model.store.ops is ops and model.optimizer.ops is ops
    for layer in model.store.layers:
        assert layer.ops is ops, f"{layer.name} still on the profiler's ops"
    for name in kernel_names(type(ops)):
        assert name not in vars(ops), f"wrapper left on ops.{name}"
        assert getattr(getattr(ops, name), "__func__", None) is getattr(type(ops), name), name
    for layer in model.store.layers:
        for what in ("forward", "begin_update", "run", "call"):
            assert what not in vars(layer), f"wrapper left on {layer.name}.{what}"
            assert getattr(layer, what).__func__ is getattr(type(layer), what)
    assert "update" not in vars(model.optimizer)
    assert "compile" not in vars(model) and "fit" not in vars(model)
    assert isinstance(model.loss, nnx.losses.Loss)
    assert not any(isinstance(h, ProfilerHooks) for h in model.hooks)
    if before is not None:
        assert _state(model) == before


def test_counts_per_layer_calls_for_three_steps(backend, rng):
    model = _mlp(backend)
    x, y = _data(rng)
    model.train_step(x, y)  # warm-up (JIT) outside the profile
    before = _state(model)
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
    _assert_clean(model, before)


def test_kernels_called_inside_kernels_are_timed_with_self_time(rng):
    """The reference dense_forward calls activation_forward (which calls relu) through `self`:
    the proxy sees them, and dense_forward's self time excludes them."""
    model = _mlp("numpy")
    x, y = _data(rng)
    with profile(model) as prof:
        model.train_step(x, y)
    k = prof.summary()["kernels"]
    assert k["relu"]["calls"] == 1 and k["activation_forward"]["calls"] == 2
    assert k["to_host"]["calls"] == 1 and prof.summary()["sync_points"] == 1  # via to_float
    d = k["dense_forward"]
    assert d["self_s"] < d["total_s"]
    assert k["activation_forward"]["category"] == "elementwise"
    assert d["category"] == "gemm" and k["to_float"]["category"] == "sync"


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
    ops = model.ops
    before, values = _state(model), _values(model)
    with pytest.raises(RuntimeError, match="inside"):
        with profile(model):
            model.train_step(x, y)
            assert isinstance(model.ops, ProfiledOps) and model.ops.wrapped is ops  # active
            assert all(layer.ops is model.ops for layer in model.layers)
            raise RuntimeError("an error inside the block")
    assert model.ops is ops
    _assert_clean(model, before)
    assert _values(model) == values  # the same objects, not just the same names
    model.train_step(x, y)  # still trains


def test_no_attribute_changes_during_or_after_the_block(rng):
    model = _mlp("numpy")
    x, y = _data(rng)
    ops = model.ops
    before = _state(model)
    model_class = dict(vars(Model))
    ops_dict = sorted(vars(ops))
    with profile(model) as prof:
        during = _state(model)
        model.fit(x, y, epochs=1, batch_size=8, verbose=0)
        model.predict(x)
        model.evaluate(x, y)
        model.loss_and_grads(x, y)
        assert sorted(vars(ops)) == ops_dict  # the wrapped Ops gains no attribute
        assert _state(model) == during
        assert dict(vars(Model)) == model_class
    # while bound, names are the same; only the values of `ops` point at the proxy
    assert during == before
    assert prof.summary()["layers"][model.layers[0].name]["forward_calls"] > 4
    _assert_clean(model, before)
    assert dict(vars(Model)) == model_class


def test_profile_without_a_model_hooks_models_used_in_the_block(rng):
    model_class = dict(vars(Model))
    x, y = _data(rng)
    before = _mlp("numpy")  # created before, used inside
    state = _state(before)
    with profile() as prof:
        inside = _mlp("numpy")  # created and compiled inside
        inside.train_step(x, y)
        before.fit(x, y, epochs=1, batch_size=16, verbose=0)
        assert dict(vars(Model)) == model_class  # no class patch, even while active
    s = prof.summary()
    assert s["layers"][inside.layers[0].name]["forward_calls"] == 1
    assert s["layers"][before.layers[0].name]["forward_calls"] == 2
    assert dict(vars(Model)) == model_class, "Model class changed"
    _assert_clean(inside)
    _assert_clean(before, state)
    inside.train_step(x, y)  # after the block: not profiled any more
    assert prof.summary()["layers"][inside.layers[0].name]["forward_calls"] == 1


def test_compile_inside_the_block_keeps_the_new_loss(rng):
    model = nnx.Sequential([nnx.Dense(6, 3)], backend="numpy")
    model.compile("sgd", "mse", metrics=())
    x, _y = _data(rng)
    with profile(model) as prof:
        model.compile(nnx.Adam(1e-2), "softmax_cross_entropy")
        assert model.optimizer.ops is model.ops  # the new optimizer runs on the profiled ops
        model.train_step(x, _y)
    assert model.loss.name == "softmax_cross_entropy"
    s = prof.summary()
    assert s["kernels"]["adam_update"]["calls"] == 1
    assert s["loss"]["softmax_cross_entropy"]["calls"] == 1
    assert s["optimizer"]["Adam update"]["calls"] == 1
    _assert_clean(model)


def test_compile_with_a_distributed_optimizer_inside_the_block(rng):
    """A DistributedOptimizer(overlap=True) compiled inside the block (a world of one): its
    strategy hooks stay on the model after the block, its wrapped optimizer runs on the
    model's own Ops again, and training still works."""
    dist = nnx.distributed
    model = _mlp("numpy")
    x, y = _data(rng)
    comm = dist.LocalCommunicator()
    with profile(model) as prof:
        opt = dist.DistributedOptimizer(nnx.Adam(1e-2), comm, overlap=True)
        model.compile(opt, "softmax_cross_entropy")
        strategy = [h for h in model.hooks if not isinstance(h, ProfilerHooks)]
        assert strategy and all(any(h is s for s in model.hooks) for h in opt.step_hooks())
        assert opt.optimizer.ops is model.ops and isinstance(model.ops, ProfiledOps)
        model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    hooks = list(model.hooks)
    assert len(hooks) == len(strategy) and all(a is b for a, b in zip(hooks, strategy))
    assert opt.strategy.model is model  # still attached
    assert opt.ops is model.ops and opt.optimizer.ops is model.ops
    _assert_clean(model)
    s = prof.summary()
    assert s["kernels"]["adam_update"]["calls"] == 4
    assert s["optimizer"]["DistributedOptimizer update"]["calls"] == 4
    step = opt.step
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert opt.step == step + 4 and opt.strategy.stats["steps"] >= 8


def test_predict_in_another_thread_during_a_profiled_fit(rng):
    model = _mlp("numpy")
    x, y = _data(rng, 256)
    xq = x[:16]
    errors, results = [], []
    started, stop = threading.Event(), threading.Event()

    def predict_loop():
        try:
            started.set()
            while not stop.is_set() or not results:
                results.append(model.predict(xq, batch_size=8))
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=predict_loop)
    with profile(model) as prof:
        thread.start()
        started.wait()
        model.fit(x, y, epochs=2, batch_size=16, verbose=0)
        stop.set()
        thread.join()
    assert not errors, errors
    assert results and all(r.shape == (16, 3) and np.isfinite(r).all() for r in results)
    s = prof.summary()
    first = model.layers[0].name
    steps = 2 * 256 // 16
    # training: one forward and one backward per step; inference: forward only, 2 per predict
    assert s["layers"][first]["backward_calls"] == steps
    assert s["layers"][first]["forward_calls"] == steps + 2 * len(results)
    assert s["optimizer"]["Adam update"]["calls"] == steps
    assert s["kernels"]["adam_update"]["calls"] == steps
    threads = {e[4] for e in prof.events if e[0] == f"layer:{first} forward"}
    assert len(threads) == 2  # a track per thread
    for k in s["kernels"].values():
        assert 0 <= k["self_s"] <= k["total_s"] + 1e-12
    _assert_clean(model)
    np.testing.assert_allclose(model.predict(xq), model.predict(xq))


def test_a_step_that_raises_leaves_no_open_region(rng):
    model = _mlp("numpy")
    x, y = _data(rng)
    with profile(model) as prof:
        with pytest.raises(nnx.ShapeError):  # raised inside the first layer's forward
            model.trainer.step(model.ops.asarray(x[:, :5]), model.ops.asarray(y))
        for _ in range(2):
            model.train_step(x, y)
    s = prof.summary()
    for name in (layer.name for layer in model.layers):
        assert s["layers"][name]["forward_calls"] == 2
        assert s["layers"][name]["backward_calls"] == 2
    assert s["optimizer"]["Adam update"]["calls"] == 2
    assert sum(s["phases"].values()) == pytest.approx(s["wall_s"], rel=1e-6)
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
