"""`nnx bench` after a plain install (no matplotlib): it says so in one line before running any
suite, then writes the JSON and the tables, and no plots; it used to run every suite and die with
ModuleNotFoundError while plotting."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from nnx import bench, compat
from nnx.bench import plots
from nnx.cli import main

REFERENCE = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "bench.json"


@pytest.fixture
def no_matplotlib(monkeypatch):
    """matplotlib made unimportable, as on a plain install (a None entry in sys.modules)."""
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert not compat.has_matplotlib() and not plots.available()


def _small_run() -> dict:
    """A few real records of the reference run (gemm cases on numpy and numba)."""
    run = json.loads(REFERENCE.read_text())
    run["results"] = [r for r in run["results"] if r["suite"] == "gemm"
                      and r["target"] in ("numpy", "numba")][:4]
    run["targets"] = ["numpy", "numba"]
    run.pop("crossover", None)
    return run


def test_plain_install_says_so_before_any_suite_runs(no_matplotlib, monkeypatch, capsys,
                                                     tmp_path):
    seen = {}

    def fake_run(**kwargs):  # stands for the suites: records what was printed before them
        seen["printed_before"] = capsys.readouterr().out
        return _small_run()

    monkeypatch.setattr(bench, "run", fake_run)
    out = tmp_path / "out"
    assert main(["bench", "--suite", "gemm", "--no-torch", "--out", str(out)]) == 0
    before = seen["printed_before"].strip().splitlines()
    assert before == [f"nnx bench: {plots.MISSING}"]
    assert "pip install nnx-framework[bench]" in before[0]
    rest = capsys.readouterr().out
    assert "matplotlib" not in rest  # said once, before the suites
    names = sorted(p.name for p in out.iterdir())
    assert names == ["bench.json", "machine.json", "table.md", "table.txt"]
    assert json.loads((out / "bench.json").read_text())["results"]


def test_merge_without_matplotlib_writes_json_and_tables(no_matplotlib, capsys, tmp_path):
    src = tmp_path / "run.json"
    src.write_text(json.dumps(_small_run()))
    out = tmp_path / "merged"
    assert main(["bench", "--merge", str(src), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.count("pip install nnx-framework[bench]") == 1
    assert not list(out.glob("*.png")) and (out / "table.txt").exists()


def test_write_outputs_called_directly_skips_plots_with_a_line(no_matplotlib, tmp_path):
    from nnx.commands.bench import write_outputs

    lines = []
    assert write_outputs(_small_run(), str(tmp_path), plots=True, log=lines.append) == 0
    assert sum("nnx-framework[bench]" in ln for ln in lines) == 1
    assert not list(tmp_path.glob("*.png"))


def test_plotting_without_matplotlib_names_the_extra(no_matplotlib):
    with pytest.raises(ModuleNotFoundError, match=r"pip install nnx-framework\[bench\]"):
        plots._plt()


@pytest.mark.skipif(not compat.has_matplotlib(), reason="matplotlib is not installed")
def test_with_matplotlib_the_plots_are_written(capsys, tmp_path):
    src = tmp_path / "run.json"
    src.write_text(json.dumps(_small_run()))
    out = tmp_path / "merged"
    assert main(["bench", "--merge", str(src), "--out", str(out)]) == 0
    assert "nnx-framework[bench]" not in capsys.readouterr().out
    assert list(out.glob("*.png"))
