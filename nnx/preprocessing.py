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
    "MAX_INFERRED_CLASSES",
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


def _halves(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integers as exact int64 halves: a == hi * 2**32 + lo with 0 <= lo < 2**32 (any int dtype,
    uint64 included), so that differences of 64-bit values need no wider type."""
    if a.dtype.kind == "u":
        a = a.astype(np.uint64, copy=False)
        return (a >> np.uint64(32)).astype(np.int64), (a & np.uint64(0xFFFFFFFF)).astype(np.int64)
    a = a.astype(np.int64, copy=False)
    return a >> 32, a & 0xFFFFFFFF


class _Origin:
    """Where a scaler takes differences from, so that ``x - origin`` is exact until one final
    rounding to float64.

    Integer data: the fit data's minimum, kept exactly (float64 cannot tell int64 2**62 from
    2**62 + 1, so converting first would merge them); 64-bit values beyond 2**53 are
    differenced as exact 32-bit halves. Float data: zero (the values are already float64;
    overflow of differences is handled by ``_ratio``)."""

    def __init__(self, x: np.ndarray, axis) -> None:
        self.halves = None
        self.ref = 0.0
        if x.dtype.kind in "biu":
            ref = np.asarray(x.min(axis=axis))
            self.halves = _halves(ref)
            self.ref = ref.astype(np.float64)  # exact when |ref| < 2**53 (the fast path)
            self.ref_exact = bool(np.all(np.abs(self.ref) < _EXACT))

    @property
    def value(self):
        """The origin as float64 (rounded; only added back for display and inverse)."""
        return self.ref

    def shift(self, x: np.ndarray) -> np.ndarray:
        """float64 ``x - origin``, rounded once."""
        if self.halves is None:
            return np.array(x, dtype=np.float64, copy=True)
        if x.dtype.kind in "biu":
            if self.ref_exact and (x.dtype.itemsize < 8 or _fits_float(x)):
                d = x.astype(np.float64)
                d -= self.ref  # both exact: one rounding, as below
                return d
            hi, lo = self.halves
            xh, xl = _halves(x)
            return (xh - hi).astype(np.float64) * 4294967296.0 + (xl - lo)
        hi, lo = self.halves
        return (x.astype(np.float64) - hi * 4294967296.0) - lo


_EXACT = 2.0**53  # integers below this magnitude are exact in float64


def _fits_float(x: np.ndarray) -> bool:
    """Whether every value of the 64-bit integer array x is exact in float64."""
    return x.size == 0 or (int(x.max()) < _EXACT and int(x.min()) > -_EXACT)


def _ratio(fresh, center, r, r_half, may_overflow: bool) -> np.ndarray:
    """``(d - center) / r`` in float64, d = ``fresh()`` (a new array, overwritten here).

    Overflow on the way is possible only for float data near +-1.8e308 (``may_overflow``):
    then a non-finite sum sends the block down the careful path, which uses the halves
    ``(d/2 - center/2) / (r/2)`` (exact scaling by a power of two) wherever ``d - center`` or
    ``r`` exceeds float64."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        q = fresh()
        if np.any(center):
            q -= center
        q /= r
        if not may_overflow or np.isfinite(q.sum()):
            return q
        d = fresh()
        num = d - center
        bad = ~(np.isfinite(num) & np.isfinite(r))
        return np.where(bad, (d * 0.5 - np.multiply(center, 0.5)) / r_half, num / r)


def _affine_back(q: np.ndarray, center, r, r_half, may_overflow: bool) -> np.ndarray:
    """``center + q * r`` without intermediate overflow (the inverse of ``_ratio``)."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = q * r
        out += center
        if not may_overflow or np.isfinite(out.sum()):
            return out
        bad = ~np.isfinite(out) & np.isfinite(q)
        return np.where(bad, (np.multiply(center, 0.5) + q * r_half) * 2.0, out)


class _Scaler:
    """Shared fit-state handling: per-feature (axis 0) or global statistics.

    All statistics and transforms are computed in float64, one block of rows at a time (about
    2 MiB of float64, at most ``_CHUNK`` rows: a large uint8 image set is never copied to
    float64 whole, and the passes over a block run in cache), and cast to ``dtype`` at the end.
    """

    _CHUNK = 8192  # rows per block at most
    _BLOCK_ELEMENTS = 1 << 18  # ...and about this many values (2 MiB of float64, cache-sized)

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

    def _rows(self, x: np.ndarray) -> int:
        """Rows per block: small enough that a block's float64 temporaries stay in cache while
        the several elementwise passes run over them."""
        per_row = max(1, math.prod(x.shape[1:]))
        return max(1, min(self._CHUNK, self._BLOCK_ELEMENTS // per_row))

    def _chunks(self, x: np.ndarray):
        """Row blocks of x: the statistics passes and transforms work on one at a time."""
        rows = self._rows(x)
        for i in range(0, x.shape[0], rows):
            yield x[i : i + rows]

    def _map(self, x: np.ndarray, fn) -> np.ndarray:
        """``fn`` (float64 in, float64 out) over x's row blocks, written into a ``dtype`` array."""
        out = np.empty(x.shape, self.dtype)
        rows = self._rows(x)
        with np.errstate(over="ignore"):  # a value beyond dtype's range becomes inf, as it is
            for i in range(0, x.shape[0], rows):
                out[i : i + rows] = fn(x[i : i + rows])
        return out

    def fit_transform(self, x) -> np.ndarray:
        """fit(x) then transform(x)."""
        return self.fit(x).transform(x)


