"""NumbaOps (kernels/numba_cpu.py) against the reference `Ops` (kernels/reference.py).

Every override is compared with the reference on random inputs of random shapes (1, odd sizes,
non-contiguous and transposed views), in float32 and float64, through both the serial and the
parallel drivers (the parallel ones forced on with 3 uneven chunks, since test shapes are far
below the size where NumbaOps would pick them itself). Tolerances are stated below: they are
relative to the largest magnitude of the reference result (`scale`), since the only differences
are rounding (fastmath contraction/reassociation, libm vs NumPy's SIMD exp/tanh).
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

pytest.importorskip("numba", reason="the numba backend needs Numba (pip install numba)")
hypothesis = pytest.importorskip("hypothesis", reason="these tests draw shapes with hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from nnx.kernels import numba_cpu  # noqa: E402
from nnx.kernels.numba_cpu import NumbaOps  # noqa: E402
from nnx.kernels.reference import ACTIVATIONS, Ops  # noqa: E402

# -- tolerances: |numba - reference| <= ATOL * max(1, max|reference|) + RTOL * |reference| --
RTOL = {np.float32: 2e-5, np.float64: 1e-12}
ATOL = {np.float32: 2e-6, np.float64: 1e-13}
# The optimizers run several steps; float32 rounding differences (FMA) compound a little.
OPT_RTOL = {np.float32: 5e-5, np.float64: 1e-11}
OPT_ATOL = {np.float32: 5e-6, np.float64: 1e-12}

DTYPES = [np.float32, np.float64]
LAYOUTS = ["c", "strided", "transposed"]
SETTINGS = settings(max_examples=25, deadline=None)
dims = st.integers(1, 64)


class ChunkedNumbaOps(NumbaOps):
    """Always the parallel drivers, with 3 chunks (uneven splits, empty chunks on 1-2 rows)."""

    @staticmethod
    def _chunks(work: int) -> int:
        return 3


def make_ops(parallel: bool, dtype=np.float32, seed=0):
    cls = ChunkedNumbaOps if parallel else NumbaOps
    return cls(seed=seed, dtype=np.dtype(dtype).name), Ops(seed=seed, dtype=np.dtype(dtype).name)


def arr(rng, shape, dtype, layout="c", scale=1.0):
    """A random array of `shape` in the given memory layout (values identical across layouts)."""
    shape = tuple(shape)
    if layout == "c" or len(shape) == 0:
        a = rng.standard_normal(shape) * scale
        return a.astype(dtype)
    if layout == "strided":
        big = (rng.standard_normal(shape[:-1] + (2 * shape[-1],)) * scale).astype(dtype)
        out = big[..., ::2]
        assert out.shape == shape
        return out
    # transposed: a C array of the reversed shape, viewed transposed
    out = (rng.standard_normal(shape[::-1]) * scale).astype(dtype).T
    assert out.shape == shape
    return out


def assert_close(got, want, dtype, rtol=None, atol=None):
    dtype = np.dtype(dtype).type
    rtol = RTOL[dtype] if rtol is None else rtol[dtype]
    atol = ATOL[dtype] if atol is None else atol[dtype]
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * scale)


# ============================================================================================
# dense
# ============================================================================================
@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@SETTINGS
@given(
    n=dims,
    k=dims,
    m=dims,
    lead=st.sampled_from([(), (2,), (3, 1)]),
    layout=st.sampled_from(LAYOUTS),
    bias=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    need_dx=st.booleans(),
    into=st.booleans(),
)
def test_dense_forward_backward(
    parallel, dtype, activation, n, k, m, lead, layout, bias, seed, need_dx, into
):
    rng = np.random.default_rng(seed)
    ops, ref = make_ops(parallel, dtype)
    x = arr(rng, lead + (n, k), dtype, layout)
    W = arr(rng, (k, m), dtype, layout, scale=1 / np.sqrt(k))
    b = arr(rng, (m,), dtype) if bias else None

    y, saved = ops.dense_forward(x, W, b, activation)
    y_ref, saved_ref = ref.dense_forward(x, W, b, activation)
    assert_close(y, y_ref, dtype)
    if saved_ref is None:
        assert saved is None
    else:
        assert_close(saved, saved_ref, dtype)

    dy = arr(rng, y_ref.shape, dtype, "c")
    if into:  # the flat gradient buffer's views
        flat = np.full(k * m + m, np.nan, dtype)
        dW_out, db_out = flat[: k * m].reshape(k, m), flat[k * m :]
    else:
        dW_out = db_out = None
    dx, dW, db = ops.dense_backward(dy, x, W, saved, activation, need_dx, dW_out, db_out)
    dx_r, dW_r, db_r = ref.dense_backward(dy, x, W, saved_ref, activation, need_dx)
    assert_close(dW, dW_r, dtype)
    assert_close(db, db_r, dtype)
    if into:
        assert dW is dW_out and db is db_out
        assert np.shares_memory(dW, flat) and np.shares_memory(db, flat)
    if need_dx:
        assert_close(dx, dx_r, dtype)
    else:
        assert dx is None


def test_dense_forward_outputs_are_not_reused():
    """Layer k's output is layer k+1's input and is saved for backward: never overwritten."""
    ops = NumbaOps(seed=0)
    rng = np.random.default_rng(0)
    x = arr(rng, (8, 5), np.float32)
    W = arr(rng, (5, 6), np.float32)
    b = arr(rng, (6,), np.float32)
    y1, s1 = ops.dense_forward(x, W, b, "relu")
    keep = y1.copy()
    y2, s2 = ops.dense_forward(x * 2, W, b, "relu")
    np.testing.assert_array_equal(y1, keep)
    assert not np.shares_memory(y1, y2)


def test_dense_backward_scratch_is_not_returned():
    """dz is scratch reused across calls: nothing returned may alias it."""
    ops = NumbaOps(seed=0)
    rng = np.random.default_rng(1)
    x, W, b = arr(rng, (4, 3), np.float32), arr(rng, (3, 5), np.float32), None
    y, saved = ops.dense_forward(x, W, b, "tanh")
    dy = arr(rng, y.shape, np.float32)
    dx1, dW1, db1 = ops.dense_backward(dy, x, W, saved, "tanh")
    copies = [a.copy() for a in (dx1, dW1, db1)]
    ops.dense_backward(dy * 3, x, W, saved, "tanh")
    for a, c in zip((dx1, dW1, db1), copies, strict=True):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("activation", ["relu", "gelu", "identity"])
def test_dense_mixed_dtypes_fall_back(activation):
    rng = np.random.default_rng(2)
    ops, ref = make_ops(False)
    x = arr(rng, (5, 4), np.float32)
    W = arr(rng, (4, 3), np.float64)
    b = arr(rng, (3,), np.float32)
    y, s = ops.dense_forward(x, W, b, activation)
    y_r, s_r = ref.dense_forward(x, W, b, activation)
    assert_close(y, y_r, np.float64)


# ============================================================================================
# activations
# ============================================================================================
shapes = st.lists(dims, min_size=1, max_size=3).map(tuple)


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@SETTINGS
@given(shape=shapes, layout=st.sampled_from(LAYOUTS), seed=st.integers(0, 2**32 - 1))
def test_activations(parallel, dtype, activation, shape, layout, seed):
    rng = np.random.default_rng(seed)
    ops, ref = make_ops(parallel, dtype)
    x = arr(rng, shape, dtype, layout, scale=3.0)
    dy = arr(rng, shape, dtype, LAYOUTS[seed % 3])

    y, saved = ops.activation_forward(x, activation)
    y_r, saved_r = ref.activation_forward(x, activation)
    assert_close(y, y_r, dtype)
    if saved_r is not None:
        assert_close(saved, saved_r, dtype)
    assert_close(
        ops.activation_backward(dy, saved, activation),
        ref.activation_backward(dy, saved_r, activation),
        dtype,
    )
    if activation != "identity":  # the named methods themselves
        assert_close(getattr(ops, activation)(x), getattr(ref, activation)(x), dtype)
        assert_close(
            getattr(ops, "backprop_" + activation)(dy, saved_r),
            getattr(ref, "backprop_" + activation)(dy, saved_r),
            dtype,
        )


@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_extremes(dtype):
    """Saturated tails, zeros and signed zeros: no overflow, same values as the reference."""
    ops, ref = make_ops(False, dtype)
    x = np.array([-1e4, -100, -20, -1, -0.0, 0.0, 1e-30, 1, 20, 100, 1e4], dtype)
    with np.errstate(over="ignore"):
        for act in ("relu", "leaky_relu", "sigmoid", "tanh", "gelu", "softmax"):
            assert_close(getattr(ops, act)(x), getattr(ref, act)(x), dtype)


def test_nan_propagates_like_reference():
    ops, ref = make_ops(False)
    x = np.array([np.nan, 1.0, -1.0], np.float32)
    for act in ("relu", "leaky_relu", "tanh", "gelu"):
        np.testing.assert_array_equal(
            np.isnan(getattr(ops, act)(x)), np.isnan(getattr(ref, act)(x))
        )
    dy = np.array([np.nan, 1.0, np.nan, np.inf], np.float32)
    y = np.array([1.0, 0.0, 0.0, 0.0], np.float32)
    for act in ("relu", "leaky_relu", "sigmoid", "tanh"):
        got = getattr(ops, "backprop_" + act)(dy, y)
        with np.errstate(invalid="ignore"):  # inf * 0 in the reference
            want = getattr(ref, "backprop_" + act)(dy, y)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))


@pytest.mark.parametrize("dtype", DTYPES)
def test_transcendental_activations_run_in_numba(dtype, monkeypatch):
    """sigmoid / tanh / gelu (forward and backward) and softmax take the Numba kernels, not the
    reference (numba_math's float32 functions made them faster than NumPy: NUMPY_FASTER)."""
    ops, _ = make_ops(False, dtype)
    for name in ("sigmoid", "tanh", "gelu", "softmax", "backprop_gelu", "activation_forward"):
        monkeypatch.setattr(Ops, name, None)  # calling the reference would raise
    x = np.linspace(-6, 6, 37).astype(dtype)
    for act in ("sigmoid", "tanh", "gelu"):
        y, saved = ops.activation_forward(x, act)
        ops.activation_backward(np.ones_like(x), saved, act)
        getattr(ops, act)(x)
    ops.backprop_gelu(np.ones_like(x), x)
    ops.softmax(x.reshape(1, -1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ["sigmoid", "tanh", "gelu", "softmax"])
def test_activations_at_special_values_match_reference(dtype, act):
    """+-inf, NaN, +-dtype max, values beyond every exp's range: the same NaN positions and
    (to rounding) the same values as the reference, forward and backward; the serial and
    parallel drivers alike. Softmax rows: -inf entries, a NaN row, a 200-wide spread (exps
    below float32's normal range are 0 here, subnormal in the reference: within atol)."""
    big = np.finfo(dtype).max
    x = np.array(
        [-np.inf, -big, -1e30, -100, -88.5, -20.5, -1, -0.0, 0.0, 1e-30, 1, 20.5, 88.5, 100]
        + [1e30, big, np.inf, np.nan],
        dtype,
    )
    if act == "softmax":
        x = np.array(
            [[0.0, -np.inf, 1, 2], [np.nan, 0, 1, 2], [-100, 100, 0, -103], [-big, big, 0, 1]],
            dtype,
        )
    dy = np.linspace(-1, 1, x.size).reshape(x.shape).astype(dtype)
    for parallel in (False, True):
        ops, ref = make_ops(parallel, dtype)
        with np.errstate(all="ignore"):
            got, saved = ops.activation_forward(x, act)
            want, saved_r = ref.activation_forward(x, act)
            dgot = ops.activation_backward(dy, saved, act)
            dwant = ref.activation_backward(dy, saved_r, act)
        for g, w in ((got, want), (dgot, dwant)):
            np.testing.assert_array_equal(np.isnan(g), np.isnan(w))
            ok = ~np.isnan(w)
            np.testing.assert_allclose(g[ok], w[ok], rtol=RTOL[dtype], atol=1e-30)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_extreme_logits(dtype):
    """Logit spreads beyond exp's range (the small probabilities are 0 or subnormal) and
    huge logits: loss and gradient as the reference's, finite."""
    big = float(np.finfo(dtype).max) / 4
    logits = np.array([[0, -200, 200, 1], [1e30, -1e30, 0, 0], [big, -big, 0, 2]], dtype)
    ops, ref = make_ops(False, dtype)
    for labels in (np.array([0, 1, 2]), np.eye(4, dtype=dtype)[[3, 0, 1]]):
        loss, grad = ops.softmax_cross_entropy(logits, labels)
        loss_r, grad_r = ref.softmax_cross_entropy(logits, labels)
        assert np.isfinite(grad).all()
        np.testing.assert_allclose(loss, loss_r, rtol=RTOL[dtype])
        np.testing.assert_allclose(grad, grad_r, rtol=RTOL[dtype], atol=1e-30)


def test_softmax_other_axis_falls_back():
    rng = np.random.default_rng(3)
    ops, ref = make_ops(False)
    x = arr(rng, (4, 5), np.float32)
    assert_close(ops.softmax(x, axis=0), ref.softmax(x, axis=0), np.float32)
    dy = arr(rng, (4, 5), np.float32)
    y = ref.softmax(x, axis=0)
    assert_close(
        ops.backprop_softmax(dy, y, axis=0), ref.backprop_softmax(dy, y, axis=0), np.float32
    )


def test_integer_input_falls_back():
    ops, ref = make_ops(False)
    x = np.array([-2, 0, 3])
    np.testing.assert_array_equal(ops.relu(x), ref.relu(x))


# ============================================================================================
# softmax cross-entropy
# ============================================================================================
@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["int32", "int64", "uint8", "onehot", "prob"])
@SETTINGS
@given(n=dims, c=dims, layout=st.sampled_from(LAYOUTS), seed=st.integers(0, 2**32 - 1))
def test_softmax_cross_entropy(parallel, dtype, kind, n, c, layout, seed):
    rng = np.random.default_rng(seed)
    ops, ref = make_ops(parallel, dtype)
    logits = arr(rng, (n, c), dtype, layout, scale=4.0)
    idx = rng.integers(0, c, size=n)
    if kind in ("int32", "int64", "uint8"):
        labels = idx.astype(kind)
    elif kind == "onehot":
        labels = np.eye(c, dtype=dtype)[idx]
    else:
        p = rng.random((n, c)) + 1e-3
        labels = (p / p.sum(axis=1, keepdims=True)).astype(dtype)
    loss, grad = ops.softmax_cross_entropy(logits, labels)
    loss_r, grad_r = ref.softmax_cross_entropy(logits, labels)
    assert isinstance(loss, np.ndarray) and loss.ndim == 0 and loss.dtype == dtype
    assert_close(loss, np.asarray(loss_r, dtype), dtype)
    assert_close(grad, grad_r, dtype)


def test_softmax_cross_entropy_bad_labels_behave_like_reference():
    rng = np.random.default_rng(4)
    ops, ref = make_ops(False)
    logits = arr(rng, (3, 4), np.float32)
    neg = np.array([0, -1, 2])  # NumPy indexing wraps negatives; the reference does too
    assert_close(
        ops.softmax_cross_entropy(logits, neg)[1],
        ref.softmax_cross_entropy(logits, neg)[1],
        np.float32,
    )
    with pytest.raises(IndexError):
        ops.softmax_cross_entropy(logits, np.array([0, 4, 1]))


# ============================================================================================
# optimizers
# ============================================================================================
@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True)])
@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
@settings(max_examples=5, deadline=None)
@given(size=st.integers(1, 300), seed=st.integers(0, 2**32 - 1))
def test_sgd_steps(parallel, dtype, momentum, nesterov, weight_decay, size, seed):
    rng = np.random.default_rng(seed)
    ops, ref = make_ops(parallel, dtype)
    p = arr(rng, (size,), dtype)
    p_r = p.copy()
    vel = np.zeros(size, dtype) if momentum else None
    vel_r = np.zeros(size, dtype) if momentum else None
    for _ in range(5):
        g = arr(rng, (size,), dtype)
        ops.sgd_update(p, g, vel, 0.05, momentum, nesterov, weight_decay)
        ref.sgd_update(p_r, g, vel_r, 0.05, momentum, nesterov, weight_decay)
    assert_close(p, p_r, dtype, OPT_RTOL, OPT_ATOL)
    if momentum:
        assert_close(vel, vel_r, dtype, OPT_RTOL, OPT_ATOL)


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weight_decay,decoupled", [(0.0, False), (1e-2, False), (1e-2, True)])
@settings(max_examples=5, deadline=None)
@given(size=st.integers(1, 300), seed=st.integers(0, 2**32 - 1))
def test_adam_steps(parallel, dtype, weight_decay, decoupled, size, seed):
    rng = np.random.default_rng(seed)
    ops, ref = make_ops(parallel, dtype)
    p = arr(rng, (size,), dtype)
    m, v = np.zeros(size, dtype), np.zeros(size, dtype)
    p_r, m_r, v_r = p.copy(), m.copy(), v.copy()
    for step in range(1, 7):
        g = arr(rng, (size,), dtype)
        ops.adam_update(p, g, m, v, step, 1e-2, 0.9, 0.999, 1e-8, weight_decay, decoupled)
        ref.adam_update(p_r, g, m_r, v_r, step, 1e-2, 0.9, 0.999, 1e-8, weight_decay, decoupled)
    for got, want in ((p, p_r), (m, m_r), (v, v_r)):
        assert_close(got, want, dtype, OPT_RTOL, OPT_ATOL)


