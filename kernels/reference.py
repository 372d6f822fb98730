"""The reference kernels: the full kernel table, written once against the array namespace `xp`.

`Ops` is the numpy backend as it stands, and the base class of every other backend: the CuPy
backend sets `xp = cupy` and inherits everything here unchanged; Numba and CUDA backends override
the hot paths and fall back to these for the rest. Every override is tested against this module,
and this module is tested against float64 finite differences.

Contract, in short (shapes for the 2-D case; leading dimensions are flattened by `dense_*`):
- `dense_forward(x, W, b, activation) -> (y, saved)`: y = act(x @ W + b); `saved` is what the
  backward needs (the activation output, or the pre-activation for gelu).
- `dense_backward(dy, x, W, saved, activation, need_dx, dW_out, db_out) -> (dx, dW, db)`; writes
  into `dW_out` / `db_out` when given (the flat gradient buffer's views), and skips dx when
  `need_dx` is false (the first layer's input needs no gradient).
- `<act>(x) -> y` and `backprop_<act>(dy, saved) -> dx` for every activation.
- losses return `(loss, dinput)` with the loss a 0-d array (no host sync) and the gradient of the
  mean loss.
- optimizer updates work in place on flat buffers; scalars arrive as Python floats (float64), so
  that `1 - beta2` does not drift in float32 (`reference_optim.py`: SGD, Adam/AdamW, RMSprop,
  Adagrad, Adadelta, mixed into `Ops`).
"""

from __future__ import annotations

import math

import numpy

from .reference_layers import LayerKernels
from .reference_optim import OptimKernels

# The activations with a code in the fused Numba and CUDA kernels: `numba_common.ACT_CODE` is built
# from this tuple's order and checked against its own constants, so it changes with them.
ACTIVATIONS = ("identity", "relu", "leaky_relu", "sigmoid", "tanh", "softmax", "gelu")
# Row activations without a fused kernel code: every backend runs the reference (xp) code below
# (NumbaOps and CupyOps fall back to it for activations their code tables do not name).
ROW_ACTIVATIONS = ("log_softmax",)
# Every activation a layer accepts (`Dense(..., activation=)`, `Activation(...)`).
ALL_ACTIVATIONS = ACTIVATIONS + ROW_ACTIVATIONS
_GELU_K = math.sqrt(2.0 / math.pi)
LEAKY_SLOPE = 0.01
# |x| beyond which GELU's tanh is exactly +-1 in float16/32/64 (tanh(0.798 * (20 + 357.7)) = 1
# to the last bit of float64): gelu and its derivative clip x there so x**3 cannot overflow.
GELU_CLIP = 20.0


