"""Data-parallel training: MPI through mpi4py (CPUs, bootstrap, small values) and NCCL through
CuPy (`cupy.cuda.nccl`) for GPU arrays, as ChainerMN / Horovod do. No transport of our own.

    import nnx
    comm = nnx.distributed.init()               # a world of one outside mpiexec
    model = nnx.Sequential([...])
    opt = nnx.distributed.DistributedOptimizer(nnx.Adam(1e-3), comm)
    model.compile(opt, "softmax_cross_entropy", ["accuracy"])
    model.fit(x, y, batch_size=128, epochs=5)   # the same x, y on every rank

    $ mpiexec -n 4 python train.py              # or: mpiexec -n 4 nnx train --distributed

What `fit` does with a DistributedOptimizer on N ranks (each given the same x, y) is what one
process does with the same `batch_size`, up to float rounding:

- the model's architecture is compared across ranks at compile time (a clear error names the
  ranks and the first difference); the initial parameters, buffers, optimizer state and step,
  and the model's seed (hence the shuffle order) are broadcast from rank 0;
- each global batch (the same on every rank) is split evenly across the ranks; each rank runs
  forward/backward on its share, its gradient is weighted by local_n / global_n and the
  weighted gradients are summed with ONE allreduce over the flat gradient buffer (in place, no
  copy, on the CPU: the mpi4py buffer interface with MPI.IN_PLACE), then every rank applies the
  same optimizer update. The weighting makes the result exact when the batch does not divide
  evenly (last batch, batch_size not divisible by N); a rank whose share is empty contributes
  zeros;
- the epoch's loss / accuracy sums are reduced across ranks; only rank 0 prints progress and
  writes checkpoints (`Model.save` is a no-op on the other ranks);
- at each epoch end the parameters are checked for bitwise equality across ranks (a CRC32,
  gathered) and re-broadcast from rank 0 if they drifted; batch-norm running statistics (the
  layers' buffers) are averaged across ranks.

Batch norm: `BatchNorm1d/2d` normalize with per-rank batch statistics (each rank sees
global_batch / N samples), as in Horovod and PyTorch DDP by default. `SyncBatchNorm` reduces the
statistics (and their gradients) across ranks, so N ranks normalize exactly like one process
with the whole batch; `sync_batchnorm(model)` converts a model's batch norms in place.

Options of `DistributedOptimizer(optimizer, comm, ...)`:
- `data="replicated"` (default: every rank has the whole x, y and takes its share of each
  batch) or `"sharded"` (each rank passes its own part, e.g. from `shard()`, and `batch_size`
  is per rank: the global batch is batch_size * N);
- `overlap=True`: the gradient buffer is cut into buckets of about `bucket_mb` MB along layer
  boundaries, and each bucket's non-blocking allreduce (MPI Iallreduce, or NCCL on a side
  stream) starts as soon as backward has produced its layers' gradients, in reverse layer
  order, like PyTorch DDP. Buckets holding regularized parameters start after backward (the
  model adds regularizer gradients at its end);
- `compression="fp16" | "bf16"`: gradients are reduced in 16 bits (half the bytes on the wire).

The low-level path, for your own loop (no DistributedOptimizer):

    comm = nnx.distributed.init()
    nnx.distributed.broadcast_model(model, comm)          # same start on every rank
    for xb, yb in my_batches:                              # this rank's share
        loss, grads = model.loss_and_grads(xb, yb)         # the flat model.store.grads holds them
        comm.allreduce(model.store.grads, op="mean", inplace=True)   # one call, no copy
        model.optimizer.update(model.store.params, model.store.grads)

(`comm.allreduce(grads, op="mean")` also takes the list `loss_and_grads` returns, and reduces it
with one call over a packed buffer.)

Failure handling: under mpiexec (more than one rank) `init()` installs a `sys.excepthook` (and
wraps `sys.exit` for non-zero codes) that prints the rank and its traceback and calls
`MPI_Abort`, so a rank that raises stops the whole job at once with a non-zero exit instead of
leaving the other ranks waiting in a collective. `init(abort_on_error=False)` turns it off.

This module imports without mpi4py; only `init()` under mpiexec (or `backend="mpi"`) needs it,
and says how to install it when it is missing.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import sys
import time
import traceback
import zlib

import numpy as np

from . import compat
from . import optim as optim_mod
from .errors import NNXError, ShapeError

__all__ = [
    "Communicator", "DistributedError", "DistributedOptimizer", "INSTALL_HINT",
    "LocalCommunicator", "MPICommunicator", "Request", "SyncBatchNorm", "broadcast_model",
    "distribute", "init", "is_available", "launched_under_mpi", "shard", "sync_batchnorm",
]

INSTALL_HINT = ("pip install mpi4py mpich   (or: pip install 'nnx-framework[distributed]'; with a "
                "system MPI: pip install mpi4py), then launch with: mpiexec -n 4 python train.py")

_REDUCE_OPS = ("sum", "mean", "max", "min")
_COMPRESSIONS = {None: None, "none": None, "fp16": "fp16", "float16": "fp16",
                 "bf16": "bf16", "bfloat16": "bf16"}


class DistributedError(NNXError, RuntimeError):
    """A distributed setup or consistency error (no MPI, ranks that disagree). When raised on
    every rank alike (`all_ranks`), only rank 0 reports it before the job is aborted."""

    def __init__(self, message: str, all_ranks: bool = False):
        super().__init__(message)
        self.all_ranks = all_ranks


# -- launch detection -------------------------------------------------------------------------
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE")
_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK")


def launched_under_mpi() -> bool:
    """True when an MPI launcher (mpiexec/mpirun/srun with PMI) started this process, or when
    NNX_DISTRIBUTED=1 says so. Reads the environment only; MPI is not initialized."""
    if os.environ.get("NNX_DISTRIBUTED", "").strip().lower() in ("1", "true", "yes", "mpi"):
        return True
    return any(v in os.environ for v in _SIZE_VARS + _RANK_VARS)


def _launched_size() -> int | None:
    for var in _SIZE_VARS:
        try:
            return int(os.environ[var])
        except (KeyError, ValueError):
            continue
    return None


def is_available() -> bool:
    """Whether mpi4py is installed (MPI itself is loaded only by `init`)."""
    return compat.has_mpi4py


def _import_mpi():
    if not compat.has_mpi4py:
        raise DistributedError(f"nnx.distributed needs mpi4py for more than one process: "
                               f"{INSTALL_HINT}")
    try:
        from mpi4py import MPI
    except Exception as exc:  # mpi4py installed, but no MPI library it can load
        raise DistributedError(f"mpi4py is installed but cannot load an MPI library ({exc}). "
                               f"{INSTALL_HINT}") from exc
    return MPI


# -- array helpers (NumPy or CuPy; no import of cupy unless a CuPy array is seen) -------------
def _is_device(x) -> bool:
    return hasattr(x, "__cuda_array_interface__")


def _is_array(x) -> bool:
    if isinstance(x, np.generic):
        return False
    return isinstance(x, np.ndarray) or _is_device(x)


def _xp(x):
    if _is_device(x):
        import cupy

        return cupy
    return np


def _to_host(x) -> np.ndarray:
    return x.get() if _is_device(x) else np.asarray(x)


def _to_bf16(x):
    """float array -> bfloat16 bits (uint16), round to nearest even."""
    xp = _xp(x)
    u = xp.ascontiguousarray(x, dtype=xp.float32).view(xp.uint32)
    u = u + (((u >> 16) & 1) + xp.uint32(0x7FFF))
    return (u >> 16).astype(xp.uint16)


def _from_bf16(bits, out) -> None:
    """bfloat16 bits -> out (any float dtype), in place."""
    xp = _xp(bits)
    f = (bits.astype(xp.uint32) << 16).view(xp.float32)
    out[...] = f


def _compress(buf, kind):
    if kind == "fp16":
        return buf.astype(_xp(buf).float16)
    return _to_bf16(buf)


def _decompress(low, buf, kind) -> None:
    if kind == "fp16":
        buf[...] = low
    else:
        _from_bf16(low, buf)


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
        if not self.done:
            if self._wait is not None:
                self._wait()
            if self._finalize is not None:
                self._finalize()
            self.done, self._keep = True, None
        return self


_DONE = Request()
_DONE.done = True


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
    - `allgather(obj)`, `gather(obj, root)`, `barrier()`, `abort(code)`, `dup()`."""

    backend = "local"
    rank, size, local_rank, local_size = 0, 1, 0, 1

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    def __repr__(self):
        return (f"<{type(self).__name__} backend={self.backend} rank={self.rank}/{self.size} "
                f"local_rank={self.local_rank}/{self.local_size}>")

    # -- primitives a transport provides -------------------------------------------------
    def _reduce_buffer(self, buf, op: str, kind=None, blocking=True) -> Request:
        """Reduce a contiguous array in place (op in sum/max/min; kind None/'fp16'/'bf16' says
        how to read 16-bit buffers). Returns a Request (already done when blocking)."""
        return _DONE

    def _bcast_buffer(self, buf, root: int) -> None:
        pass

    def _allreduce_object(self, obj, op: str):
        return obj

    def _bcast_object(self, obj, root: int):
        return obj

    def allgather(self, obj) -> list:
        return [obj]

    def gather(self, obj, root: int = 0):
        return [obj]

    def barrier(self) -> None:
        pass

    def abort(self, code: int = 1) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    def dup(self) -> Communicator:
        return self

    # -- the public collectives ----------------------------------------------------------
    def iallreduce(self, buf, op: str = "sum", compression=None) -> Request:
        """Start a non-blocking allreduce of a contiguous array, in place."""
        _check_op(op)
        kind = _check_compression(compression)
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
            return _DONE
        low = _compress(buf, kind)
        req = self._reduce_buffer(low, mpi_op, kind, blocking=False)

        def finalize():
            _decompress(low, buf, kind)
            if op == "mean":
                buf.__itruediv__(size)

        return Request(wait=req.wait, test=req.test, finalize=finalize, keep=low)

    def allreduce(self, x, op: str = "sum", inplace: bool = False, compression=None):
        _check_op(op)
        if isinstance(x, (list, tuple)):
            return self._allreduce_list(x, op, inplace, compression)
        if _is_array(x):
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
        kind = _check_compression(compression)
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
            low = _compress(buf, kind)
            self._reduce_buffer(low, mpi_op, kind, blocking=True).wait()
            _decompress(low, buf, kind)
        if op == "mean":
            buf /= self.size

    def _allreduce_list(self, items, op, inplace, compression):
        if not items:
            return [] if isinstance(items, list) else ()
        arrays = [a if _is_array(a) else np.asarray(a) for a in items]
        on_device = {_is_device(a) for a in arrays}
        if len(on_device) > 1:
            raise TypeError("allreduce of a list: all arrays must live on the same device kind")
        xp = _xp(arrays[0])
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
            if inplace and _is_array(item):
                item[...] = part
                out.append(item)
            elif not _is_array(item):
                out.append(part.item())
            else:
                keep = a.dtype if op != "mean" or a.dtype.kind in "fc" else dtype
                out.append(part.astype(keep, copy=True))
        return out if isinstance(items, list) else tuple(out)

    def bcast(self, x, root: int = 0):
        if self.size == 1:
            return x
        is_root = self.rank == root
        header = None
        if is_root:
            header = (("array", tuple(x.shape), x.dtype.str, _is_device(x)) if _is_array(x)
                      else ("object",))
        header = self._bcast_object(header, root)
        if header[0] == "object":
            return self._bcast_object(x if is_root else None, root)
        _, shape, dtype, device = header
        target = x
        if not (_is_array(x) and tuple(x.shape) == shape and x.dtype.str == dtype
                and x.flags.c_contiguous):
            if is_root:
                target = x.copy()
            else:
                xp = _xp(x) if _is_array(x) else None
                if xp is None:
                    if device:
                        import cupy as xp
                    else:
                        xp = np
                target = xp.empty(shape, dtype=np.dtype(dtype))
        self._bcast_buffer(target, root)
        if target is not x and _is_array(x) and tuple(x.shape) == shape:
            x[...] = target
            return x
        return target


