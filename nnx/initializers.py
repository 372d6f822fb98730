"""Weight initializers. Each draws on the host from a seeded NumPy generator, so one seed gives
the same initial weights on every backend (backends can be compared from the same start).

Fans: a (in, out) matrix has fan_in=in, fan_out=out; a conv kernel (out, in, kh, kw) has
fan_in=in*kh*kw, fan_out=out*kh*kw. Layers may pass their own fans (e.g. recurrent gates).
"""

from __future__ import annotations

import math

import numpy as np

from .errors import unknown


def fans(shape: tuple) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight of `shape`: (1, 1) for a scalar, (n, n) for a vector, (in, out)
    for a matrix, in/out times the receptive field for a conv kernel."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def zeros(rng, shape, fan):
    """Zeros of `shape` (`rng` and `fan` unused)."""
    return np.zeros(shape)


def ones(rng, shape, fan):
    """Ones of `shape` (`rng` and `fan` unused)."""
    return np.ones(shape)


def glorot_uniform(rng, shape, fan):
    """U(-l, l) of `shape` from `rng`, l = sqrt(6 / (fan_in + fan_out))."""
    limit = math.sqrt(6.0 / (fan[0] + fan[1]))
    return rng.uniform(-limit, limit, size=shape)


def glorot_normal(rng, shape, fan):
    """N(0, 2 / (fan_in + fan_out)) of `shape` from `rng`."""
    return rng.standard_normal(shape) * math.sqrt(2.0 / (fan[0] + fan[1]))


def he_uniform(rng, shape, fan):
    """U(-l, l) of `shape` from `rng`, l = sqrt(6 / fan_in) (ReLU layers)."""
    limit = math.sqrt(6.0 / fan[0])
    return rng.uniform(-limit, limit, size=shape)


def he_normal(rng, shape, fan):
    """N(0, 2 / fan_in) of `shape` from `rng` (ReLU layers)."""
    return rng.standard_normal(shape) * math.sqrt(2.0 / fan[0])


def lecun_uniform(rng, shape, fan):
    """U(-l, l) of `shape` from `rng`, l = sqrt(3 / fan_in)."""
    limit = math.sqrt(3.0 / fan[0])
    return rng.uniform(-limit, limit, size=shape)


def orthogonal(rng, shape, fan):
    """Orthogonal rows/columns (recurrent weights); QR of a Gaussian matrix."""
    rows, cols = shape[0], math.prod(shape[1:])
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    q = q if rows >= cols else q.T
    return q[:rows, :cols].reshape(shape)


INITIALIZERS = {
    "zeros": zeros,
    "ones": ones,
    "glorot_uniform": glorot_uniform,
    "glorot_normal": glorot_normal,
    "xavier_uniform": glorot_uniform,
    "xavier_normal": glorot_normal,
    "he_uniform": he_uniform,
    "he_normal": he_normal,
    "kaiming_uniform": he_uniform,
    "kaiming_normal": he_normal,
    "lecun_uniform": lecun_uniform,
    "orthogonal": orthogonal,
}


def get(name):
    """An initializer by name, or a callable `(rng, shape, fan) -> ndarray` as is."""
    if callable(name):
        return name
    if name not in INITIALIZERS:
        raise unknown("initializer", name, INITIALIZERS)
    return INITIALIZERS[name]


def initialize(spec, rng) -> np.ndarray:
    """The initial value of parameter `spec` (its shape, fan and initializer) drawn from `rng`: a
    float64 array; ValueError if the initializer returns another shape."""
    fan = spec.fan or fans(tuple(spec.shape))
    value = np.asarray(get(spec.initializer)(rng, tuple(spec.shape), fan), dtype=np.float64)
    if value.shape != tuple(spec.shape):
        raise ValueError(
            f"initializer for {spec.name!r} returned shape {value.shape}, "
            f"expected {tuple(spec.shape)}"
        )
    return value
