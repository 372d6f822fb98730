"""Kernel-level benchmarks: GEMM, dense forward (fused vs unfused) and backward, activations,
softmax cross-entropy, optimizer updates, conv2d, LSTM. Run with `pytest benchmarks/
--benchmark-only` (see conftest.py)."""

from nnx.bench.pytest_support import run_benchmark

SUITES = ["gemm", "dense", "activations", "loss", "optimizer", "conv2d", "lstm"]


def test_kernel(benchmark, bench_case, target):
    run_benchmark(benchmark, bench_case, target)
