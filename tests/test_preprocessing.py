"""nnx.preprocessing: scalers, one_hot, train_test_split, iterate_batches."""

from __future__ import annotations

import numpy as np
import pytest

from nnx.preprocessing import (
    MinMaxScaler,
    NotFittedError,
    StandardScaler,
    iterate_batches,
    one_hot,
    train_test_split,
)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# ---------------------------------------------------------------- MinMaxScaler


@pytest.mark.parametrize("feature_range", [(0, 1), (-1, 1), (2.5, 7)])
def test_minmax_range_and_inverse(rng, feature_range):
    x = rng.normal(3.0, 10.0, size=(200, 5)) * np.arange(1, 6)
    s = MinMaxScaler(feature_range)
    y = s.fit_transform(x)
    lo, hi = feature_range
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y.min(axis=0), lo, atol=1e-5)
    np.testing.assert_allclose(y.max(axis=0), hi, atol=1e-5)
    np.testing.assert_allclose(s.inverse_transform(y), x, rtol=1e-5, atol=1e-4)


def test_minmax_constant_feature_is_finite_and_invertible():
    x = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]])
    s = MinMaxScaler((-1, 1))
    y = s.fit_transform(x)
    assert np.isfinite(y).all()
    np.testing.assert_array_equal(y[:, 1], -1.0)  # constant -> low end of the range
    np.testing.assert_allclose(s.inverse_transform(y), x)


def test_minmax_fit_on_train_only(rng):
    train = rng.uniform(0, 10, size=(100, 3))
    test = rng.uniform(-5, 20, size=(50, 3))
    s = MinMaxScaler().fit(train)
    before = (s.data_min_.copy(), s.data_max_.copy())
    y = s.transform(test)
    # statistics unchanged by transform, and test values outside train's range not clipped
    np.testing.assert_array_equal(s.data_min_, before[0])
    np.testing.assert_array_equal(s.data_max_, before[1])
    assert y.min() < 0 and y.max() > 1
    np.testing.assert_allclose(y, (test - train.min(0)) / (train.max(0) - train.min(0)), rtol=1e-5)


def test_minmax_uint8_images_global_and_per_pixel():
    x = np.zeros((4, 28, 28), np.uint8)
    x[0, 0, 0] = 255
    x[1, 5, 5] = 128
    g = MinMaxScaler(per_feature=False).fit(x)
    y = g.transform(x)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert y[0, 0, 0] == 1.0 and y[1, 5, 5] == pytest.approx(128 / 255)
    # per-feature statistics have the sample shape; constant pixels stay finite (0)
    p = MinMaxScaler().fit(x)
    assert p.data_min_.shape == (28, 28)
    yp = p.transform(x)
    assert np.isfinite(yp).all() and yp[1, 5, 5] == 1.0 and yp[2, 3, 3] == 0.0
    # global scaler accepts any sample shape
    np.testing.assert_allclose(g.transform(np.full((2, 3), 51, np.uint8)), 0.2, rtol=1e-6)


def test_minmax_dtype_and_input_not_modified():
    x = np.array([[0.0], [2.0]])
    copy = x.copy()
    y = MinMaxScaler(dtype=np.float64).fit_transform(x)
    assert y.dtype == np.float64
    np.testing.assert_array_equal(x, copy)


def test_minmax_errors():
    with pytest.raises(ValueError, match="feature_range"):
        MinMaxScaler((1, 0))
    with pytest.raises(ValueError, match="feature_range"):
        MinMaxScaler((0, 0))
    with pytest.raises(ValueError, match="feature_range"):
        MinMaxScaler((0, 1, 2))
    s = MinMaxScaler()
    with pytest.raises(NotFittedError, match="fit"):
        s.transform(np.zeros((2, 3)))
    with pytest.raises(NotFittedError):
        s.inverse_transform(np.zeros((2, 3)))
    s.fit(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"expected samples of shape \(3,\).*got \(4,\)"):
        s.transform(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="NaN"):
        MinMaxScaler().fit(np.array([[np.nan]]))
    with pytest.raises(ValueError, match="at least 1 sample"):
        MinMaxScaler().fit(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="floating"):
        MinMaxScaler(dtype=np.int32)


# ---------------------------------------------------------------- StandardScaler


def test_standard_zero_mean_unit_std_and_inverse(rng):
    x = rng.normal([1.0, -50.0, 1e4], [0.1, 3.0, 200.0], size=(500, 3))
    s = StandardScaler()
    y = s.fit_transform(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.std(axis=0), 1.0, rtol=1e-4)
    np.testing.assert_allclose(s.mean_, x.mean(axis=0))
    np.testing.assert_allclose(s.var_, x.var(axis=0))
    np.testing.assert_allclose(s.inverse_transform(y), x, rtol=1e-5)


