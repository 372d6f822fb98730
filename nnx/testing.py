"""Testing tools for nnx and for users' own layers.

- `gradcheck(layer, x)`: the layer's analytic gradients (input and parameters) against float64
  central differences, on any backend (Chainer's check: float64 only, stochastic layers reseeded
  before every evaluation so that each sees the same dropout mask).
- `gradcheck_loss(loss, output, targets)`: the same for a loss.
- `assert_backends_agree(layer, x)`: runs one layer on every available backend from the same
  weights and compares outputs and gradients with the numpy reference.
- `avoid_kinks(x)`: moves inputs away from non-differentiable points (ReLU at 0).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from .backend import available_backends, get_ops
from .layers.base import Layer, layer_from_dict, layer_to_dict
from .params import ParameterStore


@dataclass
class GradcheckResult:
    """Max abs/relative errors per checked tensor ('x' and each parameter)."""

    errors: dict = field(default_factory=dict)

    def __str__(self):
        return ", ".join(f"{k}: abs {a:.2e} rel {r:.2e}" for k, (a, r) in self.errors.items())


class GradcheckError(AssertionError):
    pass


def avoid_kinks(x, margin: float = 0.05, rng=None):
    """Push entries with |x| < margin to +-margin.. (random sign), away from ReLU's kink."""
    x = np.array(x, dtype=np.float64)
    near = np.abs(x) < margin
    rng = rng or np.random.default_rng(0)
    x[near] = rng.choice([-1.0, 1.0], size=int(near.sum())) * (margin + rng.random(int(near.sum())))
    return x


def build(layer: Layer, backend="numpy", dtype="float64", seed: int = 0):
    """Build a standalone layer on a fresh backend with initialized parameters; returns
    (ops, store). The layer belongs to the returned store while the store lives (a layer that
    belongs to a model cannot be built again: copy it with layer_from_dict(layer_to_dict(l)))."""
    ops = get_ops(backend, seed=seed, dtype=dtype) if isinstance(backend, str) else backend
    store = ParameterStore(layer, ops, seed)
    return ops, store


def _indices(size, max_checks, rng):
    if size <= max_checks:
        return np.arange(size)
    return rng.choice(size, max_checks, replace=False)


def _compare(name, analytic, numeric, atol, rtol, result):
    diff = np.abs(analytic - numeric)
    abs_err = float(diff.max()) if diff.size else 0.0
    rel_err = float((diff / (np.abs(numeric) + atol)).max()) if diff.size else 0.0
    result.errors[name] = (abs_err, rel_err)
    bad = diff > atol + rtol * np.abs(numeric)
    if bad.any():
        i = int(np.argmax(bad))
        raise GradcheckError(
            f"gradcheck failed for {name}: analytic {analytic[i]:.8g} vs numeric {numeric[i]:.8g} "
            f"at checked entry {i} (max abs err {abs_err:.3g}, atol {atol}, rtol {rtol})"
        )


def gradcheck(
    layer: Layer,
    x,
    backend="numpy",
    *,
    training: bool = True,
    eps: float = 1e-6,
    atol: float = 1e-6,
    rtol: float = 1e-4,
    max_checks: int = 48,
    seed: int = 0,
    check_params: bool = True,
    weights=None,
) -> GradcheckResult:
    """Check `layer`'s backward against float64 central differences of L = sum(f(x) * dy).

    `x` keeps its layout (pass a non-contiguous view to test strided inputs). Up to
    `max_checks` entries per tensor are checked (all for small tensors). Raises GradcheckError
    on a mismatch, returns the errors otherwise."""
    ops, store = build(layer, backend, "float64", seed)
    if weights is not None:
        for (lyr, name), w in zip(store.views(), weights):
            lyr.params[name][...] = ops.asarray(np.asarray(w, dtype=np.float64))
    rng = np.random.default_rng(seed + 1)
    x_host = np.asarray(x, dtype=np.float64)
    x_dev = ops.asarray(x) if x_host.dtype == np.asarray(x).dtype else ops.asarray(x_host)

    def run(xd):
        ops.seed(seed)  # same dropout mask on every evaluation
        return layer.forward(xd, training=training)

    ops.seed(seed)
    y, backprop = layer.begin_update(x_dev, training=training)
    dy = rng.standard_normal(tuple(y.shape))
    dy_dev = ops.asarray(dy)
    store.grads[...] = 0
    dx = backprop(dy_dev, need_dx=True)
    dx_host = ops.to_host(dx).astype(np.float64)
    grads = {
        f"{lyr.name}.{n}": ops.to_host(lyr.grads[n]).astype(np.float64).ravel().copy()
        for lyr, n in store.views()
    }

    def objective(xd) -> float:
        return float((ops.to_host(run(xd)).astype(np.float64) * dy).sum())

    result = GradcheckResult()
    idx = _indices(x_host.size, max_checks, rng)
    num = np.empty(len(idx))
    for j, i in enumerate(idx):
        xp_, xm_ = x_host.copy().ravel(), x_host.copy().ravel()
        xp_[i] += eps
        xm_[i] -= eps
        num[j] = (
            objective(ops.asarray(xp_.reshape(x_host.shape)))
            - objective(ops.asarray(xm_.reshape(x_host.shape)))
        ) / (2 * eps)
    _compare("x", dx_host.ravel()[idx], num, atol, rtol, result)

    if check_params:
        for lyr, n in store.views():
            p = lyr.params[n]
            flat = p.reshape(-1)
            pidx = _indices(flat.size, max_checks, rng)
            num = np.empty(len(pidx))
            for j, i in enumerate(pidx):
                old = float(ops.to_host(flat[i]))
                flat[i] = old + eps
                f1 = objective(x_dev)
                flat[i] = old - eps
                f2 = objective(x_dev)
                flat[i] = old
                num[j] = (f1 - f2) / (2 * eps)
            _compare(f"{lyr.name}.{n}", grads[f"{lyr.name}.{n}"][pidx], num, atol, rtol, result)
    return result


