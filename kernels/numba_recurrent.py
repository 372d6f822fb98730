"""Numba recurrent-layer kernels, mixed into NumbaOps: the LSTM forward and backward.

The reference's structure and cost model (kernels/reference_recurrent.py), with the elementwise
work of each timestep fused into one Numba pass (numba_lstm.py). Two drivers:

- Blocks of rows (`numba_dispatch.row_blocks`: 2+ Numba threads, 32+ batch rows, NumPy's
  OpenBLAS not spinning): batch rows never depend on other rows, so each Numba thread carries
  its block of rows through every timestep, calling the BLAS GEMM itself, single-threaded
  (numba_blas.py), and then the step kernel on the same rows while they are in its cache; no
  barrier and no Python per step. Forward: per step x_t W_ih (+ h_{t-1} W_hh) into the block's
  rows of gates[t] (no separate input-projection pass over (T, N, 4H)), then the step kernel.
  Backward: per step the step kernel, then the block's rows of dh = dz_t W_hh^T. Measured on
  the 2-vCPU Zen 3 box, N128 T28 I28 H128 float32, interleaved: forward 1.40x and backward
  1.17x faster than the per-step driver (two single-threaded 64-row GEMMs at once: 117 GFLOP/s;
  OpenBLAS's two threads on the 128-row GEMM: 92); the zoo LSTM's train step 1.27-1.33x.
- Per step (otherwise): forward: x_t W_ih for every timestep is one GEMM (no bias pass: the
  step kernel adds b); per timestep one recurrent GEMM, `np.matmul(h_{t-1}, W_hh, out=u)` into
  one preallocated buffer, then the step kernel (bias, gates, cell, tanh(c), h). Backward: per
  timestep the step kernel (dz_t, dc, and the bias gradient summed on the way, instead of a
  separate pass over dz: ~0.45 ms), then `np.matmul(dz_t, W_hh^T, out=buf)`. Kernels run
  serially or in parallel per `numba_dispatch.nchunks` over one step's N x 4H block.
After either backward loop, dW_hh, dW_ih and dx are one GEMM each over all timesteps (they hold
most of the backward's FLOPs; per-block partial dW_hh GEMMs on each step's 64 rows measured no
faster). Storage is time-major (T, N, .), so each step's blocks are contiguous; dhs is read in
place in either layout (batch-first C-contiguous, or the time-major storage behind a swapaxes
view).

`saved` has the reference's format and meaning, (x_tm, h0, c0, activated gates, c, tanh(c), h),
all time-major, so the reference's backward accepts this forward's output and this backward the
reference's (a mixed pair is as accurate as the two forwards agree: float32 gates differ from
the reference's by ~1e-7).

Anything the kernels are not compiled for (non-NumPy arrays, dtypes other than float32 /
float64, mixed dtypes, a non-contiguous `saved`, shapes other than the exact ones they index by,
such as a (1, H) initial state the reference broadcasts) falls back to the reference
(`super()`).

Measured and not kept (2-vCPU box, N128 T28 I28 H128 float32, interleaved A/B):
- the parallel drivers at this size (forced): forward + backward 2-10% slower. Each kernel
  runs right after a GEMM, while OpenBLAS's worker still spins on the other core (see
  numba_dispatch), so the dispatch policy's serial choice stands.
- each batch half's whole recurrence (its GEMMs and kernels) on its own Python thread: 6-9%
  slower with 2 BLAS threads, 42-56% slower with the BLAS set to 1 thread around the loops
  (the GIL between steps; the row-block driver does the same inside one Numba kernel).
- a feature-major layout ((4H, N) blocks): the recurrent forward GEMM 13-33% faster at 2 threads
  (equal at 1), every other
  GEMM unchanged; not worth a second layout that vectorizes badly at decoding's small batches.
"""

from __future__ import annotations

import numpy as np

from .numba_blas import single_threaded_blas
from .numba_common import contiguous as _c
from .numba_common import same_float as _same_float
from .numba_dispatch import dispatch, nchunks, row_blocks
from .numba_lstm import (
    _lstm_bwd_par,
    _lstm_bwd_seq,
    _lstm_bwd_ser,
    _lstm_fwd_par,
    _lstm_fwd_seq,
    _lstm_fwd_ser,
)

_SCRATCH_MAX_BYTES = 64 << 20  # the backward's dz buffer is reused up to this size


def _forward_shapes_exact(x, W_ih, W_hh, b, h0, c0) -> bool:
    """x (N, T, F), W_ih (F, 4H), W_hh (H, 4H), b 4H values, h0 / c0 (N, H) or None: the
    shapes the kernels assume (they read and write by these sizes, unchecked)."""
    if x.ndim != 3 or W_ih.ndim != 2 or W_hh.ndim != 2:
        return False
    n, _, f = x.shape
    hid, g4 = W_hh.shape
    return (g4 == 4 * hid and W_ih.shape == (f, g4) and (b is None or b.size == g4)
            and all(s is None or s.shape == (n, hid) for s in (h0, c0)))


