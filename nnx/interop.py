"""Weight exchange with PyTorch: `from_torch(model, module)` and `to_torch(model, module)`.

    nnx.interop.from_torch(model, torch_module)   # torch -> nnx (parameters and BN statistics)
    nnx.interop.to_torch(model, torch_module)     # nnx -> torch, in place

The two sides must have the same parametrized layers in the same order: the nnx model's leaf
layers that hold parameters or buffers (`model.layers`), and the torch module's submodules
that hold parameters, in `module.modules()` order (the order their attributes were assigned in
`__init__`, which for `nn.Sequential` and the usual examples is the call order). Layers without
parameters (activations, pooling, dropout, flatten) are skipped on both sides. Pairs:

- Dense <-> nn.Linear: W = weight.T, b = bias.
- Conv1D / Conv2D <-> nn.Conv1d / nn.Conv2d: W = weight, b = bias (the same layout).
- LSTM / SimpleRNN <-> nn.LSTM / nn.RNN (tanh): W_ih = weight_ih_l0.T, W_hh = weight_hh_l0.T,
  b = bias_ih_l0 + bias_hh_l0 (to torch: bias_ih_l0 = b, bias_hh_l0 = 0).
- GRU <-> nn.GRU: W_ih, W_hh transposed as above, b_ih = bias_ih_l0, b_hh = bias_hh_l0 (kept
  apart: r multiplies b_hh's n block).
- Embedding <-> nn.Embedding: W = weight.
- BatchNorm1d / BatchNorm2d / SyncBatchNorm <-> nn.BatchNorm1d / nn.BatchNorm2d (either for
  SyncBatchNorm, or nn.SyncBatchNorm): gamma = weight, beta = bias, and the buffers
  running_mean, running_var.
- LayerNorm <-> nn.LayerNorm: gamma = weight, beta = bias.

Everything is checked before anything is written, so a failed copy leaves both sides as they
were: the pairing (kinds and counts), the configuration that changes outputs (conv stride,
padding, dilation and groups; recurrent layers of one unidirectional layer; eps of the
normalizations; biases present on one side only) and every shape. Errors are ShapeError naming
the pair's position, the nnx layer, the torch module's path, the expected and the actual value.
Recurrent gate orders already agree (LSTM i, f, g, o; GRU r, z, n). Batch-first layout is the
caller's business (nnx is batch-first; build torch's recurrent layers with batch_first=True).

torch is optional: it is imported when one of these functions runs, and its absence raises
`TorchUnavailableError` (an ImportError) saying `pip install torch`.
"""

from __future__ import annotations

import numpy as np

from .errors import BackendUnavailableError, ShapeError
from .layers import (
    GRU,
    LSTM,
    BatchNorm1d,
    BatchNorm2d,
    Conv1D,
    Conv2D,
    Dense,
    Embedding,
    Layer,
    LayerNorm,
    SimpleRNN,
    SyncBatchNorm,
)


class TorchUnavailableError(BackendUnavailableError, ImportError):
    """PyTorch is not installed (or does not import) where nnx.interop needs it."""


def _torch():
    """The torch module, imported on first use (it costs seconds and is optional)."""
    try:
        import torch
    except ImportError as exc:
        raise TorchUnavailableError(
            f"nnx.interop needs PyTorch, which is not importable here ({exc}): "
            "pip install torch") from exc
    return torch


# -- per-pair conversions ------------------------------------------------------------------
class _Pair:
    """How one nnx layer type maps onto torch modules. `read(mod)` gives the nnx-side arrays
    from a torch module ({("param"|"buffer", name): array}); `write(arrays)` gives the torch-side
    arrays from the nnx ones ({torch attribute: array}); `mismatch(layer, mod)` describes a
    configuration that would make the outputs differ (None when they agree)."""

    nnx_types: tuple = ()
    torch_types: tuple = ()  # class names in torch.nn

    def accepts(self, mod) -> bool:
        return type(mod).__name__ in self.torch_types

    def mismatch(self, layer, mod) -> str | None:
        return None

    def read(self, layer, mod) -> dict:
        raise NotImplementedError

    def write(self, layer, mod, arrays: dict) -> dict:
        raise NotImplementedError


