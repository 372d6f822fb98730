"""MPI through mpi4py (CPU buffers, bootstrap, small values) and NCCL through CuPy
(`cupy.cuda.nccl`, see `nnx.distributed.nccl`) for GPU arrays, as ChainerMN / Horovod do. No
transport of our own.

mpi4py is imported by `import_mpi()` only (from `MPICommunicator()`), so importing this module
costs nothing without it. Every collective is non-blocking underneath (MPI_Iallreduce,
MPI_Ibcast, MPI_Iallgatherv, MPI_Ibarrier, ...) and waited for by the communicator's
`Watchdog` (`nnx.distributed.watchdog`), which ends the job with a report when a wait passes the
collective timeout. Python objects travel pickled through the same non-blocking collectives
(their lengths first). Reductions run in place on the buffer (mpi4py's buffer interface with
`MPI.IN_PLACE`: no copy, no pickling); 16-bit buffers use MPI_FLOAT16_T where the MPI library
has it and user-defined sum ops otherwise (always for bfloat16). CuPy arrays go through NCCL
when it is in use, else through host memory.
"""

from __future__ import annotations

import operator
import pickle
import sys
from functools import reduce

import numpy as np

from .. import compat
from .comm import DONE, Communicator, DistributedError, Request
from .compression import is_device, to_bf16
from .nccl import NcclChannel, nccl_status
from .watchdog import Watchdog, resolve_timeout

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


_PY_OPS = {"sum": lambda values: reduce(operator.add, values), "max": max, "min": min}


def _number_kind(x):
    """The buffer dtype that reduces the number `x` exactly (Python semantics: bools add up
    as ints), or None (a Python int beyond int64, another object: reduced as objects)."""
    if isinstance(x, (bool, np.bool_)):
        return np.int64
    if isinstance(x, (int, np.integer)):
        return np.int64 if abs(int(x)) < 2**40 else None  # no overflow up to 2**23 ranks
    if isinstance(x, (float, np.floating)):
        return np.float64
    if isinstance(x, (complex, np.complexfloating)):
        return np.complex128
    return None


def _describe(buf, op=None, kind=None, more=None) -> tuple:
    """A buffer as the timeout report names it (dtype[elements], op, ...), formatted only for
    a report (`nnx.distributed.watchdog.detail_text`)."""
    return (buf.dtype, buf.size, op, kind, more)


