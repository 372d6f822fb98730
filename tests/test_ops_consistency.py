"""Every backend's kernel methods have exactly the reference's signatures (thinc's
test_ops_consistency), so that layers can call any backend the same way."""

from __future__ import annotations

import importlib
import inspect

import pytest
from nnx.kernels.reference import Ops

BACKEND_CLASSES = [("nnx.kernels.numba_cpu", "NumbaOps"), ("nnx.kernels.cupy_gpu", "CupyOps")]


def public_methods(cls):
    return {n: f for n, f in inspect.getmembers(cls, inspect.isfunction) if not n.startswith("_")}


@pytest.mark.parametrize("module,name", BACKEND_CLASSES)
def test_signatures_match_reference(module, name):
    cls = getattr(importlib.import_module(module), name)  # importable without numba/cupy
    base = public_methods(Ops)
    for method, fn in public_methods(cls).items():
        if method in base and fn is not base[method]:
            assert inspect.signature(fn) == inspect.signature(base[method]), (
                f"{name}.{method}{inspect.signature(fn)} differs from "
                f"Ops.{method}{inspect.signature(base[method])}"
            )


def test_every_kernel_has_a_backward_twin():
    methods = public_methods(Ops)
    acts = ["relu", "leaky_relu", "sigmoid", "tanh", "softmax", "gelu", "dropout"]
    for act in acts:
        assert f"backprop_{act}" in methods
    for fwd in [m for m in methods if m.endswith("_forward")]:
        assert fwd.replace("_forward", "_backward") in methods or \
            "backprop_" + fwd.replace("_forward", "") in methods, fwd
