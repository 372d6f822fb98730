"""Metrics by name and object, accumulated over batches on the backend.

    m = nnx.metrics.get("acc")                  # or nnx.metrics.TopKAccuracy(k=3), ...
    m.reset()
    for xb, yb in batches:
        m.update(ops, model(xb), yb)            # device arithmetic only: no host sync
    m.result()                                  # one sync: a Python float

Names (`METRICS`): "accuracy" / "acc", "top_k_accuracy" (TopKAccuracy, k=5), "precision",
"recall", "f1" (macro-averaged over classes), "mae", "mse", "rmse" (and the long names
"mean_absolute_error", "mean_squared_error", "root_mean_squared_error"). A metric built from a
name reports under that name (`"acc"` gives history key "acc", as in Keras).

Why on the backend: `update` adds each batch's (weighted) counts into 0-d or (classes,) arrays
of `ops.xp` in float64, so a GPU epoch reads nothing back until `result()`. Every state is a
sum, so states from several processes combine by adding them (`state_arrays()`, e.g. one
allreduce each) before `result()`.

Classification metrics (accuracy, top-k, precision, recall, f1):
- outputs (N, C) or per timestep (N, T, C): logits, probabilities or log-probabilities (the
  argmax is the same); targets integer labels (N,) / (N, T) (floats holding whole numbers
  accepted) or one-hot / probabilities of the output's shape (their argmax is the label);
- a single output column (N, 1) / (N, T, 1) (or `binary=True`, for multi-label outputs) is
  binary: the prediction is `output > 0` when `from_logits` (nnx's convention: models output
  logits unless the loss says it takes probabilities) and `output > 0.5` otherwise; the target
  is `target > 0.5`. Binary accuracy is the mean over the columns per position (Keras's
  binary_accuracy); binary precision / recall / f1 are those of the positive class over every
  element (Keras's Precision / Recall);
- every position counts: a (N, T) sequence batch adds N*T predictions, each weighted by
  `sample_weight` of shape (N,) (per sequence) or (N, T) (per timestep: 0 masks padding);
- labels out of range [0, C) with a nonzero weight raise InputError on host backends (numpy,
  numba); on a GPU they are not read back (the model validates targets on the host before
  they go to the device) and count as wrong predictions of no class.

Regression metrics (mae, mse, rmse): targets of the output's shape ((N,) targets for (N, 1)
outputs accepted); the mean over every element, weighted by `sample_weight` (N,) or (N, T)
broadcast over the remaining axes (the weighted mean of the per-sample means, as Keras).

A metric with nothing counted yet (or a zero denominator, e.g. precision of a model that never
predicts the positive class) reports 0.0, as Keras and scikit-learn do.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np

from .errors import InputError, ShapeError, unknown


def _host(a) -> np.ndarray:
    """A host NumPy array from a NumPy or CuPy array (the one sync of `result()`)."""
    return np.asarray(a.get() if hasattr(a, "get") else a)


def _safe_div(num, den):
    """num / den elementwise, 0 where den is 0 (host arrays)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den != 0)


