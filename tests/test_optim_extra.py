"""RMSprop, Adagrad and Adadelta (issue 15): PyTorch's update rules and defaults (against
torch.optim in float64 where torch is installed, and against a plain NumPy transcription of the
documented algorithms everywhere), the fused Numba kernels against the reference, validation,
checkpoints (state, hyperparameters, hostile state), float16 models, the registry, and the
learning rate changed in place; per-epoch schedules and ScaledSchedule at the optimizer level."""

from __future__ import annotations

import math

import numpy as np
import pytest
from checkpoint_helpers import npy, rewrite
from nnx.kernels.reference import Ops

import nnx
from nnx.errors import CheckpointError, UnknownNameError


def run_steps(backend, opt, p0, grads, dtype="float64"):
    ops = nnx.get_ops(backend, dtype=dtype)
    p = ops.asarray(p0.copy())
    opt.setup(ops, p0.size)
    for g in grads:
        opt.update(p, ops.asarray(g))
    return ops.to_host(p)


@pytest.fixture
def problem(rng):
    grads = [rng.standard_normal(37) for _ in range(8)]
    grads[2][:5] = 0.0  # zero gradients: 0 / (0 + eps), never 0/0
    return rng.standard_normal(37), grads


# -- the documented algorithms, transcribed step by step (float64 NumPy) ----------------------
def rmsprop_ref(p, grads, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                centered=False):
    sq, ga, buf = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    for g in grads:
        g = g + weight_decay * p
        sq = alpha * sq + (1 - alpha) * g * g
        if centered:
            ga = alpha * ga + (1 - alpha) * g
            avg = np.sqrt(sq - ga * ga) + eps
        else:
            avg = np.sqrt(sq) + eps
        if momentum:
            buf = momentum * buf + g / avg
            p = p - lr * buf
        else:
            p = p - lr * g / avg
    return p


def adagrad_ref(p, grads, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
                eps=1e-10):
    s = np.full_like(p, initial_accumulator_value)
    for t, g in enumerate(grads, 1):
        g = g + weight_decay * p
        clr = lr / (1 + (t - 1) * lr_decay)
        s = s + g * g
        p = p - clr * g / (np.sqrt(s) + eps)
    return p


def adadelta_ref(p, grads, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0):
    sq, acc = np.zeros_like(p), np.zeros_like(p)
    for g in grads:
        g = g + weight_decay * p
        sq = rho * sq + (1 - rho) * g * g
        delta = np.sqrt(acc + eps) / np.sqrt(sq + eps) * g
        acc = rho * acc + (1 - rho) * delta * delta
        p = p - lr * delta
    return p


CASES = [
    ("RMSprop", rmsprop_ref, {}),
    ("RMSprop", rmsprop_ref, {"momentum": 0.9}),
    ("RMSprop", rmsprop_ref, {"centered": True, "alpha": 0.9, "eps": 1e-6}),
    ("RMSprop", rmsprop_ref, {"centered": True, "momentum": 0.5, "weight_decay": 0.01,
                              "lr": 0.05}),
    ("Adagrad", adagrad_ref, {}),
    ("Adagrad", adagrad_ref, {"lr_decay": 0.1, "weight_decay": 0.01,
                              "initial_accumulator_value": 0.1, "eps": 1e-8}),
    ("Adadelta", adadelta_ref, {}),
    ("Adadelta", adadelta_ref, {"lr": 0.5, "rho": 0.95, "eps": 1e-5, "weight_decay": 0.01}),
]
IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'defaults'}"
       for name, _f, kw in CASES]


