"""GRU: PyTorch's equations and gate order (r, z, n), Dense-convention weights.

    a = x_t @ W_ih + b_ih;   u = h_{t-1} @ W_hh + b_hh       (N, 3H) each, blocks [r | z | n]
    r = sigmoid(a_r + u_r);  z = sigmoid(a_z + u_z)
    n = tanh(a_n + r * u_n)
    h_t = (1 - z) * n + z * h_{t-1}

Weights (get_weights order): W_ih (input_size, 3H), W_hh (H, 3H), b_ih (3H,), b_hh (3H,).
Both biases are kept (unlike the LSTM's single b) because b_hh's n block is multiplied by r.
Mapping to PyTorch's nn.GRU (one layer): weight_ih_l0 = W_ih.T, weight_hh_l0 = W_hh.T,
bias_ih_l0 = b_ih, bias_hh_l0 = b_hh, i.e. `set_weights([w_ih.T, w_hh.T, b_ih, b_hh])`.

Initial states: `set_initial_state(h0)` or `initial_state=h0` in `forward_with_state` /
`begin_update_with_state`; see `nnx.layers.recurrent` for the semantics, the final states and
the initial-state gradients.
"""

from __future__ import annotations

from .base import ParamSpec
from .recurrent import RecurrentLayer


class GRU(RecurrentLayer):
    """GRU(input_size, hidden_size, return_sequences=False): input_size None is inferred."""

    gates = 3

    def param_specs(self):
        gh = 3 * self.hidden_size
        return [*self._weight_specs(), ParamSpec("b_ih", (gh,), "zeros"),
                ParamSpec("b_hh", (gh,), "zeros")]

    def _scan(self, x, states):
        (h0,) = states
        p = self.params
        hs, saved = self.ops.gru_forward(x, p["W_ih"], p["W_hh"], p["b_ih"], p["b_hh"], h0)

        def bptt(dhs, dh_last, need_dx, need_dh0):
            g = self.grads
            dx, _, _, _, _, dh0 = self.ops.gru_backward(
                dhs, x, self.params["W_ih"], self.params["W_hh"], saved, dh_last,
                need_dx, need_dh0,
                g["W_ih"], g["W_hh"], g["b_ih"], g["b_hh"],
            )
            return dx, (dh0,)

        return hs, (hs[:, -1],), bptt
