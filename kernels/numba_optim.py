"""Numba optimizer kernels: the whole SGD / Adam / AdamW update as one loop over the flat
parameter buffer (one read of p, g and the state, one write), with the scalars rounded to the
array dtype once in Python (`NumbaOps` packs them into `sc`)."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .numba_common import PAR as _PAR
from .numba_common import SER as _SER
from .numba_dispatch import _span


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


def warmup_calls(dt):
    """(name, thunk) pairs that call every driver here once on tiny arrays of dtype `dt`."""
    f = np.ones(8, dt)
    g = np.ones(8, dt)
    h = np.ones(8, dt)
    q = np.ones(8, dt)
    sc9 = np.ones(9, dt)
    sc3 = np.ones(3, dt)
    return [
        ("sgd/serial", lambda: _sgd_ser(f, g, h, sc3, True, True, False)),
        ("sgd/parallel", lambda: _sgd_par(f, g, h, sc3, True, True, False, 2)),
        ("adam/serial", lambda: _adam_ser(f, g, h, q, sc9, 0)),
        ("adam/parallel", lambda: _adam_par(f, g, h, q, sc9, 0, 2)),
    ]
