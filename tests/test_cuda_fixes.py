"""Regression tests of the CUDA review's findings that the strict CPU emulation can see (and on a
GPU where one is lent): the fake's CuPy strictness itself, GELU's backward at huge inputs, the
`cols` argument without bias, fp16 weight gradients without an fp16 temporary, `tf32=False`
over CUPY_TF32=1, one index upload per epoch, the fused bias gradient, one cast of W per layer
per step, and fit / train_step / evaluate / predict with device x and y."""

from __future__ import annotations

import cuda_helpers
import numpy
import pytest
from cuda_helpers import H, close
from fake_cuda_runtime import STATE, reset_log
from nnx.kernels.reference import Ops

import nnx

emu_cupy = cuda_helpers.emu_cupy
make_ops = cuda_helpers.make_ops


@pytest.fixture
def emu_ops(emu_cupy):
    return cuda_helpers.emu_ops_class(emu_cupy)


def test_the_fake_is_as_strict_as_cupy(emu_ops):
    ops = emu_ops(seed=0)
    a = ops.asarray(numpy.arange(6, dtype=numpy.float32).reshape(2, 3))
    with pytest.raises(TypeError, match="Implicit conversion"):
        numpy.asarray(a)
    assert not isinstance(a, numpy.ndarray)
    with pytest.raises(TypeError, match="Unsupported type"):
        a + numpy.ones(3, numpy.float32)  # noqa: B018 - the mix itself must raise
    with pytest.raises(TypeError, match="non-scalar numpy"):
        a[0] = numpy.ones(3, numpy.float32)
    s = a.sum()
    assert isinstance(s, ops.xp.ndarray) and s.ndim == 0  # reductions stay on the device
    assert float(s) == 15.0 and ops.to_host(a).tolist() == [[0, 1, 2], [3, 4, 5]]


@pytest.mark.parametrize("mode", ["float32", "float64", "fp16", "bf16"])
def test_gelu_backward_is_finite_up_to_the_dtype_max(make_ops, mode):
    ops, _ref, dt, _tol = cuda_helpers.setup_mode(make_ops, mode)
    act_dt = numpy.dtype(numpy.float16 if mode == "fp16" else dt)
    big = float(numpy.finfo(act_dt).max) if mode != "bf16" else 3.3895313892515355e38  # bf16 max
    x = numpy.array([[1e4, -1e4, big, -big, 30.0, -30.0, 1e30 if big > 1e30 else 6e4]], act_dt)
    y, saved = ops.activation_forward(ops.asarray(x, dtype=act_dt), "gelu")
    dx = H(ops, ops.activation_backward(ops.asarray(numpy.ones_like(x), dtype=act_dt), saved,
                                        "gelu")).astype(numpy.float64)
    assert numpy.isfinite(dx).all(), dx
    numpy.testing.assert_allclose(dx[0], [1, 0, 1, 0, 1, 0, 1], atol=1e-6)
    assert numpy.isfinite(H(ops, y).astype(numpy.float64)[0, ::2]).all()
    # the dense path (bias + gelu epilogue, then the fused backward)
    W = ops.asarray(numpy.ones((1, 2), dt))
    xin = ops.asarray(numpy.array([[1e30 if big > 1e30 else 6e4]], dt))
    _, s2 = ops.dense_forward(xin if mode != "fp16" else xin, W, None, "gelu")
    dx2, dW2, _ = ops.dense_backward(ops.asarray(numpy.ones((1, 2)), dtype=s2.dtype), xin, W, s2,
                                     "gelu")
    assert numpy.isfinite(H(ops, dW2).astype(numpy.float64)).all()


def test_activation_without_bias_passes_no_row_length(emu_ops):
    """The bias length is an argument only with a bias: without one `cols` is 1, so no row
    length (which may exceed 2^31: numpy.int32(cols) overflowed) reaches the kernel."""
    ops = emu_ops(seed=0)
    seen = []
    real = ops._k

    def spy(name):
        k = real(name)
        return lambda grid, block, *args: (seen.append((name, args)), k(grid, block, *args))

    ops._k = spy  # noqa: B010 - a test spy on one Ops instance
    ops.activation_forward(ops.asarray(numpy.ones((2, 300), numpy.float32)), "tanh")
    (name, args), = seen
    assert name == "nnx_bias_act_f32" and args[5] == 1 and args[7] == 0


