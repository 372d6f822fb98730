"""The CUDA runtime side of the strict fake cupy (tests/fake_cupy.py): devices, streams,
events, graph capture and replay, the memory pool, cuBLAS GemmEx and CuPy's GEMM compute-type
switch, emulated on the CPU.

Capture: while a stream captures, device work is RECORDED (`_run`), not run, and the
operations CUDA forbids during capture (host synchronization, pageable host-to-device copies)
raise CaptureError. `STATE.log` records (what, stream, detail) for the ordering tests.
"""

from __future__ import annotations

import ctypes
import os
import time

import numpy


class CaptureError(RuntimeError):
    """What CUDA reports for an operation that is not permitted while a stream captures."""


class _State:
    capture: list | None = None  # the recording of the capture in progress
    streams: list = []  # the current-stream stack (empty: the legacy default stream)
    devices: list = []  # the current-device stack
    log: list = []  # (what, stream name, detail)


STATE = _State()


def _no_sync(what: str) -> None:
    if STATE.capture is not None:
        raise CaptureError(f"{what}: host synchronization is not permitted during stream capture")


def _poison(shape, dtype) -> numpy.ndarray:
    a = numpy.empty(shape, dtype=dtype)
    if a.dtype.kind == "f":
        a.fill(numpy.nan)
    elif a.dtype.kind in "iu":
        a.fill(-7)
    return a


def _run(fn, inplace: bool = False):
    """Device work: run now, or under capture record it (an in-place op returns None; an op
    with a result returns a poisoned placeholder of its shape that the replay fills)."""
    if STATE.capture is None:
        return fn()
    if inplace:
        STATE.capture.append(fn)
        return None
    r = numpy.asarray(fn())  # shape and dtype only: a capture runs nothing
    ph = _poison(r.shape, r.dtype)
    STATE.capture.append(lambda: numpy.copyto(ph, fn(), casting="unsafe"))
    return ph


# -- devices, streams, events, graphs --------------------------------------------------------


class EmuDevice:
    compute_capability = "80"

    def __init__(self, device_id=None):
        self.id = int(device_id) if device_id is not None else current_device()

    def __enter__(self):
        STATE.devices.append(self.id)
        return self

    def __exit__(self, *exc):
        STATE.devices.pop()
        return False

    def synchronize(self):
        _no_sync("Device.synchronize")
        STATE.log.append(("device_sync", f"device{self.id}", None))


def current_device() -> int:
    return STATE.devices[-1] if STATE.devices else 0


def _stream_name(stream) -> str:
    stream = stream if stream is not None else current_stream()
    return stream.name


class Stream:
    _count = 0

    def __init__(self, null=False, non_blocking=False, name=None):
        Stream._count += 1
        self.name = name or ("null" if null else f"stream{Stream._count}")
        self.device_id = current_device()
        self.ptr = 0 if null else Stream._count
        self.non_blocking = non_blocking

    def __enter__(self):
        STATE.streams.append(self)
        return self

    def __exit__(self, *exc):
        STATE.streams.pop()
        return False

    def record(self, event=None):
        event = event or Event()
        event.record(self)
        return event

    def wait_event(self, event):
        STATE.log.append(("wait", self.name, event.stream_name))

    def synchronize(self):
        _no_sync("Stream.synchronize")
        STATE.log.append(("sync", self.name, None))

    def begin_capture(self, mode=None):
        if self.name == "null":
            raise CaptureError("the legacy default stream cannot be captured")
        STATE.capture = []
        STATE.log.append(("begin_capture", self.name, None))

    def end_capture(self):
        ops, STATE.capture = STATE.capture, None
        STATE.log.append(("end_capture", self.name, len(ops)))
        return Graph(ops)


NULL_STREAM = Stream(null=True)


def current_stream() -> Stream:
    return STATE.streams[-1] if STATE.streams else NULL_STREAM


class Event:
    def __init__(self, *args, **kwargs):
        self.stream_name, self.device_id, self.t = None, None, None

    def record(self, stream=None):
        stream = stream if stream is not None else current_stream()
        self.stream_name, self.device_id = stream.name, current_device()
        self.t = time.perf_counter()
        STATE.log.append(("record", stream.name, current_device()))

    def synchronize(self):
        _no_sync("Event.synchronize")


def get_elapsed_time(start, end) -> float:
    return (end.t - start.t) * 1e3


class Graph:
    """The recording of a capture: `launch` runs the recorded device work in order."""

    def __init__(self, ops):
        self.ops = ops

    def launch(self, stream=None):
        STATE.log.append(("graph_launch", _stream_name(stream), len(self.ops)))
        for op in self.ops:
            op()