@pytest.mark.parametrize("name, ref, kw", CASES, ids=IDS)
def test_matches_the_documented_algorithm(backend, problem, name, ref, kw):
    p0, grads = problem
    got = run_steps(backend, getattr(nnx, name)(**kw), p0, grads)
    np.testing.assert_allclose(got, ref(p0, grads, **kw), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("name, _ref, kw", CASES, ids=IDS)
def test_matches_pytorch_in_float64(backend, problem, name, _ref, kw):
    """Parameters AND state buffers (same names as torch's) after 8 steps, to 1e-6 (the issue's
    bar; measured ~1e-15)."""
    torch = pytest.importorskip("torch", reason="torch not installed (optional yardstick)")
    p0, grads = problem
    t = torch.tensor(p0.copy(), requires_grad=True)
    topt = getattr(torch.optim, name)([t], **kw)
    for g in grads:
        t.grad = torch.tensor(g)
        topt.step()
    opt = getattr(nnx, name)(**kw)
    got = run_steps(backend, opt, p0, grads)
    np.testing.assert_allclose(got, t.detach().numpy(), rtol=1e-6, atol=1e-12)
    tstate = topt.state[t]
    assert set(opt.state) == set(tstate) - {"step"}
    for k, v in opt.state.items():
        np.testing.assert_allclose(opt.ops.to_host(v), tstate[k].numpy(), rtol=1e-6, atol=1e-12)
    assert opt.step == int(tstate["step"])


def test_defaults_are_pytorchs():
    inspect = pytest.importorskip("inspect")
    torch = pytest.importorskip("torch", reason="torch not installed (optional yardstick)")
    for name in ("RMSprop", "Adagrad", "Adadelta"):
        ours = inspect.signature(getattr(nnx, name)).parameters
        theirs = inspect.signature(getattr(torch.optim, name)).parameters
        for arg, p in ours.items():
            assert theirs[arg].default == p.default, (name, arg)


@pytest.mark.parametrize("name, ref, kw", CASES[:1] + CASES[3:5] + CASES[6:7])
def test_float32_tracks_float64(backend, problem, name, ref, kw):
    """1 - alpha and 1 - rho are formed in float64 on the host, so float32 stays close."""
    p0, grads = problem
    got = run_steps(backend, getattr(nnx, name)(**kw), p0, grads, dtype="float32")
    np.testing.assert_allclose(got, ref(p0, grads, **kw), rtol=1e-4, atol=1e-5)


def test_centered_rmsprop_never_takes_the_root_of_a_negative_variance(backend):
    """A constant gradient makes s - a*a round a few ulps below 0; PyTorch gives NaN there."""
    g = np.full(64, 0.1 + 1e-9 * np.arange(64))
    opt = nnx.RMSprop(1e-3, alpha=0.5, centered=True)
    got = run_steps(backend, opt, np.zeros(64), [g] * 60, dtype="float32")
    assert np.isfinite(got).all()


# -- the fused Numba kernels --------------------------------------------------------------------
numba_optim = pytest.importorskip("nnx.kernels.numba_optim", reason="needs Numba")
from nnx.kernels.numba_optim import NumbaOptimKernels  # noqa: E402

UPDATES = ("rmsprop_update", "adagrad_update", "adadelta_update")


class _RefusesFallback(Ops):
    """The reference path raises: a flat-buffer call must stay in the fused kernels."""

    def rmsprop_update(self, *a, **k):
        raise AssertionError("rmsprop_update fell back to the reference")

    def adagrad_update(self, *a, **k):
        raise AssertionError("adagrad_update fell back to the reference")

    def adadelta_update(self, *a, **k):
        raise AssertionError("adadelta_update fell back to the reference")


class FusedSerial(NumbaOptimKernels, _RefusesFallback):
    """The mixin over a reference that refuses: the serial drivers."""

    @staticmethod
    def _chunks(work: int) -> int:
        return 1


class FusedParallel(NumbaOptimKernels, _RefusesFallback):
    """The parallel drivers, with 3 uneven chunks (empty ones on 1-2 elements)."""

    @staticmethod
    def _chunks(work: int) -> int:
        return 3


class FusedOverReference(NumbaOptimKernels, Ops):
    """The mixin over the reference, as NumbaOps has it."""

    @staticmethod
    def _chunks(work: int) -> int:
        return 1


def _kernel_args(name, kw, state, step):
    """(state buffers..., scalars...) of one `ops.<name>` call."""
    if name == "rmsprop_update":
        return (state["square_avg"], state.get("grad_avg"), state.get("momentum_buffer"),
                kw.get("lr", 1e-2), kw.get("alpha", 0.99), kw.get("eps", 1e-8),
                kw.get("weight_decay", 0.0), kw.get("momentum", 0.0), kw.get("centered", False))
    if name == "adagrad_update":
        return (state["sum"], step, kw.get("lr", 1e-2), kw.get("lr_decay", 0.0),
                kw.get("eps", 1e-10), kw.get("weight_decay", 0.0))
    return (state["square_avg"], state["acc_delta"], kw.get("lr", 1.0), kw.get("rho", 0.9),
            kw.get("eps", 1e-6), kw.get("weight_decay", 0.0))


KERNEL_CASES = [
    ("rmsprop_update", {}, ("square_avg",)),
    ("rmsprop_update", {"momentum": 0.9, "weight_decay": 0.01},
     ("square_avg", "momentum_buffer")),
    ("rmsprop_update", {"centered": True, "momentum": 0.5},
     ("square_avg", "grad_avg", "momentum_buffer")),
    ("rmsprop_update", {"centered": True, "alpha": 0.5}, ("square_avg", "grad_avg")),
    ("adagrad_update", {"lr_decay": 0.05, "weight_decay": 0.01}, ("sum",)),
    ("adagrad_update", {}, ("sum",)),
    ("adadelta_update", {}, ("square_avg", "acc_delta")),
    ("adadelta_update", {"weight_decay": 0.01, "rho": 0.5}, ("square_avg", "acc_delta")),
]


@pytest.mark.parametrize("cls", [FusedSerial, FusedParallel])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [1, 2, 101])
@pytest.mark.parametrize("name, kw, names", KERNEL_CASES)
def test_fused_numba_kernels_match_the_reference(cls, dtype, size, name, kw, names):
    rng = np.random.default_rng(size)
    ops, ref = cls(dtype=np.dtype(dtype).name), Ops(dtype=np.dtype(dtype).name)
    p = rng.standard_normal(size).astype(dtype)
    p_r = p.copy()
    init = 0.1 if name == "adagrad_update" else 0.0
    st = {k: np.full(size, init, dtype) for k in names}
    st_r = {k: v.copy() for k, v in st.items()}
    for step in range(1, 7):
        g = rng.standard_normal(size).astype(dtype)
        if step == 3:
            g[: size // 2] = 0
        getattr(ops, name)(p, g, *_kernel_args(name, kw, st, step))
        getattr(ref, name)(p_r, g, *_kernel_args(name, kw, st_r, step))
    rtol, atol = (1e-11, 1e-12) if dtype == np.float64 else (5e-5, 5e-6)
    np.testing.assert_allclose(p, p_r, rtol=rtol, atol=atol)
    for k in names:
        np.testing.assert_allclose(st[k], st_r[k], rtol=rtol, atol=atol, err_msg=k)


@pytest.mark.parametrize("cls", [FusedSerial, FusedParallel])
def test_fused_centered_rmsprop_clamps_the_variance(cls):
    """A nearly constant gradient: s - a*a rounds below 0 hundreds of times in float32, and
    the clamp keeps the weights finite."""
    g = np.full(64, 0.1 + 1e-9 * np.arange(64)).astype(np.float32)
    ops, ref = cls(dtype="float32"), Ops(dtype="float32")
    p, p_r = np.zeros(64, np.float32), np.zeros(64, np.float32)
    st = [np.zeros(64, np.float32) for _ in range(3)]
    st_r = [np.zeros(64, np.float32) for _ in range(3)]
    for _ in range(60):
        ops.rmsprop_update(p, g, *st, 1e-3, 0.5, 1e-8, 0.0, 0.9, True)
        ref.rmsprop_update(p_r, g, *st_r, 1e-3, 0.5, 1e-8, 0.0, 0.9, True)
    assert np.isfinite(p).all()  # without the clamp: NaN (the steps themselves are g / eps
    for a, b in zip(st[:2], st_r[:2], strict=True):  # plus rounding noise: not comparable)
        np.testing.assert_allclose(a, b, rtol=1e-5)


@pytest.mark.parametrize("name, kw, names", KERNEL_CASES[2:3] + KERNEL_CASES[4:5] +
                         KERNEL_CASES[6:7])
def test_fused_numba_kernels_leave_views_to_the_reference(name, kw, names):
    """Strided views (not the flat buffers) fall back to the reference, updated in place."""
    rng = np.random.default_rng(3)
    ops, ref = FusedOverReference(dtype="float32"), Ops(dtype="float32")
    p = rng.standard_normal((6, 4)).astype(np.float32)
    g = rng.standard_normal((6, 4)).astype(np.float32)
    p_r = p.copy()
    st = {k: np.zeros((6, 4), np.float32) for k in names}
    st_r = {k: v.copy() for k, v in st.items()}
    view = {k: v[:, ::2] for k, v in st.items()}
    view_r = {k: v[:, ::2] for k, v in st_r.items()}
    getattr(ops, name)(p[:, ::2], g[:, ::2], *_kernel_args(name, kw, view, 1))
    getattr(ref, name)(p_r[:, ::2], g[:, ::2], *_kernel_args(name, kw, view_r, 1))
    np.testing.assert_allclose(p, p_r, rtol=1e-6)
    np.testing.assert_array_equal(p[:, 1::2], p_r[:, 1::2])


def test_the_numba_backend_runs_the_fused_updates():
    """NumbaOps inherits the mixin (kernels/numba_cpu.py), before the reference Ops."""
    ops = nnx.get_ops("numba")
    assert isinstance(ops, NumbaOptimKernels)
    for name in UPDATES:
        assert getattr(type(ops), name) is getattr(NumbaOptimKernels, name), name


def test_fused_signatures_equal_the_reference():
    import inspect

    for name in UPDATES:
        assert inspect.signature(getattr(NumbaOptimKernels, name)) == \
            inspect.signature(getattr(Ops, name)), name


def test_warmup_compiles_the_new_drivers_for_both_dtypes():
    names = [n for n, _ in numba_optim.warmup_calls("float32")]
    for family in ("rmsprop", "adagrad", "adadelta"):
        assert f"{family}/serial" in names and f"{family}/parallel" in names
    for dt in ("float32", "float64"):
        for _n, call in numba_optim.warmup_calls(dt):
            call()
    for fn in (numba_optim._rmsprop_ser, numba_optim._rmsprop_par, numba_optim._adagrad_ser,
               numba_optim._adagrad_par, numba_optim._adadelta_ser, numba_optim._adadelta_par):
        sigs = " ".join(str(s) for s in fn.signatures)
        assert "float32" in sigs and "float64" in sigs, fn


# -- validation, registry, config ----------------------------------------------------------------
nan, inf = float("nan"), float("inf")


@pytest.mark.parametrize("make, match", [
    (lambda: nnx.RMSprop(lr=nan), "RMSprop: lr must be a positive number.*nan"),
    (lambda: nnx.RMSprop(lr=0), "RMSprop: lr must be a positive number"),
    (lambda: nnx.RMSprop(alpha=1.0), r"RMSprop: alpha must be in \[0, 1\), got 1.0"),
    (lambda: nnx.RMSprop(alpha=-0.1), "alpha must be in"),
    (lambda: nnx.RMSprop(eps=0), r"RMSprop: eps must be in \(0, inf\)"),
    (lambda: nnx.RMSprop(eps=inf), "eps must be in"),
    (lambda: nnx.RMSprop(weight_decay=-1e-3), "weight_decay must be in"),
    (lambda: nnx.RMSprop(momentum=1.0), r"momentum must be in \[0, 1\)"),
    (lambda: nnx.RMSprop(momentum=True), "momentum must be in"),
    (lambda: nnx.RMSprop(centered="yes"), "centered must be True or False"),
    (lambda: nnx.Adagrad(lr=inf), "Adagrad: lr must be a positive number.*inf"),
    (lambda: nnx.Adagrad(lr_decay=-0.1), r"lr_decay must be in \[0, inf\)"),
    (lambda: nnx.Adagrad(lr_decay=nan), "lr_decay must be in"),
    (lambda: nnx.Adagrad(weight_decay=inf), "weight_decay must be in"),
    (lambda: nnx.Adagrad(initial_accumulator_value=-1), "initial_accumulator_value must be in"),
    (lambda: nnx.Adagrad(eps=0.0), r"Adagrad: eps must be in \(0, inf\)"),
    (lambda: nnx.Adadelta(lr=-1), "Adadelta: lr must be a positive number"),
    (lambda: nnx.Adadelta(rho=1.0), r"Adadelta: rho must be in \[0, 1\)"),
    (lambda: nnx.Adadelta(rho=nan), "rho must be in"),
    (lambda: nnx.Adadelta(eps=0), r"eps must be in \(0, inf\)"),
    (lambda: nnx.Adadelta(weight_decay=-1), "weight_decay must be in"),
])
def test_hyperparameters_are_finite_and_in_range(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("name, cls", [("rmsprop", nnx.RMSprop), ("adagrad", nnx.Adagrad),
                                       ("adadelta", nnx.Adadelta), ("RMSprop", nnx.RMSprop)])
def test_registered_by_name(name, cls):
    assert type(nnx.optim.get(name)) is cls
    assert nnx.optim.OPTIMIZERS[name.lower()] is cls
    model = nnx.Sequential([nnx.Dense(3, 2)]).compile(name, "mse", [])
    assert type(model.optimizer) is cls
    with pytest.raises(UnknownNameError, match="adadelta, adagrad, adam, adamw, rmsprop, sgd"):
        nnx.optim.get("adamax")


@pytest.mark.parametrize("opt", [nnx.RMSprop(0.02, 0.9, 1e-7, 0.01, 0.5, True),
                                 nnx.Adagrad(0.1, 0.01, 0.001, 0.2, 1e-9),
                                 nnx.Adadelta(0.5, 0.8, 1e-5, 0.01)])
def test_config_round_trips(opt):
    again = nnx.optim.get(opt.get_config())
    assert type(again) is type(opt) and again.get_config() == opt.get_config()
    assert again.state_names == opt.state_names


def test_state_buffers_follow_the_options():
    assert nnx.RMSprop().state_names == ("square_avg",)
    assert nnx.RMSprop(momentum=0.9, centered=True).state_names == \
        ("square_avg", "momentum_buffer", "grad_avg")
    ops = nnx.get_ops("numpy", dtype="float64")
    opt = nnx.Adagrad(initial_accumulator_value=0.25)
    opt.setup(ops, 5)
    np.testing.assert_array_equal(opt.state["sum"], np.full(5, 0.25))


# -- models: float16, checkpoints ------------------------------------------------------------------
def _data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6)).astype(np.float32)
    return x, (x[:, 0] + x[:, 1] > 0).astype(np.int64)


