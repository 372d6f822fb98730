"""`RecurrentLayer`: the machinery SimpleRNN, LSTM and GRU share (checks, initial states, the
stateful API, config).

Recurrent layers take batch-first sequences x of shape (N, T, input_size) and return the last
hidden state (N, hidden_size), or with `return_sequences=True` every hidden state
(N, T, hidden_size). The gradient w.r.t. the input sequence is computed (BPTT), so recurrent
layers stack and can sit anywhere in a model. They follow the layer contract of
`nnx.layers.base`: `begin_update(x, training)` / `forward(x)`, nothing per call on the layer.

Initial states. By default every sequence starts from zeros. Two ways to start elsewhere:

- `layer.set_initial_state(h0)` (LSTM: `set_initial_state(h0, c0)`): used by every following
  call (`forward`, `begin_update`, a model's fit / predict) until `layer.reset_initial_state()`;
  each state is (N, hidden_size), or (hidden_size,) for one state broadcast over the batch. This
  is configuration, like a constructor argument: set it between calls, not while another thread
  runs the layer.
- `initial_state=h0` (LSTM: `initial_state=(h0, c0)`) passed to one of the two calls below:
  that call only; takes precedence over `set_initial_state`.

Final states and initial-state gradients are results of one call, so the call returns them
(nothing is written on the layer; concurrent calls do not interfere):

    y, state = layer.forward_with_state(x, initial_state=None, training=False)
    y, state, backprop = layer.begin_update_with_state(x, initial_state=None, training=True)
    dx, state_grads = backprop(dy, need_dx=True)

`state` is the tuple of last states, (h_T,) (LSTM: (h_T, c_T)), each (N, hidden_size); feed it
to the next call (`initial_state=state`, or `set_initial_state(*state)`) to process a long
sequence in pieces: the pieces' outputs equal those of the whole sequence. The backprop of
`begin_update_with_state` writes the parameter gradients like any backprop and returns
`(dx, state_grads)`: dx is None when not `need_dx`; `state_grads` is the tuple of gradients
w.r.t. the initial states this call started from (same shapes as given: a (hidden_size,) state
gets the batch-summed gradient), or None when the call started from zeros. Gradients do not
flow into the returned final states (they are outputs for the next call, truncated BPTT).
`begin_update(x)` / `forward(x)` are the standard contract: initial state from
`set_initial_state` or zeros, final states dropped, no initial-state gradients computed.
Initial states are inputs, not parameters: they are not trained nor saved in checkpoints.

Incremental decoding (`nnx.layers.decode`, return_sequences=True): the decoding state is the
tuple of last states, carried from one `decode_step` to the next by the caller.

A subclass implements `_scan(x, states) -> (hs, final_states, bptt)`: the forward over the
whole sequence from `states` (a tuple of (N, H) backend arrays, or Nones for zeros) and the
closure `bptt(dhs, dh_last, need_dx, need_dstates) -> (dx, dstates)` that writes the parameter
gradients.
"""

from __future__ import annotations

from ..errors import ShapeError
from .base import Layer, ParamSpec, _accumulating
from .decode import DecodeError


