"""Losses, by name (`LOSSES`) and as objects. Each computes (loss, dloss/doutput) on the
backend, and validates targets on the host once per fit/evaluate (dtype, shape, range), so
that bad labels fail with a clear error instead of an index error deep in a kernel, or a wrong
number: negative "probabilities" give a negative cross-entropy and rows summing to 5 scale it
by 5, so probability targets are checked (non-negative, rows summing to 1) as well as labels
(integers in range).

What the model's output must be, per loss (Keras's names take probabilities, as in Keras):

    name                                   output                  targets
    "softmax_cross_entropy" ("cross_entropy")  logits (N, ..., C)   labels (N, ...) or one-hot
    "categorical_crossentropy"             probabilities (softmax)  one-hot / probabilities
                                                                    (N, ..., C), or labels
    "sparse_categorical_crossentropy"      probabilities (softmax)  labels (N, ...)
    "binary_cross_entropy" ("bce",
      "sigmoid_cross_entropy")             logits                   in [0, 1], output's shape
    "binary_crossentropy"                  probabilities (sigmoid)  in [0, 1], output's shape
    "nll"                                  log-probabilities        labels (N, ...)
                                           (log_softmax)
    "mse" ("mean_squared_error")           values                   the output's shape

Objects: `CategoricalCrossentropy(from_logits=False)`, `SparseCategoricalCrossentropy(...)`,
`BinaryCrossentropy(...)` (from_logits=True makes them the from-logits losses), `NLLLoss()`,
`SoftmaxCrossEntropy()`, `SigmoidCrossEntropy()`, `MSE()`.

Probabilities and the fused kernel: when the loss takes probabilities and the model's output
ends in the matching activation (softmax for the categorical losses, sigmoid for binary,
log_softmax for nll), the model computes the loss from the values before the activation with
the from-logits loss (`logits_loss()`: one fused, stable kernel), as Keras does; `predict` still
returns probabilities. Otherwise the loss is computed on the probabilities as Keras does: each
row normalized to sum 1 (categorical), clipped to [1e-7, 1 - 1e-7] (Keras's epsilon), with the
exact gradient of that (zero where the clip is active).

Positions: the cross-entropy family takes per-position outputs (N, ..., C) (a sequence model's
(N, T, C)) with labels (N, ...) or targets (N, ..., C); binary cross-entropy and mse average
over the last axis per position. The loss is the mean over every position.

Weights (`sample_weight` of fit/evaluate, class weights): (N,) per sample or (N, T) per
position (0 masks padding). The loss is then the weighted mean sum(w * l) / sum(w) over the
positions (a (N,) weight counts for each of a sample's positions), Keras's semantics for masks;
its gradient is that of the weighted mean. A batch whose weights are all 0 contributes 0.
"""

from __future__ import annotations

import contextlib

import numpy as np

from .errors import InputError, ShapeError, unknown

EPSILON = 1e-7  # Keras's backend.epsilon(): probabilities are clipped to [EPSILON, 1 - EPSILON]


def _scope(ops):
    """The backend's device scope (a GPU Ops runs its arithmetic on its own device)."""
    scope = getattr(ops, "_scope", None)
    return scope() if scope is not None else contextlib.nullcontext()


def _wide(a):
    """`a` in at least float32: half-precision outputs are reduced in float32."""
    return a if a.dtype.itemsize >= 4 else a.astype("float32")


def _finish(ops, grad, dtype):
    """The gradient in the output's dtype, times the loss scale under mixed precision (what
    the built-in loss kernels do, so that the optimizer's unscaling is right)."""
    scale = getattr(ops, "scale_grad", None)
    if scale is not None:
        grad = scale(grad)
    return grad.astype(dtype, copy=False)


def _onehot(xp, labels, classes, dtype):
    return (xp.arange(classes) == labels[..., None]).astype(dtype)


def position_weights(weights, positions: tuple, owner: str):
    """`weights` of shape (N,) or (N, T) reshaped to broadcast against `positions` (the shape
    of the per-position losses); ShapeError naming `owner` otherwise."""
    ws = tuple(weights.shape)
    if not 1 <= len(ws) <= min(2, len(positions)) or ws != tuple(positions[:len(ws)]):
        want = " or ".join(str(tuple(positions[:i])) for i in range(1, min(len(positions), 2) + 1))
        raise ShapeError(f"{owner}: expected sample_weight of shape {want or '(N,)'}, got "
                         f"shape {ws}")
    return weights.reshape(ws + (1,) * (len(positions) - len(ws)))