def test_optimizers_on_views_of_a_flat_buffer():
    """Non-contiguous or 2-D parameters fall back to the reference and still update in place."""
    rng = np.random.default_rng(5)
    ops, ref = make_ops(False)
    p = arr(rng, (6, 4), np.float32)
    g = arr(rng, (6, 4), np.float32)
    p_r = p.copy()
    m, v, m_r, v_r = (np.zeros((6, 4), np.float32) for _ in range(4))
    ops.adam_update(p[:, ::2], g[:, ::2], m[:, ::2], v[:, ::2], 1, 0.1, 0.9, 0.999, 1e-8)
    ref.adam_update(p_r[:, ::2], g[:, ::2], m_r[:, ::2], v_r[:, ::2], 1, 0.1, 0.9, 0.999, 1e-8)
    assert_close(p, p_r, np.float32)


# ============================================================================================
# dropout
# ============================================================================================
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5, 0.9])
def test_dropout_semantics(dtype, rate):
    ops = NumbaOps(seed=7, dtype=np.dtype(dtype).name)
    rng = np.random.default_rng(6)
    x = arr(rng, (400, 501), dtype) + 5  # never zero
    y, mask = ops.dropout_forward(x, rate)
    assert y.shape == x.shape and mask.shape == x.shape
    assert y.dtype == dtype and mask.dtype == dtype
    scale = dtype(1.0 / (1.0 - rate))
    assert set(np.unique(mask)) <= {dtype(0), scale}
    keep = mask != 0
    assert abs(keep.mean() - (1 - rate)) < 0.01
    np.testing.assert_array_equal(y[~keep], 0)
    np.testing.assert_array_equal(y[keep], x[keep] * scale)
    dy = arr(rng, x.shape, dtype)
    np.testing.assert_array_equal(ops.backprop_dropout(dy, mask), dy * mask)
    np.testing.assert_array_equal(ops.backprop_dropout(dy.T, mask.T), dy.T * mask.T)


