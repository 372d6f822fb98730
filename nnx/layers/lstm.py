"""LSTM: PyTorch's equations and gate order (i, f, g, o), Dense-convention weights.

    z   = x_t @ W_ih + h_{t-1} @ W_hh + b        (N, 4H), blocks [i | f | g | o]
    i, f, o = sigmoid(z_i), sigmoid(z_f), sigmoid(z_o);   g = tanh(z_g)
    c_t = f * c_{t-1} + i * g;                          h_t = o * tanh(c_t)

Weights (get_weights order): W_ih (input_size, 4H), W_hh (H, 4H), b (4H,).
Mapping to PyTorch's nn.LSTM (one layer): weight_ih_l0 = W_ih.T, weight_hh_l0 = W_hh.T,
bias_ih_l0 + bias_hh_l0 = b, i.e. `set_weights([w_ih.T, w_hh.T, b_ih + b_hh])`.
Initialization (Keras's): W_ih Glorot-uniform, W_hh orthogonal, b zeros except the forget gate
block, which starts at 1 (`unit_forget_bias`), so early training does not forget everything.

Initial states: `set_initial_state(h0, c0)` or `initial_state=(h0, c0)` in
`forward_with_state` / `begin_update_with_state`, whose final states are (h_T, c_T) and whose
state gradients are (dh0, dc0); see `nnx.layers.recurrent` for the semantics.
"""

from __future__ import annotations

from .base import ParamSpec
from .recurrent import RecurrentLayer


def unit_forget_bias(rng, shape, fan):
    """Zeros, with the forget-gate block (second quarter) set to 1."""
    h = shape[0] // 4
    return [0.0] * h + [1.0] * h + [0.0] * (shape[0] - 2 * h)


class LSTM(RecurrentLayer):
    """LSTM(input_size, hidden_size, return_sequences=False, unit_forget_bias=True);
    input_size None is inferred from the input shape when the model is built."""

    gates = 4
    state_names = ("h0", "c0")

    def __init__(self, input_size: int | None, hidden_size: int, return_sequences: bool = False,
                 unit_forget_bias: bool = True, name: str | None = None):
        super().__init__(input_size, hidden_size, return_sequences, name)
        self.unit_forget_bias = bool(unit_forget_bias)

    def param_specs(self):
        init = unit_forget_bias if self.unit_forget_bias else "zeros"
        return [*self._weight_specs(), ParamSpec("b", (4 * self.hidden_size,), init)]

    def _scan(self, x, states):
        h0, c0 = states
        hs, saved = self.ops.lstm_forward(x, self.params["W_ih"], self.params["W_hh"],
                                          self.params["b"], h0, c0)

        def bptt(dhs, dh_last, need_dx, need_dh0):
            dx, _, _, _, dh0, dc0 = self.ops.lstm_backward(
                dhs, x, self.params["W_ih"], self.params["W_hh"], saved, dh_last, None,
                need_dx, need_dh0,
                self.grads["W_ih"], self.grads["W_hh"], self.grads["b"],
            )
            return dx, (dh0, dc0)

        return hs, (hs[:, -1], self.ops.lstm_final_cell(saved)), bptt

    def get_config(self):
        cfg = super().get_config()
        cfg["unit_forget_bias"] = self.unit_forget_bias
        return cfg
