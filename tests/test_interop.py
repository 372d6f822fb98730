"""nnx.interop: weights exchanged with PyTorch, both directions, per layer type; outputs of the
nnx model and the torch module agree to 1e-5 (float32). Skips where torch is not installed
(CI has no torch), except the test of the error raised without it."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import nnx
from nnx import interop
from nnx.errors import ShapeError

try:  # the import costs seconds; the torch-free test below must run without it
    import torch
    from torch import nn
except ImportError:  # pragma: no cover - depends on the machine
    torch = nn = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed "
                                 "(pip install torch); nnx.interop's torch tests need it")
ATOL = 1e-5


def test_without_torch_the_error_says_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    model = nnx.Sequential([nnx.Dense(3, 2)])
    for fn in (interop.from_torch, interop.to_torch):
        with pytest.raises(interop.TorchUnavailableError, match="pip install torch"):
            fn(model, object())
    assert issubclass(interop.TorchUnavailableError, ImportError)
    assert issubclass(interop.TorchUnavailableError, nnx.BackendUnavailableError)


# -- the cases: (nnx layers, torch module builder, input maker) --------------------------------
class LastStep(nn.Module if nn else object):
    """A recurrent layer's last hidden state then a Linear, as nnx's RNN(return_sequences=False)
    followed by Dense."""

    def __init__(self, rnn, hidden, out):
        super().__init__()
        self.rnn = rnn
        self.fc = nn.Linear(hidden, out)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.fc(y[:, -1])


class Transposed(nn.Module if nn else object):
    """nn.BatchNorm1d over a (N, T, F) sequence's features, as nnx's BatchNorm1d on (N, F, L)."""

    def __init__(self, mod):
        super().__init__()
        self.mod = mod

    def forward(self, x):
        return self.mod(x)


def float_input(*shape):
    return lambda rng: rng.standard_normal(shape).astype(np.float32)


def ids_input(n, t, vocab):
    return lambda rng: rng.integers(0, vocab, (n, t))


CASES = {
    "dense": (
        lambda: [nnx.Dense(5, 7, activation="relu"), nnx.Dense(7, 3)],
        lambda: nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)),
        float_input(4, 5)),
    "conv2d": (
        lambda: [nnx.Conv2D(2, 4, 3, padding="same", activation="relu"), nnx.MaxPool2D(2),
                 nnx.Conv2D(4, 3, 3, stride=2, padding=1), nnx.Flatten(),
                 nnx.Dense(3 * 2 * 2, 5)],
        lambda: nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Conv2d(4, 3, 3, stride=2, padding=1), nn.Flatten(),
                              nn.Linear(12, 5)),
        float_input(3, 2, 8, 8)),
    "conv1d": (
        lambda: [nnx.Conv1D(3, 4, 3, padding="same", activation="relu"), nnx.MaxPool1D(2),
                 nnx.Conv1D(4, 5, 2, dilation=2), nnx.AvgPool1D(2), nnx.GlobalAvgPool1D(),
                 nnx.Dense(5, 2)],
        lambda: nn.Sequential(nn.Conv1d(3, 4, 3, padding="same"), nn.ReLU(), nn.MaxPool1d(2),
                              nn.Conv1d(4, 5, 2, dilation=2), nn.AvgPool1d(2),
                              nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(5, 2)),
        float_input(2, 3, 12)),
    "lstm": (
        lambda: [nnx.LSTM(4, 6), nnx.Dense(6, 3)],
        lambda: LastStep(nn.LSTM(4, 6, batch_first=True), 6, 3),
        float_input(3, 5, 4)),
    "gru": (
        lambda: [nnx.GRU(4, 6), nnx.Dense(6, 3)],
        lambda: LastStep(nn.GRU(4, 6, batch_first=True), 6, 3),
        float_input(3, 5, 4)),
    "rnn": (
        lambda: [nnx.SimpleRNN(4, 6), nnx.Dense(6, 3)],
        lambda: LastStep(nn.RNN(4, 6, batch_first=True), 6, 3),
        float_input(3, 5, 4)),
    "embedding_layernorm": (
        lambda: [nnx.Embedding(11, 6), nnx.LayerNorm(6), nnx.Dense(6, 4)],
        lambda: nn.Sequential(nn.Embedding(11, 6), nn.LayerNorm(6), nn.Linear(6, 4)),
        ids_input(3, 5, 11)),
    "batchnorm1d": (
        lambda: [nnx.Dense(5, 6), nnx.BatchNorm1d(6), nnx.Dense(6, 2)],
        lambda: nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Linear(6, 2)),
        float_input(8, 5)),
    "batchnorm2d": (
        lambda: [nnx.Conv2D(2, 3, 3), nnx.BatchNorm2d(3), nnx.Flatten(), nnx.Dense(3 * 4 * 4, 2)],
        lambda: nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Flatten(),
                              nn.Linear(48, 2)),
        float_input(4, 2, 6, 6)),
}


def torch_out(module, x):
    module.eval()
    with torch.no_grad():
        t = torch.as_tensor(x)
        return module(t).numpy()


def scramble_batchnorm_stats(module, rng):
    """Give torch's running statistics values far from the defaults (0 and 1)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.copy_(torch.as_tensor(rng.standard_normal(m.num_features)))
                m.running_var.copy_(torch.as_tensor(rng.random(m.num_features) + 0.5))
                m.weight.copy_(torch.as_tensor(rng.standard_normal(m.num_features)))
                m.bias.copy_(torch.as_tensor(rng.standard_normal(m.num_features)))


