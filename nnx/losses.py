"""Losses. Each computes (loss, dloss/doutput) in one backend call, and validates targets on
the host once per fit/evaluate (dtype, shape, range) so that bad labels fail with a clear error
instead of an index error deep in a kernel, or a wrong number: negative "probabilities" give a
negative cross-entropy and rows summing to 5 scale it by 5, so probability targets are checked
(non-negative, rows summing to 1) as well as labels (integers in range).

`softmax_cross_entropy` also takes per-position logits (N, ..., C) (a sequence model's
(N, T, C)) with labels (N, ...) or targets (N, ..., C): the loss is the mean over every position
and accuracy counts every position."""

from __future__ import annotations

import numpy as np

from .errors import InputError, ShapeError, unknown


class Loss:
    name = "loss"
    has_accuracy = False

    def __call__(self, ops, output, targets):
        raise NotImplementedError

    def check_targets(self, y, output_shape: tuple, arg: str = "y") -> np.ndarray:
        """The targets as a host array, checked against the model's per-sample output shape;
        raises InputError / ShapeError naming `arg`, what was expected and what came."""
        y = y.get() if hasattr(y, "__cuda_array_interface__") else np.asarray(y)
        if y.dtype.kind not in "biuf":
            raise InputError(f"{arg}: targets of {self.name} must be numbers, got dtype "
                             f"{y.dtype}" + (" (strings)" if y.dtype.kind in "SU" else ""))
        if y.ndim == 0:
            raise ShapeError(f"{arg}: expected one target per sample (an array of shape (N, ...))"
                             f", got a scalar {y.item()!r:.40}")
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


def _first_index(mask) -> tuple:
    return tuple(int(i) for i in np.argwhere(mask)[0])


class SoftmaxCrossEntropy(Loss):
    """Cross-entropy of softmax(logits) over the last axis. Logits (N, C) with integer labels
    (N,) or one-hot/probability targets (N, C); or per-position logits (N, ..., C) (e.g. a
    sequence model's (N, T, C)) with labels (N, ...) or targets (N, ..., C). The loss is the
    mean over all N * ... positions; `correct` counts every position, scaled to samples (a
    sample of T positions counts T times 1/T), so that accuracy is the fraction of positions
    right. Probability targets must be >= 0 with rows summing to 1."""

    name = "softmax_cross_entropy"
    has_accuracy = True

    def __call__(self, ops, output, targets):
        lead = tuple(output.shape[:-1])
        labels = tuple(targets.shape) == lead
        if output.ndim < 2 or not (labels or tuple(targets.shape) == tuple(output.shape)):
            raise ShapeError(
                f"softmax_cross_entropy: expected logits (N, ..., C) with labels (N, ...) or "
                f"targets (N, ..., C), got logits {tuple(output.shape)} and targets "
                f"{tuple(targets.shape)}"
            )
        if output.ndim == 2:
            return ops.softmax_cross_entropy(output, targets)
        c = output.shape[-1]
        n = 1
        for d in lead:
            n *= int(d)
        flat_t = targets.reshape(n) if labels else targets.reshape(n, c)
        loss, grad = ops.softmax_cross_entropy(output.reshape(n, c), flat_t)
        return loss, grad.reshape(output.shape)

    def correct(self, ops, output, targets):
        per_sample = 1
        for d in output.shape[1:-1]:
            per_sample *= int(d)
        hits = ops.count_correct(output, targets)
        return hits if per_sample == 1 else hits / per_sample

    def check_targets(self, y, output_shape, arg="y"):
        y = super().check_targets(y, output_shape, arg)
        output_shape = tuple(output_shape)
        if not output_shape:
            raise ShapeError(f"{arg}: softmax_cross_entropy needs logits with a class axis; the "
                             "model outputs one number per sample")
        classes, positions = output_shape[-1], output_shape[:-1]
        dims = ", ".join(map(str, output_shape))
        if y.shape[1:] == positions:  # integer labels, one per position
            if y.dtype.kind not in "iu":
                want = f"(N{''.join(f', {d}' for d in positions)})"
                raise InputError(
                    f"{arg}: softmax_cross_entropy labels must be integers {want} or one-hot "
                    f"(N, {dims}); got dtype {y.dtype} with shape {y.shape}"
                )
            if y.size and (y.min() < 0 or y.max() >= classes):
                bad = y[(y < 0) | (y >= classes)][0]
                raise InputError(
                    f"{arg}: label {bad} out of range for {classes} classes "
                    f"(expected 0 <= label < {classes})"
                )
            return y.astype(np.int64, copy=False)
        if y.shape[1:] == output_shape:  # one-hot or probabilities
            return _check_probabilities(y, arg, classes)
        if positions and y.ndim == 1:
            raise ShapeError(
                f"{arg}: softmax_cross_entropy got per-sample labels {y.shape} but the model "
                f"outputs per-position logits (N, {dims}); per-sample labels need logits of "
                f"shape (N, classes) (end the model with a layer that outputs (N, classes), "
                f"e.g. SequencePool), per-position logits need labels "
                f"(N, {', '.join(map(str, positions))}) or targets (N, {dims})"
            )
        want = "(N,)" if not positions else f"(N, {', '.join(map(str, positions))})"
        raise ShapeError(
            f"{arg}: softmax_cross_entropy targets must have shape {want} or "
            f"(N, {dims}), got {y.shape}"
        )

    def device_targets(self, ops, y):
        return ops.asarray(y, dtype=None if y.dtype.kind in "iu" else ops.dtype)


def _check_probabilities(y, arg, classes):
    """One-hot or probability targets: >= 0, each row summing to 1 (within rounding of the
    targets' own dtype); returned as floats."""
    if y.dtype.kind != "f":
        y = y.astype(np.float32)
    if y.size and y.min() < 0:
        idx = _first_index(y < 0)
        raise InputError(f"{arg}: softmax_cross_entropy targets must be probabilities >= 0 "
                         f"(one-hot or soft labels), got {y[idx].item()!r} at index {idx}")
    if y.size:
        sums = y.sum(axis=-1, dtype=np.float64)
        tol = max(1e-3, 4 * classes * float(np.finfo(y.dtype).eps))
        bad = np.abs(sums - 1) > tol
        if bad.any():
            idx = _first_index(bad)
            raise InputError(
                f"{arg}: each row of softmax_cross_entropy targets must sum to 1 (one-hot or "
                f"probabilities); row {idx if len(idx) > 1 else idx[0]} sums to "
                f"{float(sums[idx]):.6g} (tolerance {tol:.1g})"
            )
    return y


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
