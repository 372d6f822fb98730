"""The built-in benchmark suites. Every case runs on every target: each nnx backend through the
same calls a layer makes, and PyTorch as a yardstick through the closest torch calls.

Sizes follow the MNIST workloads of the model zoo: the MLP 784-512-256-10 at batch 128 (its
GEMMs are `128x784x512`, ... written m x k x n for A (m, k) @ B (k, n)), the CNN's im2col GEMMs,
an LSTM over 28 image rows. `quick=True` shrinks every size (a smoke test of the harness).

Cases whose layer or kernel has not landed yet raise `Skip` with the reason from their setup,
so they appear in the tables as soon as the code exists.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import numpy as np

from .registry import Case, Skip, fmt_shape, gemm_flops, suite

F32 = 4  # bytes per float32


def _randn(shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _torch_only(t):
    if t.kind != "torch":
        raise AssertionError("torch setup on a non-torch target")


# ============================================================================================
# GEMM
# ============================================================================================
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


def _gemm_case(label, m, k, n, ta, tb, group, x=None):
    def setup(t):
        A = _randn((k, m) if ta else (m, k), 1)
        B = _randn((n, k) if tb else (k, n), 2)
        a, b = t.array(A), t.array(B)
        a = a.T if ta else a
        b = b.T if tb else b
        c = t.empty((m, n))
        if t.kind == "torch":
            mm = t.torch.matmul
            return lambda: mm(a, b, out=c)
        mm = t.ops.xp.matmul
        return lambda: mm(a, b, out=c)

    suffix = (" A^T" if ta else "") + (" B^T" if tb else "")
    return Case(
        name=f"gemm {fmt_shape(m, k, n)}{suffix}", suite="gemm", setup=setup,
        flops=gemm_flops(m, k, n), bytes=F32 * (m * k + k * n + m * n),
        params={"label": label, "m": m, "k": k, "n": n, "trans_a": ta, "trans_b": tb},
        group=group, x=x, bound="compute")


@suite("gemm", "SGEMM at the MLP's and the CNN's shapes and square sizes (BLAS through xp.matmul)")
def gemm_suite(quick: bool):
    if quick:
        out = [_gemm_case("square", n, n, n, False, False, "gemm_square", n) for n in (64, 128)]
        return out + [_gemm_case(*MLP_GEMMS[0], "gemm_mlp")]
    out = [_gemm_case(*g, "gemm_mlp") for g in MLP_GEMMS]
    out += [_gemm_case(*g, "gemm_cnn") for g in CNN_GEMMS]
    out += [_gemm_case("square", n, n, n, False, False, "gemm_square", n) for n in SQUARE]
    return out


# ============================================================================================
# Dense: forward fused vs unfused, backward
# ============================================================================================
DENSE_SHAPES = [(128, 784, 512), (128, 512, 256), (1024, 1024, 1024)]
DENSE_QUICK = [(32, 64, 32)]


def _dense_inputs(t, m, k, n):
    x = t.array(_randn((m, k), 1))
    W = t.array(_randn((k, n), 2, 1 / math.sqrt(k)))
    b = t.array(_randn((n,), 3, 0.1))
    return x, W, b


def _dense_fwd_case(m, k, n, fused: bool):
    def setup(t):
        x, W, b = _dense_inputs(t, m, k, n)
        if t.kind == "torch":
            torch = t.torch
            if fused:  # bias in the GEMM (addmm's beta*C), ReLU in place
                return lambda: torch.addmm(b, x, W).relu_()

            def unfused():
                z = torch.matmul(x, W)
                z += b
                return torch.relu(z)

            return unfused
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
        group="dense", bound="compute")


def _dense_bwd_case(m, k, n):
    def setup(t):
        x, W, b = _dense_inputs(t, m, k, n)
        dy = t.array(_randn((m, n), 4))
        if t.kind == "torch":
            torch = t.torch
            aten = torch.ops.aten
            y = torch.addmm(b, x, W).relu_()
            dW = torch.empty_like(W)
            db = torch.empty_like(b)
            Wt = W.t()

            def bwd():
                dz = aten.threshold_backward(dy, y, 0)
                torch.mm(x.t(), dz, out=dW)
                torch.sum(dz, 0, out=db)
                return torch.mm(dz, Wt)

            return bwd
        ops = t.ops
        _y, saved = ops.dense_forward(x, W, b, "relu")
        dW, db = ops.zeros(W.shape), ops.zeros(b.shape)
        return lambda: ops.dense_backward(dy, x, W, saved, "relu", True, dW, db)

    return Case(
        name=f"dense_bwd {fmt_shape(m, k, n)}", suite="dense", setup=setup,
        flops=2 * gemm_flops(m, k, n) + 2 * m * n,
        bytes=F32 * (2 * m * n + 2 * m * k + 2 * k * n + n),
        params={"m": m, "k": k, "n": n, "activation": "relu", "need_dx": True},
        group="dense", bound="compute")


@suite("dense", "Dense layer kernels: forward fused vs unfused (GEMM, bias add, ReLU), backward")
def dense_suite(quick: bool):
    out = []
    for m, k, n in DENSE_QUICK if quick else DENSE_SHAPES:
        out += [_dense_fwd_case(m, k, n, True), _dense_fwd_case(m, k, n, False),
                _dense_bwd_case(m, k, n)]
    return out


# ============================================================================================
# Activations (forward + backward), softmax cross-entropy
# ============================================================================================
ACTS = ("relu", "leaky_relu", "sigmoid", "tanh", "gelu", "softmax")


def _torch_act(torch, act):
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
    bwd = {  # (dy, x, y) -> dx, through ATen's own backward kernels (no autograd overhead)
        "relu": lambda dy, x, y: aten.threshold_backward(dy, y, 0),
        "leaky_relu": lambda dy, x, y: aten.leaky_relu_backward(dy, y, 0.01, True),
        "sigmoid": lambda dy, x, y: aten.sigmoid_backward(dy, y),
        "tanh": lambda dy, x, y: aten.tanh_backward(dy, y),
        "gelu": lambda dy, x, y: aten.gelu_backward(dy, x, approximate="tanh"),
        "softmax": lambda dy, x, y: aten._softmax_backward_data(dy, y, -1, torch.float32),
    }[act]
    return fwd, bwd


def _act_case(act, shape):
    def setup(t):
        x = t.array(_randn(shape, 1))
        dy = t.array(_randn(shape, 2))
        if t.kind == "torch":
            fwd, bwd = _torch_act(t.torch, act)

            def fb():
                y = fwd(x)
                return bwd(dy, x, y)

            return fb
        ops = t.ops

        def fb():
            _y, saved = ops.activation_forward(x, act)
            return ops.activation_backward(dy, saved, act)

        return fb

    size = math.prod(shape)
    return Case(
        name=f"act {act} fwd+bwd {fmt_shape(*shape)}", suite="activations", setup=setup,
        flops=None, bytes=F32 * 5 * size,  # fwd: x -> y; bwd: dy, saved -> dx
        params={"activation": act, "shape": list(shape)}, group="activations", bound="memory")


@suite("activations", "every activation, forward + backward (memory-bound elementwise kernels)")
def activations_suite(quick: bool):
    shapes = [(64, 128)] if quick else [(128, 512), (1024, 4096)]
    return [_act_case(a, s) for s in shapes for a in ACTS]


def _sce_case(n, c):
    def setup(t):
        logits = _randn((n, c), 1, 3.0)
        labels = np.random.default_rng(2).integers(0, c, n).astype(np.int64)
        if t.kind == "torch":
            torch = t.torch
            F = torch.nn.functional
            x = t.array(logits).requires_grad_(True)
            y = t.array(labels)

            def sce():
                x.grad = None
                loss = F.cross_entropy(x, y)
                loss.backward()
                return loss

            return sce
        ops = t.ops
        x, y = t.array(logits), ops.asarray(labels)
        return lambda: ops.softmax_cross_entropy(x, y)

    return Case(
        name=f"softmax_ce {fmt_shape(n, c)}", suite="loss", setup=setup,
        flops=None, bytes=F32 * 2 * n * c + 8 * n,
        params={"n": n, "classes": c}, group="loss", bound="memory")


@suite("loss", "softmax cross-entropy, loss and gradient in one call")
def loss_suite(quick: bool):
    return [_sce_case(32, 10)] if quick else [_sce_case(128, 10), _sce_case(1024, 1000)]


# ============================================================================================
# Optimizer updates on flat buffers
# ============================================================================================
ADAM_N = 669_706  # the parameter count of a 784-512-512-10 MLP: "~670k params"


def _opt_case(kind, n):
    def setup(t):
        p0, g0 = _randn((n,), 1), _randn((n,), 2, 1e-2)
        if t.kind == "torch":
            torch = t.torch
            p = torch.nn.Parameter(t.array(p0))
            p.grad = t.array(g0)
            cls = torch.optim.Adam if kind == "adam" else torch.optim.SGD
            extra = {} if kind == "adam" else {"momentum": 0.9}
            try:
                opt = cls([p], lr=1e-3, fused=True, **extra)
                opt.step()
            except (RuntimeError, TypeError, ValueError):
                opt = cls([p], lr=1e-3, foreach=True, **extra)
            return opt.step
        ops = t.ops
        p, g = ops.asarray(p0), ops.asarray(g0)
        m, v = ops.zeros(n), ops.zeros(n)
        if kind == "adam":
            step = [0]

            def adam():
                step[0] += 1
                ops.adam_update(p, g, m, v, step[0], 1e-3, 0.9, 0.999, 1e-8, 0.0)

            return adam
        return lambda: ops.sgd_update(p, g, m, 1e-3, 0.9)

    streams = 7 if kind == "adam" else 5  # adam: p, g, m, v read; p, m, v written
    label = f"{n / 1e6:.2f}M" if n >= 1e6 else f"{round(n / 1e3)}k"
    name = "adam" if kind == "adam" else "sgd momentum"
    return Case(
        name=f"{name} {label} params", suite="optimizer", setup=setup, flops=None,
        bytes=F32 * streams * n, params={"optimizer": kind, "n": n}, group="optimizer",
        bound="memory")


@suite("optimizer", "Adam and SGD-momentum updates over one flat parameter buffer")
def optimizer_suite(quick: bool):
    if quick:
        return [_opt_case("adam", 10_000)]
    return [_opt_case("adam", ADAM_N), _opt_case("sgd", ADAM_N), _opt_case("adam", 4_000_000)]


# ============================================================================================
# conv2d (through the Conv2D layer: the kernels plus the layer's bookkeeping)
# ============================================================================================
CONV_SHAPES = [(128, 1, 28, 28, 32, 3, 1), (128, 32, 14, 14, 64, 3, 1)]
CONV_QUICK = [(8, 2, 12, 12, 4, 3, 1)]


def _conv_layer(t, C, F, k, pad):
    try:
        from nnx.layers.conv2d import Conv2D
    except ImportError as exc:
        raise Skip(f"nnx.layers.conv2d not available yet ({exc})") from exc
    ops = t.new_ops()
    if not hasattr(ops, "conv2d_forward"):
        raise Skip(f"backend {t.name} has no conv2d_forward kernel yet")
    import nnx

    model = nnx.Sequential([Conv2D(C, F, k, padding=pad)], backend=ops)
    return model.ops, model.layers[0]


def _conv_case(shape, direction):
    N, C, H, W, F, k, pad = shape
    Ho, Wo = H + 2 * pad - k + 1, W + 2 * pad - k + 1
    fwd_flops = 2.0 * N * F * Ho * Wo * C * k * k

    def setup(t):
        x0 = _randn((N, C, H, W), 1)
        dy0 = _randn((N, F, Ho, Wo), 2)
        if t.kind == "torch":
            torch = t.torch
            x, dy = t.array(x0), t.array(dy0)
            Wt = t.array(_randn((F, C, k, k), 3, 0.1))
            b = t.array(_randn((F,), 4, 0.1))
            if direction == "fwd":
                conv = torch.nn.functional.conv2d
                return lambda: conv(x, Wt, b, padding=pad)
            cb = torch.ops.aten.convolution_backward
            return lambda: cb(dy, x, Wt, [F], [1, 1], [pad, pad], [1, 1], False, [0, 0], 1,
                              [True, True, True])
        ops, layer = _conv_layer(t, C, F, k, pad)
        x, dy = ops.asarray(x0), ops.asarray(dy0)
        if direction == "fwd":
            return lambda: layer.forward(x, True)

        def bwd():  # the layer frees its saved im2col buffer in backward: forward first
            layer.forward(x, True)
            return layer.backward(dy, True)

        return bwd

    name = f"conv2d_{direction} N{N} C{C} {H}x{W} F{F} k{k}"
    fwd = direction == "fwd"
    flops = fwd_flops if direction == "fwd" else 3 * fwd_flops  # bwd case = fwd + dW + dx
    return Case(
        name=name, suite="conv2d", setup=setup, flops=flops,
        bytes=F32 * (N * C * H * W + F * C * k * k + N * F * Ho * Wo) * (1 if fwd else 3),
        params={"N": N, "C": C, "H": H, "W": W, "F": F, "k": k, "padding": pad,
                "note": "bwd includes its forward (the layer's backward consumes the saved "
                        "buffers)" if direction == "bwd" else ""},
        group="conv2d", bound="compute")


@suite("conv2d", "Conv2D forward and forward+backward at the MNIST CNN's shapes")
def conv_suite(quick: bool):
    shapes = CONV_QUICK if quick else CONV_SHAPES
    return [_conv_case(s, d) for s in shapes for d in ("fwd", "bwd")]


# ============================================================================================
# LSTM: forward + backward over a sequence
# ============================================================================================
def _lstm_case(N, T, I, H):
    fwd = 2.0 * N * T * (I + H) * 4 * H

    def setup(t):
        x0, dy0 = _randn((N, T, I), 1), _randn((N, H), 2)
        if t.kind == "torch":
            torch = t.torch
            lstm = torch.nn.LSTM(I, H, batch_first=True).to(t.device)
            x = t.array(x0).requires_grad_(True)
            dy = t.array(dy0)
            params = list(lstm.parameters())

            def step():
                for p in params:
                    p.grad = None
                x.grad = None
                out, _ = lstm(x)
                torch.autograd.backward(out[:, -1], dy)

            return step
        try:
            from nnx.layers.lstm import LSTM
        except ImportError as exc:
            raise Skip(f"nnx.layers.lstm not available yet ({exc})") from exc
        ops = t.new_ops()
        if not hasattr(ops, "lstm_forward"):
            raise Skip(f"backend {t.name} has no lstm_forward kernel yet")
        import nnx

        model = nnx.Sequential([LSTM(I, H)], backend=ops)
        layer = model.layers[0]
        x, dy = model.ops.asarray(x0), model.ops.asarray(dy0)

        def step():
            layer.forward(x, True)
            return layer.backward(dy, True)

        return step

    return Case(
        name=f"lstm fwd+bwd N{N} T{T} I{I} H{H}", suite="lstm", setup=setup, flops=3 * fwd,
        bytes=F32 * (N * T * I * 2 + (I + H) * 4 * H * 2 + N * T * 6 * H * 2),
        params={"N": N, "T": T, "input_size": I, "hidden_size": H, "return_sequences": False},
        group="lstm", bound="compute")


@suite("lstm", "LSTM layer, forward + backward through a 28-step sequence (MNIST rows)")
def lstm_suite(quick: bool):
    return [_lstm_case(8, 5, 8, 16)] if quick else [_lstm_case(128, 28, 28, 128)]


# ============================================================================================
# Whole training steps and an epoch
# ============================================================================================
@functools.lru_cache(maxsize=1)
def _sample_batch():
    from nnx.datasets import mnist

    (x, y), _ = mnist(sample=True)
    return (x.astype(np.float32) / 255.0), y.astype(np.int64)


def _repo_mnist_dir() -> Path | None:
    env = os.environ.get("NNX_DATA_DIR")
    if env:
        return Path(env)
    shared = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist"
    return shared if shared.is_dir() else None


@functools.lru_cache(maxsize=2)
def mnist_train(sample: bool):
    """(x (N, 28, 28) float32 in [0, 1], y int64): the full training set, or the sample."""
    from nnx.datasets import DatasetNotFoundError, mnist

    if sample:
        return _sample_batch()
    d = _repo_mnist_dir()
    try:
        (x, y), _ = mnist(data_dir=d, download=False)
    except (DatasetNotFoundError, OSError, ValueError) as exc:
        raise Skip(f"real MNIST not found (set NNX_DATA_DIR to a folder with the four IDX "
                   f"files): {str(exc)[:160]}") from exc
    return x.astype(np.float32) / 255.0, y.astype(np.int64)


def train_flops_per_sample(model, input_shape) -> tuple[float, float]:
    """(forward, forward+backward) FLOPs per sample of the GEMM-shaped layers (Dense, Conv2D,
    recurrent cells); elementwise work is not counted. The backward counts a weight-gradient
    GEMM per layer and an input-gradient GEMM for every layer but the first (as Chain asks);
    recurrent layers always backpropagate through time (dh_{t-1} = dz @ W_hh^T)."""
    fwd = total = 0.0
    shape = tuple(input_shape)
    for i, layer in enumerate(model.layers):
        out = tuple(layer.output_shape(shape))
        f = f_in = 0.0  # forward FLOPs; the part of them whose transpose gives dx
        cls = type(layer).__name__
        if cls == "Dense":
            f = f_in = 2.0 * math.prod(shape[:-1]) * layer.in_features * layer.out_features
        elif cls == "Conv2D":
            kh, kw = layer.kernel_size
            f = f_in = 2.0 * layer.in_channels * layer.out_channels * kh * kw * out[-2] * out[-1]
        elif hasattr(layer, "hidden_size") and hasattr(layer, "input_size"):
            gh = getattr(layer, "gates", 1) * layer.hidden_size
            f_in = 2.0 * shape[0] * layer.input_size * gh
            f_hh = 2.0 * shape[0] * layer.hidden_size * gh
            f = f_in + f_hh
            f_in_needed = f_in if i > 0 else 0.0
            fwd += f
            total += 2 * f + f_hh + f_in_needed  # dW; dh through time always; dx if needed
            shape = out
            continue
        fwd += f
        total += 2 * f + (f_in if i > 0 else 0.0)
        shape = out
    return fwd, total


# -- a torch mirror of an nnx model (for the yardstick) ----------------------------------------
def _torch_act_module(nn, act):
    return {
        "identity": None, "relu": nn.ReLU(), "leaky_relu": nn.LeakyReLU(0.01),
        "sigmoid": nn.Sigmoid(), "tanh": nn.Tanh(), "softmax": nn.Softmax(-1),
        "gelu": nn.GELU(approximate="tanh"),
    }[act]


def torch_mirror(model, torch):
    """An nn.Sequential with the same layers and shapes as the nnx model (weights not copied:
    only the time matters). Raises Skip for a layer it cannot mirror."""
    nn = torch.nn
    mods = []

    class _LastStep(nn.Module):
        def __init__(self, lstm, seq):
            super().__init__()
            self.lstm, self.seq = lstm, seq

        def forward(self, x):
            out, _ = self.lstm(x)
            return out if self.seq else out[:, -1]

    class _Reshape(nn.Module):
        def __init__(self, shape):
            super().__init__()
            self.shape = shape

        def forward(self, x):
            return x.reshape(x.shape[0], *self.shape)

    for layer in model.layers:
        cls = type(layer).__name__
        act = getattr(layer, "activation", "identity")
        if cls == "Flatten":
            mods.append(nn.Flatten())
        elif cls == "Dense":
            mods.append(nn.Linear(layer.in_features, layer.out_features, bias=layer.use_bias))
        elif cls == "Conv2D":
            pad = layer.padding
            if pad != "same":
                (pt, pb), (pl, pr) = pad
                if pt != pb or pl != pr:
                    raise Skip("torch mirror: asymmetric padding")
                pad = (pt, pl)
            mods.append(nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                                  layer.stride, pad, layer.dilation, bias=layer.use_bias))
        elif cls in ("MaxPool2D", "AvgPool2D"):
            (pt, _pb), (pl, _pr) = layer.padding
            if cls == "MaxPool2D":
                mods.append(nn.MaxPool2d(layer.pool_size, layer.stride, (pt, pl)))
            else:
                mods.append(nn.AvgPool2d(layer.pool_size, layer.stride, (pt, pl),
                                         count_include_pad=layer.count_include_pad))
        elif cls == "GlobalAvgPool2D":
            mods += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        elif cls in ("BatchNorm1d", "BatchNorm2d"):
            mods.append(getattr(nn, cls)(layer.num_features, layer.eps, layer.momentum))
        elif cls == "Dropout":
            mods.append(nn.Dropout(layer.rate))
        elif cls == "LSTM":
            mods.append(_LastStep(nn.LSTM(layer.input_size, layer.hidden_size, batch_first=True),
                                  layer.return_sequences))
        elif cls == "Reshape":
            mods.append(_Reshape(layer.target_shape))
        elif cls in ("Activation", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "GELU",
                     "Identity"):
            act = layer.activation
        else:
            raise Skip(f"torch mirror: no torch equivalent for nnx layer {cls}")
        m = _torch_act_module(nn, act) if act and act != "identity" else None
        if m is not None:
            mods.append(m)
    return nn.Sequential(*mods)


def _torch_step(torch, net, device, lr=1e-3):
    net.to(device).train()
    F = torch.nn.functional
    try:
        opt = torch.optim.Adam(net.parameters(), lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        opt = torch.optim.Adam(net.parameters(), lr=lr, foreach=True)

    def step(xb, yb):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(xb), yb)
        loss.backward()
        opt.step()
        return loss

    return step


def _zoo_model(t, name, seed=0, **options):
    import nnx
    from nnx import models

    try:
        zoo = models.get(name)
    except nnx.UnknownNameError as exc:
        raise Skip(f"model {name!r} not in the zoo yet (nnx/models/{name}.py)") from exc
    ops = t.new_ops(seed) if t.kind == "nnx" else "numpy"
    try:
        model = zoo.build(backend=ops, seed=seed, **options)
    except (ImportError, AttributeError) as exc:
        raise Skip(f"model {name!r} cannot be built yet: {exc}") from exc
    return zoo, model


def _inputs_for(zoo, x):
    return x[:, None] if zoo.INPUT == "image" else x


def _train_step_case(model_name, batch, label, options=None, quick=False):
    options = options or {}
    x_all, y_all = _sample_batch()
    info = {}

    def setup(t):
        zoo, model = _zoo_model(t, model_name, **options)
        xh = _inputs_for(zoo, x_all[:batch])
        yh = y_all[:batch]
        if t.kind == "torch":
            torch = t.torch
            net = torch_mirror(model, torch)
            step = _torch_step(torch, net, t.device)
            xb, yb = t.array(xh), t.array(yh)
            return lambda: step(xb, yb)
        import nnx

        model.compile(nnx.Adam(1e-3), zoo.LOSS, metrics=())
        xb = model.ops.asarray(xh)
        yb = model.loss.device_targets(model.ops, yh)
        step = model._step
        return lambda: step(xb, yb)

    # FLOPs from the model's structure (built once on numpy, cheap)
    flops = None
    try:
        from nnx.bench.registry import Target

        zoo, m = _zoo_model(Target("numpy"), model_name, **options)
        fwd, tot = train_flops_per_sample(m, _inputs_for(zoo, x_all[:1]).shape[1:])
        flops = tot * batch
        info = {"params": m.count_params(), "forward_flops_per_sample": fwd}
    except Skip:
        pass
    return Case(
        name=f"{model_name} train step {label + ' ' if label else ''}b{batch}", suite=model_name,
        setup=setup, flops=flops, bytes=None,
        params={"model": model_name, "batch": batch, "optimizer": "adam",
                "loss": "softmax_cross_entropy", **options, **info,
                "flops_note": "GEMM FLOPs of forward + backward (weight and input gradients)"},
        group="train_step", bound="compute")


@suite("mlp", "MLP 784-512-256-10 training step (Adam, batch 128, softmax cross-entropy)")
def mlp_suite(quick: bool):
    if quick:
        return [_train_step_case("mlp", 32, "784-64-32-10", {"hidden": (64, 32)})]
    return [_train_step_case("mlp", 128, "784-512-256-10", {"hidden": (512, 256)})]


@suite("cnn", "the zoo's CNN training step (Adam, batch 128) on 28x28 images")
def cnn_suite(quick: bool):
    return [_train_step_case("cnn", 16 if quick else 128, "", {})]


def _epoch_case(quick: bool):
    hidden = (512, 256)
    batch = 128

    def setup(t):
        x, y = mnist_train(sample=quick)
        zoo, model = _zoo_model(t, "mlp", hidden=hidden)
        if t.kind == "torch":
            torch = t.torch
            step = _torch_step(torch, torch_mirror(model, torch), t.device)
            X, Y = t.array(x.reshape(len(x), -1)), t.array(y)
            n = len(x)
            gen = torch.Generator().manual_seed(0)

            def epoch():
                perm = torch.randperm(n, generator=gen).to(t.device)
                for s in range(0, n, batch):
                    idx = perm[s:s + batch]
                    step(X[idx], Y[idx])

            return epoch
        import nnx

        model.compile(nnx.Adam(1e-3), zoo.LOSS, metrics=())
        return lambda: model.fit(x, y, epochs=1, batch_size=batch, verbose=0)

    n = 6000 if quick else 60000
    from nnx.bench.registry import Target

    try:
        zoo, m = _zoo_model(Target("numpy"), "mlp", hidden=hidden)
        flops = train_flops_per_sample(m, (28, 28))[1] * n
    except Skip:
        flops = None
    return Case(
        name=f"mnist epoch mlp 784-512-256-10 b{batch} ({'sample ' if quick else ''}{n // 1000}k)",
        suite="mnist", setup=setup, flops=flops, bytes=None, number=1,
        repeats=2 if quick else 3,
        params={"samples": n, "batch": batch, "hidden": list(hidden), "data": "sample" if quick
                else "mnist", "includes": "model.fit: shuffling, batching, input checks, loss"
                " read-back each batch"},
        group="epoch", bound="compute")


@suite("mnist", "one MNIST epoch of the MLP through model.fit (60k images, batch 128)")
def mnist_suite(quick: bool):
    return [_epoch_case(quick)]
