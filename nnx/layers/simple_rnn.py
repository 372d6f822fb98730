"""SimpleRNN (Elman, tanh), and the machinery every recurrent layer shares (`RecurrentLayer`).

Recurrent layers take batch-first sequences x of shape (N, T, input_size) and return the last
hidden state (N, hidden_size), or with `return_sequences=True` every hidden state
(N, T, hidden_size). The gradient w.r.t. the input sequence is computed (BPTT), so recurrent
layers stack and can sit anywhere in a model.

Initial states. By default every sequence starts from zeros. Two ways to start elsewhere:

- `layer.set_initial_state(h0)` (LSTM: `set_initial_state(h0, c0)`): used by every following
  forward until `layer.reset_initial_state()`; each state is (N, hidden_size), or
  (hidden_size,) for one state broadcast over the batch.
- `layer.forward(x, training, initial_state=h0)` (LSTM: `initial_state=(h0, c0)`): this call
  only; takes precedence over `set_initial_state`.

After a forward, `layer.final_state` holds the last states ((h_T,), LSTM (h_T, c_T)), which can
be fed to the next call (`set_initial_state(*layer.final_state)`) for stateful processing of
long sequences; after a backward, `layer.initial_state_grads` holds the gradients w.r.t. the
initial states that were given (same shapes as given; None when the layer started from zeros).
Initial states are inputs, not parameters: they are not trained nor saved in checkpoints.
"""

from __future__ import annotations

from ..errors import ShapeError
from .base import Layer, ParamSpec


def _check_size(layer, arg, v):
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{type(layer).__name__} {layer.name!r}: {arg} must be a positive int, "
                         f"got {v!r}")


class RecurrentLayer(Layer):
    """Base of SimpleRNN, LSTM and GRU: argument checks, initial states, config."""

    gates = 1  # gate blocks in W_ih / W_hh
    state_names: tuple = ("h0",)

    def __init__(self, input_size: int, hidden_size: int, return_sequences: bool = False,
                 name: str | None = None):
        super().__init__(name)
        _check_size(self, "input_size", input_size)
        _check_size(self, "hidden_size", hidden_size)
        self.input_size, self.hidden_size = input_size, hidden_size
        self.return_sequences = bool(return_sequences)
        self._initial_state = None
        self.final_state = None
        self.initial_state_grads = None

    # -- parameters -----------------------------------------------------------------------
    def _weight_specs(self):
        """W_ih (F, gates*H) Glorot, W_hh (H, gates*H) orthogonal (Keras's defaults)."""
        gh = self.gates * self.hidden_size
        return [
            ParamSpec("W_ih", (self.input_size, gh), "glorot_uniform"),
            ParamSpec("W_hh", (self.hidden_size, gh), "orthogonal"),
        ]

    # -- initial states -------------------------------------------------------------------
    def set_initial_state(self, *states) -> None:
        """Start following sequences from `states` (see the module docstring);
        `set_initial_state(None)` or `reset_initial_state()` goes back to zeros."""
        if len(states) == 1 and states[0] is None:
            self._initial_state = None
            return
        self._initial_state = self._check_states(states)

    def reset_initial_state(self) -> None:
        self._initial_state = None

    def _check_states(self, states):
        if isinstance(states, (list, tuple)):
            states = tuple(states)
        else:
            states = (states,)
        if len(states) != len(self.state_names):
            raise ValueError(f"{type(self).__name__} {self.name!r}: initial state takes "
                             f"{len(self.state_names)} array(s) ({', '.join(self.state_names)}), "
                             f"got {len(states)}")
        h = self.hidden_size
        for nm, s in zip(self.state_names, states, strict=True):
            shape = tuple(getattr(s, "shape", ()))
            if len(shape) not in (1, 2) or shape[-1] != h:
                raise ShapeError(f"{type(self).__name__} {self.name!r}: expected initial state "
                                 f"{nm} of shape (batch, {h}) or ({h},), got shape {shape}")
        return states

    def _initial_states(self, initial_state, n):
        """The initial states of this call as (N, H) backend arrays, or Nones (zeros)."""
        states = initial_state if initial_state is not None else self._initial_state
        if states is None:
            self._given_shapes = None
            return (None,) * len(self.state_names)
        states = self._check_states(states)
        out, shapes = [], []
        for nm, s in zip(self.state_names, states, strict=True):
            s = self.ops.asarray(s)
            if s.ndim == 2 and s.shape[0] != n:
                raise ShapeError(f"{type(self).__name__} {self.name!r}: expected initial state "
                                 f"{nm} of shape ({n}, {self.hidden_size}) for a batch of {n}, "
                                 f"got shape {tuple(s.shape)}")
            shapes.append(tuple(s.shape))
            if s.ndim == 1:
                s = self.ops.zeros((n, self.hidden_size), dtype=s.dtype) + s
            out.append(s)
        self._given_shapes = tuple(shapes)
        return tuple(out)

    def _state_grads(self, grads):
        if self._given_shapes is None:
            self.initial_state_grads = None
            return
        out = []
        for g, shape in zip(grads, self._given_shapes, strict=True):
            out.append(g.sum(axis=0) if len(shape) == 1 else g)
        self.initial_state_grads = tuple(out)

    # -- checks ---------------------------------------------------------------------------
    def _check_input(self, x):
        if x.ndim != 3 or x.shape[-1] != self.input_size or x.shape[1] < 1:
            raise ShapeError(
                f"{type(self).__name__} {self.name!r}: expected input of shape (batch, time, "
                f"{self.input_size}) (input_size={self.input_size}, time >= 1), "
                f"got shape {tuple(x.shape)}"
            )

    def _split_dy(self, dy):
        """(dhs, dh_last) for the kernels: all outputs' gradient or the last one's."""
        return (dy, None) if self.return_sequences else (None, dy)

    def output_shape(self, input_shape):
        if self.return_sequences:
            return (*input_shape[:-1], self.hidden_size)
        return (self.hidden_size,)

    def get_config(self):
        return {"input_size": self.input_size, "hidden_size": self.hidden_size,
                "return_sequences": self.return_sequences, "name": self.name}


class SimpleRNN(RecurrentLayer):
    """Elman RNN: h_t = tanh(x_t @ W_ih + h_{t-1} @ W_hh + b).

    Weights (get_weights order): W_ih (input_size, H), W_hh (H, H), b (H,). PyTorch's nn.RNN:
    weight_ih_l0 = W_ih.T, weight_hh_l0 = W_hh.T, bias_ih_l0 + bias_hh_l0 = b."""

    gates = 1

    def param_specs(self):
        return [*self._weight_specs(), ParamSpec("b", (self.hidden_size,), "zeros")]

    def forward(self, x, training=False, initial_state=None):
        self._check_input(x)
        (h0,) = self._initial_states(initial_state, x.shape[0])
        self._x = x
        hs, self._saved = self.ops.rnn_forward(x, self.params["W_ih"], self.params["W_hh"],
                                               self.params["b"], h0)
        self.final_state = (hs[:, -1],)
        return hs if self.return_sequences else hs[:, -1]

    def backward(self, dy, need_dx=True):
        dhs, dh_last = self._split_dy(dy)
        dx, _, _, _, dh0 = self.ops.rnn_backward(
            dhs, self._x, self.params["W_ih"], self.params["W_hh"], self._saved, dh_last,
            need_dx, self._given_shapes is not None,
            self.grads["W_ih"], self.grads["W_hh"], self.grads["b"],
        )
        self._state_grads((dh0,))
        return dx
