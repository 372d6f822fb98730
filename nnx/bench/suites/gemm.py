"""SGEMM at the MLP's and the CNN's shapes and at square sizes (BLAS through xp.matmul)."""

from __future__ import annotations

from ..registry import Case, fmt_shape, gemm_flops, suite
from .common import F32, randn

# (label, m, k, n, A transposed, B transposed): the GEMMs of one MLP 784-512-256-10 step at
# batch 128 (forward; the weight gradient x^T @ dz; the input gradient dz @ W^T) ...
MLP_GEMMS = [
    ("mlp fwd L1", 128, 784, 512, False, False),
    ("mlp fwd L2", 128, 512, 256, False, False),
    ("mlp fwd L3", 128, 256, 10, False, False),
    ("mlp dW L1", 784, 128, 512, True, False),
    ("mlp dx L2", 128, 256, 512, False, True),
]
# ... and of a small MNIST CNN through im2col at batch 128: conv 3x3 1->32 on 28x28
# ((N*H*W, C*9) @ (C*9, F)), conv 3x3 32->64 on 14x14, and the latter's weight gradient.
CNN_GEMMS = [
    ("cnn conv1 im2col", 128 * 28 * 28, 9, 32, False, False),
    ("cnn conv2 im2col", 128 * 14 * 14, 288, 64, False, False),
    ("cnn conv2 dW", 288, 128 * 14 * 14, 64, True, False),
]
SQUARE = (256, 512, 1024, 2048)


def gemm_case(label, m, k, n, ta, tb, group, x=None) -> Case:
    def setup(t):
        A = randn((k, m) if ta else (m, k), 1)
        B = randn((n, k) if tb else (k, n), 2)
        a, b = t.array(A), t.array(B)
        a = a.T if ta else a
        b = b.T if tb else b
        c = t.empty((m, n))
        mm = t.torch.matmul if t.kind == "torch" else t.ops.xp.matmul
        return lambda: mm(a, b, out=c)

    suffix = (" A^T" if ta else "") + (" B^T" if tb else "")
    return Case(
        name=f"gemm {fmt_shape(m, k, n)}{suffix}", suite="gemm", setup=setup,
        flops=gemm_flops(m, k, n), bytes=F32 * (m * k + k * n + m * n),
        params={"label": label, "m": m, "k": k, "n": n, "trans_a": ta, "trans_b": tb},
        group=group, x=x, bound="compute", why=dict(GEMM_WHY))


# Shown in the table only where the backend measured slower than torch at that shape.
GEMM_WHY = {"numba": "numba's GEMM is NumPy's (the same OpenBLAS call; nnx writes no GEMM); "
                     "PyTorch calls MKL, faster than OpenBLAS at some shapes"}


@suite("gemm", "SGEMM at the MLP's and the CNN's shapes and square sizes (BLAS through xp.matmul)")
def gemm_suite(quick: bool):
    if quick:
        out = [gemm_case("square", n, n, n, False, False, "gemm_square", n) for n in (64, 128)]
        return out + [gemm_case(*MLP_GEMMS[0], "gemm_mlp")]
    out = [gemm_case(*g, "gemm_mlp") for g in MLP_GEMMS]
    out += [gemm_case(*g, "gemm_cnn") for g in CNN_GEMMS]
    out += [gemm_case("square", n, n, n, False, False, "gemm_square", n) for n in SQUARE]
    return out


SUITES = (gemm_suite,)