class MemoryPool:
    malloc = None

    def used_bytes(self):
        return 0

    def free_bytes(self):
        return 0

    def total_bytes(self):
        return 0

    def free_all_blocks(self):
        pass


class OutOfMemoryError(MemoryError):
    def __init__(self, size, total, limit=0):
        super().__init__(
            f"Out of memory allocating {size:,} bytes (allocated so far: {total:,} bytes)."
        )
        self._size = size


# -- cuBLAS and CuPy's GEMM compute type ------------------------------------------------------

_CUDA_DTYPES = {0: numpy.float32, 1: numpy.float64, 2: numpy.float16}  # CUDA_R_32F/64F/16F


def _colmajor(ptr, dtype, rows, cols, ld):
    """A (rows x cols) column-major matrix with leading dimension `ld` at address `ptr`."""
    dtype = numpy.dtype(dtype)
    count = ld * (cols - 1) + rows
    raw = (ctypes.c_char * (count * dtype.itemsize)).from_address(ptr)
    flat = numpy.frombuffer(raw, dtype=dtype, count=count)
    return numpy.lib.stride_tricks.as_strided(
        flat, shape=(rows, cols), strides=(dtype.itemsize, ld * dtype.itemsize), writeable=True
    )


class FakeCublas:
    """cublasGemmEx as CuPy's binding takes it (column-major, ops, leading dimensions, host
    pointers to alpha and beta); math in float32 (or float64) like compute type 32F/64F."""

    CUBLAS_OP_N, CUBLAS_OP_T = 0, 1
    CUBLAS_COMPUTE_32F, CUBLAS_COMPUTE_64F = 68, 70
    CUBLAS_GEMM_DEFAULT = -1

    def __init__(self):
        self.calls = []

    def gemmEx(self, handle, transa, transb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb,
               beta, C, Ctype, ldc, computeType, algo):
        self.calls.append(dict(transa=transa, transb=transb, m=m, n=n, k=k, Atype=Atype,
                               Btype=Btype, Ctype=Ctype, computeType=computeType))
        acc = numpy.float64 if computeType == self.CUBLAS_COMPUTE_64F else numpy.float32
        a_shape = (m, k) if transa == self.CUBLAS_OP_N else (k, m)
        b_shape = (k, n) if transb == self.CUBLAS_OP_N else (n, k)
        assert lda >= max(1, a_shape[0]) and ldb >= max(1, b_shape[0]) and ldc >= max(1, m)

        def gemm():
            a = _colmajor(A, _CUDA_DTYPES[Atype], *a_shape, lda).astype(acc)
            b = _colmajor(B, _CUDA_DTYPES[Btype], *b_shape, ldb).astype(acc)
            a = a if transa == self.CUBLAS_OP_N else a.T
            b = b if transb == self.CUBLAS_OP_N else b.T
            c = _colmajor(C, _CUDA_DTYPES[Ctype], m, n, ldc)
            al = numpy.frombuffer((ctypes.c_char * 4).from_address(alpha), numpy.float32)[0]
            be = numpy.frombuffer((ctypes.c_char * 4).from_address(beta), numpy.float32)[0]
            r = al * (a @ b)
            if be != 0:
                r = r + be * c.astype(acc)
            with numpy.errstate(over="ignore"):
                c[...] = r
        _run(gemm, inplace=True)


class FakeLinalg:
    """cupy._core._routines_linalg's compute-type switch, with CuPy's CUPY_TF32 latching."""

    (COMPUTE_TYPE_TBD, COMPUTE_TYPE_DEFAULT, COMPUTE_TYPE_PEDANTIC, COMPUTE_TYPE_FP16,
     COMPUTE_TYPE_FP32, COMPUTE_TYPE_FP64, COMPUTE_TYPE_BF16, COMPUTE_TYPE_TF32) = range(8)

    def __init__(self):
        self.types = {}

    def get_compute_type(self, dtype):
        key = numpy.dtype(dtype).char
        if key not in self.types:
            tf32 = key == "f" and int(os.getenv("CUPY_TF32", "0")) > 0
            self.types[key] = self.COMPUTE_TYPE_TF32 if tf32 else self.COMPUTE_TYPE_DEFAULT
        return self.types[key]

    def set_compute_type(self, dtype, compute_type):
        self.types[numpy.dtype(dtype).char] = compute_type


def reset_log() -> None:
    STATE.log.clear()
