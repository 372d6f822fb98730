"""Every activation, forward + backward (memory-bound elementwise kernels)."""

from __future__ import annotations

import math

from ..registry import Case, fmt_shape, suite
from .common import F32, randn

ACTS = ("relu", "leaky_relu", "sigmoid", "tanh", "gelu", "softmax")


def torch_act(torch, act):
    """(forward, backward(dy, x, y) -> dx) of `act` through ATen's own kernels (no autograd)."""
    F = torch.nn.functional
    aten = torch.ops.aten
    fwd = {
        "relu": torch.relu,
        "leaky_relu": lambda x: F.leaky_relu(x, 0.01),
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "gelu": lambda x: F.gelu(x, approximate="tanh"),
        "softmax": lambda x: torch.softmax(x, -1),
    }[act]
    bwd = {
        "relu": lambda dy, x, y: aten.threshold_backward(dy, y, 0),
        "leaky_relu": lambda dy, x, y: aten.leaky_relu_backward(dy, y, 0.01, True),
        "sigmoid": lambda dy, x, y: aten.sigmoid_backward(dy, y),
        "tanh": lambda dy, x, y: aten.tanh_backward(dy, y),
        "gelu": lambda dy, x, y: aten.gelu_backward(dy, x, approximate="tanh"),
        "softmax": lambda dy, x, y: aten._softmax_backward_data(dy, y, -1, torch.float32),
    }[act]
    return fwd, bwd


def act_case(act, shape) -> Case:
    def setup(t):
        x = t.array(randn(shape, 1))
        dy = t.array(randn(shape, 2))
        if t.kind == "torch":
            fwd, bwd = torch_act(t.torch, act)

            def torch_fb():
                y = fwd(x)
                return bwd(dy, x, y)

            return torch_fb
        ops = t.ops

        def fb():
            _y, saved = ops.activation_forward(x, act)
            return ops.activation_backward(dy, saved, act)

        return fb

    size = math.prod(shape)
    return Case(
        name=f"act {act} fwd+bwd {fmt_shape(*shape)}", suite="activations", setup=setup,
        flops=None, bytes=F32 * 5 * size,  # fwd: x -> y; bwd: dy, saved -> dx
        params={"activation": act, "shape": list(shape)}, group="activations", bound="memory",
        why={"numba": ACT_WHY[act]} if act in ACT_WHY else {})


# Shown in the table only where numba measured slower than torch (2026-11-29 runs: relu
# 0.78-0.94x, leaky_relu 0.96-1.10x, sigmoid 0.97x at 128x512, softmax 0.81-1.31x; the others
# 1.5-3.7x ahead).
_MEMORY = ("memory-bound: one pass each way over the same bytes as torch's kernel (nnx "
           "allocates the output and keeps it for the backward). At 1024x4096 this harness's "
           "fresh 16 MB outputs page-fault after each parallel kernel on this VM (1006 faults "
           "per fwd+bwd: 10.9 ms; 5.1 ms, 0 faults, with glibc's mmap / trim thresholds "
           "raised); the train steps measured 0 faults per step")
ACT_WHY = {
    "relu": _MEMORY,
    "leaky_relu": _MEMORY,
    "sigmoid": ("compute-bound on the float32 exp and divide (numba_math: ~16 cycles per 8 "
                "lanes), serial at 128x512 (the parallel driver measured 0.89x there: a launch "
                "costs ~40 us on this box), where torch's 2-thread kernel ties it (0.97-1.03x "
                "across runs); at 1024x4096 0.96-1.51x across runs, its fresh outputs "
                "page-faulting in this harness as relu's do"),
    "softmax": ("not settled: the row maximum stays a scalar loop (its compare keeps NaN "
                "propagating) while the exp and sums vectorize; behind at 128x512 (serial: the "
                "parallel driver measured 1.2x slower there), 0.98-1.31x across runs at "
                "1024x4096, whose fresh outputs page-fault in this harness as relu's do"),
}


@suite("activations", "every activation, forward + backward (memory-bound elementwise kernels)")
def activations_suite(quick: bool):
    shapes = [(64, 128)] if quick else [(128, 512), (1024, 4096)]
    return [act_case(a, s) for s in shapes for a in ACTS]


SUITES = (activations_suite,)
