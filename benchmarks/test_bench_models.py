"""Model-level benchmarks: the MLP and CNN training steps and one MNIST epoch of the MLP. Run
with `pytest benchmarks/ --benchmark-only` (see conftest.py)."""

from nnx.bench.pytest_support import run_benchmark

SUITES = ["mlp", "cnn", "mnist"]


def test_model(benchmark, bench_case, target):
    run_benchmark(benchmark, bench_case, target)
