"""SyncBatchNorm: batch norm whose training statistics are those of the global batch, and
`sync_batchnorm(layers)`, which converts BatchNorm1d/2d layers before a model is built.

The per-channel sums (in forward: sum of x and count, then the centred sum of squares; in
backward: the sums of dy and dy * xhat) are allreduced across processes, so N processes
normalize exactly as one process with the whole batch would, and the running statistics are
updated from the global ones (identical everywhere). The arithmetic is `BatchNormBase`'s
"from sums" path (`batchnorm_base.py`); this layer only reduces the sums.

It learns of its peers through the training step's seam, never by importing `nnx.distributed`
(layers sit below it): a data-parallel strategy hands each SyncBatchNorm a `SyncContext`
(`use_sync`) holding a communicator (a duplicate of the strategy's, so statistics never
interleave with gradient reductions in MPI; with NCCL both run on one stream, see
`nnx.distributed.nccl`) and the current step's rank weight and sample counts, which the strategy
sets in `begin_step`. Without a context, or with a world of one, it is plain batch norm (the
fused kernels).

The global count of values per channel is known on the host when the step's global sample
count is (`SyncContext.global_count`): it is computed there, and the reduced count is never
read back from the device (on a GPU that read is a synchronization per layer per step). Only
outside `fit` (a user's own loop, where the strategy cannot know every rank's batch) and on a
rank with no samples is the reduced count read.
"""

from __future__ import annotations

import math

from .base import LAYER_CLASSES, Layer, layer_from_dict, layer_to_dict
from .batchnorm_base import BatchNormBase
from .container import Chain


class SyncContext:
    """What a data-parallel strategy gives its SyncBatchNorm layers.

    `comm`: a communicator with `size` and `allreduce(array, inplace=True)`; `weight`: this
    process's share of the current step's global batch (n_local / n_global), set by the
    strategy at each step's start and None outside a step (then 1 / size, the plain mean);
    `n_local`, `n_global`: the step's samples on this process and on all of them together
    (host integers), `n_global` None where the strategy does not know it for certain."""

    __slots__ = ("comm", "weight", "n_local", "n_global")

    def __init__(self, comm, weight: float | None = None, n_local: int | None = None,
                 n_global: int | None = None):
        self.comm = comm
        self.weight = weight
        self.n_local, self.n_global = n_local, n_global

    def rank_weight(self) -> float:
        """This process's share of the step's global batch: `weight`, or 1 / size outside a step."""
        return self.weight if self.weight is not None else 1.0 / self.comm.size

    def global_count(self, local_count: int) -> int | None:
        """The number of values per channel over the global batch, given this process's
        `local_count` (every sample holds local_count / n_local of them, on every process),
        or None when the step's counts are unknown or not proportional (then reduce it)."""
        n_local, n_global = self.n_local, self.n_global
        if not n_local or n_global is None:
            return None
        total = int(local_count) * int(n_global)
        return total // n_local if total % n_local == 0 else None


class SyncBatchNorm(BatchNormBase):
    """Batch norm with the statistics of the global batch across processes (see the module
    docstring). Accepts (N, F), (N, F, L) and (N, C, H, W). With one process, or without a
    `SyncContext` (`use_sync`), it is BatchNorm1d/2d.

    `get_weights()` order: gamma then beta; running_mean and running_var are buffers."""

    ranks = (2, 3, 4)
    layout = "(batch, {F}), (batch, {F}, length) or (batch, {F}, height, width)"

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5,
                 name: str | None = None):
        super().__init__(num_features, momentum, eps, name)
        self.sync: SyncContext | None = None  # given by a data-parallel strategy (use_sync)

    def use_sync(self, context: SyncContext | None) -> None:
        """Reduce the statistics over `context.comm` from now on (None: local statistics)."""
        if context is not None and not isinstance(context, SyncContext):
            raise TypeError(f"{self.describe()}: use_sync expects a SyncContext, got "
                            f"{type(context).__name__}")
        self.sync = context

    def _peers(self):
        ctx = self.sync
        return ctx.comm if ctx is not None and ctx.comm.size > 1 else None

    # -- the hooks of BatchNormBase's "from sums" path --------------------------------------
    def fused_training(self) -> bool:
        return self._peers() is None

    def batch_statistics(self, x, axes):
        """BatchNormBase's, with the global count taken from the host when the context knows
        it (no read of the reduced count from the device); the count still travels in the
        reduced sums, for a process whose share is empty (`forward_empty`)."""
        F = self.num_features
        local = math.prod(x.shape[a] for a in axes)
        sums = self.ops.zeros(F + 1, dtype="float64")
        sums[:F] = x.sum(axis=axes, dtype="float64").reshape(F)
        sums[F] = local
        sums = self.reduce_sums(sums, "mean")
        n = self.sync.global_count(local) if self.sync is not None else None
        n = self.ops.to_float(sums[F]) if n is None else float(n)
        self.check_count(n, x.shape)
        mean = sums[:F] / n
        bshape = (1, F) + (1,) * (x.ndim - 2)
        xc = x - mean.astype(x.dtype).reshape(bshape)
        sq = (xc * xc).sum(axis=axes, dtype="float64").reshape(F)
        var = self.reduce_sums(sq, "var") / n
        return xc, mean, var, n

    def reduce_sums(self, sums, stage: str):
        """Allreduce the per-channel sums. The "grad" sums are weighted by this process's share
        of the global batch before the sum (dy is the gradient of this process's mean loss), and
        the result divided by it again: the global sums in units of this process's loss, which
        `backward_from_sums` divides by the global count."""
        comm = self.sync.comm
        if stage != "grad":
            return comm.allreduce(sums, inplace=True)
        w = self.sync.rank_weight()
        sums *= w
        comm.allreduce(sums, inplace=True)
        sums *= 1.0 / w
        return sums

    # -- a step in which this process has no samples (more processes than samples) ----------
    def forward_empty(self) -> None:
        """Take part in the forward reductions with nothing to add (the running statistics
        are updated from the global ones, as on every other process)."""
        if self._peers() is None:
            return
        F = self.num_features
        sums = self.reduce_sums(self.ops.zeros(F + 1, dtype="float64"), "mean")
        n = self.ops.to_float(sums[F])
        self.check_count(n, (0, F))
        var = self.reduce_sums(self.ops.zeros(F, dtype="float64"), "var") / n
        self.update_running_stats(sums[:F] / n, var, n)

    def backward_empty(self) -> None:
        """Take part in the backward reduction with zero gradient sums."""
        if self._peers() is not None:
            self.sync.comm.allreduce(self.ops.zeros(2 * self.num_features, dtype="float64"),
                                     inplace=True)