def _mlp(backend="numpy", dtype="float32"):
    return nnx.Sequential([nnx.Dense(6, 8, "relu"), nnx.Dense(8, 2)], backend=backend,
                          dtype=dtype)


OPTS = [lambda: nnx.RMSprop(0.01, momentum=0.5, centered=True),
        lambda: nnx.Adagrad(0.1, lr_decay=0.01, initial_accumulator_value=0.1),
        lambda: nnx.Adadelta(1.0)]


@pytest.mark.parametrize("make", OPTS)
def test_float16_models_train_with_float32_state(backend, make):
    x, y = _data()
    x[:, 2] = 0  # a column whose weights get zero gradients
    model = _mlp(backend, "float16").compile(make(), "softmax_cross_entropy")
    hist = model.fit(x, y, epochs=4, batch_size=16, verbose=0)
    assert all(np.isfinite(w).all() and w.dtype == np.float16 for w in model.get_weights())
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    assert all(v.dtype == np.float32 for v in model.optimizer.state.values())


@pytest.mark.parametrize("make", OPTS)
def test_checkpoint_resumes_bit_identically(tmp_path, backend, make):
    x, y = _data()
    model = _mlp(backend).compile(make(), "softmax_cross_entropy")
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    model.save(tmp_path / "m.npz")
    again = nnx.load(tmp_path / "m.npz", backend=backend)
    assert again.optimizer.get_config() == model.optimizer.get_config()
    assert again.optimizer.step == model.optimizer.step
    for k, v in model.optimizer.state.items():
        np.testing.assert_array_equal(again.optimizer.state[k], v)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    again.fit(x, y, epochs=1, batch_size=16, verbose=0)
    for a, b in zip(model.get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def _saved(tmp_path, opt):
    model = _mlp().compile(opt, "softmax_cross_entropy")
    model.fit(*_data(), epochs=1, batch_size=16, verbose=0)
    path = tmp_path / "m.npz"
    model.save(path)
    return path, model


@pytest.mark.parametrize("opt, name", [(nnx.RMSprop(), "square_avg"), (nnx.Adagrad(), "sum"),
                                       (nnx.Adadelta(), "square_avg"),
                                       (nnx.Adadelta(), "acc_delta")])
def test_negative_accumulators_are_refused(tmp_path, opt, name):
    path, model = _saved(tmp_path, opt)
    bad = model.optimizer.state[name].copy()
    bad[3] = -1.0
    out = rewrite(path, tmp_path / "bad.npz", replace={f"opt/{name}": npy(bad)})
    with pytest.raises(CheckpointError, match=f"opt/{name}.* must be >= 0"):
        nnx.load(out)


def test_centered_rmsprop_state_must_be_consistent(tmp_path):
    path, model = _saved(tmp_path, nnx.RMSprop(centered=True))
    st = model.optimizer.state
    bad = st["grad_avg"].copy()
    bad[4] = np.sqrt(st["square_avg"][4]) * 2 + 1.0
    out = rewrite(path, tmp_path / "bad.npz", replace={"opt/grad_avg": npy(bad)})
    with pytest.raises(CheckpointError, match="grad_avg\\*\\*2 exceeds square_avg at index 4"):
        nnx.load(out)
    nnx.load(path)  # the genuine file loads


def test_state_that_does_not_match_the_options_is_refused(tmp_path):
    path, _model = _saved(tmp_path, nnx.RMSprop(momentum=0.9))
    out = rewrite(path, tmp_path / "bad.npz",
                  edit_header=lambda h: h["optimizer"].update(momentum=0.0))
    with pytest.raises(CheckpointError, match="RMSprop keeps"):
        nnx.load(out)


# -- the learning rate, changed in place ---------------------------------------------------------
@pytest.mark.parametrize("make", [lambda lr: nnx.SGD(lr, momentum=0.9),
                                  lambda lr: nnx.Adam(lr),
                                  lambda lr: nnx.RMSprop(lr, momentum=0.5),
                                  lambda lr: nnx.Adagrad(lr, lr_decay=0.1),
                                  lambda lr: nnx.Adadelta(lr)])
def test_a_rate_changed_in_place_is_used_at_the_next_step(backend, problem, make):
    """No backend caches the rate: steps at 0.1, 0.1, then 0.01 (set in place) equal a run whose
    schedule gives those rates."""
    p0, grads = problem
    ops = nnx.get_ops(backend, dtype="float64")
    opt = make(0.1)
    p = ops.asarray(p0.copy())
    opt.setup(ops, p0.size)
    for i, g in enumerate(grads[:4]):
        if i == 2:
            opt.lr = 0.01
        opt.update(p, ops.asarray(g))
    want = run_steps(backend, make(lambda step: 0.1 if step <= 2 else 0.01), p0, grads[:4])
    np.testing.assert_array_equal(ops.to_host(p), want)


def test_a_rate_set_in_place_is_validated():
    opt = nnx.Adam(1e-3)
    for bad in (nan, -1.0, 0.0, True, "0.1", inf):
        with pytest.raises(ValueError, match="Adam: lr must be a positive number or a schedule"):
            opt.lr = bad
    assert opt.lr == 1e-3
    opt.lr = np.float32(0.5)
    assert type(opt.lr) is float and opt.lr == 0.5
    opt.lr = {"class": "StepDecay", "lr": 0.1, "step_size": 2}
    assert isinstance(opt.lr, nnx.StepDecay)


# -- schedules per epoch, ScaledSchedule -----------------------------------------------------------
def test_step_decay_per_epoch_counts_epochs():
    s = nnx.StepDecay(0.1, step_size=2, gamma=0.5, per="epoch")
    opt = nnx.SGD(s)
    got = []
    for epoch in range(5):
        opt.begin_epoch(epoch)
        opt.step += 7  # steps do not move a per-epoch schedule
        got.append(opt.current_lr())
    assert got == [0.1, 0.1, 0.05, 0.05, 0.025]
    assert opt.epoch == 4
    c = nnx.CosineDecay(1.0, decay_steps=4, warmup_steps=1, per="epoch")
    opt = nnx.Adam(c)
    opt.begin_epoch(0)
    assert opt.current_lr() == pytest.approx(1.0)
    opt.begin_epoch(3)
    assert opt.current_lr() == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.75)))