def test_fp16_weight_gradient_is_written_in_float32_by_gemm_ex(emu_ops):
    """dW = x^T dz with fp16 operands whose exact sum exceeds fp16's 65504: GemmEx's float32
    output holds it; the old path (fp16 GEMM result, then a copy) gave inf."""
    ops = emu_ops(seed=0, precision="fp16", loss_scale=None)
    n = 64
    x = numpy.full((n, 3), 30.0, numpy.float16)
    dy = numpy.full((n, 2), 60.0, numpy.float16)  # each dW entry: 64 * 1800 = 115200
    W = ops.asarray(numpy.zeros((3, 2), numpy.float32))
    grads = ops.zeros(8, dtype=numpy.float32)
    ops.xp.cublas.calls.clear()
    _, dW, db = ops.dense_backward(ops.asarray(dy, dtype=numpy.float16),
                                   ops.asarray(x, dtype=numpy.float16), W, None, "identity",
                                   False, grads[:6].reshape(3, 2), grads[6:])
    numpy.testing.assert_array_equal(H(ops, dW), numpy.full((3, 2), 115200.0))
    numpy.testing.assert_array_equal(H(ops, db), numpy.full(2, 3840.0))
    (call,) = ops.xp.cublas.calls
    assert call["Atype"] == call["Btype"] == 2 and call["Ctype"] == 0  # 16F x 16F -> 32F
    # transposed / strided operand layouts give the same product as NumPy
    rng = numpy.random.default_rng(0)
    a = rng.standard_normal((5, 7)).astype(numpy.float16)
    b = rng.standard_normal((7, 4)).astype(numpy.float16)
    want = a.astype(numpy.float64) @ b.astype(numpy.float64)
    for aa, bb in ((a, b), (a.T.copy().T, b), (a, b.T.copy().T)):
        out = ops.xp.empty((5, 4), dtype=numpy.float32)
        from nnx.kernels.cupy_mixed import gemm_f16_f32

        A, B = ops.asarray(aa, dtype=numpy.float16), ops.asarray(bb, dtype=numpy.float16)
        if not aa.flags.c_contiguous:
            A = ops.asarray(aa.T, dtype=numpy.float16).T
        if not bb.flags.c_contiguous:
            B = ops.asarray(bb.T, dtype=numpy.float16).T
        assert gemm_f16_f32(ops.xp, A, B, out)
        close(H(ops, out), want, 1e-3)


def test_tf32_false_overrides_cupy_tf32(emu_ops, monkeypatch):
    monkeypatch.setenv("CUPY_TF32", "1")
    ops = emu_ops(seed=0, tf32=False)
    xp = ops.xp
    xp.linalg.types.clear()  # CuPy latches CUPY_TF32 at its first float32 GEMM
    TF32, DEFAULT = xp.linalg.COMPUTE_TYPE_TF32, xp.linalg.COMPUTE_TYPE_DEFAULT
    assert xp.linalg.get_compute_type(numpy.float32) == TF32
    x, W = ops.asarray(numpy.ones((4, 3))), ops.asarray(numpy.ones((3, 2)))
    xp.gemm_log.clear()
    ops.dense_forward(x, W, None, "identity")
    assert xp.gemm_log == [("float32", DEFAULT)]  # this Ops' GEMM: full FP32
    assert xp.linalg.get_compute_type(numpy.float32) == TF32  # the user's setting restored
    ops32 = emu_ops(seed=0, tf32=True)
    xp.gemm_log.clear()
    ops32.dense_forward(x, W, None, "identity")
    assert xp.gemm_log == [("float32", TF32)]


def test_take_batch_uploads_the_epoch_permutation_once(emu_ops):
    ops = emu_ops(seed=0)
    X = ops.device_dataset(numpy.arange(200, dtype=numpy.float32).reshape(50, 4))
    Y = ops.device_dataset(numpy.arange(50))
    order = numpy.random.default_rng(0).permutation(50)
    reset_log()
    for start in range(0, 50, 8):
        idx = order[start: start + 8]
        xb, yb = ops.take_batch(X, idx), ops.take_batch(Y, idx)
        numpy.testing.assert_array_equal(H(ops, yb), idx)
        numpy.testing.assert_array_equal(H(ops, xb)[:, 0], idx * 4)
    uploads = [e for e in STATE.log if e[0] == "h2d"]
    assert len(uploads) == 1, uploads  # was 2 per batch
    order[:8] = order[:8][::-1].copy()  # the permutation changed in place: uploaded again
    numpy.testing.assert_array_equal(H(ops, ops.take_batch(Y, order[:8])), order[:8])


