"""Data-parallel training: MPI through mpi4py (CPUs, bootstrap, small values) and NCCL through
CuPy (`cupy.cuda.nccl`) for GPU arrays, as ChainerMN / Horovod do. No transport of our own.

    import nnx
    comm = nnx.distributed.init()               # a world of one outside mpiexec
    model = nnx.Sequential([...])
    opt = nnx.distributed.DistributedOptimizer(nnx.Adam(1e-3), comm)
    model.compile(opt, "softmax_cross_entropy", ["accuracy"])
    model.fit(x, y, batch_size=128, epochs=5)   # the same x, y on every rank

    $ mpiexec -n 4 python train.py              # or: mpiexec -n 4 nnx train --distributed

The work is done by a `DataParallel` strategy on the training step's seam (`nnx.hooks`): a
`DistributedOptimizer` brings it (`step_hooks()`), `Model.compile` adds it to the model, and the
model calls it at the step's hook points; nothing of the model, its layers or its optimizer is
replaced. `model.add_hooks(DataParallel(comm))` after compiling with a plain optimizer does the
same. What `fit` does with it on N ranks (each given the same x, y) is what one process does
with the same `batch_size`, up to float rounding:

- the model's architecture is compared across ranks when the strategy is attached (a clear
  error names the ranks and the first difference); the initial parameters, buffers, optimizer
  state and step, and the model's seed (hence the shuffle order) are broadcast from rank 0;
- each global batch (the same on every rank) is split evenly across the ranks; each rank runs
  forward/backward on its share, its gradient is weighted by local_n / global_n and the
  weighted gradients are summed with ONE allreduce over the flat gradient buffer (in place, no
  copy, on the CPU: the mpi4py buffer interface with MPI.IN_PLACE), then every rank applies the
  same optimizer update. The weighting makes the result exact when the batch does not divide
  evenly (last batch, batch_size not divisible by N); a rank whose share is empty contributes
  zeros;
- the epoch's loss / accuracy sums are reduced across ranks; only rank 0 prints progress and
  writes checkpoints (`Model.save` is a no-op on the other ranks: `Model.is_chief`);
- at each epoch end the parameters are checked for bitwise equality across ranks (a CRC32,
  gathered) and re-broadcast from rank 0 if they drifted; batch-norm running statistics (the
  layers' buffers) are averaged across ranks.

Batch norm: `BatchNorm1d/2d` normalize with per-rank batch statistics (each rank sees
global_batch / N samples), as in Horovod and PyTorch DDP by default. `SyncBatchNorm`
(`nnx.layers.SyncBatchNorm`) reduces the statistics (and their gradients) across ranks, so N
ranks normalize exactly like one process with the whole batch; the strategy hands it its
communicator. `sync_batchnorm([...layers...])` converts the batch norms of a list of layers (or
a Chain) before the model is built: `nnx.Sequential(nnx.distributed.sync_batchnorm([...]))`.

Options of `DistributedOptimizer(optimizer, comm, ...)` (and `DataParallel(comm, ...)`):
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

Faults: a rank that raises (or exits non-zero) aborts the job at once (`launch`); a rank that
stalls, or a loop in which one rank makes a collective fewer than the others, ends the job after
the collective timeout (`init(timeout=SECONDS)`, `NNX_DIST_TIMEOUT`, default 600 s; 0: none) with
a report naming the collective, where each rank is and which ranks did not arrive
(`watchdog`); `fit()` with different data on different ranks names the array and how it differs
(shapes, the first differing row, the first NaN/inf).

Modules: `launch` (init, launch detection, abort on failure), `comm` (Communicator, Request,
LocalCommunicator), `mpi` (MPICommunicator), `nccl` (NCCL for CuPy arrays: availability, one
stream for a communicator and its duplicates), `watchdog` (the collective timeout),
`compression` (fp16/bf16), `consistency` (same model and data on every rank, broadcast_model),
`strategy` (DataParallel, DistributedOptimizer, distribute), `data` (shard).

This package imports without mpi4py; only `init()` under mpiexec (or `backend="mpi"`) needs it,
and says how to install it when it is missing.
"""

from __future__ import annotations

from ..layers.sync_batchnorm import SyncBatchNorm, SyncContext, sync_batchnorm
from .comm import Communicator, DistributedError, LocalCommunicator, Request
from .consistency import broadcast_model, check_same_model
from .data import shard
from .launch import init, is_available, launched_under_mpi
from .mpi import INSTALL_HINT, MPICommunicator
from .strategy import DataParallel, DistributedOptimizer, distribute

__all__ = [
    "Communicator", "DataParallel", "DistributedError", "DistributedOptimizer", "INSTALL_HINT",
    "LocalCommunicator", "MPICommunicator", "Request", "SyncBatchNorm", "SyncContext",
    "broadcast_model", "check_same_model", "distribute", "init", "is_available",
    "launched_under_mpi", "shard", "sync_batchnorm",
]
