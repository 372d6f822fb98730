"""Communicators: rank / size / local_rank and the collectives data parallelism needs, over a
transport (`nnx.distributed.mpi`: MPI, with NCCL for CuPy arrays) or none (`LocalCommunicator`,
the world of one: every collective returns its input, so a data-parallel script runs unchanged
in one process).

A transport provides a handful of primitives (`_reduce_buffer`, `_bcast_buffer`,
`_allreduce_object`, `_bcast_object`, `allgather`, `gather`, `barrier`, `abort`, `dup`); the
public collectives (`allreduce` of numbers, arrays and lists, `iallreduce`, `bcast`) are built
on them here, once for every transport.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from ..errors import NNXError
from .compression import (
    check_compression,
    compress,
    decompress,
    is_array,
    is_device,
    xp_of,
)

REDUCE_OPS = ("sum", "mean", "max", "min")


class DistributedError(NNXError, RuntimeError):
    """A distributed setup or consistency error (no MPI, ranks that disagree). When raised on
    every rank alike (`all_ranks`), only rank 0 reports it before the job is aborted."""

    def __init__(self, message: str, all_ranks: bool = False):
        super().__init__(message)
        self.all_ranks = all_ranks


def check_op(op):
    if op not in REDUCE_OPS:
        raise ValueError(f"unknown reduction op {op!r}; expected one of: {', '.join(REDUCE_OPS)}")


class Request:
    """A pending non-blocking reduction: `wait()` completes it (and unpacks the result)."""

    def __init__(self, wait=None, test=None, finalize=None, keep=None):
        self._wait, self._test, self._finalize = wait, test, finalize
        self._keep = keep  # buffers that must outlive the transfer
        self.done = False

    def test(self) -> bool:
        """Make progress; True once the transfer has finished (then call wait())."""
        return self.done or self._test is None or bool(self._test())

    def wait(self):
        """Block until the transfer is done and finalize it (unpack, divide for a mean); idempotent.
        Returns self."""
        if not self.done:
            if self._wait is not None:
                self._wait()
            if self._finalize is not None:
                self._finalize()
            self.done, self._keep = True, None
        return self


DONE = Request()
DONE.done = True


# -- communicators ----------------------------------------------------------------------------
class Communicator:
    """rank / size / local_rank, and the collectives data parallelism needs.

    - `allreduce(x, op="sum"|"mean"|"max"|"min", inplace=False, compression=None)`: x is a
      number, an array (NumPy or CuPy; reduced through its buffer, no pickling) or a list of
      arrays/numbers (packed into one buffer: one call). Returns the result; `inplace=True`
      writes it into x (contiguous arrays: no copy at all).
    - `iallreduce(array, op, compression)`: non-blocking, in place; returns a `Request`.
    - `bcast(x, root=0)`: arrays are broadcast in place into x (or into a new array when x is
      None on this rank); anything else is pickled and the root's value returned.
    - `allgather(obj)`, `gather(obj, root)`, `barrier()`, `abort(code)`, `dup()`;
    - `timeout` / `set_timeout(seconds)`: the collective timeout (`nnx.distributed.watchdog`)."""

    backend = "local"
    rank, size, local_rank, local_size = 0, 1, 0, 1

    @property
    def is_chief(self) -> bool:
        """True on rank 0 (the process that prints and writes)."""
        return self.rank == 0

    def __repr__(self):
        return (f"<{type(self).__name__} backend={self.backend} rank={self.rank}/{self.size} "
                f"local_rank={self.local_rank}/{self.local_size}>")

    # -- primitives a transport provides -------------------------------------------------
    def _reduce_buffer(self, buf, op: str, kind=None, blocking=True) -> Request:
        """Reduce a contiguous array in place (op in sum/max/min; kind None/'fp16'/'bf16' says
        how to read 16-bit buffers). Returns a Request (already done when blocking)."""
        return DONE

    def _bcast_buffer(self, buf, root: int) -> None:
        pass

    def _allreduce_object(self, obj, op: str):
        return obj

    def _bcast_object(self, obj, root: int):
        return obj

    def allgather(self, obj) -> list:
        """Every rank's `obj` (picklable), as a list in rank order, on every rank."""
        return [obj]

    def gather(self, obj, root: int = 0):
        """Every rank's `obj` (picklable) as a list in rank order on rank `root`; None on the other
        ranks."""
        return [obj]

    def barrier(self) -> None:
        """Block until every rank has reached it. Returns None."""
        pass

    def abort(self, code: int = 1) -> None:
        """End the whole job with exit status `code` (flushes stdout/stderr first); does not
        return."""
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    def dup(self) -> Communicator:
        """A communicator over the same ranks with its own message space (for a world of one,
        self)."""
        return self

    timeout = None  # the collective timeout in seconds (a world of one never waits)

    def set_timeout(self, seconds) -> None:
        """Change the collective timeout (a world of one has none)."""

    # -- the public collectives ----------------------------------------------------------
    def iallreduce(self, buf, op: str = "sum", compression=None) -> Request:
        """Start a non-blocking allreduce of a contiguous array, in place."""
        check_op(op)
        kind = check_compression(compression)
        if not getattr(buf, "flags", None) or not buf.flags.c_contiguous:
            raise ValueError("iallreduce needs a C-contiguous array (reduce a copy instead)")
        if op == "mean" and buf.dtype.kind not in "fc":
            raise TypeError(f"allreduce(op='mean') in place needs a float array, got {buf.dtype}")
        size = self.size
        if kind is not None and buf.dtype.kind != "f":
            raise TypeError(f"compression={compression!r} needs a float array, got {buf.dtype}")
        if kind is not None and op in ("max", "min"):
            raise ValueError(f"compression is for sum/mean reductions, not {op!r}")
        mpi_op = "sum" if op == "mean" else op
        if kind is None:
            req = self._reduce_buffer(buf, mpi_op, None, blocking=False)
            if op == "mean" and size > 1:
                inner = req
                return Request(wait=inner.wait, test=inner.test,
                               finalize=lambda: buf.__itruediv__(size))
            return req
        if size == 1:
            return DONE
        low = compress(buf, kind)
        req = self._reduce_buffer(low, mpi_op, kind, blocking=False)

        def finalize():
            decompress(low, buf, kind)
            if op == "mean":
                buf.__itruediv__(size)

        return Request(wait=req.wait, test=req.test, finalize=finalize, keep=low)

    def allreduce(self, x, op: str = "sum", inplace: bool = False, compression=None):
        """Reduce `x` over all ranks with `op` (sum, mean, max, min). `x`: a number, an array (NumPy
        or CuPy, through its buffer) or a list/tuple of them (packed into one buffer).
        `inplace=True` writes the result into the arrays of `x`; `compression` (fp16/bf16, float
        arrays, sum/mean) halves the bytes sent. Returns the result (a new value unless in place;
        a mean of integers is float)."""
        check_op(op)
        if isinstance(x, (list, tuple)):
            return self._allreduce_list(x, op, inplace, compression)
        if is_array(x):
            if inplace:
                if x.flags.c_contiguous:
                    self._allreduce_array(x, op, compression)
                    return x
                tmp = x.copy()
                self._allreduce_array(tmp, op, compression)
                x[...] = tmp
                return x
            out = x.copy()  # C-contiguous
            if op == "mean" and out.dtype.kind not in "fc":
                out = out.astype(np.float64)
            self._allreduce_array(out, op, compression)
            return out
        if compression is not None:
            raise TypeError("compression applies to arrays, not to Python objects")
        if not isinstance(x, (int, float, complex, np.generic, bool)):
            raise TypeError(f"allreduce takes numbers, arrays or lists of them, got "
                            f"{type(x).__name__}")
        out = self._allreduce_object(x, "sum" if op == "mean" else op)
        return out / self.size if op == "mean" else out

    def _allreduce_array(self, buf, op, compression):
        """Blocking allreduce of a contiguous array, in place."""
        kind = check_compression(compression)
        if op == "mean" and buf.dtype.kind not in "fc":
            raise TypeError(f"allreduce(op='mean') in place needs a float array, got {buf.dtype}")
        if self.size == 1:
            return
        mpi_op = "sum" if op == "mean" else op
        if kind is None:
            self._reduce_buffer(buf, mpi_op, None, blocking=True).wait()
        else:
            if buf.dtype.kind != "f" or op in ("max", "min"):
                raise TypeError(f"compression={compression!r} is for sum/mean of float arrays")
            low = compress(buf, kind)
            self._reduce_buffer(low, mpi_op, kind, blocking=True).wait()
            decompress(low, buf, kind)
        if op == "mean":
            buf /= self.size

    def _allreduce_list(self, items, op, inplace, compression):
        if not items:
            return [] if isinstance(items, list) else ()
        arrays = [a if is_array(a) else np.asarray(a) for a in items]
        on_device = {is_device(a) for a in arrays}
        if len(on_device) > 1:
            raise TypeError("allreduce of a list: all arrays must live on the same device kind")
        xp = xp_of(arrays[0])
        dtype = np.result_type(*[a.dtype for a in arrays])
        if op == "mean" and dtype.kind not in "fc":
            dtype = np.dtype(np.float64)
        sizes = [int(a.size) for a in arrays]
        flat = xp.empty(sum(sizes), dtype=dtype)
        pos = 0
        for a, n in zip(arrays, sizes, strict=True):
            flat[pos:pos + n] = a.reshape(-1)
            pos += n
        self._allreduce_array(flat, op, compression)
        out, pos = [], 0
        for item, a, n in zip(items, arrays, sizes, strict=True):
            part = flat[pos:pos + n].reshape(a.shape)
            pos += n
            if inplace and is_array(item):
                item[...] = part
                out.append(item)
            elif not is_array(item):
                out.append(part.item())
            else:
                keep = a.dtype if op != "mean" or a.dtype.kind in "fc" else dtype
                out.append(part.astype(keep, copy=True))
        return out if isinstance(items, list) else tuple(out)

    def bcast(self, x, root: int = 0):
        """Rank `root`'s `x` on every rank: arrays are broadcast through their buffer into `x` (or a
        new array when `x` does not fit, e.g. None); anything else is pickled. Returns the root's
        value."""
        if self.size == 1:
            return x
        is_root = self.rank == root
        header = None
        if is_root:
            header = (("array", tuple(x.shape), x.dtype.str, is_device(x)) if is_array(x)
                      else ("object",))
        header = self._bcast_object(header, root)
        if header[0] == "object":
            return self._bcast_object(x if is_root else None, root)
        _, shape, dtype, device = header
        target = x
        if not (is_array(x) and tuple(x.shape) == shape and x.dtype.str == dtype
                and x.flags.c_contiguous):
            if is_root:
                target = x.copy()
            else:
                xp = xp_of(x) if is_array(x) else None
                if xp is None:
                    if device:
                        import cupy as xp
                    else:
                        xp = np
                target = xp.empty(shape, dtype=np.dtype(dtype))
        self._bcast_buffer(target, root)
        if target is not x and is_array(x) and tuple(x.shape) == shape:
            x[...] = target
            return x
        return target


class LocalCommunicator(Communicator):
    """The world of one: every collective returns its input (copies where a new value is
    promised), so a data-parallel script runs unchanged in one process."""

    backend = "local"
