"""GRU: PyTorch's equations and gate order (r, z, n), Dense-convention weights.

    a = x_t @ W_ih + b_ih;   u = h_{t-1} @ W_hh + b_hh       (N, 3H) each, blocks [r | z | n]
    r = sigmoid(a_r + u_r);  z = sigmoid(a_z + u_z)
    n = tanh(a_n + r * u_n)
    h_t = (1 - z) * n + z * h_{t-1}

Weights (get_weights order): W_ih (input_size, 3H), W_hh (H, 3H), b_ih (3H,), b_hh (3H,).
Both biases are kept (unlike the LSTM's single b) because b_hh's n block is multiplied by r.
Mapping to PyTorch's nn.GRU (one layer): weight_ih_l0 = W_ih.T, weight_hh_l0 = W_hh.T,
bias_ih_l0 = b_ih, bias_hh_l0 = b_hh, i.e. `set_weights([w_ih.T, w_hh.T, b_ih, b_hh])`.

Initial states: `set_initial_state(h0)` or `forward(x, training, initial_state=h0)`; see
`nnx.layers.simple_rnn` for the semantics, `final_state` and `initial_state_grads`.
"""

from __future__ import annotations

from .base import ParamSpec
from .simple_rnn import RecurrentLayer


class GRU(RecurrentLayer):
    """GRU(input_size, hidden_size, return_sequences=False)."""

    gates = 3

    def param_specs(self):
        gh = 3 * self.hidden_size
        return [*self._weight_specs(), ParamSpec("b_ih", (gh,), "zeros"),
                ParamSpec("b_hh", (gh,), "zeros")]

    def forward(self, x, training=False, initial_state=None):
        self._check_input(x)
        (h0,) = self._initial_states(initial_state, x.shape[0])
        self._x = x
        p = self.params
        hs, self._saved = self.ops.gru_forward(x, p["W_ih"], p["W_hh"], p["b_ih"], p["b_hh"], h0)
        self.final_state = (hs[:, -1],)
        return hs if self.return_sequences else hs[:, -1]

    def backward(self, dy, need_dx=True):
        dhs, dh_last = self._split_dy(dy)
        g = self.grads
        dx, _, _, _, _, dh0 = self.ops.gru_backward(
            dhs, self._x, self.params["W_ih"], self.params["W_hh"], self._saved, dh_last,
            need_dx, self._given_shapes is not None,
            g["W_ih"], g["W_hh"], g["b_ih"], g["b_hh"],
        )
        self._state_grads((dh0,))
        return dx
