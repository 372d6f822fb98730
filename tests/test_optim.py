"""Optimizers against their closed forms in float64 (and PyTorch where installed), and schedules."""

from __future__ import annotations

import math

import numpy as np
import pytest

import nnx


def run_steps(backend, opt, p0, grads, dtype="float64"):
    ops = nnx.get_ops(backend, dtype=dtype)
    p = ops.asarray(p0.copy())
    opt.setup(ops, p0.size)
    for g in grads:
        opt.update(p, ops.asarray(g))
    return ops.to_host(p)


def adam_ref(p, grads, lr, b1, b2, eps, wd=0.0, decoupled=False):
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, 1):
        if decoupled:
            p = p * (1 - lr * wd)
        elif wd:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mhat = m / (1 - b1**t)
        vhat = v / (1 - b2**t)
        p = p - lr * mhat / (np.sqrt(vhat) + eps)
    return p


def sgd_ref(p, grads, lr, mu=0.0, nesterov=False, wd=0.0):
    buf = None
    for g in grads:
        g = g + wd * p
        if mu:
            buf = g.copy() if buf is None else mu * buf + g
            g = g + mu * buf if nesterov else buf
        p = p - lr * g
    return p


@pytest.fixture
def problem(rng):
    return rng.standard_normal(37), [rng.standard_normal(37) for _ in range(6)]


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_adam(backend, problem, wd):
    p0, grads = problem
    got = run_steps(backend, nnx.Adam(1e-2, 0.9, 0.999, 1e-8, weight_decay=wd), p0, grads)
    np.testing.assert_allclose(got, adam_ref(p0, grads, 1e-2, 0.9, 0.999, 1e-8, wd), rtol=1e-10)


def test_adamw(backend, problem):
    p0, grads = problem
    got = run_steps(backend, nnx.AdamW(1e-2, weight_decay=0.05), p0, grads)
    want = adam_ref(p0, grads, 1e-2, 0.9, 0.999, 1e-8, 0.05, decoupled=True)
    np.testing.assert_allclose(got, want, rtol=1e-10)


@pytest.mark.parametrize("mu,nesterov,wd", [(0.0, False, 0.0), (0.9, False, 0.0),
                                            (0.9, True, 0.01)])
def test_sgd(backend, problem, mu, nesterov, wd):
    p0, grads = problem
    got = run_steps(backend, nnx.SGD(0.05, mu, nesterov, wd), p0, grads)
    np.testing.assert_allclose(got, sgd_ref(p0, grads, 0.05, mu, nesterov, wd), rtol=1e-10)


def test_adam_float32_tracks_float64(backend, problem):
    """1 - beta2 is formed in float64 on the host, so float32 Adam stays on the float64 path."""
    p0, grads = problem
    got = run_steps(backend, nnx.Adam(1e-3), p0, grads, dtype="float32")
    np.testing.assert_allclose(got, adam_ref(p0, grads, 1e-3, 0.9, 0.999, 1e-8), rtol=2e-6)


def test_adam_matches_pytorch(problem):
    torch = pytest.importorskip("torch", reason="torch not installed (optional yardstick)")
    p0, grads = problem
    t = torch.tensor(p0.copy(), requires_grad=True)
    opt = torch.optim.AdamW([t], lr=1e-2, weight_decay=0.05)
    for g in grads:
        t.grad = torch.tensor(g)
        opt.step()
    got = run_steps("numpy", nnx.AdamW(1e-2, weight_decay=0.05), p0, grads)
    np.testing.assert_allclose(got, t.detach().numpy(), rtol=1e-10)


def test_schedules():
    s = nnx.StepDecay(0.1, step_size=10, gamma=0.5)
    assert [s(1), s(10), s(11), s(25)] == [0.1, 0.1, 0.05, 0.025]
    c = nnx.CosineDecay(1.0, decay_steps=100, min_lr=0.1, warmup_steps=10)
    assert c(5) == pytest.approx(0.5)
    assert c(10) == pytest.approx(1.0)
    assert c(60) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    assert c(110) == pytest.approx(0.1) and c(1000) == pytest.approx(0.1)


def test_schedule_drives_optimizer_and_round_trips(tmp_path, rng):
    opt = nnx.SGD(nnx.StepDecay(0.1, 2, 0.1))
    got = run_steps("numpy", opt, np.zeros(3), [np.ones(3)] * 3)
    np.testing.assert_allclose(got, -(0.1 + 0.1 + 0.01) * np.ones(3))
    model = nnx.Sequential([nnx.Dense(2, 2)]).compile(opt, "mse", [])
    model.save(tmp_path / "m.npz")
    again = nnx.load(tmp_path / "m.npz").optimizer
    assert isinstance(again.lr, nnx.StepDecay) and again.current_lr(3) == pytest.approx(0.01)


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="lr must be a positive number"):
        nnx.Adam(lr=-1)
    with pytest.raises(ValueError, match=r"beta2 must be in \[0, 1\), got 1.0"):
        nnx.Adam(beta2=1.0)
    with pytest.raises(ValueError, match="nesterov=True needs momentum"):
        nnx.SGD(0.1, nesterov=True)
