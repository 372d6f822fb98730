"""Host-side (NumPy) preprocessing: scalers, one-hot, train/test split, batch iteration.

Floor 1: needs only NumPy, so data can be prepared before any backend is chosen. Scalers
learn their statistics in ``fit`` (on training data only) and apply them unchanged in
``transform``, so test data never leaks into the statistics.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

try:  # join nnx's error hierarchy when present; this module must also work on its own
    from nnx.errors import InputError, NNXError, ShapeError
except ImportError:  # pragma: no cover - only when nnx.errors is absent

    class NNXError(Exception):
        """Base class of nnx's own errors."""

    class ShapeError(NNXError, ValueError):
        """An input of the wrong shape."""

    class InputError(NNXError, ValueError):
        """Invalid input values."""


__all__ = [
    "MinMaxScaler",
    "NotFittedError",
    "StandardScaler",
    "iterate_batches",
    "one_hot",
    "train_test_split",
]


class NotFittedError(NNXError, RuntimeError):
    """transform / inverse_transform called before fit."""


def _as_data(x, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 0:
        raise ShapeError(f"{what}: expected an array of shape (N, ...), got a scalar")
    if x.dtype.kind not in "biuf":
        raise InputError(f"{what}: expected a numeric array, got dtype {x.dtype}")
    return x


def _float_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt.kind != "f":
        raise InputError(f"dtype: expected a floating dtype, got {dt}")
    return dt


def _work_dtype(x: np.ndarray, out: np.dtype) -> np.dtype:
    # keep float64 input's precision through the arithmetic; ints need no more than `out`
    return np.promote_types(x.dtype, out) if x.dtype.kind == "f" else out


class _Scaler:
    """Shared fit-state handling: per-feature (axis 0) or global statistics."""

    def __init__(self, per_feature: bool, dtype) -> None:
        self.per_feature = bool(per_feature)
        self.dtype = _float_dtype(dtype)
        self.feature_shape_: tuple[int, ...] | None = None
        self.n_samples_seen_ = 0

    def _check_fit_input(self, x) -> np.ndarray:
        x = _as_data(x, f"{type(self).__name__}.fit")
        if x.shape[0] == 0:
            raise ShapeError(f"{type(self).__name__}.fit: expected at least 1 sample, got 0")
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise InputError(f"{type(self).__name__}.fit: input contains NaN or inf")
        return x

    def _check_transform_input(self, x, method: str) -> np.ndarray:
        name = f"{type(self).__name__}.{method}"
        if self.feature_shape_ is None:
            raise NotFittedError(f"{name}: this scaler is not fitted yet; call fit(x_train) first")
        x = _as_data(x, name)
        if self.per_feature and x.shape[1:] != self.feature_shape_:
            raise ShapeError(
                f"{name}: expected samples of shape {self.feature_shape_} (as in fit), "
                f"got {x.shape[1:]} (input shape {x.shape})"
            )
        return x

    def _axis(self, x: np.ndarray):
        return 0 if self.per_feature else None

    def fit_transform(self, x) -> np.ndarray:
        """fit(x) then transform(x)."""
        return self.fit(x).transform(x)

    def _affine(self, x: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
        work = _work_dtype(x, self.dtype)
        out = np.array(x, dtype=work, copy=True)
        out *= scale.astype(work)
        out += offset.astype(work)
        return out.astype(self.dtype, copy=False)


class MinMaxScaler(_Scaler):
    """Scale to ``feature_range`` using the min/max seen in fit.

    ``per_feature=True`` keeps one min/max per feature (axis 0 of (N, ...) data);
    ``per_feature=False`` uses one global min/max, e.g. to map image pixels 0..255 to 0..1
    without distorting contrast per pixel. Constant features map to the range's low end.
    """

    def __init__(self, feature_range=(0, 1), per_feature: bool = True, dtype=np.float32):
        super().__init__(per_feature, dtype)
        try:
            lo, hi = (float(v) for v in feature_range)
        except (TypeError, ValueError) as exc:
            raise InputError(
                f"feature_range: expected a pair (low, high) of numbers, got {feature_range!r}"
            ) from exc
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
            raise InputError(f"feature_range: expected finite low < high, got {feature_range!r}")
        self.feature_range = (lo, hi)

    def fit(self, x) -> MinMaxScaler:
        """Record min/max of x (per feature or global); returns self."""
        x = self._check_fit_input(x)
        axis = self._axis(x)
        self.data_min_ = np.asarray(x.min(axis=axis), dtype=np.float64)
        self.data_max_ = np.asarray(x.max(axis=axis), dtype=np.float64)
        self.data_range_ = self.data_max_ - self.data_min_
        lo, hi = self.feature_range
        # constant feature: divide by 1 instead of 0, so it maps to `lo` and inverts exactly
        safe_range = np.where(self.data_range_ > 0, self.data_range_, 1.0)
        self.scale_ = (hi - lo) / safe_range
        self.min_ = lo - self.data_min_ * self.scale_
        self.feature_shape_ = x.shape[1:]
        self.n_samples_seen_ = x.shape[0]
        return self

    def transform(self, x) -> np.ndarray:
        """Scale x with the fitted statistics; values outside the fit range are not clipped."""
        x = self._check_transform_input(x, "transform")
        return self._affine(x, self.scale_, self.min_)

    def inverse_transform(self, x) -> np.ndarray:
        """Map scaled values back to the original units."""
        x = self._check_transform_input(x, "inverse_transform")
        return self._affine(x, 1.0 / self.scale_, -self.min_ / self.scale_)


class StandardScaler(_Scaler):
    """Standardize to zero mean, unit variance with statistics from fit (training data).

    A feature whose std is <= ``eps`` is treated as constant and gets scale 1 (it maps to
    0 rather than inf/NaN). Statistics are computed in float64, in chunks, so a large uint8
    image set is never copied to float64 whole.
    """

    _CHUNK = 8192

    def __init__(
        self,
        with_mean: bool = True,
        with_std: bool = True,
        eps: float = 1e-8,
        per_feature: bool = True,
        dtype=np.float32,
    ):
        super().__init__(per_feature, dtype)
        if not (isinstance(eps, numbers.Real) and eps >= 0):
            raise InputError(f"eps: expected a number >= 0, got {eps!r}")
        self.with_mean = bool(with_mean)
        self.with_std = bool(with_std)
        self.eps = float(eps)

    def fit(self, x) -> StandardScaler:
        """Record mean and std of x (per feature or global); returns self."""
        x = self._check_fit_input(x)
        n = x.shape[0]
        flat = x if self.per_feature else x.reshape(n, -1)
        total = np.zeros(flat.shape[1:], np.float64)
        for i in range(0, n, self._CHUNK):
            total += flat[i : i + self._CHUNK].sum(axis=0, dtype=np.float64)
        mean = total / n if self.per_feature else total.sum() / flat.size
        sq = np.zeros(flat.shape[1:], np.float64)
        for i in range(0, n, self._CHUNK):  # two-pass: stable even when |mean| >> std
            d = flat[i : i + self._CHUNK].astype(np.float64) - mean
            sq += np.einsum("i...,i...->...", d, d)
        var = sq / n if self.per_feature else sq.sum() / flat.size
        self.mean_ = np.asarray(mean, np.float64)
        self.var_ = np.asarray(var, np.float64)
        std = np.sqrt(self.var_)
        self.scale_ = np.where(std > self.eps, std, 1.0)
        self.feature_shape_ = x.shape[1:]
        self.n_samples_seen_ = n
        return self

    def _params(self) -> tuple[np.ndarray, np.ndarray]:
        mean = self.mean_ if self.with_mean else np.zeros_like(self.mean_)
        scale = self.scale_ if self.with_std else np.ones_like(self.scale_)
        return mean, scale

    def transform(self, x) -> np.ndarray:
        """(x - mean) / std with the fitted statistics."""
        x = self._check_transform_input(x, "transform")
        mean, scale = self._params()
        return self._affine(x, 1.0 / scale, -mean / scale)

    def inverse_transform(self, x) -> np.ndarray:
        """x * std + mean: back to the original units."""
        x = self._check_transform_input(x, "inverse_transform")
        mean, scale = self._params()
        return self._affine(x, scale, mean)


def one_hot(labels, num_classes: int | None = None, dtype=np.float32) -> np.ndarray:
    """Integer labels of any shape -> array of shape ``labels.shape + (num_classes,)``.

    Labels must be integers in [0, num_classes); num_classes defaults to max(labels) + 1.
    Float labels are refused rather than truncated, since 2.7 -> 2 hides a bug upstream.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise InputError(
            f"one_hot: labels must have an integer dtype, got {labels.dtype} "
            "(convert with labels.astype(np.int64) if the values are whole numbers)"
        )
    if num_classes is None:
        if labels.size == 0:
            raise InputError("one_hot: cannot infer num_classes from empty labels; pass it")
        num_classes = int(labels.max()) + 1
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
        raise InputError(f"one_hot: num_classes must be an int, got {num_classes!r}")
    num_classes = int(num_classes)
    if num_classes < 1:
        raise InputError(f"one_hot: num_classes must be >= 1, got {num_classes}")
    if labels.size:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0:
            raise InputError(f"one_hot: negative label {lo}; labels must be in [0, {num_classes})")
        if hi >= num_classes:
            raise InputError(
                f"one_hot: label {hi} out of range for num_classes={num_classes}; "
                f"labels must be in [0, {num_classes})"
            )
    out = np.zeros(labels.shape + (num_classes,), dtype=dtype)
    np.put_along_axis(out, labels[..., None].astype(np.intp), 1, axis=-1)
    return out


def _check_arrays(arrays, what: str) -> tuple[list[np.ndarray], int]:
    if not arrays:
        raise InputError(f"{what}: expected at least one array")
    arrs = [np.asarray(a) for a in arrays]
    for i, a in enumerate(arrs):
        if a.ndim == 0:
            raise ShapeError(f"{what}: array {i} is a scalar; expected shape (N, ...)")
    lengths = [len(a) for a in arrs]
    if len(set(lengths)) > 1:
        raise ShapeError(
            f"{what}: all arrays must have the same length (axis 0), got lengths {lengths}"
        )
    return arrs, lengths[0]


def train_test_split(*arrays, test_size=0.2, shuffle: bool = True, seed=None, stratify=None):
    """Split arrays along axis 0; returns ``[a_train, a_test, b_train, b_test, ...]``.

    ``test_size``: fraction in (0, 1) (rounded up, as in scikit-learn) or an int count.
    ``stratify``: labels whose class proportions both parts keep (largest-remainder
    allocation, so the test part has exactly the requested size). ``seed``: int, None or
    a ``np.random.Generator``; the same seed gives the same split.
    """
    arrs, n = _check_arrays(arrays, "train_test_split")
    if isinstance(test_size, bool) or not isinstance(test_size, numbers.Real):
        raise InputError(f"test_size: expected a float in (0, 1) or an int, got {test_size!r}")
    if isinstance(test_size, numbers.Integral):
        n_test = int(test_size)
    else:
        if not 0.0 < test_size < 1.0:
            raise InputError(f"test_size: a fraction must be in (0, 1), got {test_size}")
        n_test = math.ceil(test_size * n)
    if not 1 <= n_test <= n - 1:
        raise InputError(
            f"test_size={test_size!r} with {n} samples gives {n_test} test and "
            f"{n - n_test} train samples; both must be >= 1"
        )
    rng = np.random.default_rng(seed)
    if stratify is not None:
        if not shuffle:
            raise InputError("train_test_split: stratify requires shuffle=True")
        strat = np.asarray(stratify)
        if strat.shape[:1] != (n,):
            raise ShapeError(
                f"stratify: expected {n} labels (one per sample), got shape {strat.shape}"
            )
        classes, inverse = np.unique(strat, return_inverse=True, axis=0 if strat.ndim > 1 else None)
        inverse = inverse.reshape(-1)
        counts = np.bincount(inverse, minlength=len(classes))
        exact = counts * (n_test / n)
        take = np.floor(exact).astype(np.int64)
        short = n_test - int(take.sum())
        if short:  # largest remainders get the leftover test slots (ties: fixed by rng)
            order = np.lexsort((rng.random(len(classes)), -(exact - take)))
            take[order[:short]] += 1
        test_parts, train_parts = [], []
        for c in range(len(classes)):
            idx = rng.permutation(np.flatnonzero(inverse == c))
            test_parts.append(idx[: take[c]])
            train_parts.append(idx[take[c] :])
        test_idx = rng.permutation(np.concatenate(test_parts))
        train_idx = rng.permutation(np.concatenate(train_parts))
    elif shuffle:
        perm = rng.permutation(n)
        train_idx, test_idx = perm[: n - n_test], perm[n - n_test :]
    else:
        train_idx, test_idx = slice(0, n - n_test), slice(n - n_test, n)
    out = []
    for a in arrs:
        out.extend((a[train_idx], a[test_idx]))
    return out


def iterate_batches(
    *arrays, batch_size: int, shuffle: bool = False, seed=None, drop_last: bool = False
):
    """Yield tuples ``(a_batch, b_batch, ...)`` of aligned batches along axis 0.

    Arguments are checked here, at the call, not at the first ``next()``. Without shuffle the
    batches are views (no copy); with shuffle, each call draws one permutation from ``seed``.
    The last, smaller batch is kept unless ``drop_last``.
    """
    arrs, n = _check_arrays(arrays, "iterate_batches")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
        raise InputError(f"batch_size: expected an int > 0, got {batch_size!r}")
    if batch_size <= 0:
        raise InputError(f"batch_size: expected an int > 0, got {batch_size}")
    batch_size = int(batch_size)
    order = np.random.default_rng(seed).permutation(n) if shuffle else None
    stop = n - n % batch_size if drop_last else n

    def batches():
        for start in range(0, stop, batch_size):
            end = min(start + batch_size, n)
            if order is None:
                yield tuple(a[start:end] for a in arrs)
            else:
                idx = order[start:end]
                yield tuple(a[idx] for a in arrs)

    return batches()