class Metric:
    """Base class: a metric accumulates sums over `update` calls and reports `result()`.

    Subclasses set `kind` ("classification" or "regression") and `_state_names` (the float64
    accumulators), and implement `_update(ops, output, targets, weights)` and `_result(state)`.
    """

    name = "metric"
    kind = "classification"
    _state_names: tuple = ()

    def __init__(self, name: str | None = None):
        if name is not None and (not isinstance(name, str) or not name.isidentifier()):
            raise ValueError(f"{type(self).__name__}: name must be an identifier (a history "
                             f"key), got {name!r}")
        self.name = name or type(self).name
        self.reset()

    # -- the protocol ---------------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything counted (call at each epoch's start)."""
        self._state = None

    def update(self, ops, output, targets, sample_weight=None) -> None:
        """Add one batch: `output` the model's output, `targets` its targets (backend or host
        arrays; moved to `ops` if needed), `sample_weight` None, (N,) or (N, T). Device
        arithmetic only (nothing is read back); returns nothing."""
        xp = ops.xp
        # Backend arrays are used as they are (no copy, no dtype change); host arrays move.
        output = output if isinstance(output, xp.ndarray) else ops.asarray(output)
        targets = targets if isinstance(targets, xp.ndarray) else ops.asarray(targets)
        if self._state is None:
            self._state = {k: None for k in self._state_names}
        weights = None
        if sample_weight is not None:
            weights = ops.asarray(sample_weight, dtype=xp.float64)
        # A GPU Ops runs its kernels on its own device; the arithmetic here must too.
        scope = getattr(ops, "_scope", None)
        with scope() if scope is not None else contextlib.nullcontext():
            self._update(ops, output, targets, weights)

    def result(self) -> float:
        """The metric over everything since `reset()`, as a Python float (one host sync)."""
        if self._state is None or any(v is None for v in self._state.values()):
            return 0.0
        return float(self._result({k: _host(v) for k, v in self._state.items()}))

    def state_arrays(self) -> list:
        """The accumulators (backend float64 arrays; empty before the first update). They are
        sums: to combine processes, add each across them in place (an allreduce), then call
        `result()`."""
        if self._state is None:
            return []
        return [v for v in self._state.values() if v is not None]

    def get_config(self) -> dict:
        """The constructor's arguments (JSON-able); `type(m)(**m.get_config())` rebuilds it."""
        return {"name": self.name}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    # -- helpers for subclasses -----------------------------------------------------------
    def _add(self, key: str, value, xp) -> None:
        """state[key] += value (a backend array or a Python number), kept on the backend."""
        current = self._state[key]
        if current is None:
            self._state[key] = xp.asarray(value, dtype=xp.float64).copy()
        else:
            current += value

    def _error(self, what: str, expected: str, actual) -> ShapeError:
        return ShapeError(f"metric {self.name!r} ({type(self).__name__}): expected {what} "
                          f"{expected}, got {actual}")

    def _position_weights(self, weights, positions: tuple):
        """(N,) or (N, T) weights as an array broadcastable against `positions`, or None."""
        if weights is None:
            return None
        ws = tuple(weights.shape)
        if not 1 <= len(ws) <= len(positions) or ws != tuple(positions[:len(ws)]):
            shapes = " or ".join(str(tuple(positions[:i]))
                                 for i in range(1, min(len(positions), 2) + 1))
            raise self._error("sample_weight of shape", shapes or "(N,)", f"shape {ws}")
        return weights.reshape(ws + (1,) * (len(positions) - len(ws)))