def gradcheck_loss(
    loss,
    output,
    targets,
    backend="numpy",
    *,
    eps: float = 1e-6,
    atol: float = 1e-7,
    rtol: float = 1e-5,
) -> GradcheckResult:
    """Check a loss's gradient w.r.t. its input against float64 central differences."""
    from . import losses

    loss = losses.get(loss)
    ops = get_ops(backend, dtype="float64")
    out = np.asarray(output, dtype=np.float64)
    t = targets if np.asarray(targets).dtype.kind in "iu" else np.asarray(targets, np.float64)
    t_dev = ops.asarray(t)
    _, grad = loss(ops, ops.asarray(out), t_dev)
    num = np.empty(out.size)
    for i in range(out.size):
        a, b = out.copy().ravel(), out.copy().ravel()
        a[i] += eps
        b[i] -= eps
        fa = ops.to_float(loss(ops, ops.asarray(a.reshape(out.shape)), t_dev)[0])
        fb = ops.to_float(loss(ops, ops.asarray(b.reshape(out.shape)), t_dev)[0])
        num[i] = (fa - fb) / (2 * eps)
    result = GradcheckResult()
    _compare(f"{loss.name} input", ops.to_host(grad).ravel(), num, atol, rtol, result)
    return result


def assert_backends_agree(
    layer: Layer,
    x,
    backends=None,
    *,
    training: bool = False,
    dtype: str = "float64",
    rtol: float = 1e-6,
    atol: float = 1e-8,
    seed: int = 0,
) -> dict:
    """Run `layer` (rebuilt from its config) on each backend from the same weights, compare its
    output, input gradient and parameter gradients with the numpy reference.

    Stochastic layers draw from each backend's own generator, so compare them with
    training=False (or rate 0). Returns {backend: max abs difference}."""
    backends = [b for b in (backends or available_backends()) if b != "numpy"]
    spec = layer_to_dict(layer)

    def run(name):
        lyr = layer_from_dict(copy.deepcopy(spec))
        ops, store = build(lyr, name, dtype, seed)  # same seed: same weights on every backend
        y, backprop = lyr.begin_update(ops.asarray(np.asarray(x, dtype=dtype)), training=training)
        dy = np.random.default_rng(seed + 1).standard_normal(tuple(y.shape))
        store.grads[...] = 0
        dx = backprop(ops.asarray(dy), need_dx=True)
        grads = [ops.to_host(l_.grads[n]) for l_, n in store.views()]
        bufs = [ops.to_host(v) for leaf in lyr.leaves() for v in leaf.buffers.values()]
        return [ops.to_host(y), ops.to_host(dx), *grads, *bufs]

    ref = run("numpy")
    report = {}
    for name in backends:
        got = run(name)
        worst = 0.0
        for k, (a, b) in enumerate(zip(ref, got)):
            np.testing.assert_allclose(
                b,
                a,
                rtol=rtol,
                atol=atol,
                err_msg=f"backend {name!r} disagrees with numpy on "
                f"{'output' if k == 0 else 'dx' if k == 1 else f'tensor {k}'}",
            )
            worst = max(worst, float(np.abs(a - b).max()) if a.size else 0.0)
        report[name] = worst
    return report