def scramble_nnx_buffers(model, rng):
    bufs = model.get_buffers()
    for k, v in bufs.items():
        bufs[k] = (rng.random(v.shape) + 0.5 if k.endswith("running_var")
                   else rng.standard_normal(v.shape)).astype(v.dtype)
    model.set_buffers(bufs)


@needs_torch
@pytest.mark.parametrize("case", sorted(CASES))
def test_from_torch_then_outputs_agree(case):
    make_layers, make_module, make_input = CASES[case]
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    module = make_module()
    scramble_batchnorm_stats(module, rng)
    model = nnx.Sequential(make_layers(), backend="numpy", seed=1)
    x = make_input(rng)
    before = model.predict(x)
    assert interop.from_torch(model, module) is model
    expected = torch_out(module, x)
    assert not np.allclose(before, expected, atol=1e-3)  # the copy changed something
    np.testing.assert_allclose(model.predict(x), expected, atol=ATOL, rtol=ATOL)


@needs_torch
@pytest.mark.parametrize("case", sorted(CASES))
def test_to_torch_then_outputs_agree(case):
    make_layers, make_module, make_input = CASES[case]
    rng = np.random.default_rng(1)
    torch.manual_seed(1)
    module = make_module()
    model = nnx.Sequential(make_layers(), backend="numpy", seed=2)
    scramble_nnx_buffers(model, rng)
    if case.startswith("batchnorm") or case == "embedding_layernorm":  # non-default gamma/beta
        model.set_weights([w + rng.standard_normal(w.shape).astype(w.dtype) * 0.3
                           for w in model.get_weights()])
    x = make_input(rng)
    before = torch_out(module, x)
    assert interop.to_torch(model, module) is module
    expected = model.predict(x)
    assert not np.allclose(before, expected, atol=1e-3)
    np.testing.assert_allclose(torch_out(module, x), expected, atol=ATOL, rtol=ATOL)


@needs_torch
def test_round_trip_on_numba_and_a_layer_root():
    """Any backend; and a built Layer (not a Model) works too."""
    if "numba" not in nnx.available_backends():
        pytest.skip("numba backend unavailable")
    torch.manual_seed(3)
    module = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    model = nnx.Sequential([nnx.Dense(4, 3, "tanh"), nnx.Dense(3, 2)], backend="numba")
    interop.from_torch(model.net, module)
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x), torch_out(module, x), atol=ATOL, rtol=ATOL)
    fresh = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    interop.to_torch(model, fresh)
    for a, b in zip(module.parameters(), fresh.parameters()):
        assert torch.equal(a, b)


