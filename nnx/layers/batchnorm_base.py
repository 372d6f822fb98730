"""BatchNormBase: the shared part of BatchNorm1d and BatchNorm2d (and of a synchronized batch
norm, which reduces the per-channel sums across processes).

Training takes one of two paths, chosen per call by `fused_training()`:
- fused (the default): `ops.batchnorm_forward` takes the batch statistics, updates the running
  ones and normalizes in one kernel; `ops.batchnorm_backward` computes the gradients;
- from sums (`fused_training()` False): the same math in overridable steps, each per-channel sum
  passing through `reduce_sums` (the identity here; an allreduce in a subclass):

      forward_unfused:  batch_statistics (sums -> reduce_sums "mean", centred squares ->
                        reduce_sums "var") -> update_running_stats -> normalize
      backward_unfused: grad_sums (written to grads: this process's parameter gradients)
                        -> reduce_sums "grad" -> backward_from_sums

Both paths save the kernel's format, (xhat, invstd, gamma, axes, training, n). Inference
normalizes with the running statistics (`ops.batchnorm_forward(..., training=False)`).
"""

from __future__ import annotations

import math

from ..errors import ShapeError
from .base import Layer, ParamSpec


class BatchNormBase(Layer):
    """Batch norm over every axis but the channel axis (1); a subclass sets the accepted input
    `ranks` and the `layout` its shape errors show."""

    ranks: tuple = ()
    layout = ""
    inferable = "num_features"  # None: the channel count of the input, inferred at build

    def __init__(self, num_features: int | None, momentum: float = 0.1, eps: float = 1e-5,
                 name: str | None = None):
        super().__init__(name)
        kind = type(self).__name__
        if num_features is not None and (not isinstance(num_features, int)
                                         or isinstance(num_features, bool) or num_features < 1):
            raise ValueError(f"{kind} {self.name!r}: num_features must be a positive int (or "
                             f"None: inferred), got {num_features!r}")
        if not isinstance(momentum, (int, float)) or isinstance(momentum, bool) \
                or not 0.0 <= momentum <= 1.0:
            raise ValueError(f"{kind} {self.name!r}: momentum must be in [0, 1], got {momentum!r}")
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
            raise ValueError(f"{kind} {self.name!r}: eps must be a positive number, got {eps!r}")
        self.num_features = num_features
        self.momentum = float(momentum)
        self.eps = float(eps)

    def param_specs(self):
        self._require_sizes()
        F = self.num_features
        return [ParamSpec("gamma", (F,), "ones"), ParamSpec("beta", (F,), "zeros")]

    def init_buffers(self):
        F = self.num_features
        self.buffers = {"running_mean": self.ops.zeros(F), "running_var": self.ops.zeros(F)}
        self.buffers["running_var"][...] = 1

    def _check(self, shape: tuple) -> None:
        F = self.num_features
        if len(shape) not in self.ranks or (F is not None and shape[1] != F):
            raise ShapeError(f"{type(self).__name__} {self.name!r}: expected input of shape "
                             f"{self.layout.format(F='channels' if F is None else F)} "
                             f"(num_features={F}), got shape {tuple(shape)}")

    def check_count(self, n, shape: tuple) -> None:
        """Training needs more than one value per channel (`n` of them, input `shape`)."""
        if n < 2:
            raise ShapeError(f"{type(self).__name__} {self.name!r}: expected more than one value "
                             f"per channel in training mode, got input shape {tuple(shape)}")

    def output_shape(self, input_shape):
        self._check((None, *input_shape))
        return tuple(input_shape)

    def size_from_input(self, input_shape):
        shape = (None, *input_shape)
        if len(shape) not in self.ranks:
            self._check(shape)
        return int(input_shape[0])

    def set_input_size(self, value):
        self.num_features = value

    # -- computation ----------------------------------------------------------------------
    def call(self, x, training):
        self._check(tuple(x.shape))
        axes = (0, *range(2, x.ndim))
        fused = not training or self.fused_training()
        if not fused:
            y, saved = self.forward_unfused(x, axes)
        else:
            if training:
                self.check_count(math.prod(x.shape[a] for a in axes), x.shape)
            y, saved = self.ops.batchnorm_forward(
                x, self.params["gamma"], self.params["beta"], self.buffers["running_mean"],
                self.buffers["running_var"], self.momentum, self.eps, training, axes)

        def backprop(dy, need_dx=True):
            nonlocal saved
            if saved is None:
                raise RuntimeError(f"{self.describe()}: backprop called twice; the first call "
                                   "freed what the forward saved")
            if fused:
                dx, _dg, _db = self.ops.batchnorm_backward(
                    dy, saved, need_dx, self.grads["gamma"], self.grads["beta"])
            else:
                dx = self.backward_unfused(dy, saved, need_dx)
            saved = None
            return dx

        return y, backprop

    # -- training from per-channel sums: the overridable steps ----------------------------
    def fused_training(self) -> bool:
        """Whether training uses the backend's fused kernels (True here). A subclass that
        reduces the per-channel sums across processes returns False (when it has peers)."""
        return True

    def reduce_sums(self, sums, stage: str):
        """Combine this process's per-channel float64 sums with its peers' (`stage` is "mean":
        [sum of x per channel..., count], "var": sums of squared deviations from the mean,
        "grad": [sum of dy..., sum of dy * xhat...]). The identity here; an allreduce in a
        synchronized batch norm."""
        return sums

    def forward_unfused(self, x, axes):
        """The training forward of the unfused path: (y, saved)."""
        xc, mean, var, n = self.batch_statistics(x, axes)
        self.update_running_stats(mean, var, n)
        return self.normalize(xc, var, n, axes)

    def batch_statistics(self, x, axes):
        """(xc, mean, var, n): `x` centred on the batch mean, and the per-channel batch mean,
        biased variance (float64) and count, in two rounds of per-channel sums (the sum, then
        the centred sum of squares: no cancellation), each through `reduce_sums`."""
        F = self.num_features
        sums = self.ops.zeros(F + 1, dtype="float64")
        sums[:F] = x.sum(axis=axes, dtype="float64").reshape(F)
        sums[F] = math.prod(x.shape[a] for a in axes)
        sums = self.reduce_sums(sums, "mean")
        n = self.ops.to_float(sums[F])
        self.check_count(n, x.shape)
        mean = sums[:F] / n
        xc = x - mean.astype(x.dtype).reshape(_bshape(x.ndim, F))
        sq = (xc * xc).sum(axis=axes, dtype="float64").reshape(F)
        var = self.reduce_sums(sq, "var") / n
        return xc, mean, var, n

    def update_running_stats(self, mean, var, n) -> None:
        """PyTorch's rule, in place: r = (1 - momentum) r + momentum * stat, the variance
        unbiased (times n / (n - 1))."""
        m = self.momentum
        rm, rv = self.buffers["running_mean"], self.buffers["running_var"]
        unbiased = n / (n - 1) if n > 1 else 1.0
        rm *= 1.0 - m
        rm += (m * mean).astype(rm.dtype)
        rv *= 1.0 - m
        rv += ((m * unbiased) * var).astype(rv.dtype)

    def normalize(self, xc, var, n, axes):
        """(y, saved) from the centred input and the (global) variance; `xc` is overwritten
        with xhat."""
        bshape = _bshape(xc.ndim, self.num_features)
        invstd = ((var + self.eps) ** -0.5).astype(xc.dtype).reshape(bshape)
        gamma = self.params["gamma"]
        xhat = xc
        xhat *= invstd
        y = xhat * gamma.reshape(bshape)
        y += self.params["beta"].reshape(bshape)
        return y, (xhat, invstd, gamma, tuple(axes), True, n)

    def backward_unfused(self, dy, saved, need_dx):
        """The training backward of the unfused path: writes this process's parameter
        gradients, then the input gradient from the reduced sums."""
        F = self.num_features
        sums = self.grad_sums(dy, saved)
        self.grads["beta"][...] = sums[:F]
        self.grads["gamma"][...] = sums[F:]
        sums = self.reduce_sums(sums, "grad")
        return self.backward_from_sums(dy, saved, sums) if need_dx else None

    def grad_sums(self, dy, saved):
        """[sum of dy..., sum of dy * xhat...] per channel (float64): this process's dbeta and
        dgamma."""
        xhat, axes = saved[0], saved[3]
        F = self.num_features
        sums = self.ops.empty(2 * F, dtype="float64")
        sums[:F] = dy.sum(axis=axes, dtype="float64").reshape(F)
        sums[F:] = (dy * xhat).sum(axis=axes, dtype="float64").reshape(F)
        return sums

    def backward_from_sums(self, dy, saved, sums):
        """dx = gamma * invstd * (dy - (dbeta + xhat * dgamma) / n), from the (global) sums of
        dy and dy * xhat and the (global) count n."""
        xhat, invstd, gamma, _axes, _training, n = saved
        F = self.num_features
        bshape = _bshape(dy.ndim, F)
        db = (sums[:F] / n).astype(dy.dtype).reshape(bshape)
        dg = (sums[F:] / n).astype(dy.dtype).reshape(bshape)
        dx = xhat * dg
        dx += db
        dx -= dy
        dx *= -(invstd * gamma.reshape(bshape))
        return dx

    def get_config(self):
        return {"num_features": self.num_features, "momentum": self.momentum, "eps": self.eps,
                "name": self.name}


def _bshape(ndim: int, F: int) -> tuple:
    """The shape that broadcasts a per-channel vector over an input of rank `ndim`."""
    return (1, F) + (1,) * (ndim - 2)