def _backward_shapes_exact(dhs, W_ih, W_hh, saved, dh_last, dc_last) -> bool:
    """The backward's arrays agree with `saved` (time-major (T, N, .) blocks) as the kernels
    assume: dhs (N, T, H) or None, dh_last / dc_last (N, H) or None, the weights and states as
    the forward's."""
    x_tm, h0, c0, gates, cs, tcs, hs = saved
    if hs.ndim != 3 or x_tm.ndim != 3 or W_hh.ndim != 2 or W_ih.ndim != 2:
        return False
    t_len, n, hid = hs.shape
    g4 = 4 * hid
    return (W_hh.shape == (hid, g4) and W_ih.shape == (x_tm.shape[2], g4)
            and x_tm.shape[:2] == (t_len, n) and gates.shape == (t_len, n, g4)
            and cs.shape == hs.shape and tcs.shape == hs.shape
            and (dhs is None or dhs.shape == (n, t_len, hid))
            and all(s is None or s.shape == (n, hid) for s in (h0, c0, dh_last, dc_last)))


class NumbaRecurrentKernels:
    """Mixin placed before `NumbaLayerKernels` in `NumbaOps`: LSTM forward and backward."""

    def lstm_forward(self, x, W_ih, W_hh, b, h0=None, c0=None):
        arrays = [a for a in (x, W_ih, W_hh, b, h0, c0) if a is not None]
        if not (_same_float(*arrays) and _forward_shapes_exact(x, W_ih, W_hh, b, h0, c0)):
            # the kernels index with these shapes unchecked: anything else (a broadcast state,
            # a mismatched weight) gets the reference's broadcasting or its error
            return super().lstm_forward(x, W_ih, W_hh, b, h0, c0)
        x_tm = self._time_major(x)
        t_len, n, f = x_tm.shape
        hid, g4 = W_hh.shape
        dt = x_tm.dtype
        bias = np.zeros(g4, dtype=dt) if b is None else _c(b.reshape(-1))
        cs = np.empty((t_len, n, hid), dtype=dt)
        tcs = np.empty_like(cs)
        hs = np.empty_like(cs)
        c0k = np.zeros((1, hid), dtype=dt) if c0 is None else _c(c0)
        blocks = row_blocks(n, dt)
        if blocks is not None:  # each block of rows through every step on its own thread
            addr, ilp64, nb = blocks
            gates = np.empty((t_len, n, g4), dtype=dt)
            h0k = c0k if h0 is None else _c(h0)
            with single_threaded_blas():
                _lstm_fwd_seq(addr, ilp64, x_tm, _c(W_ih), gates, bias, _c(W_hh), h0k,
                              h0 is not None, cs, tcs, hs, c0k, c0 is not None, nb)
            return np.swapaxes(hs, 0, 1), (x_tm, h0, c0, gates, cs, tcs, hs)
        # x_t W_ih for every timestep in one GEMM; the bias is added in the step kernel, which
        # reads these blocks anyway (the separate bias pass over (T, N, 4H) measured ~0.5 ms)
        gates = np.matmul(x_tm.reshape(-1, f), W_ih).reshape(t_len, n, g4)
        u = np.empty((n, g4), dtype=dt)  # h_{t-1} W_hh, rewritten every step
        nc = nchunks(n * g4)
        h = h0
        for t in range(t_len):
            if h is not None:
                np.matmul(h, W_hh, out=u)
            args = (gates, bias, u, h is not None, cs, tcs, hs, c0k, c0 is not None, t)
            dispatch(nc, _lstm_fwd_ser, _lstm_fwd_par, *args)
            h = hs[t]
        return np.swapaxes(hs, 0, 1), (x_tm, h0, c0, gates, cs, tcs, hs)

    def lstm_backward(
        self,
        dhs,
        x,
        W_ih,
        W_hh,
        saved,
        dh_last=None,
        dc_last=None,
        need_dx=True,
        need_dh0=True,
        dW_ih_out=None,
        dW_hh_out=None,
        db_out=None,
    ):
        x_tm, h0, c0, gates, cs, tcs, hs = saved
        arrays = [
            a for a in (dhs, W_ih, W_hh, gates, cs, tcs, hs, c0, dh_last, dc_last) if a is not None
        ]
        if not (
            _same_float(*arrays)
            and gates.flags.c_contiguous
            and cs.flags.c_contiguous
            and tcs.flags.c_contiguous
            and _backward_shapes_exact(dhs, W_ih, W_hh, saved, dh_last, dc_last)
        ):
            return super().lstm_backward(
                dhs,
                x,
                W_ih,
                W_hh,
                saved,
                dh_last,
                dc_last,
                need_dx,
                need_dh0,
                dW_ih_out,
                dW_hh_out,
                db_out,
            )
        t_len, n, hid = hs.shape
        g4 = gates.shape[-1]
        dt = hs.dtype
        # dz of every step, consumed before we return: a reused per-thread buffer. A fresh one
        # per call (7.3 MB for the benchmark case) measured ~2600 page faults and ~15 ms more per
        # forward + backward on this VM (glibc hands such blocks back to the OS on free). Very
        # large ones are not kept alive between calls.
        small = gates.nbytes <= _SCRATCH_MAX_BYTES
        dz_all = self._scratch(gates.shape, dt) if small else np.empty_like(gates)
        dc = np.zeros((n, hid), dtype=dt) if dc_last is None else np.array(dc_last, order="C")
        dummy = np.zeros((1, 1), dtype=dt)
        c0k = dummy if c0 is None else _c(c0)
        # dhs is read in place when either layout is C-contiguous: batch-first (N, T, H), or the
        # time-major storage behind a swapaxes view (what an LSTM layer's own outputs are)
        dy, dy_tm = (dummy.reshape(1, 1, 1), False) if dhs is None else (dhs, False)
        if dhs is not None and not dhs.flags.c_contiguous:
            dy_tm = True
            dy = _c(np.swapaxes(dhs, 0, 1))
        # zeros, not the dummy: with no timesteps this is the dh0 returned
        dh = np.zeros((n, hid), dtype=dt) if dh_last is None else _c(dh_last)
        blocks = row_blocks(n, dt)
        if blocks is not None:  # each block of rows through every step on its own thread
            addr, ilp64, nb = blocks
            dbp = np.zeros((nb, g4), dtype=dt)
            if dh_last is not None:
                dh = dh.copy()  # rewritten in place: never the caller's dh_last
            with single_threaded_blas():
                _lstm_bwd_seq(addr, ilp64, gates, tcs, cs, c0k, c0 is not None, dh,
                              dh_last is not None, dy, dy_tm, dhs is not None, dc, dz_all,
                              _c(W_hh), need_dh0, dbp, nb)
            dh = dh if need_dh0 or t_len == 0 else None  # as the per-step path leaves it
            return self._lstm_weight_grads(h0, x_tm, hs, dz_all, W_ih, dbp, need_dx, need_dh0,
                                           dW_ih_out, dW_hh_out, db_out, dh, dc)
        buf = np.empty((n, hid), dtype=dt)  # dz_t W_hh^T, rewritten every step
        nc = nchunks(n * g4)
        dbp = np.zeros((nc, g4), dtype=dt)  # bias-gradient partials, one row per block of rows
        W_hhT = W_hh.T
        for t in range(t_len - 1, -1, -1):
            has_dh = t < t_len - 1 or dh_last is not None
            args = (
                gates,
                tcs,
                cs,
                c0k,
                c0 is not None,
                dh,
                has_dh,
                dy,
                dy_tm,
                dhs is not None,
                dc,
                dz_all,
                t,
                dbp,
            )
            dispatch(nc, _lstm_bwd_ser, _lstm_bwd_par, *args)
            if t > 0:
                dh = np.matmul(dz_all[t], W_hhT, out=buf)
            elif need_dh0:
                dh = dz_all[0] @ W_hhT
            else:
                dh = None
        return self._lstm_weight_grads(h0, x_tm, hs, dz_all, W_ih, dbp, need_dx, need_dh0,
                                       dW_ih_out, dW_hh_out, db_out, dh, dc)

    def _lstm_weight_grads(self, h0, x_tm, hs, dz_all, W_ih, dbp, need_dx, need_dh0, dW_ih_out,
                           dW_hh_out, db_out, dh, dc):
        """After BPTT: dW_hh, dW_ih and dx one GEMM each over all timesteps, db the sum of the
        partials; the backward's return tuple."""
        g4 = dz_all.shape[-1]
        dW_hh = self._dW_hh(h0, hs, dz_all, dW_hh_out)
        dz2 = dz_all.reshape(-1, g4)
        dW_ih = np.matmul(x_tm.reshape(-1, x_tm.shape[-1]).T, dz2, out=dW_ih_out)
        db = dbp[0] if len(dbp) == 1 else dbp.sum(axis=0)
        if db_out is not None:
            db_out[...] = db.reshape(db_out.shape)
            db = db_out
        dx = np.swapaxes((dz2 @ W_ih.T).reshape(x_tm.shape), 0, 1) if need_dx else None
        return dx, dW_ih, dW_hh, db, dh, (dc if need_dh0 else None)
