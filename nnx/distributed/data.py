"""Data that every rank should not hold whole: `shard` gives this rank its equal part (train on
the parts with `DistributedOptimizer(..., data="sharded")`, batch_size per rank). With
data="replicated" (the default) every rank holds all of x, y and the strategy takes this rank's
share of each global batch instead (`DataParallel.split_batch`)."""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from .comm import Communicator
from .launch import init


def shard(*arrays, comm: Communicator | None = None, seed: int | None = None):
    """This rank's part of data that every rank should not hold whole.

    `shard(n)` returns a `slice` for n samples (read only that part from disk); `shard(x, y)`
    returns this rank's slices of x and y (views: a `np.load(..., mmap_mode='r')` array stays
    on disk). Every rank gets n // size samples (the remainder is dropped) so that every rank
    runs the same number of steps. With `seed`, samples are assigned from a permutation (the
    same on every rank) instead of contiguous blocks (a copy). Train on the parts with
    `DistributedOptimizer(..., data="sharded")`; batch_size is then per rank."""
    comm = comm if comm is not None else init()
    if not arrays:
        raise TypeError("shard() needs n or arrays")
    first = arrays[0]
    n = int(first) if isinstance(first, (int, np.integer)) else len(first)
    per = n // comm.size
    if per == 0:
        raise ValueError(f"shard: {n} samples cannot be split over {comm.size} ranks")
    lo, hi = comm.rank * per, (comm.rank + 1) * per
    if isinstance(first, (int, np.integer)):
        if len(arrays) > 1:
            raise TypeError("shard(n) takes no arrays")
        return slice(lo, hi) if seed is None else \
            np.sort(np.random.default_rng(seed).permutation(n)[lo:hi])
    for a in arrays[1:]:
        if len(a) != n:
            raise ShapeError(f"shard: arrays have different lengths ({n} and {len(a)})")
    if seed is None:
        parts = tuple(a[lo:hi] for a in arrays)
    else:
        idx = np.sort(np.random.default_rng(seed).permutation(n)[lo:hi])
        parts = tuple(a[idx] for a in arrays)
    return parts[0] if len(parts) == 1 else parts
