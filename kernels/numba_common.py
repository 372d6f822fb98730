"""What the Numba kernel modules share: jit options, the activation codes and the dtype/layout
checks that decide whether a call runs in Numba or falls back to the reference. (How work is
split and when it runs in parallel: `numba_dispatch.py`.)"""

from __future__ import annotations

import numpy as np

from .reference import ACTIVATIONS

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}  # no nnan / ninf: keep NaN/inf exact
# error_model="numpy": Numba's default zero-division check stops loops from vectorizing.
SER = dict(fastmath=FASTMATH, error_model="numpy", cache=True, nogil=True)
PAR = dict(parallel=True, fastmath=FASTMATH, error_model="numpy", cache=True, nogil=True)

# Activation codes (frozen into the kernels as constants).
IDENTITY, RELU, LEAKY_RELU, SIGMOID, TANH, SOFTMAX, GELU = range(7)
ACT_CODE = {name: i for i, name in enumerate(ACTIVATIONS)}
assert ACT_CODE == {
    "identity": IDENTITY,
    "relu": RELU,
    "leaky_relu": LEAKY_RELU,
    "sigmoid": SIGMOID,
    "tanh": TANH,
    "softmax": SOFTMAX,
    "gelu": GELU,
}


def contiguous(a):
    """C-contiguous (no copy when it already is)."""
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def same_float(*arrays) -> bool:
    """All arrays NumPy, of one float dtype the kernels compile for."""
    dt = None
    for a in arrays:
        if not isinstance(a, np.ndarray):
            return False
        if dt is None:
            dt = a.dtype
            if dt not in FLOATS:
                return False
        elif a.dtype != dt:
            return False
    return True