def test_per_step_stays_the_default_and_unchanged():
    s = nnx.StepDecay(0.1, step_size=10, gamma=0.5)
    assert s.per == "step" and nnx.CosineDecay(1.0, 10).per == "step"
    opt = nnx.SGD(s)
    opt.begin_epoch(9)  # the epoch does not move a per-step schedule
    assert [opt.current_lr(t) for t in (1, 10, 11, 25)] == [0.1, 0.1, 0.05, 0.025]


def test_a_per_epoch_schedule_without_an_epoch_is_an_error_not_a_guess():
    opt = nnx.SGD(nnx.StepDecay(0.1, 1, per="epoch"))
    ops = nnx.get_ops("numpy")
    opt.setup(ops, 3)
    p = ops.zeros(3)
    with pytest.raises(RuntimeError, match=r"per='epoch'.*begin_epoch\(epoch\)"):
        opt.update(p, ops.zeros(3) + 1)
    np.testing.assert_array_equal(p, 0)
    assert opt.step == 0  # the rate is found before the step is counted
    opt.begin_epoch(1)
    opt.update(p, ops.zeros(3) + 1)
    assert opt.step == 1 and p[0] == pytest.approx(-0.01)


def test_schedule_and_epoch_arguments_are_validated():
    with pytest.raises(ValueError, match="StepDecay: per must be 'step' or 'epoch', got 'batch'"):
        nnx.StepDecay(0.1, 2, per="batch")
    with pytest.raises(ValueError, match="CosineDecay: per must be"):
        nnx.CosineDecay(0.1, 2, per=None)
    for bad in (-1, 1.0, True, None):
        with pytest.raises(ValueError, match="SGD: epoch must be an int >= 0"):
            nnx.SGD().begin_epoch(bad)
    with pytest.raises(ValueError, match="ScaledSchedule: scale must be in"):
        nnx.optim.ScaledSchedule(nnx.StepDecay(0.1, 2), 0.0)
    with pytest.raises(ValueError, match="ScaledSchedule: schedule must be"):
        nnx.optim.ScaledSchedule(0.1, 0.5)


