"""Data parallelism as a strategy on the training step's seam (`nnx.hooks`), and the optimizer
that brings it.

`DataParallel` is a `StepHooks` object: the model calls it at the step's hook points and it
never replaces a method of the model, its layers or its optimizer. Its work, per hook point:

    attach         the same architecture on every rank (check_same_model); rank 0's seed,
                   parameters, buffers and optimizer state broadcast; per-rank dropout seeds;
                   gradient buckets; a SyncContext for the SyncBatchNorm layers
    begin_fit      the same fit arguments and data on every rank (check_same_fit)
    end_fit        forget what begin_fit learned about the data
    split_batch    this rank's share of the global batch (data="replicated")
    begin_step     this rank's gradient weight n_local / n_global (1 / size in a user's loop),
                   and the step's sample counts for SyncBatchNorm (its count on the host)
    empty_step     no samples here: take part in the SyncBatchNorm reductions with zeros, and
                   start the buckets at the points of the backward order the others do
    after_leaf_backward   overlap=True only: start a bucket's allreduce once its layers are done
    before_update  the weighted allreduce of the flat gradients (or wait for the buckets)
    end_epoch      reduce [loss_sum, weight_sum, seen, *add_loss sums] and the metrics' sums;
                   average float buffers; CRC resync
    is_chief       rank 0 prints and writes checkpoints

`DistributedOptimizer(optimizer, comm, **options)` wraps any optimizer the way ChainerMN's
multi-node optimizer does: it delegates its update, learning rate, step, state and
hyperparameters to the wrapped one (so checkpoints save and load it as is), and its
`step_hooks()` returns its DataParallel strategy, which `Model.compile` adds to the model.
"""

from __future__ import annotations

import time

import numpy as np

from .. import optim as optim_mod
from ..hooks import StepHooks
from ..layers.compose import Parallel
from ..layers.sync_batchnorm import SyncBatchNorm, SyncContext
from .comm import Communicator
from .compression import check_compression
from .consistency import broadcast_model, check_same_fit, check_same_model, params_crc
from .launch import init

_DATA_MODES = ("replicated", "sharded")


class Bucket:
    """A contiguous range [lo, hi) of the flat gradient buffer holding whole layers' gradients.
    `deferred` buckets hold regularized parameters (their gradients are complete only after
    backward, when the model adds the regularizer terms) and start in `before_update`."""

    __slots__ = ("lo", "hi", "layers", "deferred", "uses", "remaining", "ready", "req")

    def __init__(self, lo, hi, layer, deferred):
        self.lo, self.hi, self.layers, self.deferred = lo, hi, [layer], deferred
        self.uses = 0  # backward calls per step: a tied layer's backward runs once per use
        self.remaining, self.ready, self.req = 0, False, None