def _np(t):
    return None if t is None else t.detach().cpu().numpy()


def _bias_mismatch(layer, mod, has_bias: bool) -> str | None:
    torch_bias = getattr(mod, "bias", None) is not None
    if has_bias != torch_bias:
        return (f"bias: nnx {'has' if has_bias else 'has no'} bias (use_bias={has_bias}), "
                f"torch {'has' if torch_bias else 'has no'} bias")
    return None


class _DensePair(_Pair):
    nnx_types = (Dense,)
    torch_types = ("Linear",)

    def mismatch(self, layer, mod):
        return _bias_mismatch(layer, mod, layer.use_bias)

    def read(self, layer, mod):
        out = {("param", "W"): _np(mod.weight).T}
        if layer.use_bias:
            out[("param", "b")] = _np(mod.bias)
        return out

    def write(self, layer, mod, arrays):
        out = {"weight": arrays[("param", "W")].T}
        if layer.use_bias:
            out["bias"] = arrays[("param", "b")]
        return out


def _per_axis(value, axes: int) -> tuple:
    """A Conv1D int or a Conv2D pair as a tuple per axis, as torch stores them."""
    return (value,) if axes == 1 else tuple(value)


def _nnx_pads(layer, axes: int):
    """Per-axis (lo, hi) padding of an nnx Conv1D/Conv2D, or None where it depends on the
    input size ("same" with a stride > 1)."""
    stride = _per_axis(layer.stride, axes)
    dilation = _per_axis(layer.dilation, axes)
    kernel = _per_axis(layer.kernel_size, axes)
    if layer.padding == "same":
        if any(s != 1 for s in stride):
            return None
        totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
        return tuple((t // 2, t - t // 2) for t in totals)
    return (tuple(layer.padding),) if axes == 1 else tuple(tuple(p) for p in layer.padding)


def _torch_pads(mod):
    if isinstance(mod.padding, str):
        if mod.padding == "valid":
            return tuple((0, 0) for _ in mod.kernel_size)
        totals = [d * (k - 1) for k, d in zip(mod.kernel_size, mod.dilation)]
        return tuple((t // 2, t - t // 2) for t in totals)  # torch's "same"
    return tuple((int(p), int(p)) for p in mod.padding)


class _ConvPair(_Pair):
    def __init__(self, nnx_type, torch_name: str, axes: int):
        self.nnx_types, self.torch_types, self.axes = (nnx_type,), (torch_name,), axes

    def mismatch(self, layer, mod):
        axes = self.axes
        checks = [
            ("groups", 1, mod.groups),
            ("padding_mode", "zeros", mod.padding_mode),
            ("stride", _per_axis(layer.stride, axes), tuple(mod.stride)),
            ("dilation", _per_axis(layer.dilation, axes), tuple(mod.dilation)),
            ("padding (lo, hi) per axis", _nnx_pads(layer, axes), _torch_pads(mod)),
        ]
        for what, ours, theirs in checks:
            if ours != theirs:
                return f"{what}: nnx {ours}, torch {theirs}"
        return _bias_mismatch(layer, mod, layer.use_bias)

    def read(self, layer, mod):
        out = {("param", "W"): _np(mod.weight)}
        if layer.use_bias:
            out[("param", "b")] = _np(mod.bias)
        return out

    def write(self, layer, mod, arrays):
        out = {"weight": arrays[("param", "W")]}
        if layer.use_bias:
            out["bias"] = arrays[("param", "b")]
        return out


class _RecurrentPair(_Pair):
    """LSTM / RNN (one bias b = b_ih + b_hh) and GRU (both biases)."""

    def __init__(self, nnx_type, torch_name: str):
        self.nnx_types, self.torch_types = (nnx_type,), (torch_name,)
        self.split_bias = nnx_type is GRU

    def mismatch(self, layer, mod):
        checks = [("num_layers", 1, mod.num_layers), ("bidirectional", False, mod.bidirectional),
                  ("proj_size", 0, getattr(mod, "proj_size", 0))]
        if type(mod).__name__ == "RNN":
            checks.append(("nonlinearity", "tanh", mod.nonlinearity))
        for what, ours, theirs in checks:
            if ours != theirs:
                return f"{what}: nnx supports {ours!r}, torch has {theirs!r}"
        return None

    def read(self, layer, mod):
        out = {("param", "W_ih"): _np(mod.weight_ih_l0).T,
               ("param", "W_hh"): _np(mod.weight_hh_l0).T}
        gh = out[("param", "W_ih")].shape[-1]
        zeros = np.zeros(gh, dtype=out[("param", "W_ih")].dtype)
        b_ih = _np(mod.bias_ih_l0) if mod.bias else zeros
        b_hh = _np(mod.bias_hh_l0) if mod.bias else zeros
        if self.split_bias:
            out[("param", "b_ih")], out[("param", "b_hh")] = b_ih, b_hh
        else:
            out[("param", "b")] = b_ih + b_hh
        return out

    def write(self, layer, mod, arrays):
        out = {"weight_ih_l0": arrays[("param", "W_ih")].T,
               "weight_hh_l0": arrays[("param", "W_hh")].T}
        if self.split_bias:
            b_ih, b_hh = arrays[("param", "b_ih")], arrays[("param", "b_hh")]
        else:
            b_ih = arrays[("param", "b")]
            b_hh = np.zeros_like(b_ih)
        if mod.bias:
            out["bias_ih_l0"], out["bias_hh_l0"] = b_ih, b_hh
        elif np.any(b_ih) or np.any(b_hh):
            raise ShapeError(f"to_torch: {layer.describe()} has nonzero biases but torch "
                             f"{type(mod).__name__} was built with bias=False; expected "
                             "bias=True")
        return out


class _EmbeddingPair(_Pair):
    nnx_types = (Embedding,)
    torch_types = ("Embedding",)

    def mismatch(self, layer, mod):
        if mod.max_norm is not None:
            return f"max_norm: nnx has none, torch renormalizes rows to {mod.max_norm}"
        return None

    def read(self, layer, mod):
        return {("param", "W"): _np(mod.weight)}

    def write(self, layer, mod, arrays):
        return {"weight": arrays[("param", "W")]}


def _eps_mismatch(layer, mod) -> str | None:
    if not np.isclose(layer.eps, mod.eps, rtol=1e-6, atol=0.0):
        return f"eps: nnx {layer.eps}, torch {mod.eps}"
    return None


class _BatchNormPair(_Pair):
    def __init__(self, nnx_type, torch_names: tuple):
        self.nnx_types, self.torch_types = (nnx_type,), torch_names

    def mismatch(self, layer, mod):
        if not mod.affine or not mod.track_running_stats:
            return (f"affine/track_running_stats: nnx has both, torch has affine={mod.affine}, "
                    f"track_running_stats={mod.track_running_stats}")
        return _eps_mismatch(layer, mod)

    def read(self, layer, mod):
        return {("param", "gamma"): _np(mod.weight), ("param", "beta"): _np(mod.bias),
                ("buffer", "running_mean"): _np(mod.running_mean),
                ("buffer", "running_var"): _np(mod.running_var)}

    def write(self, layer, mod, arrays):
        return {"weight": arrays[("param", "gamma")], "bias": arrays[("param", "beta")],
                "running_mean": arrays[("buffer", "running_mean")],
                "running_var": arrays[("buffer", "running_var")]}


class _LayerNormPair(_Pair):
    nnx_types = (LayerNorm,)
    torch_types = ("LayerNorm",)

    def mismatch(self, layer, mod):
        if tuple(mod.normalized_shape) != tuple(layer.normalized_shape):
            return (f"normalized_shape: nnx {tuple(layer.normalized_shape)}, torch "
                    f"{tuple(mod.normalized_shape)}")
        if not mod.elementwise_affine:
            return "elementwise_affine: nnx has gamma and beta, torch has none"
        return _eps_mismatch(layer, mod)

    def read(self, layer, mod):
        gamma = _np(mod.weight)
        beta = _np(mod.bias) if mod.bias is not None else np.zeros_like(gamma)
        return {("param", "gamma"): gamma, ("param", "beta"): beta}

    def write(self, layer, mod, arrays):
        out = {"weight": arrays[("param", "gamma")]}
        beta = arrays[("param", "beta")]
        if mod.bias is not None:
            out["bias"] = beta
        elif np.any(beta):
            raise ShapeError(f"to_torch: {layer.describe()} has a nonzero beta but torch "
                             "LayerNorm was built with bias=False; expected bias=True")
        return out


PAIRS: list[_Pair] = [
    _DensePair(),
    _ConvPair(Conv1D, "Conv1d", 1),
    _ConvPair(Conv2D, "Conv2d", 2),
    _RecurrentPair(LSTM, "LSTM"),
    _RecurrentPair(GRU, "GRU"),
    _RecurrentPair(SimpleRNN, "RNN"),
    _EmbeddingPair(),
    _BatchNormPair(BatchNorm1d, ("BatchNorm1d",)),
    _BatchNormPair(BatchNorm2d, ("BatchNorm2d",)),
    _BatchNormPair(SyncBatchNorm, ("BatchNorm1d", "BatchNorm2d", "SyncBatchNorm")),
    _LayerNormPair(),
]


def _pair_for(layer):
    for pair in PAIRS:
        if isinstance(layer, pair.nnx_types):
            return pair
    return None


def supported() -> str:
    """The nnx layer -> torch module pairs, one line (for error messages)."""
    return ", ".join(f"{'/'.join(t.__name__ for t in p.nnx_types)} <-> "
                     f"{'/'.join(p.torch_types)}" for p in PAIRS)


# -- collecting both sides ------------------------------------------------------------------
def _nnx_layers(model) -> list:
    """The leaf layers holding parameters or buffers, each once, in call order."""
    if hasattr(model, "store") and hasattr(model, "layers"):
        leaves = list(model.layers)
    elif isinstance(model, Layer):
        if model.ops is None:
            raise ValueError(f"{model.describe()} is not built into a model: put it in "
                             "nnx.Sequential/Model (or nnx.testing.build) first")
        leaves = list({id(leaf): leaf for leaf in model.leaves()}.values())
    else:
        raise TypeError(f"expected an nnx Model or a built nnx Layer, got {type(model).__name__}")
    out = [leaf for leaf in leaves if leaf.params or leaf.buffers]
    for layer in out:
        if _pair_for(layer) is None:
            raise ShapeError(f"nnx.interop cannot map {layer.describe()} (no PyTorch "
                             f"counterpart here); supported: {supported()}")
    return out


def _torch_modules(module) -> list:
    """(path, module) of every submodule with parameters of its own, in modules() order."""
    torch = _torch()
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(module).__name__}")
    out = []
    for path, mod in module.named_modules():
        if next(mod.parameters(recurse=False), None) is None:
            continue
        if not any(pair.accepts(mod) for pair in PAIRS):
            raise ShapeError(f"nnx.interop cannot map torch module {path or '(root)'!r} "
                             f"({type(mod).__name__}); supported: {supported()}")
        out.append((path or "(root)", mod))
    return out


def _pairs(model, module, direction: str):
    """[(layer, path, mod, pair)] after checking kinds, counts and configurations."""
    layers, mods = _nnx_layers(model), _torch_modules(module)
    for i, (layer, (path, mod)) in enumerate(zip(layers, mods)):
        pair = _pair_for(layer)
        if not pair.accepts(mod):
            raise ShapeError(
                f"{direction}: parametrized layer {i}: nnx {layer.describe()} pairs with torch "
                f"module {path!r} ({type(mod).__name__}); expected a torch "
                f"{' or '.join(pair.torch_types)} (layers must match in kind and order)")
        problem = pair.mismatch(layer, mod)
        if problem:
            raise ShapeError(f"{direction}: parametrized layer {i}: nnx {layer.describe()} and "
                             f"torch module {path!r} ({type(mod).__name__}) differ in {problem}")
    if len(layers) != len(mods):
        if len(layers) > len(mods):
            extra = f"nnx {layers[len(mods)].describe()}"
        else:
            path, mod = mods[len(layers)]
            extra = f"torch module {path!r} ({type(mod).__name__})"
        raise ShapeError(
            f"{direction}: expected the same number of parametrized layers, got {len(layers)} "
            f"in the nnx model and {len(mods)} in the torch module; the first without a "
            f"partner is {extra}")
    return [(layer, path, mod, _pair_for(layer)) for layer, (path, mod) in zip(layers, mods)]


def _nnx_array(layer, kind: str, name: str):
    return (layer.params if kind == "param" else layer.buffers)[name]


# -- the two directions ---------------------------------------------------------------------
def from_torch(model, module):
    """Copy the parameters (and batch-norm running statistics) of the torch `module` into the
    nnx `model` (a Model, or a built Layer), pair by pair (see the module docstring). Checks
    everything before writing anything; raises ShapeError naming the first mismatch, or
    TorchUnavailableError without PyTorch. Returns `model`."""
    torch = _torch()
    plan = []
    with torch.no_grad():
        for i, (layer, path, mod, pair) in enumerate(_pairs(model, module, "from_torch")):
            for (kind, name), arr in pair.read(layer, mod).items():
                target = _nnx_array(layer, kind, name)
                if tuple(arr.shape) != tuple(target.shape):
                    raise ShapeError(
                        f"from_torch: parametrized layer {i}: nnx {layer.describe()} {kind} "
                        f"{name!r} expects shape {tuple(target.shape)}, torch module {path!r} "
                        f"({type(mod).__name__}) gives shape {tuple(arr.shape)}"
                        f"{_how(pair, name)}")
                plan.append((layer, target, np.array(arr, dtype=np.float64)))
    for layer, target, arr in plan:
        target[...] = layer.ops.asarray(arr, dtype=target.dtype)
    return model


def to_torch(model, module):
    """Copy the nnx `model`'s parameters (and batch-norm running statistics) into the torch
    `module` in place (on its device and in its dtypes), pair by pair (see the module
    docstring). Checks everything before writing anything; raises ShapeError naming the first
    mismatch, or TorchUnavailableError without PyTorch. Returns `module`."""
    torch = _torch()
    plan = []
    with torch.no_grad():
        for i, (layer, path, mod, pair) in enumerate(_pairs(model, module, "to_torch")):
            ours = {}
            for kind, store in (("param", layer.params), ("buffer", layer.buffers)):
                for name, value in store.items():
                    ours[(kind, name)] = np.asarray(layer.ops.to_host(value))
            for attr, arr in pair.write(layer, mod, ours).items():
                target = getattr(mod, attr)
                if target is None or tuple(arr.shape) != tuple(target.shape):
                    got = None if target is None else tuple(target.shape)
                    raise ShapeError(
                        f"to_torch: parametrized layer {i}: torch module {path!r} "
                        f"({type(mod).__name__}) {attr} has shape {got}, nnx "
                        f"{layer.describe()} gives shape {tuple(arr.shape)}"
                        f"{_how(pair, attr)}")
                plan.append((target, arr))
        for target, arr in plan:
            target.copy_(torch.as_tensor(np.ascontiguousarray(arr)).to(target.dtype))
    return module


def _how(pair, name: str) -> str:
    """A hint on the conversion behind a shape, for the error messages."""
    if isinstance(pair, (_DensePair, _RecurrentPair)) and ("W" in name or "weight" in name):
        return " (nnx stores this weight transposed: (in, out))"
    return ""