class _Classification(Metric):
    """Shared target handling of the classification metrics (see the module docstring)."""

    kind = "classification"

    def __init__(self, name: str | None = None, from_logits: bool = True, binary=None):
        if binary not in (None, True, False):
            raise ValueError(f"{type(self).__name__}: binary must be None (auto: a single "
                             f"output column is binary), True or False, got {binary!r}")
        self.from_logits = bool(from_logits)
        self.binary = binary
        super().__init__(name)

    def get_config(self):
        return {"name": self.name, "from_logits": self.from_logits, "binary": self.binary}

    def _is_binary(self, output) -> bool:
        if self.binary is not None:
            return self.binary
        return output.ndim == 1 or output.shape[-1] == 1

    def _binary(self, ops, output, targets):
        """(pred, true) boolean arrays of the output's shape (..., C) for binary outputs."""
        if output.ndim == 1:
            output = output.reshape(-1, 1)
            if targets.ndim == 1:
                targets = targets.reshape(-1, 1)
        if tuple(targets.shape) == tuple(output.shape[:-1]) and output.shape[-1] == 1:
            targets = targets.reshape(tuple(targets.shape) + (1,))
        if tuple(targets.shape) != tuple(output.shape):
            raise self._error("binary targets of the output's shape", str(tuple(output.shape)),
                              f"shape {tuple(targets.shape)}")
        return output > (0.0 if self.from_logits else 0.5), targets > 0.5

    def _positions(self, output) -> tuple:
        """The output's shape without its class axis; categorical outputs need one."""
        if output.ndim < 2:
            raise self._error("outputs of shape", "(N, C) or (N, T, C)",
                              f"shape {tuple(output.shape)}")
        return tuple(output.shape[:-1])

    def _categorical(self, ops, output, targets, weights):
        """(pred labels, true labels, valid) int/bool arrays of shape positions (the output's
        shape without its class axis) for categorical outputs, checking shapes and (on host
        backends) label ranges."""
        xp = ops.xp
        positions, classes = self._positions(output), int(output.shape[-1])
        if tuple(targets.shape) == positions:
            labels = targets if targets.dtype.kind in "iu" else targets.astype(xp.int64)
        elif tuple(targets.shape) == tuple(output.shape):
            labels = targets.argmax(axis=-1)
        else:
            full = ", ".join(map(str, output.shape))
            raise self._error("targets of shape", f"{positions} (labels) or ({full}) (one-hot)",
                              f"shape {tuple(targets.shape)}")
        valid = (labels >= 0) & (labels < classes)
        if ops.on_host and labels.size and not bool(valid.all()):
            bad = ~valid if weights is None else ~valid & (weights != 0)
            if bool(bad.any()):
                label = labels[bad].ravel()[0]
                raise InputError(f"metric {self.name!r}: label {label} out of range for "
                                 f"{classes} classes (expected 0 <= label < {classes})")
        return output.argmax(axis=-1), labels, valid

    @staticmethod
    def _weighted_sum(values, w):
        return values.sum(dtype="float64") if w is None else (values * w).sum()

    @staticmethod
    def _count(positions: tuple, w, xp):
        """The (weighted) number of positions: a host number when unweighted (no sync)."""
        if w is None:
            return float(math.prod(positions))
        return xp.broadcast_to(w, positions).sum()


class Accuracy(_Classification):
    """Accuracy(from_logits=True, binary=None, name="accuracy"): the (weighted) fraction of
    positions whose argmax matches the label; binary outputs: the fraction of matching
    thresholded columns (see the module docstring). Returns a float in [0, 1]."""

    name = "accuracy"
    _state_names = ("correct", "count")

    def _update(self, ops, output, targets, weights):
        xp = ops.xp
        if self._is_binary(output):
            pred, true = self._binary(ops, output, targets)
            positions = tuple(pred.shape[:-1])
            w = self._position_weights(weights, positions)
            hits = (pred == true).mean(axis=-1, dtype=xp.float64)
        else:
            positions = self._positions(output)
            w = self._position_weights(weights, positions)
            pred, labels, _valid = self._categorical(ops, output, targets, w)
            hits = pred == labels
        self._add("correct", self._weighted_sum(hits, w), xp)
        self._add("count", self._count(positions, w, xp), xp)

    def _result(self, state):
        return _safe_div(state["correct"], state["count"])


class TopKAccuracy(_Classification):
    """TopKAccuracy(k=5, name="top_k_accuracy"): the (weighted) fraction of positions whose
    label is among the k highest scores. Ties at the boundary count as in (as TensorFlow's
    in_top_k): a position is a hit when fewer than k classes score strictly higher than its
    label. Categorical outputs (N, C) or (N, T, C) only; k >= C makes every valid position a
    hit. Computed without sorting: one comparison against the label's score per class."""

    name = "top_k_accuracy"
    _state_names = ("correct", "count")

    def __init__(self, k: int = 5, name: str | None = None, from_logits: bool = True):
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"TopKAccuracy: k must be a positive int, got {k!r}")
        self.k = k
        super().__init__(name, from_logits, binary=False)

    def get_config(self):
        return {"k": self.k, "name": self.name, "from_logits": self.from_logits}

    def _update(self, ops, output, targets, weights):
        xp = ops.xp
        positions = self._positions(output)
        w = self._position_weights(weights, positions)
        _pred, labels, valid = self._categorical(ops, output, targets, w)
        safe = xp.where(valid, labels, 0)
        score = xp.take_along_axis(output, safe[..., None], axis=-1)
        higher = (output > score).sum(axis=-1)
        hits = (higher < self.k) & valid
        self._add("correct", self._weighted_sum(hits, w), xp)
        self._add("count", self._count(positions, w, xp), xp)

    def _result(self, state):
        return _safe_div(state["correct"], state["count"])