class Loss:
    """Base class. `loss(ops, output, targets, weights=None) -> (loss, grad)`: the mean (or
    weighted mean) loss as a 0-d backend array (no host sync) and its gradient w.r.t. the
    output. Subclasses implement `per_position` (and may override `_mean` with a fused
    kernel); see the module docstring for what each takes."""

    name = "loss"
    has_accuracy = False  # classification: accuracy is its default metric
    from_logits = True  # False: the output must be probabilities (or log-probabilities)
    output_activation: str | None = None  # the activation the loss's outputs come from
    takes = "values"  # what the output must be, in words (messages, documentation)

    def __init__(self, name: str | None = None):
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"{type(self).__name__}: name must be a non-empty string, got "
                             f"{name!r}")
        self.name = name or type(self).name

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    # -- computing ------------------------------------------------------------------------
    def __call__(self, ops, output, targets, weights=None):
        """(loss, grad): the mean loss over every position (the weighted mean with `weights`
        (N,) or (N, T)), a 0-d backend array, and d loss / d output."""
        if weights is None:
            return self._mean(ops, output, targets)
        loss, grad, _total = self.weighted(ops, output, targets, weights)
        return loss, grad

    def _mean(self, ops, output, targets):
        with _scope(ops):
            values, grad = self.per_position(ops, output, targets)
            n = max(int(values.size), 1)
            return values.sum() / n, _finish(ops, grad / n, output.dtype)

    def weighted(self, ops, output, targets, weights):
        """(loss, grad, total): the weighted mean sum(w * l) / sum(w) over the positions, its
        gradient, and sum(w) broadcast over the positions (a 0-d backend array), with which
        the epoch's loss is averaged. `weights`: a backend array (N,) or (N, T)."""
        with _scope(ops):
            values, grad = self.per_position(ops, output, targets)
            xp = ops.xp
            w = position_weights(weights, tuple(values.shape), f"loss {self.name!r}")
            w = xp.broadcast_to(w.astype(values.dtype, copy=False), values.shape)
            total = w.sum()
            scale = w / xp.maximum(total, np.finfo(values.dtype).tiny)
            loss = (values * scale).sum()
            if grad.ndim > scale.ndim:
                scale = scale[..., None]
            return loss, _finish(ops, grad * scale, output.dtype), total

    def per_position(self, ops, output, targets):
        """(values, grad): the loss at each position (float32 or wider) and the gradient of
        their sum w.r.t. the output (the output's shape)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement per_position()")

    def positions(self, output_shape: tuple) -> tuple:
        """The shape of the per-position losses for an output of `output_shape` (with the
        batch axis): every axis but the last, or the whole shape of a 1-D output."""
        output_shape = tuple(output_shape)
        return output_shape[:-1] if len(output_shape) >= 2 else output_shape

    def logits_loss(self) -> Loss | None:
        """For a loss that takes probabilities: the from-logits loss that equals it on the
        values before `output_activation` (computed by a fused, stable kernel); else None."""
        return None

    # -- targets --------------------------------------------------------------------------
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
        """Checked host targets on the backend (labels stay integers)."""
        return ops.asarray(y)

    def correct(self, ops, output, targets):
        """Number of right predictions (0-d array); the metrics (`nnx.metrics`) supersede it."""
        return ops.count_correct(output, targets)

    def get_config(self):
        """What a checkpoint saves and `get` rebuilds: the name, or {"class", "config"} for a
        loss with options."""
        return self.name


class MSE(Loss):
    """MSE(): mean squared error; per position the mean over the last axis."""

    name = "mse"

    def _mean(self, ops, output, targets):
        return ops.mse(output, targets)

    def per_position(self, ops, output, targets):
        d = _wide(output) - _wide(targets)
        width = output.shape[-1] if output.ndim >= 2 else 1
        sq = d * d
        return (sq.mean(axis=-1) if output.ndim >= 2 else sq), d * (2.0 / width)

    def check_targets(self, y, output_shape, arg="y"):
        y = super().check_targets(y, output_shape, arg)
        output_shape = tuple(output_shape)
        if y.shape[1:] + (1,) == output_shape and y.size:
            y = y.reshape(y.shape + (1,))
        if y.shape[1:] != output_shape and y.size != 0:
            dims = ", ".join(map(str, output_shape))
            raise ShapeError(f"{arg}: {self.name} targets must have shape (N, {dims}), got "
                             f"{y.shape}")
        return y


def _binary_targets(loss, y, output_shape, arg):
    """Binary targets: the output's shape ((N, ...) for outputs (N, ..., 1) accepted), values
    in [0, 1], as floats."""
    output_shape = tuple(output_shape)
    if y.shape[1:] + (1,) == output_shape:
        y = y.reshape(y.shape + (1,))
    if y.shape[1:] != output_shape:
        raise ShapeError(
            f"{arg}: {loss.name} targets must have shape "
            f"(N, {', '.join(map(str, output_shape))}), got {y.shape}"
        )
    if y.size and (y.min() < 0 or y.max() > 1):
        raise InputError(
            f"{arg}: {loss.name} targets must lie in [0, 1], "
            f"got values in [{y.min()}, {y.max()}]"
        )
    return y


class SigmoidCrossEntropy(Loss):
    """SigmoidCrossEntropy(): binary cross-entropy from logits (sigmoid inside, stable for any
    logit: max(z, 0) - z t + log1p(exp(-|z|))); targets in [0, 1] of the output's shape;
    per position the mean over the last axis. Names "binary_cross_entropy", "bce",
    "sigmoid_cross_entropy"."""

    name = "binary_cross_entropy"
    has_accuracy = True
    takes = "logits"

    def _mean(self, ops, output, targets):
        return ops.binary_cross_entropy(output, targets)

    def per_position(self, ops, output, targets):
        xp = ops.xp
        z, t = _wide(output), _wide(targets)
        elem = xp.maximum(z, 0) - z * t + xp.log1p(xp.exp(-xp.abs(z)))
        grad = ops.sigmoid(z) - t
        if output.ndim >= 2:
            return elem.mean(axis=-1), grad / output.shape[-1]
        return elem, grad

    def check_targets(self, y, output_shape, arg="y"):
        return _binary_targets(self, super().check_targets(y, output_shape, arg), output_shape,
                               arg)

    def device_targets(self, ops, y):
        return ops.asarray(y, dtype=ops.dtype)

    def correct(self, ops, output, targets):
        return ((output > 0) == (targets > 0.5)).sum() / output.shape[-1]


BinaryCrossEntropy = SigmoidCrossEntropy  # the former class name (from logits)


class _KerasProbabilities:
    """Keras's `from_logits` switch, shared by BinaryCrossentropy and CategoricalCrossentropy,
    placed before the logits loss they derive from: by default the loss takes probabilities
    (the model's last activation is `PROBABILITIES_FROM`) and `logits_loss` hands a model that
    ends in that activation to the logits class; from_logits=True is the logits class itself."""

    PROBABILITIES_FROM: str  # the activation whose output the loss takes by default
    LOGITS_LOSS: type  # the logits loss it derives from

    def __init__(self, from_logits: bool = False, name: str | None = None):
        super().__init__(name)
        self.from_logits = _check_flag(type(self).__name__, "from_logits", from_logits)
        self.output_activation = None if self.from_logits else self.PROBABILITIES_FROM
        self.takes = "logits" if self.from_logits else "probabilities"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(from_logits={self.from_logits}, name={self.name!r})"

    def _mean(self, ops, output, targets):
        if self.from_logits:
            return super()._mean(ops, output, targets)
        return Loss._mean(self, ops, output, targets)

    def logits_loss(self):
        """The logits loss a model ending in `PROBABILITIES_FROM` is trained with (None with
        from_logits=True: this loss already takes logits)."""
        return None if self.from_logits else self.LOGITS_LOSS()

    def get_config(self):
        """{"class", "config": {"from_logits", "name"}}: what rebuilds this loss."""
        return {"class": type(self).__name__,
                "config": {"from_logits": self.from_logits, "name": self.name}}


class BinaryCrossentropy(_KerasProbabilities, SigmoidCrossEntropy):
    """BinaryCrossentropy(from_logits=False): Keras's binary cross-entropy, on probabilities
    (a sigmoid output) clipped to [1e-7, 1 - 1e-7]: -(t log p + (1 - t) log(1 - p)), per
    position the mean over the last axis. With a sigmoid-ending model the loss is computed
    from the logits instead (`logits_loss`). from_logits=True: as SigmoidCrossEntropy."""

    name = "binary_crossentropy"
    PROBABILITIES_FROM = "sigmoid"
    LOGITS_LOSS = SigmoidCrossEntropy

    def per_position(self, ops, output, targets):
        if self.from_logits:
            return super().per_position(ops, output, targets)
        xp = ops.xp
        p, t = _wide(output), _wide(targets)
        pc = xp.clip(p, EPSILON, 1 - EPSILON)
        inside = ((p >= EPSILON) & (p <= 1 - EPSILON)).astype(p.dtype)
        elem = -(t * xp.log(pc) + (1 - t) * xp.log(1 - pc))
        grad = ((1 - t) / (1 - pc) - t / pc) * inside
        if output.ndim >= 2:
            return elem.mean(axis=-1), grad / output.shape[-1]
        return elem, grad

    def correct(self, ops, output, targets):
        threshold = 0 if self.from_logits else 0.5
        return ((output > threshold) == (targets > 0.5)).sum() / output.shape[-1]


def _first_index(mask) -> tuple:
    return tuple(int(i) for i in np.argwhere(mask)[0])


class SoftmaxCrossEntropy(Loss):
    """SoftmaxCrossEntropy(): cross-entropy of softmax(logits) over the last axis. Logits
    (N, C) with integer labels (N,) or one-hot/probability targets (N, C); or per-position
    logits (N, ..., C) (e.g. a sequence model's (N, T, C)) with labels (N, ...) or targets
    (N, ..., C). The loss is the mean over all N * ... positions (stable log-sum-exp); `correct`
    counts every position, scaled to samples. Probability targets must be >= 0 with rows
    summing to 1. Names "softmax_cross_entropy", "cross_entropy"."""

    name = "softmax_cross_entropy"
    has_accuracy = True
    takes = "logits"
    labels_only = False  # SparseCategoricalCrossentropy and NLLLoss take labels only

    def _mean(self, ops, output, targets):
        lead, labels = self._check_shapes(output, targets)
        if output.ndim == 2:
            return ops.softmax_cross_entropy(output, targets)
        c = output.shape[-1]
        n = 1
        for d in lead:
            n *= int(d)
        flat_t = targets.reshape(n) if labels else targets.reshape(n, c)
        loss, grad = ops.softmax_cross_entropy(output.reshape(n, c), flat_t)
        return loss, grad.reshape(output.shape)

    def _check_shapes(self, output, targets):
        lead = tuple(output.shape[:-1])
        labels = tuple(targets.shape) == lead
        if output.ndim < 2 or not (labels or tuple(targets.shape) == tuple(output.shape)):
            raise ShapeError(
                f"{self.name}: expected {self.takes} (N, ..., C) with labels (N, ...) or "
                f"targets (N, ..., C), got {self.takes} {tuple(output.shape)} and targets "
                f"{tuple(targets.shape)}"
            )
        return lead, labels

    def _targets(self, xp, output, targets, dtype):
        """Dense targets (positions, C) in `dtype` from labels or one-hot targets."""
        _lead, labels = self._check_shapes(output, targets)
        if labels:
            return _onehot(xp, targets, output.shape[-1], dtype)
        return targets.astype(dtype, copy=False)

    def per_position(self, ops, output, targets):
        z = _wide(output)
        t = self._targets(ops.xp, output, targets, z.dtype)
        logp = ops.log_softmax(z)
        return -(t * logp).sum(axis=-1), ops.xp.exp(logp) - t

    def correct(self, ops, output, targets):
        per_sample = 1
        for d in output.shape[1:-1]:
            per_sample *= int(d)
        hits = ops.count_correct(output, targets)
        return hits if per_sample == 1 else hits / per_sample

    def check_targets(self, y, output_shape, arg="y"):
        y = super().check_targets(y, output_shape, arg)
        output_shape = tuple(output_shape)
        name = self.name
        if not output_shape:
            raise ShapeError(f"{arg}: {name} needs {self.takes} with a class axis; the model "
                             "outputs one number per sample")
        classes, positions = output_shape[-1], output_shape[:-1]
        dims = ", ".join(map(str, output_shape))
        if self.labels_only and classes > 1 and y.shape[1:] == output_shape[:-1] + (1,) \
                and y.dtype.kind in "iu" and output_shape[-1:] != (1,):
            y = y.reshape(y.shape[:-1])  # Keras's (N, 1) labels
        if y.shape[1:] == positions:  # integer labels, one per position
            if y.dtype.kind not in "iu":
                want = f"(N{''.join(f', {d}' for d in positions)})"
                also = "" if self.labels_only else f" or one-hot (N, {dims})"
                raise InputError(
                    f"{arg}: {name} labels must be integers {want}{also}; got dtype "
                    f"{y.dtype} with shape {y.shape}"
                )
            if y.size and (y.min() < 0 or y.max() >= classes):
                bad = y[(y < 0) | (y >= classes)][0]
                raise InputError(
                    f"{arg}: label {bad} out of range for {classes} classes "
                    f"(expected 0 <= label < {classes})"
                )
            return y.astype(np.int64, copy=False)
        want = "(N,)" if not positions else f"(N, {', '.join(map(str, positions))})"
        if y.shape[1:] == output_shape:  # one-hot or probabilities
            if self.labels_only:
                raise ShapeError(
                    f"{arg}: {name} takes integer labels {want}, got one-hot / probability "
                    f"targets of shape {y.shape}; use "
                    f"{'categorical_crossentropy' if name != 'nll' else 'the labels (argmax)'}"
                    " for one-hot targets")
            return _check_probabilities(y, arg, classes, name)
        if positions and y.ndim == 1:
            raise ShapeError(
                f"{arg}: {name} got per-sample labels {y.shape} but the model "
                f"outputs per-position {self.takes} (N, {dims}); per-sample labels need "
                f"{self.takes} of shape (N, classes) (end the model with a layer that outputs "
                f"(N, classes), e.g. SequencePool), per-position {self.takes} need labels "
                f"(N, {', '.join(map(str, positions))}) or targets (N, {dims})"
            )
        forms = want if self.labels_only else f"{want} or (N, {dims})"
        raise ShapeError(f"{arg}: {name} targets must have shape {forms}, got {y.shape}")

    def device_targets(self, ops, y):
        return ops.asarray(y, dtype=None if y.dtype.kind in "iu" else ops.dtype)


class CategoricalCrossentropy(_KerasProbabilities, SoftmaxCrossEntropy):
    """CategoricalCrossentropy(from_logits=False): Keras's categorical cross-entropy, on
    probabilities (a softmax output): each row normalized to sum 1 and clipped to
    [1e-7, 1 - 1e-7], then -sum(t log p). Targets one-hot / probabilities (N, ..., C), or
    integer labels (N, ...). With a softmax-ending model the loss is computed from the logits
    instead (`logits_loss`, the fused kernel). from_logits=True: as SoftmaxCrossEntropy."""

    name = "categorical_crossentropy"
    PROBABILITIES_FROM = "softmax"
    LOGITS_LOSS = SoftmaxCrossEntropy

    def per_position(self, ops, output, targets):
        if self.from_logits:
            return super().per_position(ops, output, targets)
        xp = ops.xp
        p = _wide(output)
        t = self._targets(xp, output, targets, p.dtype)
        s = xp.maximum(p.sum(axis=-1, keepdims=True), np.finfo(p.dtype).tiny)
        q = p / s
        qc = xp.clip(q, EPSILON, 1 - EPSILON)
        inside = ((q >= EPSILON) & (q <= 1 - EPSILON)).astype(p.dtype)
        values = -(t * xp.log(qc)).sum(axis=-1)
        gq = -(t / qc) * inside  # d values / d q, then through q = p / sum(p)
        return values, (gq - (gq * q).sum(axis=-1, keepdims=True)) / s



class SparseCategoricalCrossentropy(CategoricalCrossentropy):
    """SparseCategoricalCrossentropy(from_logits=False): as CategoricalCrossentropy with integer
    labels (N, ...) only ((N, 1) labels for an (N, C) output accepted, as Keras)."""

    name = "sparse_categorical_crossentropy"
    labels_only = True


class NLLLoss(SoftmaxCrossEntropy):
    """NLLLoss(): negative log-likelihood of log-probabilities (a log_softmax output), as
    PyTorch's F.nll_loss: -mean(logp[label]). Outputs (N, ..., C), integer labels (N, ...).
    With a log_softmax-ending model the loss is computed from the logits by the fused softmax
    cross-entropy kernel (the same value: nll(log_softmax(z)) = cross-entropy(z)). Name
    "nll"."""

    name = "nll"
    from_logits = False
    output_activation = "log_softmax"
    takes = "log-probabilities"
    labels_only = True

    def _mean(self, ops, output, targets):
        return Loss._mean(self, ops, output, targets)

    def per_position(self, ops, output, targets):
        logp = _wide(output)
        t = self._targets(ops.xp, output, targets, logp.dtype)
        return -(t * logp).sum(axis=-1), -t

    def logits_loss(self):
        return SoftmaxCrossEntropy()


def _check_flag(owner, arg, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{owner}: {arg} must be True or False, got {value!r}")
    return bool(value)


def _check_probabilities(y, arg, classes, name="softmax_cross_entropy"):
    """One-hot or probability targets: >= 0, each row summing to 1 (within rounding of the
    targets' own dtype); returned as floats."""
    if y.dtype.kind != "f":
        y = y.astype(np.float32)
    if y.size and y.min() < 0:
        idx = _first_index(y < 0)
        raise InputError(f"{arg}: {name} targets must be probabilities >= 0 "
                         f"(one-hot or soft labels), got {y[idx].item()!r} at index {idx}")
    if y.size:
        sums = y.sum(axis=-1, dtype=np.float64)
        tol = max(1e-3, 4 * classes * float(np.finfo(y.dtype).eps))
        bad = np.abs(sums - 1) > tol
        if bad.any():
            idx = _first_index(bad)
            raise InputError(
                f"{arg}: each row of {name} targets must sum to 1 (one-hot or "
                f"probabilities); row {idx if len(idx) > 1 else idx[0]} sums to "
                f"{float(sums[idx]):.6g} (tolerance {tol:.1g})"
            )
    return y


# name -> class; a loss built from a name reports under that name.
LOSSES = {
    "mse": MSE,
    "mean_squared_error": MSE,
    "softmax_cross_entropy": SoftmaxCrossEntropy,
    "cross_entropy": SoftmaxCrossEntropy,
    "binary_cross_entropy": SigmoidCrossEntropy,
    "bce": SigmoidCrossEntropy,
    "sigmoid_cross_entropy": SigmoidCrossEntropy,
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "binary_crossentropy": BinaryCrossentropy,
    "nll": NLLLoss,
}

LOSS_CLASSES = {cls.__name__: cls for cls in (*dict.fromkeys(LOSSES.values()), Loss)}


def get(loss) -> Loss:
    """A Loss from a Loss object (returned as is), a name of `LOSSES`, or a
    {"class", "config"} dict (`get_config()` output). Raises UnknownNameError listing the
    accepted names."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, dict):
        cls_name, config = loss.get("class"), loss.get("config", {})
        if cls_name not in LOSS_CLASSES or cls_name == "Loss" or not isinstance(config, dict) \
                or set(loss) - {"class", "config"}:
            raise unknown("loss class", cls_name, [c for c in LOSS_CLASSES if c != "Loss"])
        try:
            return LOSS_CLASSES[cls_name](**config)
        except TypeError as exc:
            raise ValueError(f"loss {cls_name}: invalid config {config!r:.200} ({exc})") from exc
    if not isinstance(loss, str) or loss not in LOSSES:
        raise unknown("loss", loss, LOSSES)
    return LOSSES[loss](name=loss)


def names() -> str:
    """The accepted names, one line, grouped by loss (for generated docstrings)."""
    groups: dict[type, list[str]] = {}
    for name, cls in LOSSES.items():
        groups.setdefault(cls, []).append(name)
    parts = []
    for cls, group in groups.items():
        probe = cls(name=group[0])
        parts.append(" / ".join(f'"{n}"' for n in group) + f" ({probe.takes})")
    return ", ".join(parts)
