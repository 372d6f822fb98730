"""Numba optimizer kernels: the whole SGD / Adam / AdamW / RMSprop / Adagrad / Adadelta update as
one loop over the flat parameter buffer (one read of p, g and the state, one write), with the
scalars formed in float64 in Python and rounded to the array dtype once (packed into `sc`), as
NumPy's weak scalars are in the reference (`reference_optim.py`).

SGD and Adam are driven by `NumbaOps` (numba_cpu.py); RMSprop, Adagrad and Adadelta by the
`NumbaOptimKernels` mixin below, which NumbaOps inherits before the reference `Ops`. Each update
runs the serial driver below `numba_dispatch.PAR_MIN_ELEMS` elements and the parallel one
(`prange` over contiguous chunks, each chunk owning its elements) above it.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .numba_common import PAR as _PAR
from .numba_common import SER as _SER
from .numba_common import same_float
from .numba_dispatch import _span, dispatch


# ============================================================================================
# Element helpers (serial; inlined by LLVM into the drivers)
# ============================================================================================
@njit(**_SER)
def _sgd_vec(p, g, vel, sc, has_wd, has_mom, nesterov):
    """PyTorch SGD over 1-D p; sc = [lr, momentum, weight_decay] in the array dtype."""
    lr, mu, wd = sc[0], sc[1], sc[2]
    n = p.shape[0]
    if has_mom:
        if has_wd:
            for i in range(n):
                gi = g[i] + wd * p[i]
                vi = vel[i] * mu + gi
                vel[i] = vi
                p[i] -= lr * (gi + mu * vi if nesterov else vi)
        else:
            for i in range(n):
                gi = g[i]
                vi = vel[i] * mu + gi
                vel[i] = vi
                p[i] -= lr * (gi + mu * vi if nesterov else vi)
    else:
        if has_wd:
            for i in range(n):
                p[i] -= lr * (g[i] + wd * p[i])
        else:
            for i in range(n):
                p[i] -= lr * g[i]


@njit(**_SER)
def _adam_vec(p, g, m, v, sc, mode):
    """Adam over 1-D arrays. sc = [beta1, 1-beta1, beta2, 1-beta2, lr/bc1, sqrt(bc2), eps, wd,
    1-lr*wd] in the array dtype; mode 0: no decay, 1: L2 (Adam), 2: decoupled (AdamW)."""
    b1, omb1, b2, omb2 = sc[0], sc[1], sc[2], sc[3]
    step, bc2s, eps, wd, decay = sc[4], sc[5], sc[6], sc[7], sc[8]
    n = p.shape[0]
    if mode == 0:
        for i in range(n):
            gi = g[i]
            mi = m[i] * b1 + omb1 * gi
            vi = v[i] * b2 + omb2 * (gi * gi)
            m[i] = mi
            v[i] = vi
            p[i] -= step * mi / (np.sqrt(vi) / bc2s + eps)
    elif mode == 1:
        for i in range(n):
            pi = p[i]
            gi = g[i] + wd * pi
            mi = m[i] * b1 + omb1 * gi
            vi = v[i] * b2 + omb2 * (gi * gi)
            m[i] = mi
            v[i] = vi
            p[i] = pi - step * mi / (np.sqrt(vi) / bc2s + eps)
    else:
        for i in range(n):
            pi = p[i] * decay
            gi = g[i]
            mi = m[i] * b1 + omb1 * gi
            vi = v[i] * b2 + omb2 * (gi * gi)
            m[i] = mi
            v[i] = vi
            p[i] = pi - step * mi / (np.sqrt(vi) / bc2s + eps)


@njit(**_SER)
def _rmsprop_vec(p, g, sq, ga, buf, sc, has_wd, centered, has_mom):
    """PyTorch RMSprop over 1-D arrays; sc = [lr, alpha, 1-alpha, eps, wd, momentum] in the
    array dtype. `ga` is read only when centered, `buf` only with momentum (the caller passes
    `p` for an unused one). The centered variance is clamped at 0 as in the reference."""
    lr, a, oma, eps, wd, mu = sc[0], sc[1], sc[2], sc[3], sc[4], sc[5]
    zero = lr - lr  # 0 in the array dtype (a literal 0 would widen float32 to float64)
    n = p.shape[0]
    for i in range(n):
        pi = p[i]
        gi = g[i]
        if has_wd:
            gi = gi + wd * pi
        si = sq[i] * a + oma * (gi * gi)
        sq[i] = si
        if centered:
            ai = ga[i] * a + oma * gi
            ga[i] = ai
            var = si - ai * ai
            if var < zero:
                var = zero
            d = np.sqrt(var) + eps
        else:
            d = np.sqrt(si) + eps
        if has_mom:
            bi = buf[i] * mu + gi / d
            buf[i] = bi
            p[i] = pi - lr * bi
        else:
            p[i] = pi - lr * (gi / d)


@njit(**_SER)
def _adagrad_vec(p, g, s, sc, has_wd):
    """PyTorch Adagrad over 1-D arrays; sc = [lr / (1 + (step-1)*lr_decay), eps, wd]."""
    clr, eps, wd = sc[0], sc[1], sc[2]
    n = p.shape[0]
    for i in range(n):
        pi = p[i]
        gi = g[i]
        if has_wd:
            gi = gi + wd * pi
        si = s[i] + gi * gi
        s[i] = si
        p[i] = pi - clr * (gi / (np.sqrt(si) + eps))


@njit(**_SER)
def _adadelta_vec(p, g, sq, acc, sc, has_wd):
    """PyTorch Adadelta over 1-D arrays; sc = [lr, rho, 1-rho, eps, wd]."""
    lr, rho, omr, eps, wd = sc[0], sc[1], sc[2], sc[3], sc[4]
    n = p.shape[0]
    for i in range(n):
        pi = p[i]
        gi = g[i]
        if has_wd:
            gi = gi + wd * pi
        si = sq[i] * rho + omr * (gi * gi)
        sq[i] = si
        di = np.sqrt(acc[i] + eps) / np.sqrt(si + eps) * gi
        acc[i] = acc[i] * rho + omr * (di * di)
        p[i] = pi - lr * di


# ============================================================================================
# Drivers: serial (*_ser) and parallel (*_par, prange over nchunks chunks)
# ============================================================================================
@njit(**_SER)
def _sgd_ser(p, g, vel, sc, has_wd, has_mom, nesterov):
    _sgd_vec(p, g, vel, sc, has_wd, has_mom, nesterov)


@njit(**_PAR)
def _sgd_par(p, g, vel, sc, has_wd, has_mom, nesterov, nchunks):
    n = p.shape[0]
    for c in prange(nchunks):
        lo, hi = _span(c, nchunks, n)
        _sgd_vec(p[lo:hi], g[lo:hi], vel[lo:hi], sc, has_wd, has_mom, nesterov)


@njit(**_SER)
def _adam_ser(p, g, m, v, sc, mode):
    _adam_vec(p, g, m, v, sc, mode)


@njit(**_PAR)
def _adam_par(p, g, m, v, sc, mode, nchunks):
    n = p.shape[0]
    for c in prange(nchunks):
        lo, hi = _span(c, nchunks, n)
        _adam_vec(p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi], sc, mode)


@njit(**_SER)
def _rmsprop_ser(p, g, sq, ga, buf, sc, has_wd, centered, has_mom):
    _rmsprop_vec(p, g, sq, ga, buf, sc, has_wd, centered, has_mom)


@njit(**_PAR)
def _rmsprop_par(p, g, sq, ga, buf, sc, has_wd, centered, has_mom, nchunks):
    n = p.shape[0]
    for c in prange(nchunks):
        lo, hi = _span(c, nchunks, n)
        _rmsprop_vec(p[lo:hi], g[lo:hi], sq[lo:hi], ga[lo:hi], buf[lo:hi], sc, has_wd,
                     centered, has_mom)


@njit(**_SER)
def _adagrad_ser(p, g, s, sc, has_wd):
    _adagrad_vec(p, g, s, sc, has_wd)


@njit(**_PAR)
def _adagrad_par(p, g, s, sc, has_wd, nchunks):
    n = p.shape[0]
    for c in prange(nchunks):
        lo, hi = _span(c, nchunks, n)
        _adagrad_vec(p[lo:hi], g[lo:hi], s[lo:hi], sc, has_wd)


@njit(**_SER)
def _adadelta_ser(p, g, sq, acc, sc, has_wd):
    _adadelta_vec(p, g, sq, acc, sc, has_wd)


@njit(**_PAR)
def _adadelta_par(p, g, sq, acc, sc, has_wd, nchunks):
    n = p.shape[0]
    for c in prange(nchunks):
        lo, hi = _span(c, nchunks, n)
        _adadelta_vec(p[lo:hi], g[lo:hi], sq[lo:hi], acc[lo:hi], sc, has_wd)


# ============================================================================================
# The backend side: RMSprop / Adagrad / Adadelta for NumbaOps
# ============================================================================================
class NumbaOptimKernels:
    """Mixin of NumbaOps (before the reference `Ops`): the fused RMSprop, Adagrad and Adadelta
    updates. Each checks its buffers (one float dtype the kernels compile for, 1-D, C-contiguous,
    equal sizes, writable parameters: the flat buffers) and otherwise hands the call to the
    reference (`super()`), which updates views and other layouts in place. Uses NumbaOps's
    chunk policy `self._chunks` (the tests override it to force the parallel drivers)."""

    @staticmethod
    def _flat_update_ok(*arrays) -> bool:
        return (
            same_float(*arrays)
            and all(a.ndim == 1 and a.flags.c_contiguous for a in arrays)
            and len({a.shape for a in arrays}) == 1
            and arrays[0].flags.writeable
        )

    def rmsprop_update(
        self,
        params,
        grads,
        square_avg,
        grad_avg,
        momentum_buffer,
        lr: float,
        alpha: float,
        eps: float,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
    ) -> None:
        """PyTorch's RMSprop as one fused loop (see `reference_optim.OptimKernels`)."""
        state = [square_avg]
        if centered:
            state.append(grad_avg)
        if momentum:
            state.append(momentum_buffer)
        if any(a is None for a in state) or not self._flat_update_ok(params, grads, *state):
            return super().rmsprop_update(params, grads, square_avg, grad_avg, momentum_buffer,
                                          lr, alpha, eps, weight_decay, momentum, centered)
        sc = np.array([lr, alpha, 1.0 - alpha, eps, weight_decay, momentum], dtype=params.dtype)
        ga = grad_avg if centered else params  # unused ones: never read nor written
        buf = momentum_buffer if momentum else params
        dispatch(self._chunks(params.size), _rmsprop_ser, _rmsprop_par, params, grads,
                 square_avg, ga, buf, sc, bool(weight_decay), bool(centered), bool(momentum))
        return None

    def adagrad_update(
        self,
        params,
        grads,
        state_sum,
        step: int,
        lr: float,
        lr_decay: float,
        eps: float,
        weight_decay: float = 0.0,
    ) -> None:
        """PyTorch's Adagrad as one fused loop; the decayed rate lr / (1 + (step-1)*lr_decay)
        is formed in float64 here."""
        if not self._flat_update_ok(params, grads, state_sum):
            return super().adagrad_update(params, grads, state_sum, step, lr, lr_decay, eps,
                                          weight_decay)
        clr = lr / (1.0 + (step - 1) * lr_decay)
        sc = np.array([clr, eps, weight_decay], dtype=params.dtype)
        dispatch(self._chunks(params.size), _adagrad_ser, _adagrad_par, params, grads,
                 state_sum, sc, bool(weight_decay))
        return None

    def adadelta_update(
        self,
        params,
        grads,
        square_avg,
        acc_delta,
        lr: float,
        rho: float,
        eps: float,
        weight_decay: float = 0.0,
    ) -> None:
        """PyTorch's Adadelta as one fused loop (see `reference_optim.OptimKernels`)."""
        if not self._flat_update_ok(params, grads, square_avg, acc_delta):
            return super().adadelta_update(params, grads, square_avg, acc_delta, lr, rho, eps,
                                           weight_decay)
        sc = np.array([lr, rho, 1.0 - rho, eps, weight_decay], dtype=params.dtype)
        dispatch(self._chunks(params.size), _adadelta_ser, _adadelta_par, params, grads,
                 square_avg, acc_delta, sc, bool(weight_decay))
        return None


