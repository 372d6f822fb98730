"""NCCL through CuPy (`cupy.cuda.nccl`) for CuPy arrays: whether it is usable here
(`nccl_status`, probed once per process with CuPy's import warning silenced), the install hint,
and `NcclChannel`, the NCCL side of an `MPICommunicator` and of its duplicates.

One channel serves a communicator and all its duplicates (the SyncBatchNorm statistics use a
duplicate): per CUDA device it holds ONE NCCL communicator and ONE stream, and every NCCL
operation is issued on that stream, in program order, which is the same on every rank. NCCL
documents that operations of two communicators running concurrently (e.g. the statistics on
the compute stream while gradient buckets reduce on a side stream with overlap=True) can
deadlock; on one stream they are serialized instead. The stream waits for the compute stream
(an event) before each operation; a blocking operation makes the compute stream wait for it
(an event again, no host synchronization); a non-blocking one returns a Request whose `wait()`
does that.

The communicator of a device is created under that device (`with cupy.cuda.Device(id)`, the id
of the array being reduced, which is the device of the Ops that made it): NCCL binds a
communicator to the device current at its creation, and a model on `CupyOps(device=k)` would
otherwise get one bound to device 0. Creation is collective: every rank must create its
communicators in the same order (one device per rank, the usual setup, does).

Tests drive this module with fake `cupy` / `nccl` objects (`NcclChannel(..., cupy=, nccl=)`).
"""

from __future__ import annotations

import functools
import warnings

import numpy as np

from .. import compat
from .comm import DONE, DistributedError, Request

WHEELS = {12: "nvidia-nccl-cu12", 13: "nvidia-nccl-cu13"}


def install_hint(cuda_major: int | None = None) -> str:
    """How to install the NCCL library for CuPy: the wheel of CUDA `cuda_major` first (the
    CUDA this CuPy was built for, when known), and the other one."""
    first = cuda_major if cuda_major in WHEELS else None
    order = [first] if first else []
    order += [m for m in sorted(WHEELS) if m != first]
    parts = [f"pip install {WHEELS[m]}   (CUDA {m}, with cupy-cuda{m}x)" for m in order]
    return "install the NCCL library: " + "  or  ".join(parts)


def _cuda_major() -> int | None:
    try:
        return int(compat.cupy.cuda.runtime.runtimeGetVersion()) // 1000
    except Exception:
        return None