def test_standard_large_offset_is_stable():
    x = 1e8 + np.array([[0.0], [1.0], [2.0], [3.0]])
    s = StandardScaler(dtype=np.float64).fit(x)
    assert s.var_[0] == pytest.approx(1.25)
    np.testing.assert_allclose(s.transform(x)[:, 0], (np.arange(4) - 1.5) / np.sqrt(1.25))


def test_standard_constant_feature_and_flags():
    x = np.array([[1.0, 7.0], [3.0, 7.0]])
    y = StandardScaler().fit_transform(x)
    assert np.isfinite(y).all()
    np.testing.assert_array_equal(y[:, 1], 0.0)
    np.testing.assert_allclose(StandardScaler(with_mean=False).fit_transform(x)[:, 0], [1, 3])
    np.testing.assert_allclose(StandardScaler(with_std=False).fit_transform(x)[:, 0], [-1, 1])
    both_off = StandardScaler(with_mean=False, with_std=False).fit(x)
    np.testing.assert_allclose(both_off.transform(x), x)


def test_standard_fit_on_train_only_and_chunking(rng, monkeypatch):
    monkeypatch.setattr(StandardScaler, "_CHUNK", 7)  # exercise multi-chunk accumulation
    train = rng.integers(0, 256, size=(100, 4, 4), dtype=np.uint8)
    test = rng.integers(0, 256, size=(30, 4, 4), dtype=np.uint8)
    s = StandardScaler().fit(train)
    np.testing.assert_allclose(s.mean_, train.mean(axis=0))
    np.testing.assert_allclose(s.var_, train.var(axis=0))
    y = s.transform(test)
    expected = (test - train.mean(axis=0)) / train.std(axis=0)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    g = StandardScaler(per_feature=False).fit(train)
    assert g.mean_.shape == () and g.mean_ == pytest.approx(train.mean())
    assert np.sqrt(g.var_) == pytest.approx(train.std())


def test_standard_errors():
    with pytest.raises(NotFittedError):
        StandardScaler().transform(np.zeros((2, 2)))
    s = StandardScaler().fit(np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"\(2,\).*\(3,\)"):
        s.transform(np.ones((3, 3)))
    with pytest.raises(ValueError, match="eps"):
        StandardScaler(eps=-1)
    with pytest.raises(ValueError, match="numeric"):
        StandardScaler().fit(np.array([["a"], ["b"]]))


# ---------------------------------------------------------------- one_hot


def test_one_hot_basic_and_shapes():
    y = one_hot([0, 2, 1, 2])
    assert y.dtype == np.float32 and y.shape == (4, 3)
    np.testing.assert_array_equal(y.argmax(axis=1), [0, 2, 1, 2])
    np.testing.assert_array_equal(y.sum(axis=1), 1)
    y5 = one_hot(np.array([1, 0], np.uint8), num_classes=5, dtype=np.float64)
    assert y5.shape == (2, 5) and y5.dtype == np.float64
    assert one_hot(np.array([[1, 0], [0, 1]]), 2).shape == (2, 2, 2)
    assert one_hot(np.array([], np.int64), 4).shape == (0, 4)


def test_one_hot_errors():
    with pytest.raises(ValueError, match="label 10 out of range for num_classes=10"):
        one_hot([0, 10, 3], num_classes=10)
    with pytest.raises(ValueError, match="negative label -1"):
        one_hot([0, -1])
    with pytest.raises(ValueError, match="integer dtype"):
        one_hot(np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="num_classes"):
        one_hot([0], num_classes=0)
    with pytest.raises(ValueError, match="num_classes"):
        one_hot(np.array([], np.int64))


# ---------------------------------------------------------------- train_test_split


