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

from nnx import compat

from .numba_blas import gemm_for
from .numba_common import GELU
from .numba_common import SER as _SER

# NumPy's OpenBLAS loaded before nnx could shorten its spin time (nnx.compat.blas_spins): its
# workers then spin ~0.1 s after every GEMM, and a parallel kernel right after a GEMM fights
# them for the 2 cores (zoo CNN step, 2 threads: 75 ms with parallel kernels, 48 ms serial).
# Serial kernels then; GEMMs keep their threads. Set once at import; tests may override it.
SERIAL_NEXT_TO_BLAS = bool(compat.blas_spins)

# Below this many elements a kernel runs serially (measured: next to OpenBLAS's threads on 2
# cores, thread launches cost more than they save on training-size arrays).
PAR_MIN_ELEMS = 1 << 18

# Activations that stay on the reference (NumPy) kernels because NumPy measured faster: none now.
# It held tanh and gelu while the Numba kernels called scalar libm tanh (no SVML here: 4-6x slower
# than NumPy's SIMD tanh; tanh fwd+bwd 0.17-0.27x, gelu 0.25-0.75x of NumPy). With numba_math's
# vectorized float32 tanh / gelu the Numba kernels measured, against the reference on the same
# arrays (float32, interleaved rounds, medians of per-round ratios; 2-vCPU box shared with other
# jobs), faster at 128x512 / 1024x4096: tanh forward 3.1x / 7.1x, gelu forward 6.2x / 21x, gelu
# backward 16x / 26x. The set stays, for a kernel that loses to NumPy again: forward on NumPy for
# its members, and the backward too for those in NUMPY_FASTER_GRAD.
NUMPY_FASTER = frozenset()
# The ones whose backward also stays on NumPy: those whose derivative needs the transcendental
# again (gelu); tanh's and sigmoid's come from the saved output (dy * (1 - y*y)).
NUMPY_FASTER_GRAD = NUMPY_FASTER & {GELU}


def nchunks(work: int) -> int:
    """1 (serial) below PAR_MIN_ELEMS elements, or when OpenBLAS's workers spin after every
    GEMM (`SERIAL_NEXT_TO_BLAS`), else one chunk per Numba thread."""
    if work < PAR_MIN_ELEMS or SERIAL_NEXT_TO_BLAS:
        return 1
    return numba.get_num_threads()


# A recurrence whose batch splits into blocks of at least this many rows runs each block through
# every timestep on its own thread, with single-threaded BLAS calls (numba_blas). Below, a
# block's GEMMs are too small to gain on OpenBLAS's own threads splitting one GEMM.
SEQ_MIN_ROWS = 16


def blas_plan(dtype) -> tuple | None:
    """(gemm address, ilp64, threads) when kernels may call the BLAS GEMM single-threaded from
    several Numba threads at once (numba_blas), else None: one Numba thread, OpenBLAS's workers
    spinning after each GEMM (`SERIAL_NEXT_TO_BLAS`: they would take a core from ours; measured
    with NumPy imported first, interleaved: the zoo LSTM step 0.74x and the CNN step 0.91x of
    the per-step / pipeline paths' speed), or no BLAS GEMM that Numba can call for `dtype`."""
    if SERIAL_NEXT_TO_BLAS:
        return None
    nt = numba.get_num_threads()
    gemm = gemm_for(dtype) if nt > 1 else None
    return None if gemm is None else (gemm[0], gemm[1], nt)


def row_blocks(n_rows: int, dtype) -> tuple | None:
    """(gemm address, ilp64, blocks) for a recurrence over `n_rows` batch rows run as blocks of
    rows, one thread each (numba_blas), or None for the per-step path: too few rows, or no
    `blas_plan`."""
    plan = blas_plan(dtype) if n_rows >= 2 * SEQ_MIN_ROWS else None
    if plan is None:
        return None
    return plan[0], plan[1], min(plan[2], n_rows // SEQ_MIN_ROWS)


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
