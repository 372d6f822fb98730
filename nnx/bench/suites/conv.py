"""Conv2D through the layer (the kernels plus the layer's bookkeeping): the training-mode
forward, and forward + backward (`begin_update`, then its backprop closure)."""

from __future__ import annotations

from nnx.layers.conv2d import Conv2D
from nnx.model import Sequential

from ..registry import Case, Skip, suite
from .common import F32, randn

# (N, C, H, W, F, k, padding): the MNIST CNN's two convolutions at batch 128
CONV_SHAPES = [(128, 1, 28, 28, 32, 3, 1), (128, 32, 14, 14, 64, 3, 1)]
CONV_QUICK = [(8, 2, 12, 12, 4, 3, 1)]


def conv_layer(t, C, F, k, pad):
    """(ops, a Conv2D built into its own one-layer model on a fresh Ops of the target)."""
    ops = t.new_ops()
    if not hasattr(ops, "conv2d_forward"):
        raise Skip(f"backend {t.name} has no conv2d_forward kernel yet")
    model = Sequential([Conv2D(C, F, k, padding=pad)], backend=ops)
    return model.ops, model.layers[0]


def _torch_conv(t, direction, x0, dy0, C, F, k, pad):
    torch = t.torch
    x, dy = t.array(x0), t.array(dy0)
    Wt = t.array(randn((F, C, k, k), 3, 0.1))
    b = t.array(randn((F,), 4, 0.1))
    if direction == "fwd":
        conv = torch.nn.functional.conv2d
        return lambda: conv(x, Wt, b, padding=pad)
    conv, cb = torch.nn.functional.conv2d, torch.ops.aten.convolution_backward

    def fwd_bwd():  # the forward too, as nnx's case runs it (its closure needs one)
        conv(x, Wt, b, padding=pad)
        return cb(dy, x, Wt, [F], [1, 1], [pad, pad], [1, 1], False, [0, 0], 1,
                  [True, True, True])

    return fwd_bwd


def conv_case(shape, direction) -> Case:
    N, C, H, W, F, k, pad = shape
    Ho, Wo = H + 2 * pad - k + 1, W + 2 * pad - k + 1
    fwd_flops = 2.0 * N * F * Ho * Wo * C * k * k
    fwd = direction == "fwd"

    def setup(t):
        x0 = randn((N, C, H, W), 1)
        dy0 = randn((N, F, Ho, Wo), 2)
        if t.kind == "torch":
            return _torch_conv(t, direction, x0, dy0, C, F, k, pad)
        ops, layer = conv_layer(t, C, F, k, pad)
        x, dy = ops.asarray(x0), ops.asarray(dy0)
        if fwd:  # training mode (what a step runs: im2col kept for backward), closure dropped
            return lambda: layer.begin_update(x, True)[0]

        def fwd_bwd():  # the closure holds the saved im2col buffer: one forward per backward
            _y, backprop = layer.begin_update(x, True)
            return backprop(dy, True)

        return fwd_bwd

    return Case(
        name=f"conv2d_{direction} N{N} C{C} {H}x{W} F{F} k{k}", suite="conv2d", setup=setup,
        flops=fwd_flops if fwd else 3 * fwd_flops,  # bwd case = fwd + dW + dx
        bytes=F32 * (N * C * H * W + F * C * k * k + N * F * Ho * Wo) * (1 if fwd else 3),
        params={"N": N, "C": C, "H": H, "W": W, "F": F, "k": k, "padding": pad,
                "note": "" if fwd else "bwd includes its forward (begin_update: the backprop "
                                       "closure holds the saved buffers)"},
        group="conv2d", bound="compute", why=dict(CONV_WHY))


# Shown in the table only where the backend measured slower than torch at that shape.
CONV_WHY = {"numba": "im2col + OpenBLAS GEMMs by groups of samples (with 2+ threads one group per "
                     "thread, single-threaded GEMMs: kernels/numba_conv_threads.py; with 1, "
                     "kernels/numba_conv.py) against oneDNN's direct convolution, which runs "
                     "these shapes nearer the peak; the whole CNN training step is ahead (cnn "
                     "suite)"}


@suite("conv2d", "Conv2D forward and forward+backward at the MNIST CNN's shapes")
def conv_suite(quick: bool):
    shapes = CONV_QUICK if quick else CONV_SHAPES
    return [conv_case(s, d) for s in shapes for d in ("fwd", "bwd")]


SUITES = (conv_suite,)
