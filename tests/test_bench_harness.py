"""The benchmark harness's own correctness (nnx.bench): statistics, FLOP counts, compare(),
JSON round trip, tables, the runner, suite registration and the import graph, and `nnx bench
--quick` end to end. Timings themselves are not asserted: this runs on noisy CI machines."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest

import nnx
from nnx import bench
from nnx.bench import report
from nnx.bench import suites as builtin_suites
from nnx.bench.registry import Case, Skip, SuiteRegistry, Target, gemm_flops, suite
from nnx.bench.runner import RunConfig, run_case
from nnx.bench.timing import HostClock, Stats, calibrate, quantile

BACKENDS = nnx.available_backends()


# -- statistics -------------------------------------------------------------------------------
def test_median_quartiles_iqr():
    st = Stats([5.0, 1.0, 4.0, 2.0, 3.0])
    assert st.median == 3.0
    assert st.q1 == 2.0 and st.q3 == 4.0 and st.iqr == 2.0
    assert st.min == 1.0 and st.max == 5.0 and st.mean == 3.0
    even = Stats([1.0, 2.0, 3.0, 4.0])
    assert even.median == 2.5


def test_quantile_matches_numpy():
    xs = np.random.default_rng(0).exponential(size=37)
    s = sorted(xs)
    for q in (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0):
        assert quantile(s, q) == pytest.approx(np.percentile(xs, 100 * q))
    assert math.isnan(quantile([], 0.5))


def test_host_clock_synchronizes_around_the_calls():
    calls = []
    clock = HostClock(sync=lambda: calls.append("sync"))
    per_call = clock.time(lambda: calls.append("fn"), number=3)
    assert calls == ["sync", "fn", "fn", "fn", "sync"]
    assert per_call >= 0


def test_calibrate_reaches_the_target_duration():
    class FakeClock:  # 1 ms per call, whatever the host does
        def time(self, fn, number=1):
            return 1e-3

    assert calibrate(FakeClock(), lambda: None, target_s=0.01) == 10
    assert calibrate(FakeClock(), lambda: None, target_s=0.0001) == 1
    assert calibrate(FakeClock(), lambda: None, target_s=100.0, max_number=50) == 50


# -- FLOP / byte accounting ---------------------------------------------------------------------
def test_gemm_flops_is_2mnk():
    assert gemm_flops(128, 784, 512) == 2 * 128 * 784 * 512
    for case in bench.cases(["gemm"], quick=False):
        p = case.params
        assert case.flops == 2 * p["m"] * p["n"] * p["k"], case.name
        assert case.bytes == 4 * (p["m"] * p["k"] + p["k"] * p["n"] + p["m"] * p["n"])


def test_mlp_train_step_flops_count_forward_and_backward_gemms():
    case = bench.cases(["mlp"], quick=False)[0]
    layers = [(784, 512), (512, 256), (256, 10)]
    fwd = sum(2 * 128 * a * b for a, b in layers)
    # weight gradients for every Dense, input gradients for every Dense (Flatten is first)
    assert case.flops == pytest.approx(3 * fwd)


def test_every_suite_builds_in_both_modes():
    names = bench.suite_names()
    for required in ("gemm", "dense", "activations", "loss", "optimizer", "conv2d", "lstm",
                     "mlp", "cnn", "mnist"):
        assert required in names
    for quick in (True, False):
        cs = bench.cases(quick=quick)
        assert len({c.name for c in cs}) == len(cs), "case names must be unique"


# -- registration ---------------------------------------------------------------------------------
def test_suites_are_registered_explicitly():
    # importing the suite modules registered nothing: a fresh registry is empty
    fresh = SuiteRegistry()
    assert len(fresh) == 0 and fresh.names() == []
    assert builtin_suites.register_all(fresh) is fresh
    assert fresh.names() == bench.suite_names() == [fn.suite_name for fn in builtin_suites.SUITES]
    assert bench.default_registry() is bench.default_registry()
    for name in fresh.names():
        assert fresh.help(name) and bench.suite_help(name) == fresh.help(name)
    quick = [c.name for c in fresh.cases(quick=True)]
    assert quick == [c.name for c in bench.cases(quick=True)]
    # every module lists its suites; each suite's cases carry its name
    for module in builtin_suites.MODULES:
        assert module.SUITES, module.__name__
        for fn in module.SUITES:
            assert {c.suite for c in fn(True)} == {fn.suite_name}


def test_registry_add_rejects_duplicates_and_unknown_names():
    @suite("toy", "a toy suite")
    def toy(quick):
        return [Case("toy case", "toy", lambda t: (lambda: None))]

    reg = SuiteRegistry([toy])
    assert reg.names() == ["toy"] and reg.help("toy") == "a toy suite" and "toy" in reg
    reg.add(toy)  # the same function again: no-op
    assert [c.name for c in reg.cases()] == ["toy case"]
    with pytest.raises(ValueError, match="already registered"):
        reg.add(lambda quick: [], name="toy")
    with pytest.raises(ValueError, match="no name"):
        reg.add(lambda quick: [])
    with pytest.raises(nnx.UnknownNameError, match="nope"):
        reg.cases(["nope"])
    assert "toy" not in bench.suite_names()  # a registry of one's own leaves the default alone


BENCH_ROOT = Path(bench.__file__).resolve().parent


def _bench_module_imports() -> dict[str, set[str]]:
    """{module: nnx modules it imports, at any level (function-level imports included)} for
    nnx.bench.*, nnx.commands.bench/info and nnx.sysinfo."""
    nnx_root = BENCH_ROOT.parent
    files = {p: "nnx.bench." + ".".join(p.relative_to(BENCH_ROOT).with_suffix("").parts)
             for p in BENCH_ROOT.rglob("*.py")}
    files = {p: m.removesuffix(".__init__") for p, m in files.items()}
    for extra in ("commands/bench.py", "commands/info.py", "sysinfo.py"):
        files[nnx_root / extra] = "nnx." + extra.removesuffix(".py").replace("/", ".")
    graph = {}
    for path, mod in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                deps.add(base)
                deps.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
        graph[mod] = {d for d in deps if d in files.values() and d != mod}
    return graph


def test_bench_imports_have_no_cycles():
    graph = _bench_module_imports()
    assert "nnx.bench.suites" in graph and "nnx.bench.suites.models" in graph
    # library code never imports CLI code
    for mod, deps in graph.items():
        if not mod.startswith("nnx.commands"):
            assert not {d for d in deps if d.startswith("nnx.commands")}, mod
    # no module reaches itself (a package importing its own submodules is not a cycle; a
    # submodule importing its package back is)
    for start in graph:
        seen, todo = set(), list(graph[start])
        while todo:
            m = todo.pop()
            assert m != start, f"import cycle through {start}"
            if m not in seen:
                seen.add(m)
                todo.extend(graph[m])


def test_layer_and_model_cases_run_once_on_numpy():
    """conv2d, lstm, mlp and cnn use the layer contract (begin_update + backprop) and
    model.trainer.step: one call of each quick case on numpy."""
    t = Target("numpy")
    for case in bench.cases(["conv2d", "lstm", "mlp", "cnn"], quick=True):
        out = case.setup(t)()
        if case.name.startswith("conv2d_bwd"):
            p = case.params
            assert out.shape == (8, p["C"], p["H"], p["W"]), case.name
        elif case.name.startswith("lstm"):
            assert out.shape == (8, 5, 8), case.name
        elif "train step" in case.name:
            loss, output = out
            assert np.isfinite(t.ops.to_float(loss)) and output.shape[-1] == 10, case.name


# -- compare() ------------------------------------------------------------------------------------
def _rec(case, target, samples):
    st = Stats(list(samples))
    return {"case": case, "suite": "s", "target": target, "status": "ok", **st.to_dict()}


def _run(records):
    return report.make_run(records, targets=sorted({r["target"] for r in records}))


def test_compare_flags_a_2x_slowdown_and_ignores_noise():
    rng = np.random.default_rng(1)
    noisy = lambda m: m * (1 + 0.03 * rng.standard_normal(15))  # noqa: E731
    old = _run([_rec("a", "numpy", noisy(1e-3)), _rec("b", "numpy", noisy(1e-3)),
                _rec("c", "numpy", noisy(1e-3)), _rec("gone", "numpy", noisy(1e-3))])
    new = _run([_rec("a", "numpy", noisy(2e-3)),  # 2x slower
                _rec("b", "numpy", noisy(1e-3)),  # the same, new noise
                _rec("c", "numpy", noisy(0.5e-3)),  # 2x faster
                _rec("new", "numpy", noisy(1e-3))])
    cmp = bench.compare(old, new)
    assert [e["case"] for e in cmp["slower"]] == ["a"]
    assert cmp["slower"][0]["ratio"] == pytest.approx(2.0, rel=0.1)
    assert [e["case"] for e in cmp["faster"]] == ["c"]
    assert [e["case"] for e in cmp["unchanged"]] == ["b"]
    assert cmp["only_old"] == ["gone [numpy]"] and cmp["only_new"] == ["new [numpy]"]
    text = bench.format_compare(cmp)
    assert "slower: 1" in text and "a [numpy]" in text


def test_compare_needs_both_threshold_and_disjoint_iqrs():
    tight_old = [1.000e-3] * 5 + [1.001e-3] * 5
    tight_new = [1.030e-3] * 10  # +3%: IQRs disjoint but below the 5% threshold
    wide_old = list(np.linspace(0.5e-3, 1.5e-3, 11))
    wide_new = list(np.linspace(0.6e-3, 1.8e-3, 11))  # +20% median, overlapping IQRs
    cmp = bench.compare(_run([_rec("t", "x", tight_old), _rec("w", "x", wide_old)]),
                        _run([_rec("t", "x", tight_new), _rec("w", "x", wide_new)]))
    assert not cmp["slower"] and not cmp["faster"]
    assert len(cmp["unchanged"]) == 2


# -- JSON, tables ------------------------------------------------------------------------------
def test_json_round_trip(tmp_path):
    recs = [_rec("gemm 2x3x4", "numpy", [1e-3, 2e-3, 3e-3])]
    recs[0]["gflops"] = float("nan")  # NaN must become null, not invalid JSON
    run = report.make_run(recs, machine={"cpu": {"model": "x"}}, peaks={"sgemm_gflops": 1.0},
                          settings={"mode": "quick", "threads": {"numba": 2}})
    path = report.write_json(run, tmp_path / "b.json")
    text = open(path).read()
    assert "NaN" not in text
    back = report.load_json(path)
    assert back == json.loads(json.dumps(run))
    assert back["results"][0]["median_s"] == 2e-3 and back["results"][0]["gflops"] is None
    with pytest.raises(ValueError):
        bad = tmp_path / "bad.json"
        bad.write_text('{"schema": "other", "results": []}')
        report.load_json(bad)


def test_merge_runs_later_results_win(tmp_path):
    a = report.make_run([_rec("c1", "numpy", [1.0] * 3), _rec("c2", "numpy", [2.0] * 3)],
                        peaks={"sgemm_gflops": 1.0}, targets=["numpy"])
    b = report.make_run([_rec("c2", "numpy", [3.0] * 3), _rec("c2", "torch", [4.0] * 3)],
                        peaks={"sgemm_gflops": 2.0}, targets=["numpy", "torch"])
    m = report.merge_runs([a, report.write_json(b, tmp_path / "b.json")])
    got = {(r["case"], r["target"]): r["median_s"] for r in m["results"]}
    assert got == {("c1", "numpy"): 1.0, ("c2", "numpy"): 3.0, ("c2", "torch"): 4.0}
    assert m["targets"] == ["numpy", "torch"] and m["peaks"]["sgemm_gflops"] == 1.0
    assert len(m["settings"]["merged_from"]) == 2


def test_table_has_a_column_for_every_target():
    targets = ["numpy", "numba", "cupy", "torch"]
    recs = [_rec("c1", t, [1e-3 * (i + 1)] * 3) for i, t in enumerate(targets)]
    recs.append({"case": "c2", "suite": "s", "target": "numba", "status": "skipped",
                 "reason": "no kernel yet"})
    header, rows, notes = report.table_rows(recs, targets)
    for t in targets:
        assert t in header and f"%peak {t}" in header
    for t in targets[1:]:
        assert f"x{t}" in header
    row = dict(zip(header, rows[0], strict=False))
    # records without per-round ratios (older bench.json): ratio of medians, marked *
    assert row["xnumba"] == "0.50x*" and row["xtorch"] == "0.25x*"
    assert row["numba vs torch"] == "2.00x*"  # torch 4 ms, numba 2 ms
    assert dict(zip(header, rows[1], strict=False))["numba"] == "skipped"
    text = report.format_table(recs, targets)
    md = report.format_table(recs, targets, markdown=True)
    assert "no kernel yet" in text and md.splitlines()[0].startswith("| case")


# -- the runner -----------------------------------------------------------------------------------
def _counting_case(calls):
    def setup(t):
        if t.name == "numba":
            raise Skip("not on numba")
        x = t.array(np.ones((8, 8), np.float32))

        def fn():
            calls.append(t.name)
            return x @ x

        return fn

    return Case("toy 8x8x8", "toy", setup, flops=gemm_flops(8, 8, 8), bytes=768)


def test_run_case_records_and_skips():
    calls = []
    targets = [Target(b) for b in BACKENDS]
    config = RunConfig(repeats=4, sample_s=0.001, warmup=1, busy_threshold=None)
    peaks = {"sgemm_gflops": 100.0, "memcpy_gbps": 10.0}
    recs = run_case(_counting_case(calls), targets, config, peaks=peaks)
    by = {r["target"]: r for r in recs}
    ok = by["numpy"]
    assert ok["status"] == "ok" and ok["repeats"] == 4 and len(ok["samples_s"]) == 4
    assert ok["q1_s"] <= ok["median_s"] <= ok["q3_s"]
    assert ok["first_call_s"] > 0 and ok["compile_s"] >= 0
    assert ok["gflops"] == pytest.approx(1024 / ok["median_s"] / 1e9)
    assert ok["frac_peak"] == pytest.approx(ok["gflops"] / 100.0)
    if "numba" in by:
        assert by["numba"]["status"] == "skipped" and by["numba"]["reason"] == "not on numba"
    assert "numba" not in calls


def test_rounds_taken_while_the_host_is_busy_are_redone(monkeypatch):
    import nnx.bench.runner as runner

    class FakeProbe:  # other processes busy during the first two rounds, then idle
        loads = [3.0, 2.0]

        def __init__(self, pids=()):
            pass

        def snap(self):
            return None

        def others(self, a, b):
            return self.loads.pop(0) if self.loads else 0.0

        def wait_idle(self, threshold, timeout_s):
            return 0.5

    monkeypatch.setattr(runner, "LoadProbe", FakeProbe)
    config = RunConfig(repeats=3, sample_s=0.001, warmup=0, busy_threshold=0.5)
    rec = run_case(_counting_case([]), [Target("numpy")], config)[0]
    assert rec["repeats"] == 3
    assert rec["host_load"]["rounds_discarded"] == 2 and rec["host_load"]["waited_s"] == 1.0
    assert rec["host_load"]["others_cpus_max"] == 0.0
    # past max_wait_s the rounds are kept (and the record shows the load)
    FakeProbe.loads = [3.0] * 10
    config.max_wait_s = 0.4
    rec = run_case(_counting_case([]), [Target("numpy")], config)[0]
    assert rec["host_load"]["rounds_discarded"] == 1 and rec["host_load"]["others_cpus_max"] == 3.0


def test_run_case_reports_errors_without_stopping():
    def setup(t):
        raise ValueError("boom")

    recs = run_case(Case("broken", "toy", setup), [Target("numpy")], RunConfig.quick())
    assert recs[0]["status"] == "error" and "boom" in recs[0]["reason"]


@pytest.mark.skipif(not nnx.compat.has_torch, reason="PyTorch is not installed")
def test_torch_yardstick_runs_a_case_in_its_worker():
    from nnx.bench.remote import RemoteTarget

    case = next(c for c in bench.cases(["gemm"], quick=True) if "64x64x64" in c.name)
    with RemoteTarget("torch", 1, suites=["gemm"], quick=True) as torch_target:
        recs = run_case(case, [Target("numpy"), torch_target], RunConfig.quick())
        assert torch_target.info["torch"]["threads"] == 1
    assert [r["status"] for r in recs] == ["ok", "ok"]
    assert recs[1]["process"] == "worker" and recs[0]["speedup_over"]["torch"]["rounds"] == 3


# -- the command ------------------------------------------------------------------------------
def test_nnx_bench_quick_gemm_writes_json_and_png(tmp_path, capsys):
    from nnx.cli import main

    out = tmp_path / "out"
    rc = main(["bench", "--quick", "--suite", "gemm", "--out", str(out), "--no-torch"])
    assert rc == 0
    run = report.load_json(out / "bench.json")
    targets = {r["target"] for r in run["results"]}
    assert targets == set(BACKENDS)
    assert all(r["status"] == "ok" for r in run["results"])
    assert run["peaks"]["sgemm_gflops"] > 0 and run["machine"]["cpu"]
    assert run["settings"]["mode"] == "quick"
    pngs = list(out.glob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    table = (out / "table.txt").read_text()
    for b in BACKENDS:
        assert b in table
    assert "gemm 64x64x64" in capsys.readouterr().out
    # and --compare on the run against itself: nothing changed
    assert main(["bench", "--compare", str(out / "bench.json"), str(out / "bench.json")]) == 0
    assert "slower: 0" in capsys.readouterr().out


def test_nnx_bench_rejects_unknown_suite(capsys):
    from nnx.cli import main

    assert main(["bench", "--quick", "--suite", "nope", "--no-torch", "--no-plots",
                 "--out", "/nonexistent-not-written"]) == 2
    assert "nope" in capsys.readouterr().err


def test_table_says_why_a_backend_is_slower_than_torch():
    from nnx.bench.report import format_table

    def rec(target, med, torch_ratio=None, why=None):
        r = {"case": "act", "target": target, "status": "ok", "median_s": med, "iqr_s": 0.0,
             "speedup_over": {} if torch_ratio is None else {"torch": {"median": torch_ratio}}}
        if why:
            r["why"] = why
        return r

    slow = [rec("numpy", 1.0), rec("numba", 2.0, 0.8, {"numba": "scalar libm tanh"}),
            rec("torch", 1.6)]
    text = format_table(slow)
    assert "numba slower than torch: scalar libm tanh -- act (0.80x)" in text
    unexplained = [rec("numpy", 1.0), rec("numba", 2.0, 0.9), rec("torch", 1.8)]
    assert "numba slower than torch: no explanation recorded" in format_table(unexplained)
    fast = [rec("numpy", 1.0), rec("numba", 1.0, 1.2, {"numba": "x"}), rec("torch", 1.2)]
    assert "slower than torch" not in format_table(fast)