def test_scaled_schedule_keeps_the_shape_and_collapses():
    inner = nnx.StepDecay(0.1, 2, 0.5, per="epoch")
    s = nnx.optim.ScaledSchedule(nnx.optim.ScaledSchedule(inner, 0.5), 0.2)
    assert s.schedule is inner and s.scale == pytest.approx(0.1) and s.per == "epoch"
    assert [s(t) for t in (1, 3)] == pytest.approx([0.01, 0.005])
    again = nnx.optim._lr_from_config(s.get_config())
    assert isinstance(again, nnx.optim.ScaledSchedule) and again.get_config() == s.get_config()
    assert "StepDecay(lr=0.1, step_size=2, gamma=0.5, per='epoch')" in repr(s)
    with pytest.raises(TypeError, match="only Schedule subclasses can be saved"):
        nnx.optim.ScaledSchedule(lambda t: 0.1, 0.5).get_config()


def test_per_epoch_and_scaled_schedules_survive_a_checkpoint(tmp_path):
    lr = nnx.optim.ScaledSchedule(nnx.StepDecay(0.1, 2, 0.5, per="epoch"), 0.5)
    model = nnx.Sequential([nnx.Dense(2, 2)]).compile(nnx.RMSprop(lr), "mse", [])
    model.save(tmp_path / "m.npz")
    opt = nnx.load(tmp_path / "m.npz").optimizer
    assert opt.lr.get_config() == lr.get_config()
    opt.begin_epoch(2)
    assert opt.current_lr() == pytest.approx(0.025)


def test_a_distributed_optimizer_moves_the_wrapped_clock_and_rate():
    dist = nnx.distributed
    inner = nnx.SGD(nnx.StepDecay(0.1, 1, 0.5, per="epoch"))
    opt = dist.DistributedOptimizer(inner, comm=dist.comm.LocalCommunicator())
    opt.begin_epoch(2)
    assert inner.epoch == 2 and opt.epoch == 2
    assert opt.current_lr() == pytest.approx(0.025)
    opt.lr = 0.3
    assert inner.lr == 0.3
