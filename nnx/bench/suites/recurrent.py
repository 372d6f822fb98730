"""LSTM: forward + backward over a sequence (`begin_update`, then its backprop closure)."""

from __future__ import annotations

from nnx.layers.lstm import LSTM
from nnx.model import Sequential

from ..registry import Case, Skip, suite
from .common import F32, randn


def _torch_lstm(t, x0, dy0, I, H):
    torch = t.torch
    lstm = torch.nn.LSTM(I, H, batch_first=True).to(t.device)
    x = t.array(x0).requires_grad_(True)
    dy = t.array(dy0)
    params = list(lstm.parameters())

    def torch_step():
        for p in params:
            p.grad = None
        x.grad = None
        out, _ = lstm(x)
        torch.autograd.backward(out[:, -1], dy)

    return torch_step


def lstm_case(N, T, I, H) -> Case:
    fwd = 2.0 * N * T * (I + H) * 4 * H

    def setup(t):
        x0, dy0 = randn((N, T, I), 1), randn((N, H), 2)
        if t.kind == "torch":
            return _torch_lstm(t, x0, dy0, I, H)
        ops = t.new_ops()
        if not hasattr(ops, "lstm_forward"):
            raise Skip(f"backend {t.name} has no lstm_forward kernel yet")
        model = Sequential([LSTM(I, H)], backend=ops)
        layer = model.layers[0]
        x, dy = model.ops.asarray(x0), model.ops.asarray(dy0)

        def step():
            _y, backprop = layer.begin_update(x, True)
            return backprop(dy, True)

        return step

    return Case(
        name=f"lstm fwd+bwd N{N} T{T} I{I} H{H}", suite="lstm", setup=setup, flops=3 * fwd,
        bytes=F32 * (N * T * I * 2 + (I + H) * 4 * H * 2 + N * T * 6 * H * 2),
        params={"N": N, "T": T, "input_size": I, "hidden_size": H, "return_sequences": False},
        group="lstm", bound="compute")


@suite("lstm", "LSTM layer, forward + backward through a 28-step sequence (MNIST rows)")
def lstm_suite(quick: bool):
    return [lstm_case(8, 5, 8, 16)] if quick else [lstm_case(128, 28, 28, 128)]


SUITES = (lstm_suite,)