class LocalCommunicator(Communicator):
    """The world of one: every collective returns its input (copies where a new value is
    promised), so a data-parallel script runs unchanged in one process."""

    backend = "local"


def _check_op(op):
    if op not in _REDUCE_OPS:
        raise ValueError(f"unknown reduction op {op!r}; expected one of: {', '.join(_REDUCE_OPS)}")


def _check_compression(compression):
    key = compression.lower() if isinstance(compression, str) else compression
    if key not in _COMPRESSIONS:
        raise ValueError(f"unknown compression {compression!r}; expected one of: None, 'fp16', "
                         f"'bf16'")
    return _COMPRESSIONS[key]


_MPI_OPS_16: dict = {}


def _mpi_op_16(MPI, kind):
    """User-defined MPI sum ops on 16-bit floats (bfloat16 always; float16 when the MPI library
    has no MPI_FLOAT16_T)."""
    if kind not in _MPI_OPS_16:
        if kind == "fp16":
            def add(inbuf, inoutbuf, datatype):
                a = np.frombuffer(inbuf, dtype=np.float16)
                b = np.frombuffer(inoutbuf, dtype=np.float16)
                np.add(b, a, out=b)
        else:
            def add(inbuf, inoutbuf, datatype):
                a = np.frombuffer(inbuf, dtype=np.uint16)
                b = np.frombuffer(inoutbuf, dtype=np.uint16)
                s = (a.astype(np.uint32) << 16).view(np.float32) + \
                    (b.astype(np.uint32) << 16).view(np.float32)
                b[...] = _to_bf16(s)
        _MPI_OPS_16[kind] = MPI.Op.Create(add, commute=True)
    return _MPI_OPS_16[kind]


