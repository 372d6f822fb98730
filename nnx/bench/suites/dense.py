"""Dense layer kernels: forward fused vs unfused (GEMM, bias add, ReLU), and backward."""

from __future__ import annotations

import math

from ..registry import Case, fmt_shape, gemm_flops, suite
from .common import F32, randn

DENSE_SHAPES = [(128, 784, 512), (128, 512, 256), (1024, 1024, 1024)]
DENSE_QUICK = [(32, 64, 32)]


def dense_inputs(t, m, k, n):
    """x (m, k), W (k, n) and b (n,) on the target."""
    x = t.array(randn((m, k), 1))
    W = t.array(randn((k, n), 2, 1 / math.sqrt(k)))
    b = t.array(randn((n,), 3, 0.1))
    return x, W, b


def dense_fwd_case(m, k, n, fused: bool) -> Case:
    def setup(t):
        x, W, b = dense_inputs(t, m, k, n)
        if t.kind == "torch":
            torch = t.torch
            if fused:  # bias in the GEMM (addmm's beta*C), ReLU in place
                return lambda: torch.addmm(b, x, W).relu_()

            def torch_unfused():
                z = torch.matmul(x, W)
                z += b
                return torch.relu(z)

            return torch_unfused
        ops = t.ops
        if fused:
            return lambda: ops.dense_forward(x, W, b, "relu")
        mm = ops.xp.matmul

        def unfused():  # the same backend's separate kernels: GEMM, bias add, activation
            z = mm(x, W)
            z += b
            return ops.relu(z)

        return unfused

    kind = "fused" if fused else "unfused"
    return Case(
        name=f"dense_fwd {kind} {fmt_shape(m, k, n)}", suite="dense", setup=setup,
        flops=gemm_flops(m, k, n) + 2 * m * n,
        bytes=F32 * (m * k + k * n + n + m * n),
        params={"m": m, "k": k, "n": n, "activation": "relu", "variant": kind},
        group="dense", bound="compute", why=dict(DENSE_WHY))


# Shown in the table only where the backend measured slower than torch at that shape.
DENSE_WHY = {"numba": "GEMM-bound: the GEMMs are OpenBLAS (as numpy's) against PyTorch's MKL; "
                      "the fused epilogue is a few percent of the time"}


def dense_bwd_case(m, k, n) -> Case:
    def setup(t):
        x, W, b = dense_inputs(t, m, k, n)
        dy = t.array(randn((m, n), 4))
        if t.kind == "torch":
            torch = t.torch
            aten = torch.ops.aten
            y = torch.addmm(b, x, W).relu_()
            dW = torch.empty_like(W)
            db = torch.empty_like(b)
            Wt = W.t()

            def torch_bwd():
                dz = aten.threshold_backward(dy, y, 0)
                torch.mm(x.t(), dz, out=dW)
                torch.sum(dz, 0, out=db)
                return torch.mm(dz, Wt)

            return torch_bwd
        ops = t.ops
        _y, saved = ops.dense_forward(x, W, b, "relu")
        dW, db = ops.zeros(W.shape), ops.zeros(b.shape)
        return lambda: ops.dense_backward(dy, x, W, saved, "relu", True, dW, db)

    return Case(
        name=f"dense_bwd {fmt_shape(m, k, n)}", suite="dense", setup=setup,
        flops=2 * gemm_flops(m, k, n) + 2 * m * n,
        bytes=F32 * (2 * m * n + 2 * m * k + 2 * k * n + n),
        params={"m": m, "k": k, "n": n, "activation": "relu", "need_dx": True},
        group="dense", bound="compute", why=dict(DENSE_WHY))


@suite("dense", "Dense layer kernels: forward fused vs unfused (GEMM, bias add, ReLU), backward")
def dense_suite(quick: bool):
    out = []
    for m, k, n in DENSE_QUICK if quick else DENSE_SHAPES:
        out += [dense_fwd_case(m, k, n, True), dense_fwd_case(m, k, n, False),
                dense_bwd_case(m, k, n)]
    return out


SUITES = (dense_suite,)