@needs_torch
def test_lstm_bias_split_into_bias_ih():
    torch.manual_seed(0)
    module = LastStep(nn.LSTM(2, 3, batch_first=True), 3, 1)
    model = nnx.Sequential([nnx.LSTM(2, 3), nnx.Dense(3, 1)])
    interop.to_torch(model, module)
    b = model.net.layers[0].params["b"]
    np.testing.assert_array_equal(module.rnn.bias_ih_l0.detach().numpy(), b)
    assert not module.rnn.bias_hh_l0.detach().numpy().any()


# -- mismatches: named, and nothing written ------------------------------------------------------
def snapshot(model, module):
    return [w.copy() for w in model.get_weights()], [p.detach().clone()
                                                     for p in module.parameters()]


def assert_unchanged(model, module, snap):
    for a, b in zip(model.get_weights(), snap[0]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(module.parameters(), snap[1]):
        assert torch.equal(a, b)


@needs_torch
@pytest.mark.parametrize("direction", ["from_torch", "to_torch"])
def test_shape_mismatch_names_both_layers_and_shapes(direction):
    model = nnx.Sequential([nnx.Dense(4, 8, name="hidden"), nnx.Dense(8, 3, name="head")])
    module = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 5))
    snap = snapshot(model, module)
    with pytest.raises(ShapeError) as err:
        getattr(interop, direction)(model, module)
    msg = str(err.value)
    assert "Dense 'head'" in msg and "'2' (Linear)" in msg and "layer 1" in msg
    assert ("(8, 3)" in msg and "(8, 5)" in msg) or ("(5, 8)" in msg and "(3, 8)" in msg)
    assert_unchanged(model, module, snap)


@needs_torch
def test_kind_count_and_config_mismatches():
    model = nnx.Sequential([nnx.Conv2D(1, 2, 3, name="c"), nnx.Flatten(), nnx.Dense(8, 2)])
    wrong_kind = nn.Sequential(nn.Linear(1, 2), nn.Linear(8, 2))
    with pytest.raises(ShapeError, match=r"layer 0: nnx Conv2D 'c' pairs with torch module "
                                         r"'0' \(Linear\); expected a torch Conv2d"):
        interop.from_torch(model, wrong_kind)
    stride = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(ShapeError, match=r"differ in stride: nnx \(1, 1\), torch \(2, 2\)"):
        interop.to_torch(model, stride)
    same = nnx.Sequential([nnx.Conv2D(1, 2, 3, stride=2, padding="same")])
    with pytest.raises(ShapeError, match=r"padding \(lo, hi\) per axis: nnx None"):
        interop.from_torch(same, nn.Sequential(nn.Conv2d(1, 2, 3, stride=2, padding=1)))
    extra = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2), nn.Linear(2, 2))
    with pytest.raises(ShapeError, match=r"got 2 in the nnx model and 3 in the torch module; "
                                         r"the first without a partner is torch module '3'"):
        interop.from_torch(model, extra)
    no_bias = nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(ShapeError, match="bias"):
        interop.from_torch(model, no_bias)
    two_layer = LastStep(nn.LSTM(2, 3, num_layers=2, batch_first=True), 3, 1)
    with pytest.raises(ShapeError, match="num_layers"):
        interop.from_torch(nnx.Sequential([nnx.LSTM(2, 3), nnx.Dense(3, 1)]), two_layer)
    eps = nn.Sequential(nn.LayerNorm(4, eps=1e-3))
    with pytest.raises(ShapeError, match=r"eps: nnx 1e-05, torch 0.001"):
        interop.from_torch(nnx.Sequential([nnx.LayerNorm(4)]), eps)


@needs_torch
def test_unsupported_layers_are_named():
    attn = nnx.Sequential([nnx.MultiHeadSelfAttention(4, 2, name="attn")])
    with pytest.raises(ShapeError, match="cannot map MultiHeadSelfAttention 'attn'"):
        interop.from_torch(attn, nn.Sequential(nn.Linear(4, 4)))
    module = nn.Sequential(nn.Linear(4, 4), nn.MultiheadAttention(4, 2))
    with pytest.raises(ShapeError, match=r"cannot map torch module '1' \(MultiheadAttention\)"):
        interop.to_torch(nnx.Sequential([nnx.Dense(4, 4)]), module)