class DataParallel(StepHooks):
    """Synchronous data parallelism over `comm` (default: `init()`): N ranks given the same x, y
    train like one process with the same batch_size, up to float rounding (see
    `nnx.distributed`).

    - `data="replicated"`: every rank holds all of x, y and runs its share of each global batch;
      `"sharded"`: each rank passes its own part (`shard()`), batch_size is per rank;
    - `overlap=True`: the gradient buffer is cut into buckets of about `bucket_mb` MB along
      layer boundaries, each reduced (non-blocking) as soon as backward has produced it;
    - `compression="fp16" | "bf16"`: gradients are reduced in 16 bits;
    - `resync`: at each epoch end, compare the parameters' CRC32 and re-broadcast on drift.

    `stats`: steps, seconds spent waiting for gradient reductions ("comm_s"), bytes reduced per
    step, buckets, re-synchronizations."""

    def __init__(self, comm: Communicator | None = None, *, data: str = "replicated",
                 overlap: bool = False, bucket_mb: float = 4.0, compression=None,
                 resync: bool = True):
        if data not in _DATA_MODES:
            raise ValueError(f"data must be 'replicated' or 'sharded', got {data!r}")
        if isinstance(bucket_mb, bool) or not isinstance(bucket_mb, (int, float)) \
                or bucket_mb <= 0:
            raise ValueError(f"bucket_mb must be a positive number, got {bucket_mb!r}")
        self.compression = check_compression(compression)
        self.comm = comm if comm is not None else init()
        if not isinstance(self.comm, Communicator):
            raise TypeError(f"comm must be an nnx.distributed Communicator (from init()), got "
                            f"{type(self.comm).__name__}")
        self.data = data
        self.overlap = bool(overlap)
        self.bucket_mb = float(bucket_mb)
        self.resync = bool(resync)
        # Per-leaf events cost a wrapper per leaf call: only when overlapping with peers.
        self.leaf_events = self.overlap and self.comm.size > 1
        self.model = None
        self.stats = {"steps": 0, "comm_s": 0.0, "bytes_per_step": 0, "buckets": 0,
                      "resyncs": 0}
        self.buckets: list[Bucket] = []
        self.sync_context: SyncContext | None = None  # given to the SyncBatchNorm layers
        self._bucket_of: dict = {}
        self._next = 0
        self._weight: float | None = None  # this rank's gradient weight during a step
        self._in_step = False
        self._uniform_samples = False  # inside fit: every rank's samples have one shape

    def __repr__(self):
        return (f"DataParallel(rank {self.comm.rank} of {self.comm.size}, data={self.data!r}, "
                f"overlap={self.overlap}, compression={self.compression!r})")

    @property
    def is_chief(self) -> bool:
        """True on rank 0 of the communicator."""
        return self.comm.rank == 0

    @property
    def weight(self) -> float:
        """This rank's gradient weight in the current step (1 / size outside a step)."""
        return self._weight if self._weight is not None else 1.0 / self.comm.size

    # -- joining a model ----------------------------------------------------------------------
    def attach(self, model) -> None:
        if self.model is not None and self.model is not model:
            raise ValueError(f"this DataParallel strategy already serves {self.model.describe()}"
                             f"; create one per model")
        self.model = model
        comm = self.comm
        check_same_model(model, comm, model.optimizer)
        if comm.size > 1:
            if model.seed is None and comm.rank == 0:  # a random seed, but the same everywhere
                model.seed = int(np.random.SeedSequence().entropy % 2**31)
            model.seed = comm.bcast(model.seed)  # the same shuffle order on every rank
            broadcast_model(model, comm)
            if comm.rank and model.seed is not None:  # different dropout masks per rank
                seq = np.random.SeedSequence([int(model.seed) & 0xFFFFFFFF, comm.rank])
                model.ops.seed(int(seq.generate_state(1)[0]))
        self._build_buckets(model)
        syncs = _sync_layers(model)
        if syncs and comm.size > 1:
            if self.sync_context is None:  # statistics on their own communicator
                self.sync_context = SyncContext(comm.dup())
            for layer in syncs:
                layer.use_sync(self.sync_context)

    def detach(self, model) -> None:
        for layer in _sync_layers(model):
            if layer.sync is self.sync_context:
                layer.use_sync(None)
        self.model = None

    def _build_buckets(self, model) -> None:
        store = model.store
        ranges = []  # [layer, lo, hi, regularized] in store order
        for layer, spec, off, size in store.entries:
            if ranges and ranges[-1][0] is layer:
                ranges[-1][2] = off + size
                ranges[-1][3] = ranges[-1][3] or spec.regularizer is not None
            else:
                ranges.append([layer, off, off + size, spec.regularizer is not None])
        for i in range(len(ranges)):  # the alignment padding goes with the layer before it
            ranges[i][2] = ranges[i + 1][1] if i + 1 < len(ranges) else store.size
        limit = max(1, int(self.bucket_mb * 2**20) // store.grads.dtype.itemsize)
        buckets: list[Bucket] = []
        for layer, lo, hi, reg in reversed(ranges):  # backward produces the last layers first
            b = buckets[-1] if buckets else None
            if b is not None and b.deferred == reg and b.hi - b.lo < limit and hi == b.lo:
                b.lo = lo
                b.layers.append(layer)
            else:
                buckets.append(Bucket(lo, hi, layer, reg))
        for b in buckets:
            b.uses = sum(layer._uses for layer in b.layers)
        self.buckets = [b for b in buckets if not b.deferred] + [b for b in buckets if b.deferred]
        self._bucket_of = {id(layer): b for b in self.buckets for layer in b.layers}
        self.stats["buckets"] = len(self.buckets) if self.overlap else 1
        self.stats["bytes_per_step"] = store.size * (2 if self.compression else
                                                     store.grads.dtype.itemsize)

    # -- fit and step ---------------------------------------------------------------------------
    def begin_fit(self, model, x, y, plan) -> None:
        check_same_fit(self.comm, self.data, x, y, plan)
        # SyncBatchNorm counts the global batch's values on the host when every rank's
        # samples have one shape: always so for replicated data (one x), checked for sharded.
        self._uniform_samples = self.data == "replicated"
        if self.sync_context is not None and self.data == "sharded":
            shapes = self.comm.allgather(list(np.shape(x)[1:]))
            self._uniform_samples = all(s == shapes[0] for s in shapes)

    def end_fit(self, model) -> None:
        """Forget whether the fit's samples have one shape on every rank."""
        self._uniform_samples = False

    def split_batch(self, index):
        """This rank's contiguous share of the global batch `index` (replicated data); with sharded
        data or one rank, `index` unchanged."""
        size = self.comm.size
        if size == 1 or self.data == "sharded":
            return index
        n, rank = len(index), self.comm.rank
        return index[(n * rank) // size:(n * (rank + 1)) // size]

    def begin_step(self, model, n_local, n_global) -> None:
        """Set this rank's gradient weight (n_local / n_global for replicated data, else 1 / size),
        tell the SyncBatchNorm context, reset the buckets."""
        size = self.comm.size
        if size == 1:
            self._weight = 1.0
        elif self.data == "replicated" and n_global:
            self._weight = n_local / n_global
        else:  # sharded (equal local batches: shard() gives equal parts) or a user's own loop
            self._weight = 1.0 / size
        ctx = self.sync_context
        if ctx is not None:
            ctx.weight = self._weight
            ctx.n_local = n_local
            ctx.n_global = None  # unknown in a user's loop: SyncBatchNorm reduces the count
            if self._uniform_samples and n_global is not None:
                ctx.n_global = n_global if self.data == "replicated" else n_local * size
        for b in self.buckets:
            b.remaining, b.ready, b.req = b.uses, False, None
        self._next = 0
        self._in_step = True

    def empty_step(self, model) -> None:
        """No samples on this rank: the SyncBatchNorm layers still take part in the reductions
        the other ranks' forward and backward make, in the same order, and with overlap=True
        the gradient buckets start at the same points of the backward order as on the other
        ranks (between the same SyncBatchNorm reductions). With NCCL every reduction runs on
        one stream, so the order of all of them must be the same on every rank."""
        for leaf in model.net.leaves():
            if isinstance(leaf, SyncBatchNorm):
                leaf.forward_empty()
        for leaf in backward_order(model.net):
            if isinstance(leaf, SyncBatchNorm):
                leaf.backward_empty()
            if self.leaf_events:
                self.after_leaf_backward(leaf)

    def after_leaf_backward(self, layer) -> None:
        """With overlap: count `layer`'s backward in its gradient bucket and start the allreduce of
        every bucket that is complete, in order."""
        if not self._in_step:
            return
        b = self._bucket_of.get(id(layer))
        if b is None:
            return
        b.remaining -= 1
        if b.remaining <= 0 and not b.deferred:
            b.ready = True
            self._launch_ready()
        for other in self.buckets[:self._next]:  # let MPI progress the reductions in flight
            if other.req is not None and not other.req.done:
                other.req.test()

    def _launch_ready(self) -> None:
        grads = self.model.store.grads
        while self._next < len(self.buckets) and self.buckets[self._next].ready:
            b = self.buckets[self._next]
            view = grads[b.lo:b.hi]
            if self.weight != 1.0:
                view *= self.weight
            b.req = self.comm.iallreduce(view, "sum", self.compression)
            self._next += 1

    def before_update(self, model, grads) -> None:
        """Average `grads` over ranks, weighted by each rank's share (waiting for the overlapped
        buckets, or one allreduce); time it in `stats['comm_s']`."""
        comm = self.comm
        if comm.size == 1:
            return
        t0 = time.perf_counter()
        size = model.store.size
        if self.overlap and self._in_step and self.buckets:
            for b in self.buckets:
                b.ready = True
            self._launch_ready()
            for b in self.buckets:
                b.req.wait()
        elif size:
            view = grads[:size]
            if self.weight != 1.0:
                view *= self.weight
            comm.allreduce(view, "sum", inplace=True, compression=self.compression)
        self.stats["comm_s"] += time.perf_counter() - t0

    def after_update(self, model) -> None:
        """Count the step in `stats['steps']`."""
        self.stats["steps"] += 1

    def end_step(self, model) -> None:
        """Leave the step: clear the weight (also in the SyncBatchNorm context)."""
        self._in_step = False
        self._weight = None
        if self.sync_context is not None:
            self.sync_context.weight = None

    # -- epoch end ------------------------------------------------------------------------------
    def end_epoch(self, model, sums: list) -> list:
        """The epoch's [loss_sum, weight_sum, seen, *add_loss term sums] summed over ranks,
        and the state arrays of the epoch's metrics (`model.trainer.epoch_metrics`: sums on
        the backend, one allreduce for all of them) summed in place, so that each metric's
        `result()` is over the global data; float buffers (batch-norm running statistics)
        averaged; parameters re-broadcast if they drifted."""
        comm = self.comm
        if comm.size == 1:
            return sums
        arr = np.array([float(v) for v in sums], dtype=np.float64)
        comm.allreduce(arr, inplace=True)
        states = [a for m in getattr(model.trainer, "epoch_metrics", ()) for a in m.state_arrays()]
        if states:
            comm.allreduce(states, "sum", inplace=True)
        buffers = [v for layer in model.layers for _k, v in sorted(layer.buffers.items())
                   if v.dtype.kind == "f"]
        if buffers:
            comm.allreduce(buffers, op="mean", inplace=True)
        if self.resync and len(set(comm.allgather(params_crc(model)))) > 1:
            broadcast_model(model, comm)
            self.stats["resyncs"] += 1
        out = [float(v) for v in arr]
        if len(out) >= 3:
            out[2] = int(round(out[2]))
        return out


def backward_order(layer) -> list:
    """The leaves of `layer` in the order a backward pass runs them (a tied layer once per
    use): the reverse of the call order, except that Parallel runs its branches' backward in
    branch order (each branch reversed)."""
    subs = layer.sublayers()
    if not subs:
        return [layer]
    if isinstance(layer, Parallel):
        return [leaf for sub in subs for leaf in backward_order(sub)]
    return [leaf for sub in reversed(subs) for leaf in backward_order(sub)]


def _sync_layers(model) -> list:
    return [layer for layer in model.layers if isinstance(layer, SyncBatchNorm)]


class DistributedOptimizer(optim_mod.Optimizer):
    """Wraps any nnx optimizer for data-parallel training: `step_hooks()` gives the model a
    `DataParallel(comm, **options)` strategy (`self.strategy`), which averages the gradients of
    all ranks (weighted by each rank's share of the batch) before the wrapped optimizer's
    update. Learning rate, step, state and hyperparameters are the wrapped optimizer's; a
    checkpoint saves and loads it as that optimizer. Options as `DataParallel`."""

    def __init__(self, optimizer, comm: Communicator | None = None, *, data: str = "replicated",
                 overlap: bool = False, bucket_mb: float = 4.0, compression=None,
                 resync: bool = True):
        inner = optim_mod.get(optimizer)
        if isinstance(inner, DistributedOptimizer):
            raise TypeError("the optimizer is already a DistributedOptimizer")
        self.optimizer = inner
        self.strategy = DataParallel(comm, data=data, overlap=overlap, bucket_mb=bucket_mb,
                                     compression=compression, resync=resync)

    # -- the wrapped optimizer's state, so that checkpoints save and load it as is ---------
    @property
    def lr(self):
        return self.optimizer.lr

    @lr.setter
    def lr(self, value):
        self.optimizer.lr = value

    @property
    def step(self):
        """The wrapped optimizer's step count (settable)."""
        return self.optimizer.step

    @step.setter
    def step(self, value):
        self.optimizer.step = value

    @property
    def state(self):
        """The wrapped optimizer's state (settable)."""
        return self.optimizer.state

    @state.setter
    def state(self, value):
        self.optimizer.state = value

    @property
    def ops(self):
        """The wrapped optimizer's ops, or None (settable)."""
        return getattr(self.optimizer, "ops", None)

    @ops.setter
    def ops(self, value):  # Model.bind_ops: the wrapped optimizer runs on the new ops
        self.optimizer.ops = value

    @property
    def state_names(self):
        return self.optimizer.state_names

    def __getattr__(self, name):  # hyperparameters (momentum, beta1, ...) of the wrapped one
        if name.startswith("__") or "optimizer" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["optimizer"], name)

    # -- the strategy's settings and figures ----------------------------------------------------
    comm = property(lambda self: self.strategy.comm, doc="The strategy's communicator.")
    data = property(lambda self: self.strategy.data,
                    doc="'replicated' or 'sharded': how the ranks' data is split.")
    overlap = property(lambda self: self.strategy.overlap,
                       doc="Whether gradient allreduces overlap the backward pass.")
    bucket_mb = property(lambda self: self.strategy.bucket_mb,
                         doc="The size of an overlapped gradient bucket, in MB.")
    compression = property(lambda self: self.strategy.compression,
                           doc="The gradient compression (None, 'fp16' or 'bf16').")
    resync = property(lambda self: self.strategy.resync,
                      doc="Whether parameters are re-broadcast at epoch end if they drifted.")
    stats = property(lambda self: self.strategy.stats,
                     doc="The strategy's figures: steps, comm_s, bytes_per_step, buckets, ...")
    is_chief = property(lambda self: self.strategy.is_chief, doc="True on rank 0.")

    def __repr__(self):
        s = self.strategy
        return (f"DistributedOptimizer({type(self.optimizer).__name__}, rank {s.comm.rank} "
                f"of {s.comm.size}, data={s.data!r}, overlap={s.overlap}, "
                f"compression={s.compression!r})")

    # -- the Optimizer interface, delegated -----------------------------------------------------
    def current_lr(self, step=None):
        return self.optimizer.current_lr(step)

    def get_config(self):
        return self.optimizer.get_config()

    def _hyper(self):
        return self.optimizer._hyper()

    def setup(self, ops, size):
        self.optimizer.setup(ops, size)

    def attach(self, model):
        self.optimizer.attach(model)

    def step_hooks(self) -> list:
        return [self.strategy, *self.optimizer.step_hooks()]

    def update(self, params, grads):
        self.optimizer.update(params, grads)


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
