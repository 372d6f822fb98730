"""MPI through mpi4py (CPU buffers, bootstrap, small values) and NCCL through CuPy
(`cupy.cuda.nccl`) for GPU arrays, as ChainerMN / Horovod do. No transport of our own.

mpi4py is imported by `import_mpi()` only (from `MPICommunicator()`), so importing this module
costs nothing without it. Reductions run in place on the buffer (mpi4py's buffer interface with
`MPI.IN_PLACE`: no copy, no pickling); 16-bit buffers use MPI_FLOAT16_T where the MPI library
has it and user-defined sum ops otherwise (always for bfloat16). CuPy arrays go through NCCL
when it is in use (a blocking reduction is ordered on the compute stream, a non-blocking one runs
on a side stream), else through host memory.
"""

from __future__ import annotations

import sys

import numpy as np

from .. import compat
from .comm import DONE, Communicator, DistributedError, Request
from .compression import is_device, to_bf16

INSTALL_HINT = ("pip install mpi4py mpich   (or: pip install 'nnx-framework[distributed]'; with a "
                "system MPI: pip install mpi4py), then launch with: mpiexec -n 4 python train.py")


def import_mpi():
    if not compat.has_mpi4py:
        raise DistributedError(f"nnx.distributed needs mpi4py for more than one process: "
                               f"{INSTALL_HINT}")
    try:
        from mpi4py import MPI
    except Exception as exc:  # mpi4py installed, but no MPI library it can load
        raise DistributedError(f"mpi4py is installed but cannot load an MPI library ({exc}). "
                               f"{INSTALL_HINT}") from exc
    return MPI


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
                b[...] = to_bf16(s)
        _MPI_OPS_16[kind] = MPI.Op.Create(add, commute=True)
    return _MPI_OPS_16[kind]


class MPICommunicator(Communicator):
    """MPI through mpi4py; CuPy arrays go through NCCL when it is in use, else through host
    memory. `nccl`: True (required), False, or "auto" (used for CuPy arrays when CuPy has NCCL
    and sees a GPU). The NCCL communicator is created on first use (collectively)."""

    def __init__(self, mpi_comm=None, nccl="auto"):
        MPI = import_mpi()
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
            return DONE
        if is_device(buf):
            if self._use_nccl:
                return self._nccl_reduce(buf, op, kind, blocking)
            host = buf.get()
            req = self._reduce_buffer(host, op, kind, blocking)
            return Request(wait=req.wait, test=req.test, finalize=lambda: buf.set(host),
                           keep=host)
        spec, mpi_op = self._mpi_spec(buf, op, kind)
        if blocking:
            self._comm.Allreduce(self._MPI.IN_PLACE, spec, op=mpi_op)
            return DONE
        req = self._comm.Iallreduce(self._MPI.IN_PLACE, spec, op=mpi_op)
        return Request(wait=req.Wait, test=req.Test, keep=buf)

    def _bcast_buffer(self, buf, root):
        if is_device(buf):
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
            return DONE
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


