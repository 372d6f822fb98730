"""Targets in a worker process of their own (nnx.bench.remote, nnx.bench.worker) and per-round
speed-up ratios. CI has no torch, so the mechanism is tested with a remote "numpy" target; the
torch-specific checks skip without torch. Timings are never asserted."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nnx import bench, compat
from nnx.bench import report
from nnx.bench.machine import process_cpu_s
from nnx.bench.registry import Target
from nnx.bench.remote import RemoteTarget, user_environ, worker_environ
from nnx.bench.runner import RunConfig, ratio_stats, round_ratios, run_case, run_cases
from nnx.bench.timing import Stats

ROOT = Path(__file__).resolve().parents[1]

TOY = textwrap.dedent('''
    """Toy cases for tests/test_bench_remote.py (written by the test)."""
    import os
    import sys
    import time

    import numpy as np

    from nnx.bench.registry import Case, Skip, SuiteRegistry, suite


    def _ok(t):
        x = t.array(np.ones((8, 8), np.float32))
        print("noise on stdout")  # the protocol stream must survive a case's prints
        sys.stdout.flush()
        os.write(1, b"raw noise on file descriptor 1\\n")
        return lambda: x @ x


    def _raises(t):
        raise ValueError("boom in setup")


    def _skips(t):
        raise Skip("not on this target")


    def _dies(t):
        os._exit(3)


    def _hangs(t):
        time.sleep(60)


    def _fails_later(t):
        calls = []

        def fn():
            calls.append(1)
            if len(calls) > 3:
                raise RuntimeError("broke on call 4")

        return fn


    @suite("toy", "toy cases for the remote-target tests")
    def toy(quick):
        return [Case(name, "toy", fn, number=1) for name, fn in (
            ("ok", _ok), ("raises", _raises), ("skips", _skips), ("dies", _dies),
            ("hangs", _hangs), ("fails later", _fails_later))]


    def registry():
        return SuiteRegistry([toy])
''')


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """(module, worker environment): the toy registry, importable here and in a worker."""
    (tmp_path / "nnx_bench_toy.py").write_text(TOY)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("nnx_bench_toy", None)
    mod = importlib.import_module("nnx_bench_toy")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    return mod, env


def _cases(mod):
    return {c.name: c for c in mod.registry().cases()}


def _remote(env, **kw):
    kw.setdefault("label", "numpy-worker")
    return RemoteTarget("numpy", 1, suites=["toy"], registry="nnx_bench_toy:registry",
                        environ=env, **kw)


CONFIG = RunConfig(repeats=4, sample_s=0.001, warmup=1, busy_threshold=None, remote_gap_s=0.0)


# -- environment ----------------------------------------------------------------------------
def test_user_environ_undoes_what_import_nnx_set():
    now = {"OMP_WAIT_POLICY": "passive", "OPENBLAS_THREAD_TIMEOUT": "4", "HOME": "/h"}
    assert user_environ(now, started={}) == {"HOME": "/h"}  # nnx set both: dropped
    assert user_environ(now, started={"OMP_WAIT_POLICY": "passive"})["OMP_WAIT_POLICY"] == \
        "passive"  # the user had set it
    changed = dict(now, OMP_WAIT_POLICY="active")  # changed after start-up: kept
    assert user_environ(changed, started={})["OMP_WAIT_POLICY"] == "active"


def test_worker_environ_sets_every_thread_variable_and_finds_this_nnx():
    env = worker_environ(3, {"PYTHONPATH": "/elsewhere", "OMP_NUM_THREADS": "8"})
    for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        assert env[v] == "3"
    assert env["PYTHONPATH"].split(os.pathsep) == [str(ROOT), "/elsewhere"]


def test_process_cpu_s_reads_proc():
    assert process_cpu_s(os.getpid()) >= 0.0
    assert process_cpu_s(2**22 + 12345) == 0.0  # no such process


# -- the worker -----------------------------------------------------------------------------
def test_remote_samples_come_from_another_process(toy):
    mod, env = toy
    with _remote(env) as rt:
        recs = run_case(_cases(mod)["ok"], [Target("numpy"), rt], CONFIG)
        worker_pid = rt.pid
    by = {r["target"]: r for r in recs}
    local, remote = by["numpy"], by["numpy-worker"]
    assert local["status"] == remote["status"] == "ok", recs
    assert local["process"] == "main" and local["pid"] == os.getpid()
    assert remote["process"] == "worker" and remote["pid"] == worker_pid != os.getpid()
    assert remote["repeats"] == len(remote["samples_s"]) == 4 and remote["first_call_s"] > 0
    # per-round ratio medians against the numpy baseline
    sp = remote["speedup_over"]["numpy"]
    assert sp["rounds"] == 4 and sp["median"] > 0 and sp["q1"] <= sp["median"] <= sp["q3"]
    assert "speedup_over" not in local  # no baseline but itself


def test_worker_errors_become_records_and_the_run_goes_on(toy):
    mod, env = toy
    c = _cases(mod)
    with _remote(env, timeout_s=3.0) as rt:
        recs = run_cases([c["raises"], c["skips"], c["dies"], c["ok"], c["hangs"],
                          c["fails later"], c["ok"]], [rt], CONFIG, log=None)
    got = [(r["case"], r["status"], r["reason"]) for r in recs]
    assert [g[:2] for g in got] == [
        ("raises", "error"), ("skips", "skipped"), ("dies", "error"), ("ok", "ok"),
        ("hangs", "error"), ("fails later", "error"), ("ok", "ok")], got
    assert "boom in setup" in got[0][2]
    assert got[1][2] == "not on this target"
    assert "exited (status 3)" in got[2][2]
    assert "sent nothing for 3 s" in got[4][2]
    assert "broke on call 4" in got[5][2]
    # a fresh worker after each death: three processes in all
    assert recs[3]["pid"] != recs[6]["pid"] and rt.starts == 3


def test_a_case_the_worker_does_not_know_is_an_error(toy):
    mod, env = toy
    other = bench.cases(["loss"], quick=True)[0]
    with _remote(env) as rt:
        rec = run_case(other, [rt], CONFIG)[0]
    assert rec["status"] == "error" and "not in the worker's registry" in rec["reason"]


def test_a_worker_that_cannot_start_is_not_restarted_for_every_case(toy):
    mod, env = toy
    rt = RemoteTarget("numpy", 1, registry="no_such_module_here:registry", environ=env)
    recs = run_cases(list(_cases(mod).values())[:2], [rt], CONFIG, log=None)
    assert all(r["status"] == "error" and "did not start" in r["reason"] for r in recs)
    assert "no_such_module_here" in recs[0]["reason"] and rt.starts == 1
    rt.close()


def test_bench_run_with_a_remote_target():
    run = bench.run(suites=["loss"], backends=["numpy"], quick=True, torch=False,
                    remote=["numpy"], log=None)
    assert {r["process"] for r in run["results"]} == {"worker"}
    assert all(r["status"] == "ok" for r in run["results"])
    w = run["settings"]["remote_targets"]["numpy"]
    assert w["pid"] != os.getpid() and w["env_at_start"]["OMP_NUM_THREADS"]
    assert run["results"][0]["pid"] == w["pid"]


# -- per-round ratios -------------------------------------------------------------------------
class _Fake:
    def __init__(self, rounds, samples):
        self.rounds, self.stats = list(rounds), Stats(list(samples))


def test_ratios_pair_samples_of_the_same_round():
    base = _Fake([0, 1, 2, 3], [2.0, 4.0, 2.0, 8.0])
    other = _Fake([0, 1, 3], [1.0, 4.0, 2.0])  # round 2 lost
    assert round_ratios(base, other) == [2.0, 1.0, 4.0]
    st = ratio_stats([2.0, 1.0, 4.0])
    assert st["median"] == 2.0 and st["rounds"] == 3 and st["iqr"] == pytest.approx(1.5)


def test_table_speedups_use_per_round_medians_and_mark_old_records():
    def rec(target, med, speedup=None):
        r = {"case": "c", "suite": "s", "target": target, "status": "ok", "median_s": med,
             "iqr_s": 0.0}
        if speedup:
            r["speedup_over"] = speedup
        return r

    recs = [rec("numpy", 4.0), rec("numba", 1.0, {"numpy": {"median": 3.0}, "torch": {
        "median": 1.5}}), rec("torch", 2.0, {"numpy": {"median": 2.5}})]
    header, rows, _ = report.table_rows(recs, ["numpy", "numba", "torch"])
    row = dict(zip(header, rows[0], strict=True))
    # per-round medians where recorded (not the 4.0 and 2.0 ratios of the medians)
    assert row["xnumba"] == "3.00x" and row["xtorch"] == "2.50x"
    assert row["numba vs torch"] == "1.50x"
    assert row["numpy vs torch"] == "0.50x*"  # no per-round ratio recorded: ratio of medians
    assert "over rounds" in report.SPEEDUP_HEADER


# -- torch ------------------------------------------------------------------------------------
@pytest.mark.skipif(not compat.has_torch, reason="PyTorch is not installed")
def test_nnx_bench_with_torch_never_imports_torch_here(tmp_path):
    code = textwrap.dedent(f"""
        import json, sys
        from nnx.cli import main
        rc = main(["bench", "--quick", "--suite", "loss", "--backends", "numpy", "torch",
                   "--no-plots", "--out", {str(tmp_path)!r}])
        print(json.dumps({{"rc": rc, "torch_imported": "torch" in sys.modules}}))
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("OMP_WAIT_POLICY", None)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out == {"rc": 0, "torch_imported": False}
    run = report.load_json(tmp_path / "bench.json")
    by = {r["target"]: r for r in run["results"]}
    assert by["torch"]["status"] == "ok" and by["torch"]["process"] == "worker"
    assert by["torch"]["speedup_over"]["numpy"]["rounds"] >= 2
    assert by["numpy"]["speedup_over"]["torch"]["median"] > 0
    w = run["settings"]["remote_targets"]["torch"]
    assert w["torch"]["threads"] == run["settings"]["threads"]["torch"]
    # torch loaded with the user's environment, not with what `import nnx` set
    assert w["env_at_start"]["OMP_WAIT_POLICY"] is None
    assert "numpy vs torch" in (tmp_path / "table.txt").read_text()