def import_nccl():
    """`cupy.cuda.nccl`, imported with CuPy's warning about a missing libnccl silenced (it
    would be printed once per rank); None when the import fails."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from cupy.cuda import nccl
        except Exception:
            return None
    return nccl


@functools.lru_cache(maxsize=1)
def nccl_status() -> tuple[bool, str]:
    """(available, why): whether CuPy sees a GPU and can load NCCL, probed once per process.
    `why` says what is missing and how to install it, or names the NCCL version."""
    if not compat.has_cupy_gpu():
        return False, compat.cupy_unavailable_reason()
    nccl = import_nccl()
    if nccl is None or not getattr(nccl, "available", True):
        major = _cuda_major()
        built = f" (built for CUDA {major})" if major else ""
        return False, (f"CuPy {compat.cupy_version}{built} cannot load the NCCL library "
                       f"(libnccl); {install_hint(major)}")
    try:
        version = f"NCCL {nccl.get_version()}"
    except Exception:
        version = "NCCL"
    return True, version


def nccl_dtype(nccl, dtype, kind=None):
    """The NCCL datatype of a buffer of `dtype` (bfloat16 bits when kind is 'bf16')."""
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


class NcclChannel:
    """The NCCL communicators (one per device) and their stream, shared by an MPICommunicator
    and its duplicates (see the module docstring).

    `rank`, `size`: this process in the job; `bcast_object(obj, root)`: the MPI communicator's
    broadcast (for the NCCL unique id); `watch`: the Watchdog that times the operations, or
    None; `cupy`, `nccl`: the modules (fakes in tests; imported on first use otherwise)."""

    def __init__(self, rank: int, size: int, bcast_object, watch=None, cupy=None, nccl=None):
        self.rank, self.size = rank, size
        self._bcast_object = bcast_object
        self.watch = watch
        self._cupy, self._nccl = cupy, nccl
        self.devices: dict = {}  # device id -> (NCCL communicator, stream)
        if watch is not None:
            watch.register("nccl")
            watch.on_abort.append(self.abort)

    def _modules(self):
        if self._cupy is None:
            import cupy

            self._cupy = cupy
        if self._nccl is None:
            self._nccl = import_nccl()
            if self._nccl is None:
                raise DistributedError(f"NCCL is not usable: {nccl_status()[1]}")
        return self._cupy, self._nccl

    def _channel(self, device: int):
        """(communicator, stream) of `device`; created collectively on first use, under the
        device (the caller holds `with cupy.cuda.Device(device)`)."""
        got = self.devices.get(device)
        if got is None:
            cupy, nccl = self._modules()
            uid = nccl.get_unique_id() if self.rank == 0 else None
            uid = self._bcast_object(uid, 0)
            comm = nccl.NcclCommunicator(self.size, uid, self.rank)
            stream = cupy.cuda.Stream(non_blocking=True)
            got = self.devices[device] = (comm, stream)
        return got

    def _event(self):
        return self._cupy.cuda.Event(block=False, disable_timing=True)

    def _issue(self, buf, kind: str, detail, launch, blocking: bool) -> Request:
        """Run `launch(comm, stream)` on the channel's stream after the compute stream's work,
        watched; blocking: the compute stream waits for it."""
        cupy, _ = self._modules()
        device = int(buf.device.id)
        with cupy.cuda.Device(device):
            comm, stream = self._channel(device)
            compute = cupy.cuda.get_current_stream()
            stream.wait_event(compute.record(self._event()))
            op = self.watch.enter("nccl", kind, detail) if self.watch is not None else None
            launch(comm, stream)
            done = stream.record(self._event())
            if op is not None:
                self.watch.device_op(op, done, device)
            if blocking:
                compute.wait_event(done)
                return DONE

        def join():
            with cupy.cuda.Device(device):
                cupy.cuda.get_current_stream().wait_event(done)

        return Request(wait=join, test=lambda: bool(done.done), keep=buf)

    def allreduce(self, buf, op: str, kind=None, blocking: bool = True) -> Request:
        """Reduce the CuPy array `buf` in place (op sum/max/min; kind None/'fp16'/'bf16')."""
        _, nccl = self._modules()
        ops = {"sum": nccl.NCCL_SUM, "max": nccl.NCCL_MAX, "min": nccl.NCCL_MIN}
        dtype = nccl_dtype(nccl, buf.dtype, kind)
        ptr, n = buf.data.ptr, buf.size

        def launch(comm, stream):
            comm.allReduce(ptr, ptr, n, dtype, ops[op], stream.ptr)

        return self._issue(buf, "allreduce", (buf.dtype, n, op, kind, None), launch, blocking)

    def bcast(self, buf, root: int) -> None:
        """Broadcast the CuPy array `buf` from `root`, in place (ordered on the compute
        stream)."""
        _, nccl = self._modules()
        dtype = nccl_dtype(nccl, buf.dtype)
        ptr, n = buf.data.ptr, buf.size

        def launch(comm, stream):
            comm.bcast(ptr, n, dtype, root, stream.ptr)

        self._issue(buf, "bcast", (buf.dtype, n, None, None, f"root {root}"), launch,
                    blocking=True)

    def abort(self) -> None:
        """Abort the NCCL communicators (a collective timeout: kernels may be stuck)."""
        for comm, _stream in self.devices.values():
            try:
                comm.abort()
            except Exception:  # pragma: no cover - best effort on the way down
                pass
