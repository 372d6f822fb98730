"""Losses. Each computes (loss, dloss/doutput) in one backend call, and validates targets on
the host once per fit/evaluate (dtype, shape, range) so that bad labels fail with a clear error
instead of an index error deep in a kernel."""

from __future__ import annotations

import numpy as np

from .errors import InputError, ShapeError, unknown


class Loss:
    name = "loss"
    has_accuracy = False

    def __call__(self, ops, output, targets):
        raise NotImplementedError

    def check_targets(self, y, output_shape: tuple, arg: str = "y") -> np.ndarray:
        y = y.get() if hasattr(y, "__cuda_array_interface__") else np.asarray(y)
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            raise InputError(f"{arg} (targets of {self.name}) contains NaN or inf")
        return y

    def device_targets(self, ops, y):
        return ops.asarray(y)

    def correct(self, ops, output, targets):
        return ops.count_correct(output, targets)

    def get_config(self):
        return self.name


class MSE(Loss):
    """Mean squared error over all elements."""

    name = "mse"

    def __call__(self, ops, output, targets):
        return ops.mse(output, targets)

    def check_targets(self, y, output_shape, arg="y"):
        y = super().check_targets(y, output_shape, arg)
        if y.shape[1:] != tuple(output_shape) and y.size != 0:
            raise ShapeError(
                f"{arg}: mse targets must have shape (N, {', '.join(map(str, output_shape))}),"
                f" got {y.shape}"
            )
        return y


class BinaryCrossEntropy(Loss):
    """Binary cross-entropy from logits (sigmoid inside, numerically stable); targets in [0, 1]."""

    name = "binary_cross_entropy"
    has_accuracy = True

    def __call__(self, ops, output, targets):
        return ops.binary_cross_entropy(output, targets)

    def check_targets(self, y, output_shape, arg="y"):
        y = super().check_targets(y, output_shape, arg)
        if y.ndim == 1 and tuple(output_shape) == (1,):
            y = y.reshape(-1, 1)
        if y.shape[1:] != tuple(output_shape):
            raise ShapeError(
                f"{arg}: binary_cross_entropy targets must have shape "
                f"(N, {', '.join(map(str, output_shape))}), got {y.shape}"
            )
        if y.size and (y.min() < 0 or y.max() > 1):
            raise InputError(
                f"{arg}: binary_cross_entropy targets must lie in [0, 1], "
                f"got values in [{y.min()}, {y.max()}]"
            )
        return y

    def device_targets(self, ops, y):
        return ops.asarray(y, dtype=ops.dtype)

    def correct(self, ops, output, targets):
        return ((output > 0) == (targets > 0.5)).sum() / output.shape[-1]


class SoftmaxCrossEntropy(Loss):
    """Cross-entropy of softmax(logits); integer labels (N,) or one-hot/probabilities (N, C)."""

    name = "softmax_cross_entropy"
    has_accuracy = True

    def __call__(self, ops, output, targets):
        if output.ndim != 2 or targets.ndim not in (1, 2) or \
                targets.shape[0] != output.shape[0] or \
                (targets.ndim == 2 and targets.shape[1] != output.shape[1]):
            raise ShapeError(
                f"softmax_cross_entropy: expected logits (N, C) with labels (N,) or targets "
                f"(N, C), got logits {tuple(output.shape)} and targets {tuple(targets.shape)}"
            )
        return ops.softmax_cross_entropy(output, targets)

    def check_targets(self, y, output_shape, arg="y"):
        y = super().check_targets(y, output_shape, arg)
        classes = output_shape[-1]
        if len(output_shape) != 1:
            raise ShapeError(
                f"{arg}: softmax_cross_entropy expects logits of shape (N, classes); the model "
                f"outputs (N, {', '.join(map(str, output_shape))}) and the targets have shape "
                f"{y.shape} (per-timestep targets are not supported yet: flatten the time axis "
                "into the batch, or end the model with a layer that outputs (N, classes))"
            )
        if y.ndim == 1:
            if y.dtype.kind not in "iu":
                raise InputError(
                    f"{arg}: softmax_cross_entropy labels must be integers (N,) or "
                    f"one-hot (N, {classes}); got dtype {y.dtype} with shape {y.shape}"
                )
            if y.size and (y.min() < 0 or y.max() >= classes):
                bad = y[(y < 0) | (y >= classes)][0]
                raise InputError(
                    f"{arg}: label {bad} out of range for {classes} classes "
                    f"(expected 0 <= label < {classes})"
                )
            return y.astype(np.int64, copy=False)
        if y.ndim == 2 and y.shape[1] == classes:
            return y
        raise ShapeError(
            f"{arg}: softmax_cross_entropy targets must have shape (N,) or "
            f"(N, {classes}), got {y.shape}"
        )

    def device_targets(self, ops, y):
        return ops.asarray(y, dtype=None if y.ndim == 1 else ops.dtype)


LOSSES = {
    "mse": MSE,
    "mean_squared_error": MSE,
    "binary_cross_entropy": BinaryCrossEntropy,
    "bce": BinaryCrossEntropy,
    "softmax_cross_entropy": SoftmaxCrossEntropy,
    "cross_entropy": SoftmaxCrossEntropy,
    "categorical_crossentropy": SoftmaxCrossEntropy,
    "sparse_categorical_crossentropy": SoftmaxCrossEntropy,
}


def get(loss) -> Loss:
    if isinstance(loss, Loss):
        return loss
    if loss not in LOSSES:
        raise unknown("loss", loss, LOSSES)
    return LOSSES[loss]()