def warmup_calls(dt):
    """(name, thunk) pairs that call every driver here once on tiny arrays of dtype `dt`."""
    f = np.ones(8, dt)
    g = np.ones(8, dt)
    h = np.ones(8, dt)
    q = np.ones(8, dt)
    r = np.ones(8, dt)
    sc9 = np.ones(9, dt)
    sc3 = np.ones(3, dt)
    sc6 = np.ones(6, dt)
    sc5 = np.ones(5, dt)
    return [
        ("sgd/serial", lambda: _sgd_ser(f, g, h, sc3, True, True, False)),
        ("sgd/parallel", lambda: _sgd_par(f, g, h, sc3, True, True, False, 2)),
        ("adam/serial", lambda: _adam_ser(f, g, h, q, sc9, 0)),
        ("adam/parallel", lambda: _adam_par(f, g, h, q, sc9, 0, 2)),
        ("rmsprop/serial", lambda: _rmsprop_ser(f, g, h, q, r, sc6, True, True, True)),
        ("rmsprop/parallel", lambda: _rmsprop_par(f, g, h, q, r, sc6, True, True, True, 2)),
        ("adagrad/serial", lambda: _adagrad_ser(f, g, h, sc3, True)),
        ("adagrad/parallel", lambda: _adagrad_par(f, g, h, sc3, True, 2)),
        ("adadelta/serial", lambda: _adadelta_ser(f, g, h, q, sc5, True)),
        ("adadelta/parallel", lambda: _adadelta_par(f, g, h, q, sc5, True, 2)),
    ]