class _Confusion(_Classification):
    """Per-class weighted counts: true positives, predicted and actual positives.

    Categorical outputs: (classes,) vectors, macro-averaged over the classes that occur (with a
    nonzero weight) among the labels or the predictions, as scikit-learn's
    `average="macro"`. Binary outputs: the positive class, counted over every element."""

    _state_names = ("tp", "predicted", "actual")

    def _update(self, ops, output, targets, weights):
        xp = ops.xp
        if self._is_binary(output):
            pred, true = self._binary(ops, output, targets)
            w = self._position_weights(weights, tuple(pred.shape[:-1]))
            w = None if w is None else w[..., None]  # over every column of a position
            counts = {"tp": pred & true, "predicted": pred, "actual": true}
            for key, hits in counts.items():
                self._add(key, self._weighted_sum(hits, w), xp)
            return
        classes = int(output.shape[-1])
        have = self._state["tp"]
        if have is not None and have.shape != (classes,):
            raise self._error("outputs with", f"{have.shape[0]} classes (as in earlier batches)",
                              f"{classes} (output shape {tuple(output.shape)})")
        positions = self._positions(output)
        w = self._position_weights(weights, positions)
        pred, labels, valid = self._categorical(ops, output, targets, w)
        wv = valid.astype(xp.float64)
        if w is not None:
            wv = wv * w
        pred, safe, wv = pred.ravel(), xp.where(valid, labels, 0).ravel(), wv.ravel()
        self._add("tp", xp.bincount(safe, weights=wv * (pred == safe), minlength=classes), xp)
        self._add("actual", xp.bincount(safe, weights=wv, minlength=classes), xp)
        if w is None:
            self._add("predicted", xp.bincount(pred, minlength=classes).astype(xp.float64), xp)
        else:
            pw = xp.broadcast_to(w, positions).ravel()
            self._add("predicted", xp.bincount(pred, weights=pw, minlength=classes), xp)

    def _result(self, state):
        per_class = self._per_class(state["tp"], state["predicted"], state["actual"])
        if per_class.ndim == 0:
            return per_class
        present = (state["predicted"] + state["actual"]) > 0
        return float(per_class[present].mean()) if present.any() else 0.0


class Precision(_Confusion):
    """Precision(from_logits=True, binary=None, name="precision"): tp / predicted positives,
    macro-averaged over classes for categorical outputs (scikit-learn's average="macro"), of
    the positive class for binary ones; 0 for a class never predicted."""

    name = "precision"

    @staticmethod
    def _per_class(tp, predicted, actual):
        return _safe_div(tp, predicted)


class Recall(_Confusion):
    """Recall(from_logits=True, binary=None, name="recall"): tp / actual positives,
    macro-averaged over classes for categorical outputs, of the positive class for binary
    ones; 0 for a class that never occurs (among the predicted ones)."""

    name = "recall"

    @staticmethod
    def _per_class(tp, predicted, actual):
        return _safe_div(tp, actual)


class F1(_Confusion):
    """F1(from_logits=True, binary=None, name="f1"): per class 2 tp / (predicted + actual) (the
    harmonic mean of precision and recall, 0 where both are 0), macro-averaged over classes
    for categorical outputs, of the positive class for binary ones."""

    name = "f1"

    @staticmethod
    def _per_class(tp, predicted, actual):
        return _safe_div(2.0 * tp, predicted + actual)


