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


def _sample_rows(n: int):
    return np.unique(np.linspace(0, n - 1, min(n, 256)).astype(np.int64)) if n else \
        np.zeros(0, np.int64)


def fingerprint(a) -> tuple:
    """(shape, dtype, CRC32 of up to 256 evenly spaced rows): cheap, and enough to tell data
    sets apart."""
    try:
        n = len(a)
        idx = _sample_rows(n)
        sample = to_host(a[idx]) if n else np.zeros(0)
        sample = np.ascontiguousarray(sample)
        return (list(np.shape(a)), str(sample.dtype), zlib.crc32(sample.tobytes()))
    except Exception:
        return (None, None, None)


def describe_array(a) -> dict:
    """What the error of `check_same_fit` compares, computed only when the fingerprints
    differ: shape, dtype, the first non-finite element (index and value, float arrays) and the
    CRC32 of each of the rows `fingerprint` samples."""
    try:
        host = np.asarray(to_host(a))
    except Exception as exc:  # not an array we can read: say so rather than fail here
        return {"shape": None, "dtype": type(a).__name__, "nonfinite": None, "rows": [],
                "error": repr(exc)}
    out = {"shape": list(host.shape), "dtype": str(host.dtype), "nonfinite": None, "rows": []}
    if host.dtype.kind in "fc" and host.size:
        bad = ~np.isfinite(host)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            out["nonfinite"] = [list(first), repr(host[first].item())]
    if host.ndim:
        out["rows"] = [zlib.crc32(np.ascontiguousarray(host[i]).tobytes())
                       for i in _sample_rows(len(host))]
    return out


# -- fit arguments --------------------------------------------------------------------------------
_PLAN_KEYS = ("epochs", "batch_size", "shuffle", "initial_epoch")


def _shape_text(d: dict) -> str:
    shape = tuple(d["shape"]) if d["shape"] is not None else "?"
    return f"shape {shape} {d['dtype']}"


def _nonfinite_text(rank: int, name: str, d: dict) -> str:
    if not d.get("nonfinite"):
        return ""
    index, value = d["nonfinite"]
    return f"; rank {rank}'s {name} has a non-finite value ({value}) first at index {tuple(index)}"


def array_difference(name: str, r: int, mine: dict, ref: dict) -> str | None:
    """How rank r's array `name` (describe_array) differs from rank 0's, or None."""
    if mine["shape"] != ref["shape"] or mine["dtype"] != ref["dtype"]:
        text = f"rank {r}: {name} has {_shape_text(mine)}, rank 0's has {_shape_text(ref)}"
    else:
        rows = _sample_rows(mine["shape"][0] if mine["shape"] else 0)
        diff = [int(i) for i, a, b in zip(rows, mine["rows"], ref["rows"], strict=False)
                if a != b]
        if not diff and not mine.get("nonfinite") and not ref.get("nonfinite"):
            return None
        where = (f" first at row {diff[0]} (of {len(rows)} rows compared)" if diff else "")
        text = f"rank {r}: {name} differs from rank 0's ({_shape_text(mine)}){where}"
    return text + _nonfinite_text(r, name, mine) + _nonfinite_text(0, name, ref)


def _plan_difference(r: int, mine: list, ref: list) -> str | None:
    diffs = [f"{k}={a!r} (rank 0: {b!r})" for k, a, b in zip(_PLAN_KEYS, mine, ref, strict=True)
             if a != b]
    return f"rank {r}: " + ", ".join(diffs) if diffs else None


def check_same_fit(comm: Communicator, data: str, x, y, plan: dict) -> None:
    """Raise DistributedError (on every rank) unless every rank called `fit` with the same
    `plan` and the same x, y (data="replicated": a fingerprint of each) or the same number of
    samples (data="sharded": otherwise the ranks would run different numbers of steps). The
    error names the setting or the array and how it differs: the shapes, or the first
    differing row and the first non-finite element (NaN on one rank)."""
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
    details = None
    if data == "replicated":  # every rank sees the difference: all take part in this one
        details = comm.allgather({"x": describe_array(x), "y": describe_array(y)})
    raise DistributedError(fit_difference_message(data, [json.loads(t) for t in everyone],
                                                  details), all_ranks=True)


def fit_difference_message(data: str, summaries: list, details: list | None) -> str:
    """The error of check_same_fit from every rank's summary (plan and fingerprints) and, for
    replicated data, every rank's describe_array of x and y."""
    ref = summaries[0]
    diffs = []
    for r, other in enumerate(summaries[1:], start=1):
        text = _plan_difference(r, other["plan"], ref["plan"])
        if text:
            diffs.append(text)
        for name in ("x", "y"):
            if other[name] == ref[name]:
                continue
            if details is not None:
                text = array_difference(name, r, details[r][name], details[0][name])
                diffs.append(text or f"rank {r}: {name} differs from rank 0's")
            else:
                diffs.append(f"rank {r}: {name} has {other[name][0]} samples, rank 0's has "
                             f"{ref[name][0]}")
    if data == "replicated":
        hint = ("with data='replicated' every rank must pass the same x, y, epochs and "
                "batch_size (for per-rank data use nnx.distributed.shard() and "
                "DistributedOptimizer(..., data='sharded'))")
    else:
        hint = ("with data='sharded' every rank needs the same number of samples, epochs and "
                "batch_size, or the ranks would run different numbers of steps (shard() "
                "gives equal parts)")
    return ("fit() was called with different data or settings on different ranks (compared "
            "with rank 0): " + "; ".join(diffs) + f". {hint}.")