class Ops(OptimKernels, LayerKernels):
    """The reference backend. Runs on NumPy arrays as is, on CuPy arrays with `xp = cupy`."""

    name = "numpy"
    xp = numpy
    on_host = True  # arrays live in host memory (no transfers, syncs are free)

    def __init__(self, seed: int | None = None, dtype: str = "float32", **options):
        if options:
            raise TypeError(f"backend {self.name!r} takes no options, got {sorted(options)}")
        self.dtype = self.xp.dtype(dtype)
        if self.dtype.kind != "f":
            raise ValueError(f"backend dtype must be a float type, got {dtype!r}")
        self.seed(seed)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} dtype={self.dtype}>"

    # -- arrays, memory, randomness -------------------------------------------------------
    def seed(self, seed: int | None) -> None:
        """Reseed the backend's generator (dropout masks, initializers drawn on device)."""
        self._seed = seed
        self.rng = self.xp.random.default_rng(seed)

    def asarray(self, x, dtype=None):
        """Move `x` to this backend. Floats take the backend dtype unless `dtype` says otherwise;
        integer arrays (labels) keep their kind."""
        x = self._from_foreign(x)
        if dtype is None:
            kind = getattr(getattr(x, "dtype", None), "kind", "f")
            dtype = self.dtype if kind == "f" else None
        return self.xp.asarray(x, dtype=dtype)

    def _from_foreign(self, x):
        """Arrays of another library: CuPy arrays are brought to the host explicitly."""
        if hasattr(x, "__cuda_array_interface__") and self.xp is numpy:
            return x.get()
        return x

    def device_dataset(self, x):
        """Where a training set lives during fit: as is on the host for CPU backends (batches
        are converted one at a time); a GPU backend moves it to the device when it fits."""
        return x

    def take_batch(self, data, index):
        """One batch of `device_dataset` output, as a backend array (floats in the dtype)."""
        return self.asarray(data[index])

    def to_host(self, x) -> numpy.ndarray:
        """A NumPy array on the host (a no-op for host backends)."""
        if hasattr(x, "get"):
            return x.get()
        return numpy.asarray(x)

    def to_float(self, x) -> float:
        """A Python float from a 0-d array; on a device backend this is a sync point."""
        return float(self.to_host(x))

    def synchronize(self) -> None:
        """Wait for queued device work (nothing to wait for on the CPU)."""

    def zeros(self, shape, dtype=None):
        return self.xp.zeros(shape, dtype=dtype or self.dtype)

    def empty(self, shape, dtype=None):
        return self.xp.empty(shape, dtype=dtype or self.dtype)

    def random_uniform(self, shape, low: float, high: float):
        return self.rng.uniform(low, high, size=shape).astype(self.dtype, copy=False)

    def random_normal(self, shape, mean: float = 0.0, std: float = 1.0):
        return (self.rng.standard_normal(size=shape) * std + mean).astype(self.dtype, copy=False)

    def permutation(self, n: int):
        return self.rng.permutation(n)

    def all_finite(self, x) -> bool:
        return bool(self.xp.isfinite(x).all())

    # -- activations ----------------------------------------------------------------------
    def activation_forward(self, x, activation: str):
        """y, saved = act(x); `saved` is what `activation_backward` needs."""
        if activation == "identity":
            return x, None
        y = getattr(self, activation)(x)
        return y, (x if activation == "gelu" else y)

    def activation_backward(self, dy, saved, activation: str):
        if activation == "identity":
            return dy
        return getattr(self, "backprop_" + activation)(dy, saved)

    def relu(self, x):
        return self.xp.maximum(x, 0)

    def backprop_relu(self, dy, y):
        return dy * (y > 0)

    def leaky_relu(self, x):
        return self.xp.where(x > 0, x, x * LEAKY_SLOPE)

    def backprop_leaky_relu(self, dy, y):
        # y > 0 exactly where x > 0, so the output suffices.
        return self.xp.where(y > 0, dy, dy * LEAKY_SLOPE)

    def sigmoid(self, x):
        # Stable on both tails: exp only ever sees a non-positive argument.
        e = self.xp.exp(-self.xp.abs(x))
        return self.xp.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)

    def backprop_sigmoid(self, dy, y):
        return dy * y * (1 - y)

    def tanh(self, x):
        return self.xp.tanh(x)

    def backprop_tanh(self, dy, y):
        return dy * (1 - y * y)

    def softmax(self, x, axis: int = -1):
        # x - max may overflow to -inf for entries near -dtype_max: exp gives the right 0, so
        # the overflow is not worth a warning.
        with numpy.errstate(over="ignore"):
            z = x - x.max(axis=axis, keepdims=True)
        e = self.xp.exp(z)
        return e / e.sum(axis=axis, keepdims=True)

    def backprop_softmax(self, dy, y, axis: int = -1):
        return y * (dy - (dy * y).sum(axis=axis, keepdims=True))

    def backprop_log_softmax(self, dy, y, axis: int = -1):
        """d log_softmax from its output y = log p: dx = dy - p * sum(dy) over the axis. p =
        exp(y) <= 1 cannot overflow, and no log of a small probability is taken, so it is
        stable wherever the forward is."""
        return dy - self.xp.exp(y) * dy.sum(axis=axis, keepdims=True)

    def gelu(self, x):
        """GELU, tanh approximation (PyTorch's approximate='tanh'): no erf needed in `xp`.
        The tanh argument uses x clipped to +-GELU_CLIP: beyond it tanh is exactly +-1 in
        every float dtype, and the clip keeps x**3 from overflowing (finite for finite x)."""
        xc = self.xp.clip(x, -GELU_CLIP, GELU_CLIP)
        t = self.xp.tanh(_GELU_K * (xc + 0.044715 * xc * xc * xc))
        return 0.5 * x * (1 + t)

    def backprop_gelu(self, dy, x):
        """d gelu / dx from the input. With x clipped to +-GELU_CLIP (where tanh' is exactly 0
        and the derivative is exactly 0 or 1) x*x never overflows, so there is no 0 * inf = NaN
        at large |x|; below the clip it is the plain formula."""
        xc = self.xp.clip(x, -GELU_CLIP, GELU_CLIP)
        t = self.xp.tanh(_GELU_K * (xc + 0.044715 * xc * xc * xc))
        dt = (1 - t * t) * _GELU_K * (1 + 3 * 0.044715 * xc * xc)
        return dy * (0.5 * (1 + t) + 0.5 * xc * dt)

    # -- dense ----------------------------------------------------------------------------
    def dense_forward(self, x, W, b, activation: str = "identity"):
        """act(x @ W + b) over the last axis of x; returns (y, saved)."""
        lead = x.shape[:-1]
        z = x.reshape(-1, x.shape[-1]) @ W
        if b is not None:
            z += b
        y, saved = self.activation_forward(z, activation)
        return y.reshape(*lead, W.shape[1]), saved

    def dense_backward(
        self, dy, x, W, saved, activation="identity", need_dx=True, dW_out=None, db_out=None
    ):
        """(dx, dW, db) of dense_forward. `db` is None for a layer without bias only when
        `db_out` is None and the caller ignores it; the bias gradient is cheap either way."""
        x2 = x.reshape(-1, x.shape[-1])
        dz = self.activation_backward(dy.reshape(-1, W.shape[1]), saved, activation)
        dW = self.xp.matmul(x2.T, dz, out=dW_out)
        db = dz.sum(axis=0, out=db_out)
        dx = (dz @ W.T).reshape(x.shape) if need_dx else None
        return dx, dW, db

    # -- losses ---------------------------------------------------------------------------
    def log_softmax(self, x, axis: int = -1):
        """log softmax(x) over `axis`, stable (x - max, then log-sum-exp): the activation
        "log_softmax" and the losses' log-probabilities."""
        with numpy.errstate(over="ignore"):  # as in softmax
            z = x - x.max(axis=axis, keepdims=True)
        return z - self.xp.log(self.xp.exp(z).sum(axis=axis, keepdims=True))

    def softmax_cross_entropy(self, logits, labels):
        """Mean cross-entropy of softmax(logits) against integer labels (N,) or one-hot /
        probability targets (N, C); stable log-sum-exp. Returns (loss, dlogits)."""
        n = logits.shape[0]
        logp = self.log_softmax(logits)
        grad = self.xp.exp(logp)
        if labels.ndim == 1:
            rows = self.xp.arange(n)
            loss = self.xp.asarray(-logp[rows, labels].sum() / n)
            grad[rows, labels] -= 1
        else:
            loss = self.xp.asarray(-(labels * logp).sum() / n)
            grad -= labels
        grad /= n
        return loss, grad

    def binary_cross_entropy(self, logits, targets):
        """Mean BCE from logits: max(x,0) - x*t + log1p(exp(-|x|)), stable for any x."""
        xp = self.xp
        loss = (xp.maximum(logits, 0) - logits * targets + xp.log1p(xp.exp(-xp.abs(logits)))).mean()
        grad = (self.sigmoid(logits) - targets) / logits.size
        return loss, grad.astype(logits.dtype, copy=False)

    def mse(self, pred, target):
        """Mean squared error over all elements; returns (loss, dpred)."""
        diff = pred - target
        loss = (diff * diff).mean()
        return loss, diff * (2.0 / diff.size)

    def count_correct(self, logits, labels):
        """Number of rows whose argmax matches the label (0-d array; no sync)."""
        pred = logits.argmax(axis=-1)
        if labels.ndim == pred.ndim + 1:
            labels = labels.argmax(axis=-1)
        return (pred == labels).sum()

    # -- regularization ---------------------------------------------------------------------
    def l1_l2_penalty(self, W, l1: float, l2: float):
        out = 0.0
        if l1:
            out = out + l1 * self.xp.abs(W).sum()
        if l2:
            out = out + l2 * (W * W).sum()
        return out

    def add_l1_l2_grad(self, grad, W, l1: float, l2: float) -> None:
        """grad += d/dW (l1*|W| + l2*W^2), in place."""
        if l1:
            grad += l1 * self.xp.sign(W)
        if l2:
            grad += (2 * l2) * W

    # -- dropout --------------------------------------------------------------------------
    def dropout_forward(self, x, rate: float):
        """Inverted dropout: zero each unit with probability `rate`, scale the rest by
        1/(1-rate) so inference needs no rescaling. Returns (y, mask)."""
        keep = self.rng.random(size=x.shape, dtype=numpy.float32)
        mask = (keep >= rate).astype(x.dtype) * (1.0 / (1.0 - rate))
        return x * mask, mask

    def backprop_dropout(self, dy, mask):
        return dy * mask