@pytest.mark.parametrize("shape", [(1,), (7, 3), (300, 1000)])
def test_dropout_deterministic_per_seed_and_independent_of_threads(shape):
    x = np.ones(shape, np.float32)
    a = NumbaOps(seed=11)
    b = NumbaOps(seed=11)
    c = ChunkedNumbaOps(seed=11)
    d = NumbaOps(seed=12)
    masks = [o.dropout_forward(x, 0.3)[1] for o in (a, b, c, d)]
    np.testing.assert_array_equal(masks[0], masks[1])  # same seed, same call sequence
    np.testing.assert_array_equal(masks[0], masks[2])  # serial == 3 parallel chunks
    if x.size > 100:
        assert not np.array_equal(masks[0], masks[3])  # another seed, another mask
        again = a.dropout_forward(x, 0.3)[1]
        assert not np.array_equal(masks[0], again)  # the next call draws a fresh mask
    a.seed(11)
    np.testing.assert_array_equal(a.dropout_forward(x, 0.3)[1], masks[0])  # reseed repeats


def test_dropout_rate_one_behaves_like_reference():
    x = np.ones(4, np.float32)
    with pytest.raises(ZeroDivisionError):
        Ops(seed=0).dropout_forward(x, 1.0)
    with pytest.raises(ZeroDivisionError):
        NumbaOps(seed=0).dropout_forward(x, 1.0)