def test_split_sizes_order_and_alignment():
    x = np.arange(100).reshape(50, 2)
    y = np.arange(50)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, seed=1)
    assert len(x_tr) == len(y_tr) == 40 and len(x_te) == len(y_te) == 10
    np.testing.assert_array_equal(x_tr[:, 0] // 2, y_tr)  # rows stay aligned
    np.testing.assert_array_equal(x_te[:, 0] // 2, y_te)
    assert sorted(np.concatenate([y_tr, y_te]).tolist()) == list(range(50))
    a_tr, a_te = train_test_split(y, test_size=7, seed=1)
    assert len(a_te) == 7 and len(a_tr) == 43
    assert len(train_test_split(y, test_size=0.33)[1]) == 17  # ceil, as in scikit-learn


def test_split_determinism_and_no_shuffle():
    y = np.arange(30)
    a = train_test_split(y, seed=3)
    b = train_test_split(y, seed=3)
    c = train_test_split(y, seed=4)
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    tr, te = train_test_split(y, shuffle=False, test_size=0.1)
    np.testing.assert_array_equal(tr, np.arange(27))
    np.testing.assert_array_equal(te, [27, 28, 29])


def test_split_stratify_keeps_proportions():
    y = np.repeat([0, 1, 2], [600, 300, 100])
    x = np.arange(1000)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, stratify=y, seed=0)
    assert len(y_te) == 250
    assert np.bincount(y_te).tolist() == [150, 75, 25]
    assert np.bincount(y_tr).tolist() == [450, 225, 75]
    np.testing.assert_array_equal(y[x_te], y_te)
    assert len(set(x_tr) | set(x_te)) == 1000
    # uneven: allocation by largest remainder still gives exactly the requested size
    y2 = np.repeat([0, 1, 2], [5, 5, 3])
    _, te = train_test_split(y2, test_size=4, stratify=y2, seed=0)
    assert len(te) == 4 and np.bincount(te, minlength=3).max() <= 2
    again = train_test_split(x, y, test_size=0.25, stratify=y, seed=0)
    np.testing.assert_array_equal(again[1], x_te)


def test_split_errors():
    with pytest.raises(ValueError, match=r"same length.*\[3, 4\]"):
        train_test_split(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="test_size"):
        train_test_split(np.zeros(10), test_size=1.5)
    with pytest.raises(ValueError, match="test_size"):
        train_test_split(np.zeros(10), test_size=10)
    with pytest.raises(ValueError, match="shuffle"):
        train_test_split(np.zeros(10), stratify=np.zeros(10), shuffle=False)
    with pytest.raises(ValueError, match="stratify"):
        train_test_split(np.zeros(10), stratify=np.zeros(9))
    with pytest.raises(ValueError, match="at least one array"):
        train_test_split()


# ---------------------------------------------------------------- iterate_batches


def test_batches_cover_all_once_in_order():
    x = np.arange(10)
    y = np.arange(10) * 10
    batches = list(iterate_batches(x, y, batch_size=4))
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    assert all(isinstance(b, tuple) and len(b) == 2 for b in batches)
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x)
    for bx, by in batches:
        np.testing.assert_array_equal(by, bx * 10)
    single = list(iterate_batches(x, batch_size=10))
    assert len(single) == 1 and isinstance(single[0], tuple)


def test_batches_drop_last():
    x = np.arange(10)
    assert [len(b) for (b,) in iterate_batches(x, batch_size=4, drop_last=True)] == [4, 4]
    assert list(iterate_batches(x, batch_size=20, drop_last=True)) == []
    assert [len(b) for (b,) in iterate_batches(x, batch_size=5, drop_last=True)] == [5, 5]


def test_batches_shuffle_deterministic_and_complete():
    x = np.arange(23)
    y = -np.arange(23)
    run = [b for b in iterate_batches(x, y, batch_size=5, shuffle=True, seed=7)]
    again = [b for b in iterate_batches(x, y, batch_size=5, shuffle=True, seed=7)]
    other = [b for b in iterate_batches(x, y, batch_size=5, shuffle=True, seed=8)]
    seen = np.concatenate([b[0] for b in run])
    assert sorted(seen.tolist()) == list(range(23))
    assert not np.array_equal(seen, x)
    for (a0, a1), (b0, _) in zip(run, again, strict=True):
        np.testing.assert_array_equal(a0, b0)
        np.testing.assert_array_equal(a1, -a0)
    assert not np.array_equal(seen, np.concatenate([b[0] for b in other]))


def test_batches_validate_at_call_time():
    with pytest.raises(ValueError, match="batch_size"):
        iterate_batches(np.zeros(4), batch_size=0)  # no next() needed
    with pytest.raises(ValueError, match="batch_size"):
        iterate_batches(np.zeros(4), batch_size=2.5)
    with pytest.raises(ValueError, match=r"same length.*\[4, 5\]"):
        iterate_batches(np.zeros(4), np.zeros(5), batch_size=2)


# ---------------------------------------------------------------- hostile values (issue 14)


