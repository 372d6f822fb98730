"""The one chunk policy and dispatch helper of every Numba kernel family (dense, loss, optim,
dropout and the layer kernels): when a call runs serially or in parallel, how the parallel
drivers split their work, how a driver is called, and which activations stay on NumPy.

- Every kernel exists twice: a serial driver (`*_ser`) and a parallel one (`*_par`). The
  row/element families' parallel drivers run `prange` over `nchunks` contiguous chunks
  (`_span`); each chunk owns its output rows, and column reductions (the bias gradient, the
  loss) go into per-chunk partials combined after the parallel loop, so no two threads ever
  `+=` the same memory. The layer kernels' parallel drivers run `prange` over units that own
  their output (a pooling plane, a batch-norm / col2im channel) and take no count.
- Small problems take the serial driver: a parallel launch costs tens of microseconds on a
  2-vCPU box (worker wake-up, and a core that OpenBLAS's own worker may still hold), more than
  the whole pass costs at training-batch sizes. The crossover is `PAR_MIN_ELEMS` (measured by
  tools/measure_numba.py); `nchunks(work)` applies it.
- The thread count is read in Python (`numba.get_num_threads()`) and passed in as `nchunks`;
  calling it inside a cached kernel would break caching.

Threads (measured on the 2-vCPU box with tools/measure_numba.py): OpenBLAS and Numba both keep
their default 2 threads, and `nnx.compat` sets OMP_WAIT_POLICY=passive so idle Numba workers sleep
instead of spinning against OpenBLAS's. We do not touch the BLAS thread count. At the MLP's
batch-128 sizes (<= 128x512 per epilogue) the serial drivers are 1.5-15x faster than the parallel
ones (a launch costs ~15-30 us there); from 2**18-2**19 elements on the parallel ones win by
10-25% on a quiet box (the Adam update over 535k parameters, a 2048-row epilogue), hence
PAR_MIN_ELEMS = 2**18.
Caveat measured there too: while other processes load the box, OpenBLAS's spin-waiting 2-thread
GEMMs slow down 5-20x (1 thread does not); that is a BLAS setting, outside this module.
"""

from __future__ import annotations

import numba
from numba import njit

from .numba_common import GELU, TANH
from .numba_common import SER as _SER

# Below this many elements a kernel runs serially (measured: next to OpenBLAS's threads on 2
# cores, thread launches cost more than they save on training-size arrays).
PAR_MIN_ELEMS = 1 << 18

# Activations whose forward calls tanh: Numba has no SVML here and calls scalar libm tanh, which
# measured 4-6x slower than NumPy's SIMD tanh (benchmarks/results: tanh fwd+bwd 0.17-0.27x,
# gelu 0.25-0.75x). Their forward (and gelu's backward, which needs tanh too) stay on the
# reference kernels; tanh's backward, dy * (1 - y*y), stays fused.
NUMPY_FASTER = frozenset({TANH, GELU})


def nchunks(work: int) -> int:
    """1 (serial) below PAR_MIN_ELEMS elements, else one chunk per Numba thread."""
    if work < PAR_MIN_ELEMS:
        return 1
    return numba.get_num_threads()


def dispatch(nc: int, ser, par, *args, chunked: bool = True):
    """`ser(*args)` when nc == 1, else the parallel driver: `par(*args, nc)`, or `par(*args)`
    with `chunked=False` (a layer driver whose `prange` runs over its own planes/channels).
    Returns what the driver returns."""
    if nc == 1:
        return ser(*args)
    if chunked:
        return par(*args, nc)
    return par(*args)


# Inlined by LLVM into every family's parallel drivers. Numba's on-disk cache is keyed on the
# caller's source file only: after editing `_span`, clear the kernels' __pycache__ caches.
@njit(**_SER)
def _span(c, nchunks, n):
    """Bounds of chunk c of nchunks over range(n)."""
    return (c * n) // nchunks, ((c + 1) * n) // nchunks
