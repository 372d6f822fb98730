"""What every suite module shares: the float32 byte size and seeded random inputs."""

from __future__ import annotations

import numpy as np

F32 = 4  # bytes per float32


def randn(shape, seed=0, scale=1.0):
    """A seeded float32 standard-normal array (host), times `scale`."""
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)
