"""The fused CUDA RMSprop, Adagrad and Adadelta updates (kernels/cuda/optim.cu via
kernels/cupy_optim.py), against the reference, on a real GPU ("gpu", skipped without one) and on
the strict CPU emulation ("emu", tests/fake_cupy.py), as tests/test_cupy_backend.py does for SGD
and Adam: several steps in float32/float64 over grid-stride loops, mixed-precision loss scaling
(skipped overflowed steps, unscaled gradients), CUDA graph replay (Adagrad's decayed rate follows
the replayed step; the rate of a replay comes from `replay(lr=...)`), non-flat buffers, the
optimizer end to end on a CupyOps, and the index math past 2^31 elements."""

from __future__ import annotations

import shutil

import cuda_helpers
import numpy
import pytest
from cuda_helpers import H, close
from cuda_shim import EmuCompiler
from nnx.kernels import cupy_gpu, cupy_source
from nnx.kernels.reference import Ops

import nnx

emu_cupy = cuda_helpers.emu_cupy
make_ops = cuda_helpers.make_ops

SIZES = (1, 33, 1025)

# (update, keyword options, state buffers it uses)
CASES = [
    ("rmsprop_update", {}, ("square_avg",)),
    ("rmsprop_update", {"momentum": 0.9, "weight_decay": 0.01},
     ("square_avg", "momentum_buffer")),
    ("rmsprop_update", {"centered": True, "alpha": 0.9},
     ("square_avg", "grad_avg")),
    ("rmsprop_update", {"centered": True, "momentum": 0.5, "weight_decay": 0.01},
     ("square_avg", "grad_avg", "momentum_buffer")),
    ("adagrad_update", {}, ("sum",)),
    ("adagrad_update", {"lr_decay": 0.05, "weight_decay": 0.01}, ("sum",)),
    ("adadelta_update", {}, ("square_avg", "acc_delta")),
    ("adadelta_update", {"rho": 0.5, "weight_decay": 0.01}, ("square_avg", "acc_delta")),
]
IDS = [f"{n.split('_')[0]}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'plain'}"
       for n, kw, _s in CASES]


def call(ops, name, p, g, st, step, kw, lr=None):
    """ops.<name>(p, g, <state>, <scalars>) with the options of `kw`."""
    if name == "rmsprop_update":
        return ops.rmsprop_update(p, g, st["square_avg"], st.get("grad_avg"),
                                  st.get("momentum_buffer"), lr or 1e-2, kw.get("alpha", 0.99),
                                  1e-8, kw.get("weight_decay", 0.0), kw.get("momentum", 0.0),
                                  kw.get("centered", False))
    if name == "adagrad_update":
        return ops.adagrad_update(p, g, st["sum"], step, lr or 1e-2, kw.get("lr_decay", 0.0),
                                  1e-10, kw.get("weight_decay", 0.0))
    return ops.adadelta_update(p, g, st["square_avg"], st["acc_delta"], lr or 1.0,
                               kw.get("rho", 0.9), 1e-6, kw.get("weight_decay", 0.0))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name, kw, names", CASES, ids=IDS)
def test_update_several_steps(make_ops, size, dtype, name, kw, names):
    ops, ref = make_ops(seed=0, dtype=dtype), Ops(dtype=dtype)
    rng = numpy.random.default_rng(size)
    p = rng.standard_normal(size).astype(dtype)
    init = 0.1 if name == "adagrad_update" else 0.0
    st = {k: numpy.full(size, init, dtype) for k in names}
    P = ops.asarray(p)
    ST = {k: ops.asarray(v) for k, v in st.items()}
    for step in range(1, 6):
        g = rng.standard_normal(size).astype(dtype)
        if step == 2:
            g[::3] = 0
        call(ops, name, P, ops.asarray(g), ST, step, kw)
        call(ref, name, p, g, st, step, kw)
    tol = 1e-12 if dtype == "float64" else 2e-5
    close(H(ops, P), p, tol)
    for k in names:
        close(H(ops, ST[k]), st[k], tol)


@pytest.mark.parametrize("name, kw, names", CASES[3:4] + CASES[5:6] + CASES[7:8], ids=IDS[3:4] +
                         IDS[5:6] + IDS[7:8])
