"""Tests of the CuPy backend beyond the kernel-vs-reference sweeps of test_cupy_backend.py:
dropout, half-precision rounding, loss scaling, a tiny MLP end to end, conversions and
datasets, options, out-of-memory errors, and the real-GPU-only checks (host syncs under
capture, TF32, memory info). Each "gpu"/"emu" test runs on a real GPU and on the strict CPU
emulation (tests/fake_cupy.py)."""

from __future__ import annotations

import cuda_helpers
import numpy
import pytest
from cuda_helpers import H, close, rounded, setup_mode
from nnx.kernels import cupy_gpu
from nnx.kernels.cupy_gpu import CupyOps, DeviceOutOfMemoryError
from nnx.kernels.reference import Ops

from nnx import compat

# the shared fixtures (tests/cuda_helpers.py)
emu_cupy = cuda_helpers.emu_cupy
make_ops = cuda_helpers.make_ops

MODES = ["float32", "float64", "fp16", "bf16"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("rate", [0.0, 0.3, 0.75])
def test_dropout_rate_and_mask_semantics(make_ops, mode, rate):
    ops, _ref, dt, _tol = setup_mode(make_ops, mode, seed=123)
    act_dt = numpy.float16 if mode == "fp16" else dt
    n = 200_000
    x = ops.asarray(numpy.ones((n // 100, 100), act_dt), dtype=act_dt)
    y, mask = ops.dropout_forward(x, rate)
    yh, mh = H(ops, y), H(ops, mask)
    assert y.dtype == act_dt and mask.dtype == act_dt
    keep = numpy.asarray(numpy.dtype(act_dt).type(1.0 / (1.0 - rate)), numpy.float64)
    if mode == "bf16":
        keep = rounded(numpy.float32(1.0 / (1.0 - rate)), "bf16").astype(numpy.float64)
    assert set(numpy.unique(mh.astype(numpy.float64))) <= {0.0, float(keep)}
    dropped = float((mh == 0).mean())
    assert abs(dropped - rate) < 0.01, dropped  # ~7 sigma at n=2e5
    numpy.testing.assert_array_equal(yh, mh)  # x == 1
    dx = ops.backprop_dropout(y, mask)
    numpy.testing.assert_allclose(
        H(ops, dx).astype(numpy.float64), mh.astype(numpy.float64) ** 2, rtol=1e-2
    )
    # different draws each call, same draws after reseeding
    _, mask2 = ops.dropout_forward(x, 0.5)
    ops.seed(123)
    _, mask3 = ops.dropout_forward(x, rate)
    if rate:
        assert not numpy.array_equal(H(ops, mask2), mh)
    numpy.testing.assert_array_equal(H(ops, mask3), mh)


def test_half_conversion_rounding_matches_numpy(make_ops):
    """z (0 in fp16) + bias (arbitrary float32) is rounded to fp16 by the epilogue: compare
    with NumPy's float32 -> float16 rounding on ties, subnormals, overflow and specials."""
    ops = make_ops(seed=0, precision="fp16", loss_scale=None)
    specials = numpy.array(
        [0.0, -0.0, 1.0, 65504.0, 65519.99, 65520.0, 1e6, -1e6, numpy.inf, -numpy.inf,
         5.960464477539063e-08, 2.9802322387695312e-08, 2.98023259e-08, 8.940696716308594e-08,
         6.097555160522461e-05, 6.103515625e-05, 1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11,
         1.0 + 2.0**-11 + 2.0**-20, 3.14159265, -2.71828, 1e-7, 1e-5],
        numpy.float32,
    )
    rnd = numpy.random.default_rng(0).standard_normal(4000).astype(numpy.float32)
    bias = numpy.concatenate([specials, rnd * numpy.float32(1e-4), rnd * 1000])
    bias = bias.astype(numpy.float32)
    x = ops.asarray(numpy.zeros((1, 1), numpy.float16), dtype=numpy.float16)
    W = ops.asarray(numpy.zeros((1, bias.size), numpy.float32))
    with numpy.errstate(over="ignore"):
        want = (numpy.float32(0.0) + bias).astype(numpy.float16)  # 0 + -0 = +0
    y, _ = ops.dense_forward(x, W, ops.asarray(bias), "identity")
    got = H(ops, y)[0]
    numpy.testing.assert_array_equal(got.view(numpy.uint16), want.view(numpy.uint16))


def test_bf16_rounding_matches_round_to_nearest_even(make_ops):
    ops = make_ops(seed=0, precision="bf16")
    vals = numpy.array(
        [1.0, 1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, 1.0 + 2.0**-8 + 2.0**-20, -3.3, 3.3e38,
         3.4e38, 1e-40, numpy.inf, -numpy.inf, 0.0],
        numpy.float32,
    )
    got = H(ops, ops._round_bf16(ops.asarray(vals)))
    with numpy.errstate(over="ignore"):
        numpy.testing.assert_array_equal(got, rounded(vals, "bf16"))
    nan = ops.asarray(numpy.array([numpy.nan], numpy.float32))
    assert numpy.isnan(H(ops, ops._round_bf16(nan))).all()


def test_loss_scaling_skips_nonfinite_steps_and_adjusts_the_scale(make_ops):
    ops = make_ops(seed=0, precision="fp16", init_scale=1024.0, growth_interval=2)
    assert ops.amp_state()["scale"] == 1024.0
    p0 = numpy.linspace(-1, 1, 1025).astype(numpy.float32)
    P, V = ops.asarray(p0), ops.asarray(numpy.zeros_like(p0))
    M = ops.asarray(numpy.zeros_like(p0))
    # 1. an overflowed gradient: nothing changes, the scale halves
    g = numpy.ones_like(p0) * 1024
    g[500] = numpy.inf
    ops.adam_update(P, ops.asarray(g), M, V, 1, 0.1, 0.9, 0.999, 1e-8)
    st = ops.amp_state()
    assert st["found_inf"] and st["skipped_steps"] == 1 and st["scale"] == 512.0
    numpy.testing.assert_array_equal(H(ops, P), p0)
    numpy.testing.assert_array_equal(H(ops, M), 0)
    g[500] = numpy.nan
    ops.sgd_update(P, ops.asarray(g), V, 0.1, momentum=0.9)
    assert ops.amp_state()["scale"] == 256.0
    numpy.testing.assert_array_equal(H(ops, P), p0)
    # 2. finite (scaled) gradients: unscaled updates, then the scale doubles after 2 good steps
    ref = Ops()
    p, v = p0.copy(), numpy.zeros_like(p0)
    for _ in range(2):
        scale = ops.amp_state()["scale"]
        gs = numpy.linspace(0, 1, p0.size).astype(numpy.float32)
        ops.sgd_update(P, ops.asarray(gs * numpy.float32(scale)), V, 0.1, momentum=0.9)
        ref.sgd_update(p, gs, v, 0.1, momentum=0.9)
    st = ops.amp_state()
    assert not st["found_inf"] and st["scale"] == 512.0 and st["good_steps"] == 0
    close(H(ops, P), p, 1e-6)


def test_loss_kernels_scale_the_gradient(make_ops):
    ops = make_ops(seed=0, precision="fp16", init_scale=256.0)
    logits = numpy.random.default_rng(0).standard_normal((4, 5)).astype(numpy.float16)
    labels = numpy.array([0, 1, 2, 3], numpy.int32)
    d_logits = ops.asarray(logits, dtype=numpy.float16)
    loss, g = ops.softmax_cross_entropy(d_logits, ops.asarray(labels))
    loss_ref, g_ref = Ops().softmax_cross_entropy(logits.astype(numpy.float32), labels)
    close(ops.to_float(loss), float(loss_ref), 2e-2)  # the loss itself is not scaled
    close(H(ops, g) / 256.0, g_ref, 2e-2)
    _, gm = ops.mse(ops.asarray(logits, dtype=numpy.float16), ops.asarray(numpy.zeros((4, 5))))
    _, gm_ref = Ops().mse(logits.astype(numpy.float32), numpy.zeros((4, 5), numpy.float32))
    close(H(ops, gm) / 256.0, gm_ref, 2e-2)
    gg = ops.asarray(numpy.zeros(3, numpy.float32))
    ops.add_l1_l2_grad(gg, ops.asarray(numpy.array([1.0, -2.0, 0.0], numpy.float32)), 0.5, 0.25)
    close(H(ops, gg), numpy.array([1.0, -1.5, 0.0]) * 256.0, 1e-6)


@pytest.mark.parametrize("mode", ["float32", "fp16", "bf16"])
def test_tiny_mlp_trains(make_ops, mode):
    """A two-layer MLP on separable data: the loss must fall (end to end through the ops)."""
    ops = make_ops(seed=0, precision=None if mode == "float32" else mode)
    rng = numpy.random.default_rng(0)
    X = rng.standard_normal((64, 10)).astype(numpy.float32)
    yl = (X[:, 0] + X[:, 1] > 0).astype(numpy.int64)
    sizes = [(10, 16), (16,), (16, 2), (2,)]
    flat = ops.asarray(numpy.concatenate([
        (rng.standard_normal(s) * (0.3 if len(s) == 2 else 0.0)).ravel() for s in sizes
    ]).astype(numpy.float32))
    grads = ops.zeros(flat.size)
    m, v = ops.zeros(flat.size), ops.zeros(flat.size)
    views, gviews, off = [], [], 0
    for s in sizes:
        k = int(numpy.prod(s))
        views.append(flat[off: off + k].reshape(s))
        gviews.append(grads[off: off + k].reshape(s))
        off += k
    W1, b1, W2, b2 = views
    gW1, gb1, gW2, gb2 = gviews
    Xd, yd = ops.asarray(X), ops.asarray(yl)
    losses = []
    for step in range(1, 61):
        h, s1 = ops.dense_forward(Xd, W1, b1, "relu")
        out, _ = ops.dense_forward(h, W2, b2, "identity")
        loss, dout = ops.softmax_cross_entropy(out, yd)
        dh, _, _ = ops.dense_backward(dout, h, W2, None, "identity", True, gW2, gb2)
        ops.dense_backward(dh, Xd, W1, s1, "relu", False, gW1, gb1)
        ops.adam_update(flat, grads, m, v, step, 0.05, 0.9, 0.999, 1e-7)
        losses.append(ops.to_float(loss))
    assert numpy.isfinite(losses).all()
    assert losses[-1] < 0.5 * losses[0], losses[::10]


def test_conversions_round_trip(make_ops):
    ops = make_ops(seed=0)
    a = numpy.arange(12, dtype=numpy.float64).reshape(3, 4)
    d = ops.asarray(a)
    assert isinstance(d, ops.xp.ndarray) and d.dtype == numpy.float32
    back = ops.to_host(d)
    assert type(back) is numpy.ndarray
    numpy.testing.assert_array_equal(back, a)
    labels = ops.asarray(numpy.array([1, 2, 3], numpy.int64))
    assert labels.dtype == numpy.int64
    assert ops.asarray([[1.5, 2.5]]).dtype == numpy.float32
    assert ops.asarray(d) is d or ops.to_host(ops.asarray(d)).tolist() == a.tolist()
    assert ops.asarray(a, dtype="float64").dtype == numpy.float64
    with pytest.raises(TypeError, match=r"numpy\.ndarray.*cupy\.ndarray"):
        ops.asarray(object())
    with pytest.raises(TypeError, match="cupy.ndarray"):
        ops.asarray({"a": 1})
    assert ops.to_float(ops.asarray(numpy.float32(2.5))) == 2.5
    p = H(ops, ops.permutation(10))
    assert sorted(p.tolist()) == list(range(10))


def test_device_dataset_and_take_batch(make_ops):
    ops = make_ops(seed=0)
    X = numpy.arange(40, dtype=numpy.float64).reshape(10, 4)
    y = numpy.arange(10, dtype=numpy.int64)
    Xd, yd = ops.device_dataset(X), ops.device_dataset(y)
    assert isinstance(Xd, ops.xp.ndarray) and Xd.dtype == numpy.float32
    assert isinstance(yd, ops.xp.ndarray) and yd.dtype == numpy.int64
    idx = numpy.array([7, 2, 5])
    xb, yb = ops.take_batch(Xd, idx), ops.take_batch(yd, idx)
    assert isinstance(xb, ops.xp.ndarray)
    numpy.testing.assert_array_equal(H(ops, xb), X[idx])
    numpy.testing.assert_array_equal(H(ops, yb), y[idx])
    # a host-resident dataset (too big to move) still yields device batches
    numpy.testing.assert_array_equal(H(ops, ops.take_batch(X, idx)), X[idx])
    assert ops.device_dataset(Xd) is Xd


def test_device_option(make_ops):
    ops = make_ops(seed=0, device=0)
    assert ops.device == 0
    assert "device=0" in repr(ops)
    count = int(ops.xp.cuda.runtime.getDeviceCount())
    with pytest.raises(ValueError, match="does not exist"):
        make_ops(device=count)
    with pytest.raises(TypeError):
        make_ops(device=1.5)
    assert make_ops(device="cuda:0").device == 0
    if count >= 2 and ops.xp is compat.cupy:
        ops1 = make_ops(seed=0, device=1)
        a = ops1.asarray(numpy.ones(3))
        assert a.device.id == 1
        y, _ = ops1.dense_forward(a.reshape(1, 3), ops1.asarray(numpy.ones((3, 2))), None, "relu")
        assert y.device.id == 1
        moved = ops.asarray(a)  # device 1 -> device 0: copied
        assert moved.device.id == 0
        numpy.testing.assert_array_equal(ops.to_host(moved), numpy.ones(3))


def test_options_are_validated(make_ops):
    with pytest.raises(ValueError, match="precision"):
        make_ops(precision="fp8")
    with pytest.raises(ValueError, match="float32"):
        make_ops(dtype="float64", precision="fp16")
    with pytest.raises(ValueError, match="loss_scale"):
        make_ops(loss_scale="dynamic")
    ops = make_ops(precision="bf16")
    assert ops.amp_state()["scale"] == 1.0 and not ops.amp_state()["dynamic"]
    assert make_ops(precision="fp16", loss_scale=128.0).amp_state()["scale"] == 128.0


def test_out_of_memory_is_translated(make_ops):
    ops = make_ops(seed=0)
    oom = ops.xp.cuda.memory.OutOfMemoryError
    with pytest.raises(DeviceOutOfMemoryError, match=r"4,096 bytes.*smaller batch") as info:
        with ops.oom_guard():
            raise oom(4096, 0)
    assert isinstance(info.value, MemoryError) and info.value.requested_bytes == 4096
    if ops.xp is compat.cupy:  # a real failed allocation (32 TiB)
        with pytest.raises(DeviceOutOfMemoryError, match="smaller batch"):
            ops.zeros((2**43,))


def test_warmup_compiles_every_kernel(make_ops):
    ops = make_ops(seed=0)
    times = cupy_gpu.warmup(ops)
    assert set(times) == set(cupy_gpu.kernel_names())
    assert all(t >= 0 for t in times.values())


# =============================================================================================
# 2c. real-GPU only
# =============================================================================================

gpu_only = pytest.mark.skipif(not compat.has_cupy_gpu(), reason="no CUDA GPU")


@pytest.mark.gpu
@gpu_only
@pytest.mark.parametrize("with_gemm", [False, True])
@pytest.mark.parametrize("precision", [None, "fp16", "bf16"])
def test_hot_paths_never_sync_with_the_host(precision, with_gemm):
    """CUDA stream capture fails on any host synchronization (D2H copy, stream or device sync),
    so capturing a whole train step proves the hot kernels never sync. with_gemm=False leaves
    cuBLAS out, so a cuBLAS limitation under capture cannot hide a sync in our kernels."""
    ops = CupyOps(seed=0, precision=precision)
    rng = numpy.random.default_rng(0)
    x = ops.asarray(rng.standard_normal((64, 32)))
    flat = ops.asarray(rng.standard_normal(32 * 10 + 10) * 0.1)
    grads, m, v = ops.zeros(flat.size), ops.zeros(flat.size), ops.zeros(flat.size)
    W, b = flat[:320].reshape(32, 10), flat[320:]
    gW, gb = grads[:320].reshape(32, 10), grads[320:]
    labels = ops.asarray(rng.integers(0, 10, 64))

    z = ops.asarray(rng.standard_normal((64, 10)))

    def step():
        if with_gemm:
            h, saved = ops.dense_forward(x, W, b, "gelu")
        else:
            h, saved = ops.activation_forward(z, "gelu")
        h, mask = ops.dropout_forward(h, 0.1)
        loss, d = ops.softmax_cross_entropy(h, labels)
        d = ops.backprop_dropout(d, mask)
        if with_gemm:
            ops.dense_backward(d, x, W, saved, "gelu", True, gW, gb)
        else:
            gW[...] = ops.activation_backward(d, saved, "gelu").sum()
        ops.adam_update(flat, grads, m, v, 1, 1e-3, 0.9, 0.999, 1e-8, 0.01, True)
        ops.sgd_update(flat, grads, v, 0.0)
        return loss

    graph = cupy_gpu.capture_graph(step, ops=ops, warmup_runs=1)
    loss = graph.replay(synchronize=True)
    assert numpy.isfinite(ops.to_float(loss))


@pytest.mark.gpu
@gpu_only
def test_tf32_option_changes_only_its_own_gemms():
    cp = compat.cupy
    if int(cp.cuda.Device().compute_capability) < 80:
        with pytest.warns(UserWarning, match="TF32"):
            assert CupyOps(tf32=True).tf32 is False
        return
    from cupy._core import _routines_linalg as rl

    before = rl.get_compute_type(numpy.float32)
    ops = CupyOps(seed=0, tf32=True)
    rng = numpy.random.default_rng(0)
    x, W = rng.standard_normal((256, 512)), rng.standard_normal((512, 256))
    y, _ = ops.dense_forward(ops.asarray(x), ops.asarray(W), None, "identity")
    ref = x @ W
    err = numpy.abs(ops.to_host(y) - ref).max() / numpy.abs(ref).max()
    assert err < 1e-2
    assert rl.get_compute_type(numpy.float32) == before


@pytest.mark.gpu
@gpu_only
def test_memory_info_and_devices():
    from nnx.backends import cupy as backend

    info = backend.memory_info()
    assert info["available"] and info["total_bytes"] > 0 and info["name"]
    assert info["pool_used_bytes"] <= info["pool_total_bytes"]
    devs = backend.devices()
    assert len(devs) == compat.cuda_device_count() and devs[0]["id"] == 0


@pytest.mark.gpu
@gpu_only
def test_capture_graph_replays_an_update_experimental():
    ops = CupyOps(seed=0)
    p = ops.asarray(numpy.zeros(1000))
    g = ops.asarray(numpy.ones(1000))
    vel = ops.zeros(1000)

    def step():
        ops.sgd_update(p, g, vel, 0.5)
        return p

    # the warm-up run executes (p = -0.5); the captured run is only recorded
    graph = cupy_gpu.capture_graph(step, ops=ops, warmup_runs=1)
    graph.replay(synchronize=True)
    graph.replay(synchronize=True)
    numpy.testing.assert_allclose(ops.to_host(p), -1.5)