class MPICommunicator(Communicator):
    """MPI through mpi4py; CuPy arrays go through NCCL when it is in use, else through host
    memory. `nccl`: True (required), False, or "auto" (used for CuPy arrays when CuPy has NCCL
    and sees a GPU). The NCCL communicator is created on first use (collectively).
    `timeout`: the collective timeout in seconds (None: NNX_DIST_TIMEOUT or 600; 0: none)."""

    def __init__(self, mpi_comm=None, nccl="auto", timeout=None):
        MPI = import_mpi()
        seconds = resolve_timeout(timeout)
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
            nccl = nccl_status()[0]
        elif nccl and not nccl_status()[0]:
            raise DistributedError(f"backend 'nccl' asked for, but {nccl_status()[1]}",
                                   all_ranks=True)
        self._use_nccl = bool(nccl)
        self.backend = "nccl" if self._use_nccl else "mpi"
        self._fp16_native = getattr(MPI, "FLOAT16_T", MPI.DATATYPE_NULL) != MPI.DATATYPE_NULL
        self._watch = (Watchdog(self._comm, MPI, seconds, self.abort) if self.size > 1
                       else None)
        self._cid = self._watch.register("world") if self._watch is not None else "world"
        self._dups = [0]  # shared with the duplicates: names them alike on every rank
        self._nccl = (NcclChannel(self.rank, self.size, self._bcast_object, self._watch)
                      if self._use_nccl else None)

    @property
    def mpi_comm(self):
        """The underlying mpi4py communicator."""
        return self._comm

    @property
    def timeout(self) -> float | None:
        """The collective timeout in seconds (None: wait forever)."""
        return self._watch.timeout if self._watch is not None else None

    def set_timeout(self, seconds) -> None:
        """Change the collective timeout (seconds; 0 or None: wait forever) of this
        communicator and its duplicates. Call it alike on every rank."""
        if self._watch is not None:
            self._watch.set_timeout(resolve_timeout(seconds or 0))

    # -- running a collective under the watchdog ---------------------------------------------
    def _start(self, kind: str, detail, start, keep=None) -> Request:
        """Start a non-blocking collective (`start()` returns its mpi4py request); the
        Request's wait() waits for it under the watchdog. `keep`: buffers in use until then."""
        if self._watch is None:
            req = start()
            return Request(wait=req.Wait, test=req.Test, keep=keep)
        op = self._watch.enter(self._cid, kind, detail)
        req = start()
        return Request(wait=lambda: self._watch.wait(req, op), test=req.Test, keep=keep)

    def _run(self, kind: str, detail, start) -> None:
        """Run a collective to its end under the watchdog."""
        watch = self._watch
        if watch is None:
            start().Wait()
            return
        op = watch.enter(self._cid, kind, detail)
        watch.wait(start(), op)

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
                return self._nccl.allreduce(buf, op, kind, blocking)
            host = buf.get()
            req = self._reduce_buffer(host, op, kind, blocking)
            return Request(wait=req.wait, test=req.test, finalize=lambda: buf.set(host),
                           keep=host)
        spec, mpi_op = self._mpi_spec(buf, op, kind)

        def start():
            return self._comm.Iallreduce(self._MPI.IN_PLACE, spec, op=mpi_op)

        if blocking:
            self._run("allreduce", _describe(buf, op, kind), start)
            return DONE
        return self._start("allreduce", _describe(buf, op, kind), start, keep=buf)

    def _bcast_buffer(self, buf, root):
        if is_device(buf):
            if self._use_nccl:
                self._nccl.bcast(buf, root)
                return
            host = buf.get()
            self._bcast_buffer(host, root)
            buf.set(host)
            return
        spec = [buf.view(np.uint16), self._MPI.UINT16_T] if buf.dtype == np.float16 else buf
        self._run("bcast", _describe(buf, more=f"root {root}"),
                  lambda: self._comm.Ibcast(spec, root=root))

    # -- Python objects: pickled, through the same non-blocking collectives ----------------
    def _bcast_object(self, obj, root):
        data = pickle.dumps(obj, pickle.HIGHEST_PROTOCOL) if self.rank == root else b""
        n = np.array([len(data)], dtype=np.int64)
        self._run("bcast", f"object size, root {root}", lambda: self._comm.Ibcast(n, root=root))
        buf = bytearray(data) if self.rank == root else bytearray(int(n[0]))
        self._run("bcast", f"object of {int(n[0])} bytes, root {root}",
                  lambda: self._comm.Ibcast([buf, self._MPI.BYTE], root=root))
        return obj if self.rank == root else pickle.loads(buf)

    def _allreduce_object(self, obj, op):
        """A number reduced over the ranks: through a one-element buffer (one collective)
        when it fits a float64 / int64 / complex128, else every rank's value gathered and
        combined in rank order (the same result on every rank)."""
        kind = _number_kind(obj)
        if kind is None:
            return _PY_OPS[op](self.allgather(obj))
        buf = np.array([obj], dtype=kind)
        spec, mpi_op = self._mpi_spec(buf, op, None)
        self._run("allreduce", _describe(buf, op), lambda: self._comm.Iallreduce(
            self._MPI.IN_PLACE, spec, op=mpi_op))
        value = buf[0].item()
        if isinstance(obj, (bool, np.bool_)):
            return value if op == "sum" else bool(value)  # True + True == 2, as in Python
        return obj.dtype.type(value) if isinstance(obj, np.generic) else value

    def allgather(self, obj):
        if self.size == 1:
            return [obj]
        data = pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
        sizes = np.zeros(self.size, dtype=np.int64)
        mine = np.array([len(data)], dtype=np.int64)
        self._run("allgather", "object sizes", lambda: self._comm.Iallgather(mine, sizes))
        counts = [int(c) for c in sizes]
        displs = [sum(counts[:i]) for i in range(self.size)]
        out = bytearray(sum(counts))
        self._run("allgather", f"objects of {sum(counts)} bytes",
                  lambda: self._comm.Iallgatherv([data, self._MPI.BYTE],
                                                 [out, (counts, displs), self._MPI.BYTE]))
        view = memoryview(out)
        return [pickle.loads(view[d:d + c]) for d, c in zip(displs, counts, strict=True)]

    def gather(self, obj, root=0):
        if self.size == 1:
            return [obj]
        data = pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
        mine = np.array([len(data)], dtype=np.int64)
        sizes = np.zeros(self.size, dtype=np.int64)
        self._run("gather", f"object sizes, root {root}",
                  lambda: self._comm.Igather(mine, sizes, root=root))
        if self.rank != root:
            self._run("gather", f"object, root {root}",
                      lambda: self._comm.Igatherv([data, self._MPI.BYTE], None, root=root))
            return None
        counts = [int(c) for c in sizes]
        displs = [sum(counts[:i]) for i in range(self.size)]
        out = bytearray(sum(counts))
        self._run("gather", f"objects of {sum(counts)} bytes, root {root}",
                  lambda: self._comm.Igatherv([data, self._MPI.BYTE],
                                              [out, (counts, displs), self._MPI.BYTE],
                                              root=root))
        view = memoryview(out)
        return [pickle.loads(view[d:d + c]) for d, c in zip(displs, counts, strict=True)]

    def barrier(self):
        self._run("barrier", "", self._comm.Ibarrier)

    def abort(self, code=1):
        sys.stdout.flush()
        sys.stderr.flush()
        self._comm.Abort(int(code))

    def dup(self):
        """A duplicate communicator (its own MPI context: its collectives never mix with
        this one's), sharing the watchdog and the NCCL channel (one stream: see
        `nnx.distributed.nccl`)."""
        other = MPICommunicator.__new__(MPICommunicator)
        other.__dict__.update(self.__dict__)
        if hasattr(self._comm, "Idup"):  # MPI-3 (mpi4py >= 3.1): under the watchdog
            box: list = []

            def start():
                comm, req = self._comm.Idup()
                box.append(comm)
                return req

            self._run("dup", "", start)
            other._comm = box[0]
        else:  # pragma: no cover - an old mpi4py
            other._comm = self._comm.Dup()
        self._dups[0] += 1
        other._cid = f"{self._cid}.dup{self._dups[0]}"
        if self._watch is not None:
            self._watch.register(other._cid)
        return other