def test_loss_scaling_unscales_and_skips_overflowed_steps(make_ops, name, kw, names):
    ops = make_ops(seed=0, precision="fp16", init_scale=1024.0, growth_interval=1000)
    p0 = numpy.linspace(-1, 1, 517).astype(numpy.float32)
    P = ops.asarray(p0)
    ST = {k: ops.asarray(numpy.zeros_like(p0)) for k in names}
    g = numpy.ones_like(p0)
    g[100] = numpy.inf
    call(ops, name, P, ops.asarray(g), ST, 1, kw)  # overflow: nothing moves, the scale halves
    st = ops.amp_state()
    assert st["found_inf"] and st["skipped_steps"] == 1 and st["scale"] == 512.0
    numpy.testing.assert_array_equal(H(ops, P), p0)
    for k in names:
        numpy.testing.assert_array_equal(H(ops, ST[k]), 0)
    ref, p = Ops(), p0.copy()
    rst = {k: numpy.zeros_like(p0) for k in names}
    for step in (1, 2):
        gs = numpy.linspace(-0.5, 1, p0.size).astype(numpy.float32)
        call(ops, name, P, ops.asarray(gs * numpy.float32(512.0)), ST, step, kw)
        call(ref, name, p, gs, rst, step, kw)
    assert not ops.amp_state()["found_inf"]
    close(H(ops, P), p, 1e-5)
    for k in names:
        close(H(ops, ST[k]), rst[k], 1e-5)


def test_centered_rmsprop_clamps_the_variance(make_ops):
    """A nearly constant gradient: s - a*a rounds below 0 hundreds of times in float32."""
    ops, ref = make_ops(seed=0, dtype="float32"), Ops()
    g = numpy.full(300, 0.1 + 1e-9 * numpy.arange(300)).astype(numpy.float32)
    p = numpy.zeros(300, numpy.float32)
    st = [numpy.zeros(300, numpy.float32) for _ in range(3)]
    P, G = ops.asarray(p), ops.asarray(g)
    ST = [ops.asarray(a) for a in st]
    for _ in range(60):
        ops.rmsprop_update(P, G, *ST, 1e-3, 0.5, 1e-8, 0.0, 0.9, True)
        ref.rmsprop_update(p, g, *st, 1e-3, 0.5, 1e-8, 0.0, 0.9, True)
    assert numpy.isfinite(H(ops, P)).all()  # without the clamp: NaN (the steps themselves are
    close(H(ops, ST[0]), st[0], 1e-5)  # g / eps plus rounding noise: not comparable)
    close(H(ops, ST[1]), st[1], 1e-5)


def test_non_flat_buffers_fall_back_and_refuse_loss_scaling(make_ops):
    ops, ref = make_ops(seed=0, dtype="float32"), Ops()
    rng = numpy.random.default_rng(0)
    p = rng.standard_normal((6, 4)).astype(numpy.float32)
    g = rng.standard_normal((6, 4)).astype(numpy.float32)
    P = ops.asarray(p)
    S, A = ops.zeros((6, 4)), ops.zeros((6, 4))
    s, a = numpy.zeros((6, 4), numpy.float32), numpy.zeros((6, 4), numpy.float32)
    ops.adadelta_update(P[:, ::2], ops.asarray(g)[:, ::2], S[:, ::2], A[:, ::2], 1.0, 0.9, 1e-6)
    ref.adadelta_update(p[:, ::2], g[:, ::2], s[:, ::2], a[:, ::2], 1.0, 0.9, 1e-6)
    close(H(ops, P), p, 1e-6)
    amp = make_ops(seed=0, precision="fp16")
    X = amp.asarray(numpy.zeros((4, 4), numpy.float32))
    with pytest.raises(ValueError, match="adagrad_update with loss scaling needs C-contiguous"):
        amp.adagrad_update(X[:, ::2], X[:, ::2], X[:, ::2], 1, 0.1, 0.0, 1e-10)


def test_replayed_adagrad_follows_the_step_and_rmsprop_the_replay_rate(make_ops):
    ops, ref = make_ops(seed=0), Ops()
    rng = numpy.random.default_rng(1)
    p, g = rng.standard_normal((2, 700)).astype(numpy.float32)
    P, G, S = ops.asarray(p), ops.asarray(g), ops.zeros(700)
    state = {"step": 0}

    def step():
        state["step"] += 1
        ops.adagrad_update(P, G, S, state["step"], 0.1, 0.5, 1e-10)
        return P

    graph = cupy_gpu.capture_graph(step, ops=ops, warmup_runs=1)  # runs step 1, records 2
    for _ in range(3):
        graph.replay()  # steps 2..4: lr / (1 + (step-1)*0.5) each
    s = numpy.zeros_like(p)
    for k in range(1, 5):
        ref.adagrad_update(p, g, s, k, 0.1, 0.5, 1e-10)
    close(H(ops, P), p, 2e-5)
    # RMSprop: a replay takes the rate it is given (a schedule of the step, or a float)
    q = rng.standard_normal(300).astype(numpy.float32)
    Q, G2, SQ = ops.asarray(q), ops.asarray(g[:300]), ops.zeros(300)
    graph = cupy_gpu.capture_graph(
        lambda: ops.rmsprop_update(Q, G2, SQ, None, None, 0.01, 0.9, 1e-8), ops=ops)
    graph.replay(step=2, lr=lambda s: 0.01 / s)
    graph.replay(lr=0.002)
    sq = numpy.zeros_like(q)
    for rate in (0.01, 0.005, 0.002):
        ref.rmsprop_update(q, g[:300], sq, None, None, rate, 0.9, 1e-8)
    close(H(ops, Q), q, 2e-5)