class _Regression(Metric):
    """Weighted sum of an elementwise error over every element, and the weighted count."""

    kind = "regression"
    _state_names = ("total", "count")

    def _update(self, ops, output, targets, weights):
        xp = ops.xp
        shape = tuple(output.shape)
        if tuple(targets.shape) != shape and tuple(targets.shape) + (1,) == shape:
            targets = targets.reshape(shape)
        if tuple(targets.shape) != shape:
            raise self._error("targets of the output's shape", str(shape),
                              f"shape {tuple(targets.shape)}")
        err = self._error_of(output.astype(xp.float64) - targets.astype(xp.float64), xp)
        positions = shape if len(shape) < 2 else shape[:2]
        w = self._position_weights(weights, positions)
        if w is None:
            self._add("total", err.sum(), xp)
            self._add("count", float(err.size), xp)
            return
        w = w.reshape(tuple(w.shape) + (1,) * (len(shape) - w.ndim))
        self._add("total", (err * w).sum(), xp)
        self._add("count", xp.broadcast_to(w, shape).sum(), xp)

    def _result(self, state):
        return _safe_div(state["total"], state["count"])


class MAE(_Regression):
    """MAE(name="mae"): the (weighted) mean absolute error over every element."""

    name = "mae"

    @staticmethod
    def _error_of(diff, xp):
        return xp.abs(diff)


class MSE(_Regression):
    """MSE(name="mse"): the (weighted) mean squared error over every element."""

    name = "mse"

    @staticmethod
    def _error_of(diff, xp):
        return diff * diff


class RMSE(MSE):
    """RMSE(name="rmse"): the square root of the (weighted) mean squared error over everything
    since `reset()` (not the mean of per-batch roots, as Keras's RootMeanSquaredError)."""

    name = "rmse"

    def _result(self, state):
        return math.sqrt(float(super()._result(state)))


# name -> class; the names `compile(metrics=[...])` accepts (aliases report under their name).
METRICS: dict[str, type] = {
    "accuracy": Accuracy,
    "acc": Accuracy,
    "top_k_accuracy": TopKAccuracy,
    "precision": Precision,
    "recall": Recall,
    "f1": F1,
    "mae": MAE,
    "mean_absolute_error": MAE,
    "mse": MSE,
    "mean_squared_error": MSE,
    "rmse": RMSE,
    "root_mean_squared_error": RMSE,
}

METRIC_CLASSES: dict[str, type] = {cls.__name__: cls for cls in dict.fromkeys(METRICS.values())}


def get(metric, *, from_logits: bool | None = None, binary=None) -> Metric:
    """A Metric from a name in `METRICS`, a Metric object (returned as is), or a
    `{"class": ..., "config": {...}}` dict (`to_config` output).

    For a name, `from_logits` / `binary` configure classification metrics (the model passes
    what its loss implies: `from_logits=False` when the loss takes probabilities, `binary=True`
    for binary cross-entropy); they are ignored for regression metrics. Raises
    UnknownNameError listing the accepted names."""
    if isinstance(metric, Metric):
        return metric
    if isinstance(metric, dict):
        cls_name, config = metric.get("class"), metric.get("config", {})
        if cls_name not in METRIC_CLASSES or not isinstance(config, dict):
            raise unknown("metric class", cls_name, METRIC_CLASSES)
        return METRIC_CLASSES[cls_name](**config)
    if not isinstance(metric, str) or metric not in METRICS:
        raise unknown("metric", metric, METRICS)
    cls = METRICS[metric]
    if issubclass(cls, _Classification):
        options = {"from_logits": True if from_logits is None else bool(from_logits)}
        if cls is not TopKAccuracy:
            options["binary"] = binary
        return cls(name=metric, **options)
    return cls(name=metric)


def to_config(metric: Metric) -> dict:
    """A JSON-able description of a metric, rebuilt by `get`."""
    return {"class": type(metric).__name__, "config": metric.get_config()}


def names() -> str:
    """The accepted names, one line (for error messages and generated docstrings)."""
    groups: dict[type, list[str]] = {}
    for name, cls in METRICS.items():
        groups.setdefault(cls, []).append(name)
    return ", ".join(" / ".join(f'"{n}"' for n in group) for group in groups.values())