class MinMaxScaler(_Scaler):
    """Scale to ``feature_range`` using the min/max seen in fit.

    ``per_feature=True`` keeps one min/max per feature (axis 0 of (N, ...) data);
    ``per_feature=False`` uses one global min/max, e.g. to map image pixels 0..255 to 0..1
    without distorting contrast per pixel. Constant features map to the range's low end.

    The map is ``low + (x - min) / (max - min) * (high - low)`` in float64: integer data is
    differenced exactly (int64 2**62 and 2**62 + 1 map to 0 and 1), and a range beyond
    float64 (data at +-1e308) is halved instead of overflowing. ``scale_`` and ``min_``
    (``x * scale_ + min_``, as in scikit-learn) are informational and may over- or underflow
    for extreme ranges; transforms do not use them.
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
        if not math.isfinite(hi - lo):
            raise InputError(
                f"feature_range: high - low must be a finite float64, got {feature_range!r}"
            )
        self.feature_range = (lo, hi)

    def fit(self, x) -> MinMaxScaler:
        """Record min/max of x (per feature or global); returns self."""
        x = self._check_fit_input(x)
        axis = self._axis(x)
        mins, maxs = np.asarray(x.min(axis=axis)), np.asarray(x.max(axis=axis))
        self._origin = _Origin(x, axis)
        lo_d, hi_d = self._origin.shift(mins), self._origin.shift(maxs)
        with np.errstate(over="ignore"):
            r = hi_d - lo_d  # inf when the range exceeds float64; _ratio then uses r_half
        constant = r == 0  # divide by 1 instead of 0: maps to `lo` and inverts exactly
        self._lo_d = lo_d
        self._r = np.where(constant, 1.0, r)
        self._r_half = np.where(constant, 0.5, hi_d * 0.5 - lo_d * 0.5)
        self.data_min_ = np.asarray(mins, dtype=np.float64)
        self.data_max_ = np.asarray(maxs, dtype=np.float64)
        self.data_range_ = r
        low, high = self.feature_range
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            self.scale_ = (high - low) / self._r
            self.min_ = low - self.data_min_ * self.scale_
        self.feature_shape_ = x.shape[1:]
        self.n_samples_seen_ = x.shape[0]
        return self

    def transform(self, x) -> np.ndarray:
        """Scale x with the fitted statistics; values outside the fit range are not clipped."""
        x = self._check_transform_input(x, "transform")
        low, high = self.feature_range

        def fn(block):
            q = _ratio(lambda: self._origin.shift(block), self._lo_d, self._r, self._r_half,
                       self._origin.halves is None)
            if (low, high) != (0.0, 1.0):
                q *= high - low
                q += low
            return q

        return self._map(x, fn)

    def inverse_transform(self, x) -> np.ndarray:
        """Map scaled values back to the original units."""
        x = self._check_transform_input(x, "inverse_transform")
        low, high = self.feature_range
        origin = self._origin.value

        def fn(block):
            q = (block.astype(np.float64) - low) / (high - low)
            return origin + _affine_back(q, self._lo_d, self._r, self._r_half,
                                         self._origin.halves is None)

        return self._map(x, fn)


class StandardScaler(_Scaler):
    """Standardize to zero mean, unit variance with statistics from fit (training data).

    A feature whose std is <= ``eps`` is treated as constant and gets scale 1 (it maps to
    0 rather than inf/NaN). Statistics are computed in float64, in chunks, so a large uint8
    image set is never copied to float64 whole; sums run over values divided by a power of
    two at least their largest magnitude, so data at +-1e200 or +-1e308 neither overflows
    the sums nor the squares (``var_`` itself may be inf when the std exceeds 1.3e154; the
    transforms use the std). Integer data is differenced exactly from its minimum first.
    """

    def __init__(
        self,
        with_mean: bool = True,
        with_std: bool = True,
        eps: float = 1e-8,
        per_feature: bool = True,
        dtype=np.float32,
    ):
        super().__init__(per_feature, dtype)
        if not (isinstance(eps, numbers.Real) and eps >= 0 and math.isfinite(eps)):
            raise InputError(f"eps: expected a finite number >= 0, got {eps!r}")
        self.with_mean = bool(with_mean)
        self.with_std = bool(with_std)
        self.eps = float(eps)

    def fit(self, x) -> StandardScaler:
        """Record mean and std of x (per feature or global); returns self."""
        x = self._check_fit_input(x)
        n = x.shape[0]
        axis = 0 if self.per_feature else None
        origin = self._origin = _Origin(x, axis)
        count = n if self.per_feature else x.size
        shape = x.shape[1:] if self.per_feature else ()
        if origin.halves is None:  # pass 0 (float data): the magnitude of the values
            maxabs = np.zeros(shape, np.float64)
            for block in self._chunks(x):
                big = np.maximum(block.max(axis=axis), -block.min(axis=axis))
                np.maximum(maxabs, big, out=maxabs)
        else:  # integers shifted by their minimum: 0 <= x - min <= max - min < 2**64
            maxabs = origin.shift(np.asarray(x.max(axis=axis)))
        # squares of values beyond 2**500 (or below 2**-500) would over- or underflow: there,
        # divide by a power of two near the magnitude first (exact), and multiply back at the end
        exp = np.frexp(maxabs)[1]
        k = np.where((exp > 500) | ((maxabs > 0) & (exp < -500)), -exp, 0)
        scaled = bool(np.any(k))

        def values(block):
            d = origin.shift(block)
            return np.ldexp(d, k) if scaled else d

        total = np.zeros(shape, np.float64)
        for block in self._chunks(x):  # pass 1: the mean
            total += values(block).sum(axis=axis)
        mean_s = total / count
        sq = np.zeros(shape, np.float64)
        for block in self._chunks(x):  # pass 2, two-pass variance: stable when |mean| >> std
            d = values(block)
            d -= mean_s
            if self.per_feature:
                sq += np.einsum("i...,i...->...", d, d)
            else:
                d = d.reshape(-1)
                sq += d @ d
        self._mean_d = np.ldexp(mean_s, -k)
        std = np.ldexp(np.sqrt(sq / count), -k)
        self.mean_ = np.asarray(origin.value + self._mean_d, np.float64)
        with np.errstate(over="ignore"):
            self.var_ = np.asarray(std * std, np.float64)
        self.scale_ = np.where(std > self.eps, std, 1.0)
        self.feature_shape_ = x.shape[1:]
        self.n_samples_seen_ = n
        return self

    def transform(self, x) -> np.ndarray:
        """(x - mean) / std with the fitted statistics."""
        x = self._check_transform_input(x, "transform")
        scale = self.scale_ if self.with_std else np.ones_like(self.scale_)
        may_overflow = self._origin.halves is None

        def fn(block):
            if not self.with_mean:
                q = block.astype(np.float64)
                q /= scale
                return q
            return _ratio(lambda: self._origin.shift(block), self._mean_d, scale, scale * 0.5,
                          may_overflow)

        return self._map(x, fn)

    def inverse_transform(self, x) -> np.ndarray:
        """x * std + mean: back to the original units."""
        x = self._check_transform_input(x, "inverse_transform")
        scale = self.scale_ if self.with_std else np.ones_like(self.scale_)
        origin = self._origin.value
        may_overflow = self._origin.halves is None

        def fn(block):
            q = block.astype(np.float64)
            if not self.with_mean:
                q *= scale
                return q
            return origin + _affine_back(q, self._mean_d, scale, scale * 0.5, may_overflow)

        return self._map(x, fn)


# Inferring more classes than this from the labels is refused: one stray label (say 10**10)
# would otherwise ask for an array of num_classes floats per label. An explicit num_classes
# is the caller's statement that the size is intended.
MAX_INFERRED_CLASSES = 1 << 16


def one_hot(labels, num_classes: int | None = None, dtype=np.float32) -> np.ndarray:
    """Integer labels of any shape -> array of shape ``labels.shape + (num_classes,)``.

    Labels must be integers in [0, num_classes); num_classes defaults to max(labels) + 1,
    which must be at most ``MAX_INFERRED_CLASSES`` (65536; pass num_classes to go beyond).
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
        top = int(labels.max())
        if top >= MAX_INFERRED_CLASSES:
            raise InputError(
                f"one_hot: the largest label is {top}, so inferring num_classes would make "
                f"{top + 1} classes ({labels.size} x {top + 1} values); at most "
                f"{MAX_INFERRED_CLASSES} are inferred. Pass num_classes explicitly if that is "
                "intended, or map the labels to 0..K-1 first (np.unique(labels, "
                "return_inverse=True))"
            )
        num_classes = top + 1
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
    dt = np.dtype(dtype)
    try:
        out = np.zeros(labels.shape + (num_classes,), dtype=dt)
    except (MemoryError, ValueError) as exc:  # ValueError: "array is too big"
        nbytes = labels.size * num_classes * dt.itemsize
        raise InputError(
            f"one_hot: num_classes={num_classes} for {labels.size} labels needs "
            f"{nbytes / 2**30:.1f} GiB of {dt}, which cannot be allocated ({exc})"
        ) from exc
    np.put_along_axis(out, labels[..., None].astype(np.intp), 1, axis=-1)
    return out


def _check_seed(seed, what: str):
    """seed as np.random.default_rng takes it, refusing what it would fail on deep inside (or
    accept by accident, like True)."""
    if seed is None or isinstance(
        seed, (np.random.Generator, np.random.BitGenerator, np.random.SeedSequence)
    ):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise InputError(
            f"{what}: seed must be None, an int >= 0 or a np.random.Generator, got {seed!r}"
        )
    return int(seed)


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
    rng = np.random.default_rng(_check_seed(seed, "train_test_split"))
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
    seed = _check_seed(seed, "iterate_batches")
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