@pytest.mark.parametrize("make", [lambda: nnx.RMSprop(0.01, momentum=0.5, centered=True),
                                  lambda: nnx.Adagrad(0.1, lr_decay=0.01),
                                  lambda: nnx.Adadelta()])
def test_the_optimizers_run_on_a_cupy_ops(make_ops, make):
    """The optimizer objects over a CupyOps, with the rate changed in place mid-way: the same
    parameters as over the reference (the rate is read at every call, never cached)."""
    ops, ref = make_ops(seed=0, dtype="float64"), Ops(dtype="float64")
    rng = numpy.random.default_rng(2)
    p0 = rng.standard_normal(129)
    grads = [rng.standard_normal(129) for _ in range(5)]
    out = []
    for o in (ops, ref):
        opt = make()
        opt.setup(o, p0.size)
        p = o.asarray(p0.copy())
        for i, g in enumerate(grads):
            if i == 3:
                opt.lr = opt.lr * 0.1
            opt.update(p, o.asarray(g))
        out.append(H(o, p))
    close(out[0], out[1], 1e-12)


# -- index math past 2^31 elements (the last blocks of a huge grid, on a small window) ----------
BIG, BLOCK = 2**31, 256


@pytest.fixture(scope="module")
def funcs(tmp_path_factory):
    cxx = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler for the CUDA emulation")
    comp = EmuCompiler(str(tmp_path_factory.mktemp("cuda_optim_idx")), cxx)
    return comp.build(cupy_source.read_source("optim"))[1]


def _launch(funcs, name, grid, first, nblocks, *args):
    f, params = funcs["range:" + name]
    conv = [a if is_ptr else cupy_source._SCALAR_TYPES[c](a).item()
            for (is_ptr, c, _n), a in zip(params, args, strict=True)]
    assert f(grid, first, nblocks, BLOCK, *conv) == 0, name


def test_new_updates_past_2_31_elements(funcs):
    first = BIG // BLOCK + 5
    start = first * BLOCK
    n = start + 2 * BLOCK - 100  # the last block is partial
    grid, k, w = first + 2, n - start, 2 * BLOCK
    rng = numpy.random.default_rng(3)
    p0, g = rng.standard_normal((2, w)).astype(numpy.float32)
    one = numpy.ones(1, numpy.float32)
    flag = numpy.zeros(1, numpy.int32)
    hyper = numpy.zeros(3, numpy.float64)

    def ptr(a):
        return a.ctypes.data - start * a.itemsize

    tail = (one.ctypes.data, flag.ctypes.data, hyper.ctypes.data, 0)
    ref = Ops()
    # RMSprop, centered with momentum
    p, s, a, b = p0.copy(), *numpy.zeros((3, w), numpy.float32)
    _launch(funcs, "nnx_rmsprop_f32", grid, first, 2, ptr(p), ptr(g), ptr(s), ptr(a), ptr(b), n,
            0.01, 0.9, 0.1, 1e-8, 0.0, 0.5, 1, *tail)
    pr, sr, ar, br = p0[:k].copy(), *numpy.zeros((3, k), numpy.float32)
    ref.rmsprop_update(pr, g[:k].copy(), sr, ar, br, 0.01, 0.9, 1e-8, 0.0, 0.5, True)
    numpy.testing.assert_allclose(p[:k], pr, rtol=1e-6)
    numpy.testing.assert_array_equal(p[k:], p0[k:])  # past n: untouched
    # Adagrad
    p, s = p0.copy(), numpy.zeros(w, numpy.float32)
    _launch(funcs, "nnx_adagrad_f32", grid, first, 2, ptr(p), ptr(g), ptr(s), n, 0.1, 1e-10, 0.0,
            *tail)
    pr, sr = p0[:k].copy(), numpy.zeros(k, numpy.float32)
    ref.adagrad_update(pr, g[:k].copy(), sr, 1, 0.1, 0.0, 1e-10)
    numpy.testing.assert_allclose(p[:k], pr, rtol=1e-6)
    numpy.testing.assert_array_equal(p[k:], p0[k:])
    # Adadelta
    p, s, a = p0.copy(), *numpy.zeros((2, w), numpy.float32)
    _launch(funcs, "nnx_adadelta_f32", grid, first, 2, ptr(p), ptr(g), ptr(s), ptr(a), n, 1.0,
            0.9, 0.1, 1e-6, 0.0, *tail)
    pr, sr, ar = p0[:k].copy(), *numpy.zeros((2, k), numpy.float32)
    ref.adadelta_update(pr, g[:k].copy(), sr, ar, 1.0, 0.9, 1e-6)
    numpy.testing.assert_allclose(p[:k], pr, rtol=1e-6)
    numpy.testing.assert_array_equal(p[k:], p0[k:])