@pytest.mark.parametrize("mode", ["float32", "float64", "fp16", "bf16"])
@pytest.mark.parametrize("activation", ["identity", "relu", "softmax"])
def test_bias_gradient_is_fused_and_multi_chunk(emu_ops, mode, activation):
    """db comes from the fused act-backward + column-sum kernel (no CuPy reduction over the
    strided columns), over several row chunks (a second fixed-order kernel adds them)."""
    opts = {"dtype": mode} if mode in ("float32", "float64") else {"precision": mode,
                                                                   "loss_scale": None}
    ops = emu_ops(seed=0, **opts)
    dt = numpy.float64 if mode == "float64" else numpy.float32
    act_dt = numpy.float16 if mode == "fp16" else dt
    rng = numpy.random.default_rng(1)
    x = rng.standard_normal((300, 6)).astype(act_dt)
    W = (rng.standard_normal((6, 40)) * 0.3).astype(dt)
    b = rng.standard_normal(40).astype(dt)
    X, Wd = ops.asarray(x, dtype=act_dt), ops.asarray(W)
    y, saved = ops.dense_forward(X, Wd, ops.asarray(b), activation)
    dy = rng.standard_normal(y.shape).astype(act_dt)
    reset_log()
    _, _, db = ops.dense_backward(ops.asarray(dy, dtype=act_dt), X, Wd, saved, activation)
    kernels = [e[2] for e in STATE.log if e[0] == "kernel"]
    assert any(k.startswith("nnx_act_bwd_colsum_") for k in kernels), kernels
    assert any(k.startswith("nnx_colsum_") for k in kernels), kernels  # several chunks
    dz = Ops(dtype=dt).activation_backward(
        dy.astype(dt), None if saved is None else H(ops, saved).astype(dt), activation
    ) if activation != "identity" else dy.astype(dt)
    if mode == "bf16":
        dz = cuda_helpers.rounded(dz, "bf16")
    close(H(ops, db), dz.astype(numpy.float64).sum(axis=0),
          {"float32": 1e-5, "float64": 1e-12, "fp16": 2e-2, "bf16": 1e-5}[mode])


@pytest.mark.parametrize("mode", ["fp16", "bf16"])
def test_the_backward_reuses_the_forwards_casts(emu_ops, mode):
    ops = emu_ops(seed=0, precision=mode, loss_scale=None)
    rng = numpy.random.default_rng(2)
    act_dt = numpy.float16 if mode == "fp16" else numpy.float32
    X = ops.asarray(rng.standard_normal((8, 5)), dtype=act_dt)
    W1 = ops.asarray(rng.standard_normal((5, 6)))
    W2 = ops.asarray(rng.standard_normal((6, 3)))
    h, s1 = ops.dense_forward(X, W1, None, "relu")
    out, _ = ops.dense_forward(h, W2, None, "identity")
    calls, real = [], ops._gemm_operand

    def counting(a, src=None):
        calls.append(a.shape)
        return real(a, src)

    ops._gemm_operand = counting  # noqa: B010 - a test spy on one Ops instance
    dh, _, _ = ops.dense_backward(ops.asarray(numpy.ones((8, 3)), dtype=act_dt), h, W2, None,
                                  "identity")
    ops.dense_backward(dh, X, W1, s1, "relu", False)
    assert calls == []  # was: x and W cast (bf16: rounded) again in every backward
    assert len(ops._casts) == 0  # popped by the backward
    for _ in range(3):  # inference: the entries die with their inputs (nothing kept alive)
        ops.dense_forward(ops.asarray(rng.standard_normal((8, 5)), dtype=act_dt), W1, None,
                          "relu")
    assert len(ops._casts) == 0
    if mode == "bf16":  # h came from a bf16 kernel: the second forward did not round it
        reset_log()
        ops.dense_forward(h, W2, None, "identity")
        rounds = [e for e in STATE.log if e[0] == "kernel" and e[2] == "nnx_round_bf16_f32"]
        assert len(rounds) == 1  # W2 only


@pytest.mark.parametrize("precision", [None, "fp16", "bf16"])
def test_fit_train_step_evaluate_with_device_x_and_y(emu_ops, precision):
    ops = emu_ops(seed=0, precision=precision)
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal((48, 6)).astype(numpy.float32)
    y = (x[:, 0] > 0).astype(numpy.int64)
    model = nnx.Sequential([nnx.Dense(6, 8, activation="relu"), nnx.Dense(8, 2)], backend=ops,
                           seed=0)
    model.compile(nnx.Adam(1e-2), "softmax_cross_entropy", ["accuracy"])
    xd, yd = ops.asarray(x), ops.asarray(y)
    history = model.fit(xd, yd, epochs=3, batch_size=16, verbose=0,
                        validation_data=(xd, yd))
    assert numpy.isfinite(history.history["loss"]).all()
    loss = model.train_step(xd[:16], yd[:16])
    assert numpy.isfinite(loss)
    result = model.evaluate(xd, yd)
    assert set(result) >= {"loss", "accuracy"} and numpy.isfinite(result["loss"])
    pred = model.predict(xd)
    assert type(pred) is numpy.ndarray and pred.shape == (48, 2)
    loss2, grads = model.loss_and_grads(xd, yd)
    assert numpy.isfinite(loss2) and all(type(g) is numpy.ndarray for g in grads)
