"""The house rules (tools/house_check.py): no import cycles, no library module importing CLI
code, no run-time patching, no source file over 600 lines."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("house_check", ROOT / "tools" / "house_check.py")
house = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(house)


def test_no_import_cycles():
    graph = house.import_graph(ROOT)
    assert "nnx.model" in graph and "nnx.kernels.reference" in graph  # the walk found the code
    assert house.cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
    assert house.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_library_module_imports_cli_code():
    assert house.cli_imports(house.import_graph(ROOT)) == []


def test_no_run_time_patching():
    assert house.patching_sites(ROOT) == []


def test_patching_detector_sees_patches(tmp_path):
    pkg = tmp_path / "nnx"
    pkg.mkdir()
    (tmp_path / "kernels").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "bad.py").write_text(
        "def wrap(model):\n"
        "    def fit(*a):\n"
        "        return None\n"
        "    model.fit = fit\n"
        "    model.save = lambda p: None\n"
        "    setattr(model, 'x', 1)\n"
        "    model.layer.__class__ = int\n"
    )
    assert len(house.patching_sites(tmp_path)) == 4


def test_no_file_over_the_limit():
    assert house.large_files(ROOT) == []
