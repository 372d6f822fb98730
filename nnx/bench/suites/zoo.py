"""What the model-level workloads share (the `mlp`, `cnn` and `mnist` suites and the crossover
sweep): MNIST batches, zoo models built on a target, their GEMM FLOP counts, a torch mirror of an
nnx model and its Adam step (the yardstick), and the nnx training step on device arrays."""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import numpy as np

from nnx import models
from nnx.datasets import DatasetNotFoundError, mnist
from nnx.errors import UnknownNameError
from nnx.optim import Adam

from ..registry import Skip, Target


# -- data -------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def sample_batch():
    """(x (N, 28, 28) float32 in [0, 1], y int64) of the bundled MNIST sample."""
    (x, y), _ = mnist(sample=True)
    return (x.astype(np.float32) / 255.0), y.astype(np.int64)


def _repo_mnist_dir() -> Path | None:
    env = os.environ.get("NNX_DATA_DIR")
    if env:
        return Path(env)
    # <repo>/nnx/bench/suites/zoo.py -> <repo>/../shared/data/mnist
    shared = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "mnist"
    return shared if shared.is_dir() else None


@functools.lru_cache(maxsize=2)
def mnist_train(sample: bool):
    """(x (N, 28, 28) float32 in [0, 1], y int64): the full training set, or the sample."""
    if sample:
        return sample_batch()
    try:
        (x, y), _ = mnist(data_dir=_repo_mnist_dir(), download=False)
    except (DatasetNotFoundError, OSError, ValueError) as exc:
        raise Skip(f"real MNIST not found (set NNX_DATA_DIR to a folder with the four IDX "
                   f"files): {str(exc)[:160]}") from exc
    return x.astype(np.float32) / 255.0, y.astype(np.int64)


# -- nnx models -------------------------------------------------------------------------------
def zoo_model(t, name, seed=0, **options):
    """(zoo module, model) of `nnx.models.<name>` built on a fresh Ops of target `t` (on numpy
    for a torch target: the mirror reads its structure). Raises Skip when it cannot be built."""
    try:
        zoo = models.get(name)
    except UnknownNameError as exc:
        raise Skip(f"model {name!r} not in the zoo yet (nnx/models/{name}.py)") from exc
    ops = t.new_ops(seed) if t.kind == "nnx" else "numpy"
    try:
        model = zoo.build(backend=ops, seed=seed, **options)
    except (ImportError, AttributeError) as exc:
        raise Skip(f"model {name!r} cannot be built yet: {exc}") from exc
    return zoo, model


def inputs_for(zoo, x):
    """MNIST images (N, 28, 28) shaped as the zoo model takes them."""
    return x[:, None] if zoo.INPUT == "image" else x


def nnx_step(model, zoo, xh, yh):
    """Compile `model` (Adam, the zoo's loss) and return one optimizer step on the batch, moved
    to the device once: `model.trainer.step` (loss and output stay on the device)."""
    model.compile(Adam(1e-3), zoo.LOSS, metrics=())
    xb = model.ops.asarray(xh)
    yb = model.loss.device_targets(model.ops, yh)
    step = model.trainer.step
    return lambda: step(xb, yb)


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
        f_hh = 0.0  # recurrent: dh through time, needed even for the first layer
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
        fwd += f
        total += 2 * f + f_hh + (f_in if i > 0 else 0.0)  # dW; dh through time; dx if needed
        shape = out
    return fwd, total


def model_flops(name, x, **options) -> tuple[float | None, dict]:
    """(forward+backward FLOPs per sample, {params, forward_flops_per_sample}) of a zoo model
    built once on numpy (cheap) for host images `x` (N, 28, 28); (None, {}) when it cannot be
    built."""
    try:
        zoo, m = zoo_model(Target("numpy"), name, **options)
    except Skip:
        return None, {}
    fwd, tot = train_flops_per_sample(m, inputs_for(zoo, x[:1]).shape[1:])
    return tot, {"params": m.count_params(), "forward_flops_per_sample": fwd}


