"""Every rank must train the same model on the same data: the checks that say so early, with
the first difference (rather than a hang or a silently different result), and the broadcast that
makes every rank start from rank 0's state.

- `check_same_model`: a hash of the model's JSON description (layer classes and configs,
  parameter shapes, dtype, optimizer; names and seeds may differ) is gathered, the full
  descriptions only when the hashes differ;
- `check_same_fit`: the arguments of `fit` (epochs, batch_size, shuffle, initial_epoch) and a
  fingerprint of x and y (replicated data) or their lengths (sharded data);
- `broadcast_model`: parameters, buffers, optimizer state and step from the root;
- `params_crc`: the CRC32 of the flat parameters, compared at epoch ends.
"""

from __future__ import annotations

import hashlib
import json
import zlib

import numpy as np

from .comm import Communicator, DistributedError
from .compression import to_host
from .launch import init


def model_arrays(model, optimizer=None) -> list:
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
    opt = model.optimizer  # a DistributedOptimizer reads and writes its wrapped one's state
    for arr in model_arrays(model, opt):
        comm.bcast(arr, root)
    if opt is not None:
        opt.step = comm.bcast(opt.step, root)


def params_crc(model) -> int:
    """CRC32 of the flat parameter buffer (host copy): equal on every rank, or drifted."""
    return zlib.crc32(np.ascontiguousarray(to_host(model.store.params)).tobytes())


# -- architecture -------------------------------------------------------------------------------
def _strip_names(obj):
    if isinstance(obj, dict):
        return {k: _strip_names(v) for k, v in obj.items() if k != "name"}
    if isinstance(obj, list):
        return [_strip_names(v) for v in obj]
    return obj


def _signature(model, optimizer) -> dict:
    cfg = model.get_config()
    try:
        opt_cfg = optimizer.get_config() if optimizer is not None else None
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
        "compiling with DistributedOptimizer (attaching DataParallel):\n" + "\n".join(lines) +
        "\nBuild the same model and optimizer on every rank (seeds may differ: rank 0's "
        "weights are broadcast).", all_ranks=True)


def fingerprint(a) -> tuple:
    """(shape, dtype, CRC32 of up to 256 evenly spaced rows): cheap, and enough to tell data
    sets apart."""
    try:
        n = len(a)
        idx = np.unique(np.linspace(0, n - 1, min(n, 256)).astype(np.int64)) if n else []
        sample = to_host(a[idx]) if n else np.zeros(0)
        sample = np.ascontiguousarray(sample)
        return (list(np.shape(a)), str(sample.dtype), zlib.crc32(sample.tobytes()))
    except Exception:
        return (None, None, None)


# -- fit arguments --------------------------------------------------------------------------------
_PLAN_KEYS = ("epochs", "batch_size", "shuffle", "initial_epoch")


def check_same_fit(comm: Communicator, data: str, x, y, plan: dict) -> None:
    """Raise DistributedError (on every rank) unless every rank called `fit` with the same
    `plan` and the same x, y (data="replicated": a fingerprint of each) or the same number of
    samples (data="sharded": otherwise the ranks would run different numbers of steps)."""
    if comm.size == 1:
        return
    mine_plan = [plan.get(k) for k in _PLAN_KEYS]
    if data == "replicated":
        mine = {"plan": mine_plan, "x": fingerprint(x), "y": fingerprint(y)}
    else:
        mine = {"plan": mine_plan, "x": [len(x)], "y": [len(y)]}
    everyone = comm.allgather(json.dumps(mine, sort_keys=True, default=str))
    if len(set(everyone)) == 1:
        return
    ref = json.loads(everyone[0])
    names = {"plan": "/".join(_PLAN_KEYS), "x": "x", "y": "y"}
    diffs = []
    for r, text in enumerate(everyone[1:], start=1):
        other = json.loads(text)
        what = [k for k in ("plan", "x", "y") if other[k] != ref[k]]
        if what:
            diffs.append(f"rank {r}: {', '.join(names[k] for k in what)}")
    if data == "replicated":
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