# -- converting layers before the model is built --------------------------------------------------
def sync_batchnorm(layers):
    """Layers with every BatchNorm1d/BatchNorm2d replaced by a SyncBatchNorm of the same config
    (name, num_features, momentum, eps), before a model is built:

        model = nnx.Sequential(nnx.distributed.sync_batchnorm([Conv2D(1, 8, 3), BatchNorm2d(8),
                                                             ReLU(), Flatten(), Dense(...)]))

    `layers`: a list (returns a new list), a Chain (returns a new Chain of the same name) or one
    layer. Layers without a batch norm inside are returned as they are; a batch norm used twice
    becomes one SyncBatchNorm used twice; a container other than Chain that holds a batch norm
    is rebuilt from its config (new layer objects). A built model cannot be converted (its
    layers belong to it): convert the layers before building it, or rebuild a copy:
    `sync_batchnorm(nnx.layers.layer_from_dict(nnx.layers.layer_to_dict(model.net)))`."""
    if isinstance(layers, Layer):
        return _convert(layers, {})
    if isinstance(layers, (list, tuple)):
        memo: dict = {}
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"sync_batchnorm: item {i} is a {type(layer).__name__}, "
                                "expected an nnx layer")
        return [_convert(layer, memo) for layer in layers]
    if isinstance(getattr(layers, "net", None), Layer):  # a Model (nnx.model sits above us)
        raise TypeError(
            f"sync_batchnorm: got a built {type(layers).__name__}; a built model's layers "
            "belong to it and cannot change class. Convert the layers before building the model: "
            "model = nnx.Sequential(nnx.distributed.sync_batchnorm([...layers...])) (for an "
            "existing model: nnx.distributed.sync_batchnorm(nnx.layers.layer_from_dict("
            "nnx.layers.layer_to_dict(model.net))) gives new layers to build a model from)")
    raise TypeError(f"sync_batchnorm expects a list of layers, a Chain or a layer, got "
                    f"{type(layers).__name__}")


def _is_plain_bn(layer) -> bool:
    return isinstance(layer, BatchNormBase) and not isinstance(layer, SyncBatchNorm)


def _convert(layer: Layer, memo: dict) -> Layer:
    key = id(layer)
    if key in memo:
        return memo[key]
    if not any(_is_plain_bn(leaf) for leaf in layer.leaves()):
        new = layer
    else:
        owner = layer.owner
        if owner is not None:
            raise ValueError(f"sync_batchnorm: {layer.describe()} already belongs to "
                             f"{owner.describe()}; convert the layers before building the model")
        if _is_plain_bn(layer):
            new = SyncBatchNorm(**layer.get_config())
        elif isinstance(layer, Chain):
            new = Chain([_convert(sub, memo) for sub in layer.layers], name=layer.name)
        else:
            new = layer_from_dict(_swap_classes(layer_to_dict(layer)))
    memo[key] = new
    return new


def _swap_classes(d):
    """A layer description with every plain batch norm's class replaced by SyncBatchNorm."""
    if isinstance(d, dict):
        out = {k: _swap_classes(v) for k, v in d.items()}
        cls = LAYER_CLASSES.get(out.get("class")) if isinstance(out.get("class"), str) else None
        if cls is not None and set(out) == {"class", "config"} and \
                issubclass(cls, BatchNormBase) and not issubclass(cls, SyncBatchNorm):
            out["class"] = SyncBatchNorm.__name__
        return out
    if isinstance(d, list):
        return [_swap_classes(v) for v in d]
    return d
