"""Starting a job: is this process one rank of an MPI launch (`launched_under_mpi`, read from
the launcher's environment), the job's communicator (`init`), and failure handling.

Failure handling: under mpiexec (more than one rank) `init()` installs a `sys.excepthook` (and
wraps `sys.exit` for non-zero codes) that prints the rank and its traceback and calls
`MPI_Abort`, so a rank that raises stops the whole job at once with a non-zero exit instead of
leaving the other ranks waiting in a collective. `init(abort_on_error=False)` turns it off. An
error raised alike on every rank (`DistributedError(..., all_ranks=True)`, e.g. a model that
differs across ranks) is reported by rank 0 only.

Hangs: every collective waits at most `timeout` seconds (`init(timeout=...)`, else
`NNX_DIST_TIMEOUT`, else 600 s); then the waiting rank reports which collective it waited in and
which ranks did not arrive, and aborts the job (`nnx.distributed.watchdog`).

NCCL: with backend "auto", where CuPy sees a GPU but cannot load NCCL, rank 0 says so once (a
RuntimeWarning with the install command) and CuPy arrays are reduced through host memory.

This module imports without mpi4py; only `init()` under mpiexec (or `backend="mpi"`) needs it,
and says how to install it when it is missing.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
import warnings

from .. import compat
from .comm import Communicator, DistributedError, LocalCommunicator
from .mpi import INSTALL_HINT, MPICommunicator
from .nccl import nccl_status
from .watchdog import resolve_timeout

# The environment an MPI launcher (mpiexec / mpirun / srun with PMI) sets in each process.
SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE")
RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK")


def launched_under_mpi() -> bool:
    """True when an MPI launcher (mpiexec/mpirun/srun with PMI) started this process, or when
    NNX_DISTRIBUTED=1 says so. Reads the environment only; MPI is not initialized."""
    if os.environ.get("NNX_DISTRIBUTED", "").strip().lower() in ("1", "true", "yes", "mpi"):
        return True
    return any(v in os.environ for v in SIZE_VARS + RANK_VARS)


def launched_size() -> int | None:
    for var in SIZE_VARS:
        try:
            return int(os.environ[var])
        except (KeyError, ValueError):
            continue
    return None


def is_available() -> bool:
    """Whether mpi4py is installed (MPI itself is loaded only by `init`)."""
    return compat.has_mpi4py


# -- init ---------------------------------------------------------------------------------------
_WORLD: dict = {}


def init(backend: str = "auto", abort_on_error: bool = True, device="auto",
         timeout: float | None = None) -> Communicator:
    """The communicator of this job (the same object on repeated calls).

    backend: "auto" (MPI under mpiexec, with NCCL for CuPy arrays where CuPy has NCCL and a
    GPU; a world of one outside mpiexec or without mpi4py), "mpi" (MPI only; CuPy arrays go
    through host memory), "nccl" (NCCL required for CuPy arrays), or "local" (a world of one).

    abort_on_error: with more than one rank, an uncaught exception (or sys.exit with a non-zero
    code) on any rank prints that rank's traceback and aborts every rank (MPI_Abort).

    device: "auto" makes GPU `local_rank % device_count` CuPy's current device on each rank
    (so ranks on one node use different GPUs); None leaves it alone.

    timeout: seconds any collective may wait for the other ranks before the job is aborted
    with a report naming the collective and the ranks that did not arrive (None: the
    NNX_DIST_TIMEOUT variable, else 600; 0: wait forever). Given again on a later call, it
    replaces the timeout (call it alike on every rank)."""
    if backend not in ("auto", "mpi", "nccl", "local"):
        raise ValueError(f"unknown distributed backend {backend!r}; expected one of: auto, "
                         "local, mpi, nccl")
    seconds = resolve_timeout(timeout)  # a bad value fails in a world of one too
    if backend in _WORLD:
        if timeout is not None:
            _WORLD[backend].set_timeout(seconds)
        return _WORLD[backend]
    if backend == "local":
        comm = LocalCommunicator()
    elif backend == "auto" and not launched_under_mpi():
        comm = LocalCommunicator()
    elif backend == "auto" and not compat.has_mpi4py:
        size = launched_size()
        if size == 1:
            comm = LocalCommunicator()
        else:
            raise DistributedError(f"this process was started by an MPI launcher "
                                   f"({size or 'several'} processes) but mpi4py is not "
                                   f"installed, so the ranks cannot talk to each other: "
                                   f"{INSTALL_HINT}")
    else:
        nccl = {"auto": "auto", "mpi": False, "nccl": True}[backend]
        comm = MPICommunicator(None, nccl=nccl, timeout=timeout)
        if backend == "auto" and comm.size > 1:
            _report_nccl_once(comm)
        if device == "auto" and comm.size > 1 and compat.has_cupy_gpu():
            try:
                compat.cupy.cuda.Device(comm.local_rank % compat.cuda_device_count()).use()
            except Exception:  # pragma: no cover - depends on the machine
                pass
        if abort_on_error and comm.size > 1:
            _install_abort_hooks(comm)
    _WORLD[backend] = comm
    return comm


def _report_nccl_once(comm: Communicator) -> None:
    """Rank 0 warns once when CuPy sees a GPU but NCCL is unusable (the others stay quiet)."""
    if comm.rank != 0 or not compat.has_cupy_gpu():
        return
    ok, why = nccl_status()
    if not ok:
        warnings.warn(f"nnx.distributed: NCCL is not available, so CuPy arrays are reduced "
                      f"through host memory (slower): {why}", RuntimeWarning, stacklevel=3)


def _let_the_launcher_forward_it() -> None:
    """Flush, then give the launcher a moment to forward what this rank just wrote: MPI_Abort
    kills the job at once, and output still in a pipe to mpiexec can be lost with it."""
    sys.stdout.flush()
    sys.stderr.flush()
    time.sleep(0.5)


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
                _let_the_launcher_forward_it()
        finally:
            comm.abort(code)

    def exit(status=None):
        if status is not None and status != 0:
            if not isinstance(status, int):
                sys.stderr.write(f"{status}\n")
            sys.stderr.write(f"[nnx.distributed] rank {comm.rank} of {comm.size} exited with "
                             f"status {status!r}; aborting all ranks\n")
            _let_the_launcher_forward_it()
            comm.abort(status if isinstance(status, int) else 1)
        previous_exit(status)

    excepthook._nnx_distributed = True
    sys.excepthook = excepthook
    sys.exit = exit


