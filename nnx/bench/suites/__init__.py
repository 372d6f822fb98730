"""The built-in benchmark suites, one module per family. Every case runs on every target: each
nnx backend through the same calls a layer makes, and PyTorch as a yardstick through the closest
torch calls.

Sizes follow the MNIST workloads of the model zoo: the MLP 784-512-256-10 at batch 128 (its
GEMMs are `128x784x512`, ... written m x k x n for A (m, k) @ B (k, n)), the CNN's im2col GEMMs,
an LSTM over 28 image rows. `quick=True` shrinks every size (a smoke test of the harness).
Cases whose kernel has not landed on a backend raise `Skip` with the reason from their setup.

Registration is explicit: each module declares its suites with `@suite(name, help)` and lists
them in its `SUITES`; importing a module registers nothing. `register_all(registry)` adds them,
in the order below, to a `SuiteRegistry` (`nnx.bench.default_registry()` is built that way).

    gemm         gemm.py         SGEMM at the models' shapes and square sizes
    dense        dense.py        Dense kernels: forward fused / unfused, backward
    activations  activations.py  every activation, forward + backward
    loss         losses.py       softmax cross-entropy
    optimizer    optim.py        Adam and SGD-momentum over a flat buffer
    conv2d       conv.py         the Conv2D layer: forward, forward + backward
    lstm         recurrent.py    the LSTM layer: forward + backward
    mlp cnn mnist  models.py     training steps of zoo models, one MNIST epoch (helpers: zoo.py)
    generate     generate.py     text generation tokens/s (char LSTM, causal Transformer)
"""

from __future__ import annotations

from ..registry import SuiteRegistry
from . import activations, conv, dense, gemm, generate, losses, models, optim, recurrent

MODULES = (gemm, dense, activations, losses, optim, conv, recurrent, models, generate)
SUITES = tuple(fn for module in MODULES for fn in module.SUITES)

__all__ = ["MODULES", "SUITES", "register_all"]


def register_all(registry: SuiteRegistry) -> SuiteRegistry:
    """Add every built-in suite to `registry` (in the order of MODULES); returns it."""
    for fn in SUITES:
        registry.add(fn)
    return registry