class MPICommunicator(Communicator):
    """MPI through mpi4py; CuPy arrays go through NCCL when it is in use, else through host
    memory. `nccl`: True (required), False, or "auto" (used for CuPy arrays when CuPy has NCCL
    and sees a GPU). The NCCL communicator is created on first use (collectively)."""

    def __init__(self, mpi_comm=None, nccl="auto"):
        MPI = _import_mpi()
        self._MPI = MPI
        self._comm = MPI.COMM_WORLD if mpi_comm is None else mpi_comm
        self.rank, self.size = self._comm.Get_rank(), self._comm.Get_size()
        try:
            node = self._comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
            self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
            node.Free()
        except Exception:  # pragma: no cover - very old MPI
            self.local_rank, self.local_size = 0, 1
        if nccl == "auto":
            nccl = _nccl_available()
        elif nccl and not _nccl_available():
            raise DistributedError(f"backend 'nccl' asked for, but {_nccl_unavailable_reason()}")
        self._use_nccl = bool(nccl)
        self._nccl = None
        self._side_stream = None
        self.backend = "nccl" if self._use_nccl else "mpi"
        self._fp16_native = getattr(MPI, "FLOAT16_T", MPI.DATATYPE_NULL) != MPI.DATATYPE_NULL

    @property
    def mpi_comm(self):
        """The underlying mpi4py communicator."""
        return self._comm

    # -- MPI ------------------------------------------------------------------------------
    def _mpi_spec(self, buf, op, kind):
        MPI = self._MPI
        ops = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}
        if kind is None and buf.dtype == np.float16:
            kind = "fp16"
        if kind == "fp16":
            if self._fp16_native:
                return [buf, MPI.FLOAT16_T], ops[op]
            if op != "sum":
                raise ValueError(f"{op!r} of float16 arrays needs an MPI with MPI_FLOAT16_T")
            return [buf.view(np.uint16), MPI.UINT16_T], _mpi_op_16(MPI, "fp16")
        if kind == "bf16":
            return [buf, MPI.UINT16_T], _mpi_op_16(MPI, "bf16")
        if buf.dtype == np.bool_:
            raise TypeError("reduce boolean arrays as integers (x.astype(np.int64))")
        return buf, ops[op]

    def _reduce_buffer(self, buf, op, kind=None, blocking=True):
        if self.size == 1:
            return _DONE
        if _is_device(buf):
            if self._use_nccl:
                return self._nccl_reduce(buf, op, kind, blocking)
            host = buf.get()
            req = self._reduce_buffer(host, op, kind, blocking)
            return Request(wait=req.wait, test=req.test, finalize=lambda: buf.set(host),
                           keep=host)
        spec, mpi_op = self._mpi_spec(buf, op, kind)
        if blocking:
            self._comm.Allreduce(self._MPI.IN_PLACE, spec, op=mpi_op)
            return _DONE
        req = self._comm.Iallreduce(self._MPI.IN_PLACE, spec, op=mpi_op)
        return Request(wait=req.Wait, test=req.Test, keep=buf)

    def _bcast_buffer(self, buf, root):
        if _is_device(buf):
            if self._use_nccl:
                import cupy

                nc = self._nccl_comm()
                nc.bcast(buf.data.ptr, buf.size, _nccl_dtype(buf.dtype), root,
                         cupy.cuda.get_current_stream().ptr)
                return
            host = buf.get()
            self._bcast_buffer(host, root)
            buf.set(host)
            return
        if buf.dtype == np.float16:
            self._comm.Bcast([buf.view(np.uint16), self._MPI.UINT16_T], root=root)
        else:
            self._comm.Bcast(buf, root=root)

    def _allreduce_object(self, obj, op):
        MPI = self._MPI
        return self._comm.allreduce(obj, op={"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}[op])

    def _bcast_object(self, obj, root):
        return self._comm.bcast(obj, root=root)

    def allgather(self, obj):
        return self._comm.allgather(obj)

    def gather(self, obj, root=0):
        return self._comm.gather(obj, root=root)

    def barrier(self):
        self._comm.Barrier()

    def abort(self, code=1):
        sys.stdout.flush()
        sys.stderr.flush()
        self._comm.Abort(int(code))

    def dup(self):
        other = MPICommunicator.__new__(MPICommunicator)
        other.__dict__.update(self.__dict__)
        other._comm = self._comm.Dup()
        other._nccl, other._side_stream = None, None
        return other

    # -- NCCL (CuPy arrays) ---------------------------------------------------------------
    def _nccl_comm(self):
        if self._nccl is None:
            from cupy.cuda import nccl

            uid = nccl.get_unique_id() if self.rank == 0 else None
            uid = self._comm.bcast(uid, root=0)
            self._nccl = nccl.NcclCommunicator(self.size, uid, self.rank)
        return self._nccl

    def _nccl_reduce(self, buf, op, kind, blocking):
        import cupy
        from cupy.cuda import nccl

        nc = self._nccl_comm()
        ops = {"sum": nccl.NCCL_SUM, "max": nccl.NCCL_MAX, "min": nccl.NCCL_MIN}
        dtype = _nccl_dtype(buf.dtype, kind)
        current = cupy.cuda.get_current_stream()
        if blocking:  # ordered on the compute stream; no host synchronization
            nc.allReduce(buf.data.ptr, buf.data.ptr, buf.size, dtype, ops[op], current.ptr)
            return _DONE
        # Overlap: run on a side stream once the compute stream has produced `buf`; wait()
        # makes the compute stream wait for the reduction (still no host synchronization).
        if self._side_stream is None:
            self._side_stream = cupy.cuda.Stream(non_blocking=True)
        side = self._side_stream
        side.wait_event(current.record())
        nc.allReduce(buf.data.ptr, buf.data.ptr, buf.size, dtype, ops[op], side.ptr)
        done = side.record()
        return Request(wait=lambda: cupy.cuda.get_current_stream().wait_event(done),
                       test=lambda: done.done, keep=buf)


def _nccl_available() -> bool:
    if not compat.has_cupy_gpu():
        return False
    try:
        from cupy.cuda import nccl

        return bool(getattr(nccl, "available", True))
    except Exception:
        return False


def _nccl_unavailable_reason() -> str:
    if not compat.has_cupy_gpu():
        return compat.cupy_unavailable_reason()
    return "CuPy was built without NCCL (install the NCCL library: pip install nvidia-nccl-cu12)"


def _nccl_dtype(dtype, kind=None):
    from cupy.cuda import nccl

    if kind == "bf16":
        if not hasattr(nccl, "NCCL_BFLOAT16"):
            raise DistributedError("bf16 compression needs NCCL >= 2.10 in CuPy; use 'fp16'")
        return nccl.NCCL_BFLOAT16
    table = {"float16": "NCCL_FLOAT16", "float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64",
             "int32": "NCCL_INT32", "int64": "NCCL_INT64", "uint8": "NCCL_UINT8",
             "int8": "NCCL_INT8", "uint32": "NCCL_UINT32", "uint64": "NCCL_UINT64"}
    name = table.get(np.dtype(dtype).name)
    if name is None:
        raise TypeError(f"NCCL cannot reduce arrays of dtype {dtype}")
    return getattr(nccl, name)


# -- init ---------------------------------------------------------------------------------------
_WORLD: dict = {}


def init(backend: str = "auto", abort_on_error: bool = True, device="auto") -> Communicator:
    """The communicator of this job (the same object on repeated calls).

    backend: "auto" (MPI under mpiexec, with NCCL for CuPy arrays where CuPy has NCCL and a
    GPU; a world of one outside mpiexec or without mpi4py), "mpi" (MPI only; CuPy arrays go
    through host memory), "nccl" (NCCL required for CuPy arrays), or "local" (a world of one).

    abort_on_error: with more than one rank, an uncaught exception (or sys.exit with a non-zero
    code) on any rank prints that rank's traceback and aborts every rank (MPI_Abort).

    device: "auto" makes GPU `local_rank % device_count` CuPy's current device on each rank
    (so ranks on one node use different GPUs); None leaves it alone."""
    if backend not in ("auto", "mpi", "nccl", "local"):
        raise ValueError(f"unknown distributed backend {backend!r}; expected one of: auto, "
                         "local, mpi, nccl")
    if backend in _WORLD:
        return _WORLD[backend]
    if backend == "local":
        comm = LocalCommunicator()
    elif backend == "auto" and not launched_under_mpi():
        comm = LocalCommunicator()
    elif backend == "auto" and not compat.has_mpi4py:
        size = _launched_size()
        if size == 1:
            comm = LocalCommunicator()
        else:
            raise DistributedError(f"this process was started by an MPI launcher "
                                   f"({size or 'several'} processes) but mpi4py is not "
                                   f"installed, so the ranks cannot talk to each other: "
                                   f"{INSTALL_HINT}")
    else:
        nccl = {"auto": "auto", "mpi": False, "nccl": True}[backend]
        comm = MPICommunicator(None, nccl=nccl)
        if device == "auto" and comm.size > 1 and compat.has_cupy_gpu():
            try:
                compat.cupy.cuda.Device(comm.local_rank % compat.cuda_device_count()).use()
            except Exception:  # pragma: no cover - depends on the machine
                pass
        if abort_on_error and comm.size > 1:
            _install_abort_hooks(comm)
    _WORLD[backend] = comm
    return comm


def _install_abort_hooks(comm: Communicator) -> None:
    if getattr(sys.excepthook, "_nnx_distributed", False):
        return
    previous_exit = sys.exit

    def excepthook(etype, value, tb):
        code = 130 if issubclass(etype, KeyboardInterrupt) else 1
        try:
            if getattr(value, "all_ranks", False) and comm.rank != 0:
                time.sleep(5)  # every rank raised the same error; rank 0 reports it and aborts
            else:
                text = "".join(traceback.format_exception(etype, value, tb))
                sys.stderr.write(f"[nnx.distributed] rank {comm.rank} of {comm.size} failed; "
                                 f"aborting all ranks:\n{text}")
        finally:
            comm.abort(code)

    def exit(status=None):
        if status is not None and status != 0:
            if not isinstance(status, int):
                sys.stderr.write(f"{status}\n")
            sys.stderr.write(f"[nnx.distributed] rank {comm.rank} of {comm.size} exited with "
                             f"status {status!r}; aborting all ranks\n")
            comm.abort(status if isinstance(status, int) else 1)
        previous_exit(status)

    excepthook._nnx_distributed = True
    sys.excepthook = excepthook
    sys.exit = exit


# -- helpers on models --------------------------------------------------------------------------
def _model_arrays(model, optimizer=None) -> list:
    """The arrays that define a model's training state: flat params, buffers, optimizer state."""
    arrays = [model.store.params]
    for layer in model.layers:
        arrays += [layer.buffers[k] for k in sorted(layer.buffers)]
    opt = optimizer if optimizer is not None else model.optimizer
    if opt is not None:
        arrays += [opt.state[k] for k in sorted(opt.state)]
    return arrays


def broadcast_model(model, comm: Communicator | None = None, root: int = 0) -> None:
    """Make every rank's parameters, buffers, optimizer state and step equal to `root`'s."""
    comm = comm if comm is not None else init()
    if comm.size == 1:
        return
    opt = model.optimizer
    inner = opt.optimizer if isinstance(opt, DistributedOptimizer) else opt
    for arr in _model_arrays(model, inner):
        comm.bcast(arr, root)
    if inner is not None:
        inner.step = comm.bcast(inner.step, root)


def distribute(model, comm: Communicator | None = None, **options) -> DistributedOptimizer:
    """Wrap a compiled model's optimizer (e.g. from `nnx.load(path)` to resume, on every rank)
    in a DistributedOptimizer and recompile with the same loss and metrics; returns it."""
    if model.optimizer is None or model.loss is None:
        raise RuntimeError("distribute(model): compile the model (or load a compiled checkpoint) "
                           "first")
    opt = model.optimizer
    if not isinstance(opt, DistributedOptimizer):
        opt = DistributedOptimizer(opt, comm, **options)
    model.compile(opt, model.loss, model.metrics)
    return opt


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


# -- architecture check -------------------------------------------------------------------------
def _strip_names(obj):
    if isinstance(obj, dict):
        return {k: _strip_names(v) for k, v in obj.items() if k != "name"}
    if isinstance(obj, list):
        return [_strip_names(v) for v in obj]
    return obj


def _signature(model, optimizer) -> dict:
    cfg = model.get_config()
    try:
        opt_cfg = optimizer.get_config()
    except TypeError:  # a plain callable as learning rate
        opt_cfg = {"class": type(optimizer).__name__}
    return {
        "model_class": cfg.get("model_class"),
        "dtype": cfg.get("dtype"),
        "layers": [repr(layer) for layer in model.layers],
        "structure": _strip_names(cfg.get("net")),
        "parameters": [[i, spec.name, list(spec.shape)]
                       for i, layer in enumerate(model.layers) for spec in layer.param_specs()],
        "optimizer": opt_cfg,
    }


def _first_difference(a: dict, b: dict, ra: int, rb: int) -> str:
    la, lb = a["layers"], b["layers"]
    for i in range(min(len(la), len(lb))):
        if la[i] != lb[i]:
            return f"layer {i}: rank {ra} has {la[i]}, rank {rb} has {lb[i]}"
    if len(la) != len(lb):
        longer, rl = (la, ra) if len(la) > len(lb) else (lb, rb)
        i = min(len(la), len(lb))
        return (f"rank {ra} has {len(la)} layers, rank {rb} has {len(lb)} (rank {rl}'s layer {i} "
                f"is {longer[i]})")
    for key, what in (("model_class", "model class"), ("dtype", "dtype"),
                      ("parameters", "parameter shapes"), ("structure", "layer nesting"),
                      ("optimizer", "optimizer")):
        if a[key] != b[key]:
            return f"{what}: rank {ra} has {a[key]}, rank {rb} has {b[key]}"
    return "their configurations differ"


def check_same_model(model, comm: Communicator, optimizer=None) -> None:
    """Raise DistributedError (on every rank) unless all ranks built the same architecture
    (layer classes and configs, parameter shapes, dtype, optimizer; names and seeds may
    differ). A hash of the JSON description is gathered; the full descriptions only when the
    hashes differ."""
    if comm.size == 1:
        return
    sig = _signature(model, optimizer if optimizer is not None else model.optimizer)
    text = json.dumps(sig, sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()
    digests = comm.allgather(digest)
    if len(set(digests)) == 1:
        return
    sigs = [json.loads(t) for t in comm.allgather(text)]
    groups: dict = {}
    for r, d in enumerate(digests):
        groups.setdefault(d, []).append(r)
    lines = []
    for d, ranks in groups.items():
        if d == digests[0]:
            continue
        diff = _first_difference(sigs[0], sigs[ranks[0]], 0, ranks[0])
        lines.append(f"  rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))} "
                     f"differ{'' if len(ranks) > 1 else 's'} from rank 0: {diff}")
    raise DistributedError(
        "the model (architecture, dtype or optimizer) differs across ranks, checked when "
        "compiling with DistributedOptimizer:\n" + "\n".join(lines) +
        "\nBuild the same model and optimizer on every rank (seeds may differ: rank 0's "
        "weights are broadcast).", all_ranks=True)


def _fingerprint(a) -> tuple:
    """(shape, dtype, CRC32 of up to 256 evenly spaced rows): cheap, and enough to tell data
    sets apart."""
    try:
        n = len(a)
        idx = np.unique(np.linspace(0, n - 1, min(n, 256)).astype(np.int64)) if n else []
        sample = _to_host(a[idx]) if n else np.zeros(0)
        sample = np.ascontiguousarray(sample)
        return (list(np.shape(a)), str(sample.dtype), zlib.crc32(sample.tobytes()))
    except Exception:
        return (None, None, None)


# -- the optimizer wrapper --------------------------------------------------------------------
class _Bucket:
    __slots__ = ("lo", "hi", "layers", "deferred", "remaining", "ready", "req")

    def __init__(self, lo, hi, layer, deferred):
        self.lo, self.hi, self.layers, self.deferred = lo, hi, [layer], deferred
        self.remaining, self.ready, self.req = 0, False, None


def _wrap_method(obj, name, make):
    """Replace obj.name (an instance attribute) by make(original); idempotent across re-wraps."""
    current = getattr(obj, name)
    original = getattr(current, "_nnx_dist_original", current)
    wrapper = make(original)
    wrapper._nnx_dist_original = original
    setattr(obj, name, wrapper)


class DistributedOptimizer(optim_mod.Optimizer):
    """Wraps any nnx optimizer: the gradients of all ranks are averaged (weighted by each
    rank's share of the batch) before its update. See the module docstring.

    `stats`: steps, seconds spent waiting for gradient reductions ("comm_s"), bytes reduced
    per step, re-synchronizations."""

    def __init__(self, optimizer, comm: Communicator | None = None, *, data: str = "replicated",
                 overlap: bool = False, bucket_mb: float = 4.0, compression=None,
                 resync: bool = True):
        inner = optim_mod.get(optimizer)
        if isinstance(inner, DistributedOptimizer):
            raise TypeError("the optimizer is already a DistributedOptimizer")
        if data not in ("replicated", "sharded"):
            raise ValueError(f"data must be 'replicated' or 'sharded', got {data!r}")
        if not isinstance(bucket_mb, (int, float)) or bucket_mb <= 0:
            raise ValueError(f"bucket_mb must be a positive number, got {bucket_mb!r}")
        self.optimizer = inner
        self.comm = comm if comm is not None else init()
        if not isinstance(self.comm, Communicator):
            raise TypeError(f"comm must be an nnx.distributed Communicator (from init()), got "
                            f"{type(self.comm).__name__}")
        self.data = data
        self.overlap = bool(overlap)
        self.bucket_mb = float(bucket_mb)
        self.compression = _check_compression(compression)
        self.resync = bool(resync)
        self.model = None
        self.ops = None
        self.stats = {"steps": 0, "comm_s": 0.0, "bytes_per_step": 0, "buckets": 0,
                      "resyncs": 0}
        self._pending = None   # global batch size given by local_batch for the next step
        self._weight = None    # this rank's gradient weight during a step
        self._in_step = False
        self._buckets: list = []
        self._bucket_of: dict = {}
        self._next = 0

    # -- the wrapped optimizer's state, so that checkpoints save and load it as is ---------
    lr = property(lambda self: self.optimizer.lr,
                  lambda self, v: setattr(self.optimizer, "lr", v))
    step = property(lambda self: self.optimizer.step,
                    lambda self, v: setattr(self.optimizer, "step", v))
    state = property(lambda self: self.optimizer.state,
                     lambda self, v: setattr(self.optimizer, "state", v))

    def __getattr__(self, name):  # hyperparameters (momentum, beta1, ...) of the wrapped one
        if name.startswith("__") or "optimizer" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["optimizer"], name)

    def current_lr(self, step=None):
        return self.optimizer.current_lr(step)

    def get_config(self):
        return self.optimizer.get_config()

    def __repr__(self):
        return (f"DistributedOptimizer({type(self.optimizer).__name__}, rank {self.comm.rank} "
                f"of {self.comm.size}, data={self.data!r}, overlap={self.overlap}, "
                f"compression={self.compression!r})")

    @property
    def is_chief(self) -> bool:
        return self.comm.rank == 0

    # -- hooks called by Model ------------------------------------------------------------
    def setup(self, ops, size):
        self.ops = ops
        self.optimizer.setup(ops, size)

    def attach(self, model):
        self.model = model
        self.optimizer.attach(model)
        comm = self.comm
        check_same_model(model, comm, self.optimizer)
        if comm.size > 1:
            if model.seed is None and comm.rank == 0:  # a random seed, but the same everywhere
                model.seed = int(np.random.SeedSequence().entropy % 2**31)
            model.seed = comm.bcast(model.seed)  # the same shuffle order on every rank
            broadcast_model(model, comm)
            if comm.rank and model.seed is not None:  # different dropout masks per rank
                seq = np.random.SeedSequence([int(model.seed) & 0xFFFFFFFF, comm.rank])
                model.ops.seed(int(seq.generate_state(1)[0]))
        for layer in model.layers:
            if SyncBatchNorm is not None and isinstance(layer, SyncBatchNorm):
                layer._dist = self
        self._build_buckets(model)
        self._install(model)

    def local_batch(self, index):
        if self.comm.size == 1:
            self._pending = len(index)
            return index
        if self.data == "sharded":  # equal local batches (shard() gives equal parts): the mean
            self._pending = None
            return index
        n, size, rank = len(index), self.comm.size, self.comm.rank
        lo, hi = (n * rank) // size, (n * (rank + 1)) // size
        self._pending = n
        return index[lo:hi]

    def reduce_sums(self, values):
        comm = self.comm
        if comm.size == 1:
            return values
        to_float = self.ops.to_float if self.ops is not None else float
        arr = np.array([to_float(v) for v in values], dtype=np.float64)
        comm.allreduce(arr, inplace=True)
        self._epoch_end()
        out = [float(v) for v in arr]
        if len(out) >= 3:
            out[2] = int(round(out[2]))
        return out

    def update(self, params, grads):
        self._reduce_gradients(grads)
        self.optimizer.update(params, grads)
        self.stats["steps"] += 1

    # -- gradient reduction ---------------------------------------------------------------
    def _build_buckets(self, model):
        store = model.store
        ranges = []  # [layer, lo, hi, regularized] in store order
        for layer, spec, off, size in store.entries:
            if ranges and ranges[-1][0] is layer:
                ranges[-1][2] = off + size
                ranges[-1][3] = ranges[-1][3] or spec.regularizer is not None
            else:
                ranges.append([layer, off, off + size, spec.regularizer is not None])
        for i in range(len(ranges)):
            ranges[i][2] = ranges[i + 1][1] if i + 1 < len(ranges) else store.size
        limit = max(1, int(self.bucket_mb * 2**20) // store.grads.dtype.itemsize)
        buckets = []
        for layer, lo, hi, reg in reversed(ranges):  # backward produces the last layers first
            b = buckets[-1] if buckets else None
            if b is not None and b.deferred == reg and b.hi - b.lo < limit and hi == b.lo:
                b.lo = lo
                b.layers.append(layer)
            else:
                buckets.append(_Bucket(lo, hi, layer, reg))
        self._buckets = [b for b in buckets if not b.deferred] + [b for b in buckets if b.deferred]
        self._bucket_of = {id(layer): b for b in self._buckets for layer in b.layers}
        self.stats["buckets"] = len(self._buckets) if self.overlap else 1
        self.stats["bytes_per_step"] = store.size * (2 if self.compression else
                                                     store.grads.dtype.itemsize)

    def _install(self, model):
        opt = self

        def make_step(original):
            def _step(xb, yb):
                if model.optimizer is not opt:
                    return original(xb, yb)
                return opt._run_step(original, xb, yb)
            return _step

        def make_fit(original):
            def fit(x, y, *args, **kwargs):
                if model.optimizer is opt and opt.comm.size > 1:
                    opt._check_fit_args(original, x, y, args, kwargs)
                opt._pending = None
                return original(x, y, *args, **kwargs)
            fit.__doc__ = original.__doc__
            return fit

        def make_save(original):
            def save(*args, **kwargs):
                if model.optimizer is opt and not opt.is_chief:
                    return None  # only rank 0 writes checkpoints
                return original(*args, **kwargs)
            return save

        _wrap_method(model, "_step", make_step)
        _wrap_method(model, "fit", make_fit)
        _wrap_method(model, "save", make_save)
        if self.overlap:
            for layer in model.layers:
                if id(layer) in self._bucket_of:
                    _wrap_method(layer, "backward", lambda original, layer=layer:
                                 self._make_backward(original, layer))

    def _make_backward(self, original, layer):
        opt = self

        def backward(dy, need_dx=True):
            dx = original(dy, need_dx)
            if opt._in_step and opt.model is not None and opt.model.optimizer is opt:
                opt._layer_done(layer)
            return dx
        return backward

    def _check_fit_args(self, fit, x, y, args, kwargs):
        try:
            bound = inspect.signature(fit).bind(x, y, *args, **kwargs)
            bound.apply_defaults()
            a = bound.arguments
            plan = [a.get("epochs"), a.get("batch_size"), a.get("shuffle")]
        except TypeError:
            return  # let fit report its own argument error
        if self.data == "replicated":
            mine = {"plan": plan, "x": _fingerprint(x), "y": _fingerprint(y)}
        else:
            mine = {"plan": plan, "x": [len(x)], "y": [len(y)]}
        everyone = self.comm.allgather(json.dumps(mine, sort_keys=True, default=str))
        if len(set(everyone)) == 1:
            return
        ref = json.loads(everyone[0])
        diffs = []
        for r, text in enumerate(everyone[1:], start=1):
            other = json.loads(text)
            what = [k for k in ("plan", "x", "y") if other[k] != ref[k]]
            names = {"plan": "epochs/batch_size/shuffle", "x": "x", "y": "y"}
            diffs.append(f"rank {r}: {', '.join(names[k] for k in what)}")
        if self.data == "replicated":
            hint = ("with data='replicated' every rank must pass the same x, y, epochs and "
                    "batch_size (for per-rank data use nnx.distributed.shard() and "
                    "DistributedOptimizer(..., data='sharded'))")
        else:
            hint = ("with data='sharded' every rank needs the same number of samples, epochs and "
                    "batch_size, or the ranks would run different numbers of steps (shard() "
                    "gives equal parts)")
        raise DistributedError("fit() was called with different data or settings on different "
                               "ranks (compared with rank 0): " + "; ".join(diffs) + f". {hint}.",
                               all_ranks=True)

    def _run_step(self, original, xb, yb):
        model = self.model
        n = int(xb.shape[0])
        global_n, self._pending = self._pending, None
        if self.comm.size == 1:
            self._weight = 1.0
        elif global_n:
            self._weight = n / global_n
        else:  # train_step in your own loop: the plain mean over ranks
            self._weight = 1.0 / self.comm.size
        for b in self._buckets:
            b.remaining, b.ready, b.req = len(b.layers), False, None
        self._next = 0
        self._in_step = True
        try:
            if n == 0:  # an empty share (global batch smaller than the number of ranks)
                model.store.grads[...] = 0
                self._participate_empty(model)
                self.update(model.store.params, model.store.grads)
                out_shape = model.net.output_shape(tuple(xb.shape[1:]))
                return model.ops.zeros(()), model.ops.zeros((0, *out_shape))
            return original(xb, yb)
        finally:
            self._in_step = False
            self._weight = None

    def _participate_empty(self, model):
        syncs = [layer for layer in model.layers
                 if SyncBatchNorm is not None and isinstance(layer, SyncBatchNorm)]
        for layer in syncs:
            layer._forward_empty()
        for layer in reversed(syncs):
            layer._backward_empty()

    def _layer_done(self, layer):
        b = self._bucket_of.get(id(layer))
        if b is None:
            return
        b.remaining -= 1
        if b.remaining <= 0 and not b.deferred:
            b.ready = True
            self._launch_ready()
        for other in self._buckets[:self._next]:  # let MPI progress the reductions in flight
            if other.req is not None and not other.req.done:
                other.req.test()

    def _launch_ready(self):
        while self._next < len(self._buckets) and self._buckets[self._next].ready:
            b = self._buckets[self._next]
            view = self.model.store.grads[b.lo:b.hi]
            w = self._weight if self._weight is not None else 1.0 / self.comm.size
            if w != 1.0:
                view *= w
            b.req = self.comm.iallreduce(view, "sum", self.compression)
            self._next += 1

    def _reduce_gradients(self, grads):
        comm = self.comm
        if comm.size == 1:
            return
        t0 = time.perf_counter()
        w = self._weight if self._weight is not None else 1.0 / comm.size
        size = self.model.store.size if self.model is not None else grads.size
        if self.overlap and self._in_step and self._buckets:
            for b in self._buckets:
                b.ready = True
            self._launch_ready()
            for b in self._buckets:
                b.req.wait()
        elif size:
            view = grads[:size]
            if w != 1.0:
                view *= w
            comm.allreduce(view, "sum", inplace=True, compression=self.compression)
        self.stats["comm_s"] += time.perf_counter() - t0

    # -- epoch end --------------------------------------------------------------------------
    def _epoch_end(self):
        model, comm = self.model, self.comm
        if model is None or comm.size == 1:
            return
        buffers = [v for layer in model.layers for _k, v in sorted(layer.buffers.items())
                   if v.dtype.kind == "f"]
        if buffers:
            comm.allreduce(buffers, op="mean", inplace=True)
        if self.resync:
            crc = zlib.crc32(np.ascontiguousarray(_to_host(model.store.params)).tobytes())
            if len(set(comm.allgather(crc))) > 1:
                broadcast_model(model, comm)
                self.stats["resyncs"] += 1


# -- synchronized batch norm ------------------------------------------------------------------
try:
    from .layers.batchnorm import _BatchNorm
except ImportError:  # pragma: no cover - batch norm not in this build
    _BatchNorm = None

if _BatchNorm is not None:

    class SyncBatchNorm(_BatchNorm):
        """Batch norm whose training statistics are those of the global batch: the per-channel
        sums (and, in backward, the sums of dy and dy*xhat) are allreduced across ranks, so N
        ranks normalize exactly as one process with the whole batch would; the running
        statistics are updated from the global ones (identical on every rank). Accepts (N, F),
        (N, F, L) and (N, C, H, W). With one process, or outside a DistributedOptimizer's
        world of more than one, it is BatchNorm1d/2d. Statistics travel on a duplicate of the
        optimizer's communicator, so they never interleave with the gradient reductions."""

        ranks = (2, 3, 4)
        layout = "(batch, {F}), (batch, {F}, length) or (batch, {F}, height, width)"

        _dist = None        # the DistributedOptimizer that attached it
        _stat_comm = None

        def _comm(self):
            comm = self._dist.comm if self._dist is not None else init()
            if comm.size == 1:
                return None
            if self._stat_comm is None or self._stat_comm[0] is not comm:
                self._stat_comm = (comm, comm.dup())
            return self._stat_comm[1]

        def _rank_weight(self, comm):
            w = self._dist._weight if self._dist is not None else None
            return w if w is not None else 1.0 / comm.size

        def forward(self, x, training=False):
            comm = self._comm() if training else None
            if comm is None:
                return super().forward(x, training)
            self._check(tuple(x.shape))
            xp = self.ops.xp
            axes = (0, *range(2, x.ndim))
            bshape = tuple(1 if a in axes else s for a, s in enumerate(x.shape))
            F = self.num_features
            n_local = math.prod(x.shape[a] for a in axes)
            stats = xp.zeros(F + 1, dtype=xp.float64)
            stats[:F] = x.sum(axis=axes, dtype=xp.float64).reshape(F)
            stats[F] = n_local
            comm.allreduce(stats, inplace=True)
            n_total = float(stats[F])
            self._check_total(n_total, x.shape)
            mean = stats[:F] / n_total
            xc = x - mean.astype(x.dtype).reshape(bshape)
            sq = (xc * xc).sum(axis=axes, dtype=xp.float64).reshape(F)
            comm.allreduce(sq, inplace=True)
            var = sq / n_total
            self._update_running(mean, var, n_total)
            invstd = (1.0 / xp.sqrt(var + self.eps)).astype(x.dtype).reshape(bshape)
            xhat = xc * invstd
            y = xhat * self.params["gamma"].reshape(bshape) + self.params["beta"].reshape(bshape)
            self._saved_sync = (xhat, invstd, axes, bshape, n_total)
            self._saved = None
            return y

        def _check_total(self, n_total, shape):
            if n_total < 2:
                raise ShapeError(f"SyncBatchNorm {self.name!r}: expected more than one value per "
                                 f"channel in training mode over all ranks, got input shape "
                                 f"{tuple(shape)} on this rank", )

        def _update_running(self, mean, var, n_total):
            m = self.momentum
            rm, rv = self.buffers["running_mean"], self.buffers["running_var"]
            rm *= 1.0 - m
            rm += (m * mean).astype(rm.dtype)
            rv *= 1.0 - m
            rv += (m * n_total / max(n_total - 1.0, 1.0) * var).astype(rv.dtype)

        def backward(self, dy, need_dx=True):
            saved = getattr(self, "_saved_sync", None)
            if saved is None or getattr(self, "_saved", None) is not None:
                return super().backward(dy, need_dx)
            comm = self._comm()
            xhat, invstd, axes, bshape, n_total = saved
            self._saved_sync = None
            xp = self.ops.xp
            F = self.num_features
            dbeta = dy.sum(axis=axes).reshape(F)
            dgamma = (dy * xhat).sum(axis=axes).reshape(F)
            self.grads["beta"][...] = dbeta   # local: the optimizer's weighted allreduce sums them
            self.grads["gamma"][...] = dgamma
            w = self._rank_weight(comm)
            g = xp.empty(2 * F, dtype=xp.float64)
            g[:F], g[F:] = dbeta, dgamma
            g *= w
            comm.allreduce(g, inplace=True)   # the global sums, in units of the global loss
            if not need_dx:
                return None
            gb = g[:F].astype(dy.dtype).reshape(bshape)
            gg = g[F:].astype(dy.dtype).reshape(bshape)
            # this rank's gradient is in units of its local mean loss: divide by w
            dx = dy - (gb + xhat * gg) * (1.0 / (w * n_total))
            dx *= invstd * self.params["gamma"].reshape(bshape)
            return dx

        def _forward_empty(self):
            comm = self._comm()
            xp = self.ops.xp
            F = self.num_features
            stats = xp.zeros(F + 1, dtype=xp.float64)
            comm.allreduce(stats, inplace=True)
            n_total = float(stats[F])
            self._check_total(n_total, (0, F))
            mean = stats[:F] / n_total
            sq = xp.zeros(F, dtype=xp.float64)
            comm.allreduce(sq, inplace=True)
            self._update_running(mean, sq / n_total, n_total)

        def _backward_empty(self):
            comm = self._comm()
            comm.allreduce(self.ops.xp.zeros(2 * self.num_features, dtype=self.ops.xp.float64),
                           inplace=True)

else:  # pragma: no cover
    SyncBatchNorm = None


def sync_batchnorm(model) -> int:
    """Turn the model's BatchNorm1d/BatchNorm2d layers into SyncBatchNorm, in place (before
    compile, on every rank); returns how many were converted. Parameters and buffers are kept."""
    if SyncBatchNorm is None:
        raise RuntimeError("this nnx has no batch-norm layers")
    count = 0
    for layer in model.layers:
        if isinstance(layer, _BatchNorm) and not isinstance(layer, SyncBatchNorm):
            layer.__class__ = SyncBatchNorm
            count += 1
    return count

