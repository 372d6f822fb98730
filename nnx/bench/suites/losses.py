"""Softmax cross-entropy: the loss and its gradient in one call."""

from __future__ import annotations

import numpy as np

from ..registry import Case, fmt_shape, suite
from .common import F32, randn


def sce_case(n, c) -> Case:
    def setup(t):
        logits = randn((n, c), 1, 3.0)
        labels = np.random.default_rng(2).integers(0, c, n).astype(np.int64)
        if t.kind == "torch":
            F = t.torch.nn.functional
            x = t.array(logits).requires_grad_(True)
            y = t.array(labels)

            def torch_sce():
                x.grad = None
                loss = F.cross_entropy(x, y)
                loss.backward()  # torch autograd: the gradient nnx's call returns too
                return loss

            return torch_sce
        ops = t.ops
        x, y = t.array(logits), ops.asarray(labels)
        return lambda: ops.softmax_cross_entropy(x, y)

    return Case(
        name=f"softmax_ce {fmt_shape(n, c)}", suite="loss", setup=setup,
        flops=None, bytes=F32 * 2 * n * c + 8 * n,
        params={"n": n, "classes": c}, group="loss", bound="memory")


@suite("loss", "softmax cross-entropy, loss and gradient in one call")
def loss_suite(quick: bool):
    return [sce_case(32, 10)] if quick else [sce_case(128, 10), sce_case(1024, 1000)]


SUITES = (loss_suite,)