@pytest.mark.parametrize("big", [1e308, np.finfo(np.float64).max])
def test_minmax_extreme_floats_do_not_overflow(big):
    """max - min overflowed to inf: every value mapped to 0."""
    x = np.array([[-big, 0.0], [big, 1.0], [0.0, 0.5]])
    s = MinMaxScaler(dtype=np.float64)
    y = s.fit_transform(x)
    np.testing.assert_allclose(y, [[0.0, 0.0], [1.0, 1.0], [0.5, 0.5]])
    np.testing.assert_allclose(s.inverse_transform(y), x)
    y2 = MinMaxScaler((-1, 1)).fit_transform(x[:, :1])
    assert y2.dtype == np.float32
    np.testing.assert_array_equal(y2[:, 0], [-1.0, 1.0, 0.0])
    # a value beyond the fit range on the far side still comes out right (no overflow in x-min)
    np.testing.assert_allclose(MinMaxScaler(dtype=np.float64).fit([[0.0], [1e308]]).transform(
        [[-1e308]]), [[-1.0]])


def test_minmax_int64_values_float64_cannot_tell_apart():
    """2**62 and 2**62 + 1 are the same float64: converting before differencing gave [0, 0]."""
    x = np.array([[2**62], [2**62 + 1]], dtype=np.int64)
    s = MinMaxScaler()
    np.testing.assert_array_equal(s.fit_transform(x)[:, 0], [0.0, 1.0])
    assert s.data_range_[0] == 1.0
    np.testing.assert_array_equal(s.transform(np.array([[2**62 + 3]]))[:, 0], [3.0])
    info = np.iinfo(np.int64)
    full = np.array([[info.min], [0], [info.max]], dtype=np.int64)
    np.testing.assert_allclose(MinMaxScaler(dtype=np.float64).fit_transform(full)[:, 0],
                               [0.0, 0.5, 1.0])
    u = np.array([[2**64 - 2], [2**64 - 1]], dtype=np.uint64)
    np.testing.assert_array_equal(MinMaxScaler().fit_transform(u)[:, 0], [0.0, 1.0])
    # transform data of another integer type than fit, below the fit minimum
    np.testing.assert_array_equal(
        MinMaxScaler().fit(np.array([[10], [20]], np.uint64)).transform(np.array([[0]], np.int8)),
        [[-1.0]],
    )


@pytest.mark.parametrize("big", [1e200, 1e308])
def test_standard_extreme_floats_do_not_overflow(big):
    """(x - mean)**2 overflowed to inf: std inf, every value mapped to +-0."""
    x = np.array([[-big], [big]])
    s = StandardScaler(dtype=np.float64)
    y = s.fit_transform(x)
    np.testing.assert_allclose(y[:, 0], [-1.0, 1.0])
    assert s.mean_[0] == 0.0 and s.scale_[0] == pytest.approx(big)
    np.testing.assert_allclose(s.inverse_transform(y), x)
    three = np.array([[-big], [big], [big]])
    z = three[:, 0] / big  # the same data in units of `big`: numpy's answer without overflow
    expected = (z - z.mean()) / z.std()
    np.testing.assert_allclose(StandardScaler().fit_transform(three)[:, 0], expected, rtol=1e-6)


def test_standard_int64_values_float64_cannot_tell_apart():
    x = np.array([[2**62], [2**62 + 1]], dtype=np.int64)
    s = StandardScaler()
    np.testing.assert_array_equal(s.fit_transform(x)[:, 0], [-1.0, 1.0])
    assert s.var_[0] == 0.25


def test_one_hot_huge_inferred_class_count_is_refused():
    """one_hot([10**10]) tried to allocate 37 GiB."""
    with pytest.raises(ValueError, match=r"largest label is 10000000000.*num_classes"):
        one_hot([10**10])
    with pytest.raises(ValueError, match="num_classes"):
        one_hot(np.array([3, 70000]))
    # explicit num_classes: the caller's decision, within memory
    assert one_hot([70000], num_classes=70001).shape == (1, 70001)
    # explicit and impossible: our error with the size, not numpy's MemoryError
    with pytest.raises(ValueError, match=r"num_classes=1000000000000.*GiB"):
        one_hot([1], num_classes=10**12)


@pytest.mark.parametrize("seed", ["abc", -1, True, 2.5, [1, "a"]])
def test_split_and_batches_refuse_bad_seeds(seed):
    """seed='abc' failed with a TypeError from deep inside numpy."""
    with pytest.raises(ValueError, match=r"train_test_split: seed must be None, an int >= 0"):
        train_test_split(np.arange(10), seed=seed)
    with pytest.raises(ValueError, match=r"iterate_batches: seed must be"):
        iterate_batches(np.arange(10), batch_size=2, shuffle=True, seed=seed)


def test_split_accepts_generators_and_numpy_ints():
    a = train_test_split(np.arange(10), seed=np.random.default_rng(5))
    b = train_test_split(np.arange(10), seed=np.int64(5))
    c = train_test_split(np.arange(10), seed=5)
    assert len(a[1]) == 2
    np.testing.assert_array_equal(b[1], c[1])