# -- the torch yardstick ----------------------------------------------------------------------
def _torch_act_module(nn, act):
    return {
        "identity": None, "relu": nn.ReLU(), "leaky_relu": nn.LeakyReLU(0.01),
        "sigmoid": nn.Sigmoid(), "tanh": nn.Tanh(), "softmax": nn.Softmax(-1),
        "gelu": nn.GELU(approximate="tanh"),
    }[act]


def _torch_modules(nn):
    class LastStep(nn.Module):
        def __init__(self, lstm, seq):
            super().__init__()
            self.lstm, self.seq = lstm, seq

        def forward(self, x):
            out, _ = self.lstm(x)
            return out if self.seq else out[:, -1]

    class Reshape(nn.Module):
        def __init__(self, shape):
            super().__init__()
            self.shape = shape

        def forward(self, x):
            return x.reshape(x.shape[0], *self.shape)

    return LastStep, Reshape


def _mirror_layer(nn, layer, LastStep, Reshape) -> list:
    cls = type(layer).__name__
    if cls == "Flatten":
        return [nn.Flatten()]
    if cls == "Dense":
        return [nn.Linear(layer.in_features, layer.out_features, bias=layer.use_bias)]
    if cls == "Conv2D":
        pad = layer.padding
        if pad != "same":
            (pt, pb), (pl, pr) = pad
            if pt != pb or pl != pr:
                raise Skip("torch mirror: asymmetric padding")
            pad = (pt, pl)
        return [nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                          layer.stride, pad, layer.dilation, bias=layer.use_bias)]
    if cls in ("MaxPool2D", "AvgPool2D"):
        (pt, _pb), (pl, _pr) = layer.padding
        if cls == "MaxPool2D":
            return [nn.MaxPool2d(layer.pool_size, layer.stride, (pt, pl))]
        return [nn.AvgPool2d(layer.pool_size, layer.stride, (pt, pl),
                             count_include_pad=layer.count_include_pad)]
    if cls == "GlobalAvgPool2D":
        return [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if cls in ("BatchNorm1d", "BatchNorm2d"):
        return [getattr(nn, cls)(layer.num_features, layer.eps, layer.momentum)]
    if cls == "Dropout":
        return [nn.Dropout(layer.rate)]
    if cls == "LSTM":
        return [LastStep(nn.LSTM(layer.input_size, layer.hidden_size, batch_first=True),
                         layer.return_sequences)]
    if cls == "Reshape":
        return [Reshape(layer.target_shape)]
    if cls in ("Activation", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "GELU",
               "Identity"):
        return []  # the activation itself is appended by the caller
    raise Skip(f"torch mirror: no torch equivalent for nnx layer {cls}")


def torch_mirror(model, torch):
    """An nn.Sequential with the same layers and shapes as the nnx model (weights not copied:
    only the time matters). Raises Skip for a layer it cannot mirror."""
    nn = torch.nn
    LastStep, Reshape = _torch_modules(nn)
    mods = []
    for layer in model.layers:
        mods += _mirror_layer(nn, layer, LastStep, Reshape)
        act = getattr(layer, "activation", "identity")
        m = _torch_act_module(nn, act) if act and act != "identity" else None
        if m is not None:
            mods.append(m)
    return nn.Sequential(*mods)


def torch_step(torch, net, device, lr=1e-3):
    """`step(xb, yb) -> loss`: one Adam step (fused where torch has it) of `net` on `device`."""
    net.to(device).train()
    F = torch.nn.functional
    try:
        opt = torch.optim.Adam(net.parameters(), lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        opt = torch.optim.Adam(net.parameters(), lr=lr, foreach=True)

    def step(xb, yb):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(xb), yb)
        loss.backward()  # torch autograd (the yardstick), not an nnx layer
        opt.step()
        return loss

    return step