# ============================================================================================
# contract
# ============================================================================================
def _overridden_public_methods():
    names = []
    for name, member in inspect.getmembers(Ops):
        if name.startswith("_") or not callable(member):
            continue
        if name in NumbaOps.__dict__:
            names.append(name)
    return names


def test_overrides_exist():
    expected = {
        "dense_forward",
        "dense_backward",
        "activation_forward",
        "activation_backward",
        "relu",
        "backprop_relu",
        "leaky_relu",
        "backprop_leaky_relu",
        "sigmoid",
        "backprop_sigmoid",
        "tanh",
        "backprop_tanh",
        "gelu",
        "backprop_gelu",
        "softmax",
        "backprop_softmax",
        "softmax_cross_entropy",
        "sgd_update",
        "adam_update",
        "dropout_forward",
        "backprop_dropout",
    }
    assert expected <= set(_overridden_public_methods())


@pytest.mark.parametrize("name", _overridden_public_methods())
def test_signatures_equal_reference(name):
    assert inspect.signature(getattr(NumbaOps, name)) == inspect.signature(getattr(Ops, name))


def test_backend_name_and_registry():
    import nnx

    assert NumbaOps.name == "numba"
    ops = nnx.get_ops("numba", seed=0)
    assert isinstance(ops, NumbaOps)


def test_warmup_compiles_every_kernel_for_both_dtypes():
    times = NumbaOps(seed=0).warmup()
    assert times and all(isinstance(v, float) and v >= 0 for v in times.values())
    drivers = [n for n in dir(numba_cpu) if n.endswith(("_ser", "_par"))]
    assert len(drivers) >= 24
    for name in drivers:
        sigs = " ".join(str(s) for s in getattr(numba_cpu, name).signatures)
        assert "float32" in sigs and "float64" in sigs, name
    for dt in ("float32", "float64"):
        assert sum(k.endswith(f"[{dt}]") for k in times) >= len(drivers)