class RecurrentLayer(Layer):
    """Base of SimpleRNN, LSTM and GRU: argument checks, initial states, the stateful calls
    (`forward_with_state`, `begin_update_with_state`), config. `input_size=None` is inferred
    from the input shape (T, features) when the model is built."""

    gates = 1  # gate blocks in W_ih / W_hh
    state_names: tuple = ("h0",)
    inferable = "input_size"

    def __init__(self, input_size: int | None, hidden_size: int, return_sequences: bool = False,
                 name: str | None = None):
        super().__init__(name)
        if input_size is not None:
            self._check_positive_ints(input_size=input_size)
        self._check_positive_ints(hidden_size=hidden_size)
        self.input_size, self.hidden_size = input_size, hidden_size
        self.return_sequences = bool(return_sequences)
        self._initial_state = None  # set by set_initial_state (configuration, not per call)

    # -- parameters -----------------------------------------------------------------------
    def _weight_specs(self):
        """W_ih (F, gates*H) Glorot, W_hh (H, gates*H) orthogonal (Keras's defaults)."""
        self._require_sizes()
        gh = self.gates * self.hidden_size
        return [
            ParamSpec("W_ih", (self.input_size, gh), "glorot_uniform"),
            ParamSpec("W_hh", (self.hidden_size, gh), "orthogonal"),
        ]

    # -- the sequence (subclasses) --------------------------------------------------------
    def _scan(self, x, states):
        """(hs (N, T, H), final states tuple, bptt) for x (N, T, F) from `states` (see the
        module docstring)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _scan()")

    # -- calls ----------------------------------------------------------------------------
    def call(self, x, training):
        y, _state, backprop_with_state = self._begin(x, None, want_state_grads=False)

        def backprop(dy, need_dx=True):
            return backprop_with_state(dy, need_dx)[0]

        return y, backprop

    def forward_with_state(self, x, initial_state=None, training: bool = False):
        """(y, final states) for one call, from `initial_state` (this call only), else the
        state of `set_initial_state`, else zeros; nothing is kept for a backward pass.
        (`training` is accepted for symmetry with `forward`: recurrent layers compute the same
        either way.)"""
        self._require_built()
        y, state, _ = self._begin(x, initial_state, want_state_grads=False)
        return y, state

    def begin_update_with_state(self, x, initial_state=None, training: bool = True):
        """(y, final states, backprop) for one call; `backprop(dy, need_dx=True)` writes the
        parameter gradients (summed over uses for a tied layer) and returns
        `(dx, initial-state gradients or None)` (see the module docstring)."""
        self._require_built()
        y, state, backprop = self._begin(x, initial_state, want_state_grads=True)
        if self._uses > 1:
            backprop = _accumulating(self, backprop)
        return y, state, backprop

    def _require_built(self):
        if self.ops is None:
            raise RuntimeError(f"{type(self).__name__} {self.name!r} is not built into a model: "
                               "put it in nnx.Sequential/Model (or nnx.testing.build) first")

    def _begin(self, x, initial_state, want_state_grads):
        """(y, final states, backprop(dy, need_dx) -> (dx, state grads or None))."""
        self._check_input(x)
        states, shapes = self._initial_states(initial_state, x.shape[0])
        hs, final_state, bptt = self._scan(x, states)
        y = hs if self.return_sequences else hs[:, -1]
        need_dstates = want_state_grads and shapes is not None

        def backprop(dy, need_dx=True):
            dhs, dh_last = self._split_dy(dy)
            dx, dstates = bptt(dhs, dh_last, need_dx, need_dstates)
            return dx, (self._state_grads(dstates, shapes) if need_dstates else None)

        return y, final_state, backprop

    # -- incremental decoding (nnx.layers.decode): the state is the last states -------------
    def init_decode_state(self, batch, capacity):
        """The states to start from (`set_initial_state`'s, else zeros); needs
        return_sequences=True (an output per position)."""
        if not self.return_sequences:
            raise DecodeError(f"{self.describe()} has return_sequences=False: it outputs only "
                              "the last position, so it cannot feed per-position outputs; "
                              "build it with return_sequences=True")
        return self._initial_states(None, batch)[0]

    def decode_step(self, x, states):
        """x (N, t, input_size), the next positions -> (hs (N, t, H), their final states):
        the scan continues from `states`, so the pieces equal the whole sequence."""
        self._check_input(x)
        hs, final_states, _ = self._scan(x, states)
        return hs, final_states

    # -- initial states -------------------------------------------------------------------
    def set_initial_state(self, *states) -> None:
        """Start following sequences from `states` (see the module docstring);
        `set_initial_state(None)` or `reset_initial_state()` goes back to zeros."""
        if len(states) == 1 and states[0] is None:
            self._initial_state = None
            return
        self._initial_state = self._check_states(states)

    def reset_initial_state(self) -> None:
        """Start following sequences from zeros again."""
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
        """(states, shapes) of this call: the initial states as (N, H) backend arrays and the
        shapes they were given in, or (Nones, None) when starting from zeros."""
        states = initial_state if initial_state is not None else self._initial_state
        if states is None:
            return (None,) * len(self.state_names), None
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
        return tuple(out), tuple(shapes)

    @staticmethod
    def _state_grads(grads, shapes):
        """The (N, H) state gradients in the shapes the states were given in ((H,): summed
        over the batch)."""
        return tuple(g.sum(axis=0) if len(shape) == 1 else g
                     for g, shape in zip(grads, shapes, strict=True))

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

    def size_from_input(self, input_shape):
        if len(input_shape) != 2:
            raise self._expect("input of shape", "(batch, time, features)",
                               f"shape {(None, *input_shape)}")
        return int(input_shape[-1])

    def set_input_size(self, value):
        self.input_size = value

    def get_config(self):
        return {"input_size": self.input_size, "hidden_size": self.hidden_size,
                "return_sequences": self.return_sequences, "name": self.name}
