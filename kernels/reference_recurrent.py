"""Reference kernels: recurrent cells (RNN, LSTM, GRU), embedding and attention; written against `self.xp`."""

from __future__ import annotations


class RecurrentKernels:
    """Mixin of `Ops` (recurrent cells (RNN, LSTM, GRU), embedding and attention)."""
