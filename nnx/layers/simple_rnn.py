"""SimpleRNN (Elman, tanh).

Input, output, initial states and the stateful calls (`forward_with_state`,
`begin_update_with_state`) are those of every recurrent layer: see `nnx.layers.recurrent`.
"""

from __future__ import annotations

from .base import ParamSpec
from .recurrent import RecurrentLayer


class SimpleRNN(RecurrentLayer):
    """Elman RNN: h_t = tanh(x_t @ W_ih + h_{t-1} @ W_hh + b).

    Weights (get_weights order): W_ih (input_size, H), W_hh (H, H), b (H,). PyTorch's nn.RNN:
    weight_ih_l0 = W_ih.T, weight_hh_l0 = W_hh.T, bias_ih_l0 + bias_hh_l0 = b."""

    gates = 1

    def param_specs(self):
        return [*self._weight_specs(), ParamSpec("b", (self.hidden_size,), "zeros")]

    def _scan(self, x, states):
        (h0,) = states
        hs, saved = self.ops.rnn_forward(x, self.params["W_ih"], self.params["W_hh"],
                                         self.params["b"], h0)

        def bptt(dhs, dh_last, need_dx, need_dh0):
            dx, _, _, _, dh0 = self.ops.rnn_backward(
                dhs, x, self.params["W_ih"], self.params["W_hh"], saved, dh_last,
                need_dx, need_dh0,
                self.grads["W_ih"], self.grads["W_hh"], self.grads["b"],
            )
            return dx, (dh0,)

        return hs, (hs[:, -1],), bptt
