"""A model to and from a checkpoint: what is saved, and how a model assembles itself from a file.

`nnx.checkpoint` reads and writes the file (header JSON + arrays) and checks each member's
declared shape and dtype; this module decides what the header and arrays are. Loading
validates everything that can be checked before memory is committed: the header's fields and
types, the architecture (rebuilt as layer objects, which allocate nothing, with bounded depth and
count), and every weight array's name, shape and dtype against that architecture, with the
total declared bytes bounded by the file's real array bytes. Only then are the parameters
allocated and filled. Arrays must be real, finite numbers; running variances and the optimizers'
sums and means of squares (Adam's second moments, RMSprop's and Adadelta's running means,
Adagrad's sums: `Optimizer.nonnegative_state`) must also be >= 0 (a negative one gives NaN
outputs or steps), and the optimizer checks what must hold between its buffers
(`Optimizer.check_state`). User metadata
(`Model.save(path, metadata=...)`) is validated like on saving and comes back as
`model.metadata`.
"""

from __future__ import annotations

import math

import numpy as np

from . import checkpoint
from .errors import CheckpointError, NNXError
from .layers.base import LayerBuilder, layer_to_dict
from .model_checks import SEED_LIMIT

_INT_LIMIT = 2**62


def model_config(model) -> dict:
    return {
        "net": layer_to_dict(model.net),
        "seed": model.seed,
        "name": model.name,
        "dtype": str(model.ops.dtype),
        "model_class": type(model).__name__,
    }


def save(model, path, metadata=None, progress: dict | None = None) -> None:
    """Write `model` to `path` (see nnx.checkpoint.write). `metadata`: the user's JSON-able
    dict (validated here, before anything is gathered); `progress`: what a callback records
    about the training run that wrote the file ({"epoch", "monitor", "best"})."""
    checkpoint.destination(path)  # a missing directory fails before any work
    metadata = checkpoint.check_metadata({} if metadata is None else metadata)
    arrays = {}
    for i, w in enumerate(model.get_weights()):
        arrays[f"w/{i:04d}"] = w
    buffers = model.get_buffers()
    for k, v in buffers.items():
        arrays[f"buf/{k}"] = v
    opt = model.optimizer
    opt_state = {}
    if opt is not None:
        for k, v in opt.state.items():
            arrays[f"opt/{k}"] = model.ops.to_host(v)
            opt_state[k] = list(v.shape)
    header = {
        "format": checkpoint.FORMAT,
        "version": checkpoint.VERSION,
        "model": model_config(model),
        "backend": model.backend,
        "weights": [[layer.name, name] for layer, name in model.store.views()],
        "buffers": sorted(buffers),
        "optimizer": opt.get_config() if opt is not None else None,
        "optimizer_step": opt.step if opt is not None else 0,
        "optimizer_state": opt_state,
        "loss": model.loss.get_config() if model.loss is not None else None,
        "metrics": list(model.metrics),
        # the epoch-shuffle generator, so that a resumed fit continues the same order
        "shuffle_state": model.trainer.shuffle_generator().bit_generator.state,
        "metadata": metadata,
    }
    if progress is not None:
        header["progress"] = progress
    checkpoint.write(path, header, arrays)


def _expected_weights(net) -> list:
    """(layer name, param name, shape) of every parameter, in store order, without allocating."""
    seen, out = set(), []
    for layer in net.nodes():
        if id(layer) in seen or layer.sublayers():
            seen.add(id(layer))
            continue
        seen.add(id(layer))
        for spec in layer.param_specs():
            shape = tuple(int(d) for d in spec.shape)
            out.append((layer.name, spec.name, shape))
    return out


def _check_header(reader) -> dict:
    h = reader.header
    req = checkpoint.require
    req(h, "model", dict, reader)
    req(h, "weights", list, reader)
    req(h, "buffers", list, reader)
    req(h, "optimizer_state", dict, reader)
    req(h, "metrics", list, reader)
    step = req(h, "optimizer_step", int, reader)
    if not 0 <= step < _INT_LIMIT:
        raise reader.error(f"header field 'optimizer_step' must be >= 0, got {step}")
    cfg = h["model"]
    seed = cfg.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)
                             or not 0 <= seed < SEED_LIMIT):
        raise reader.error(f"model seed must be a non-negative int or null, got {seed!r:.40}")
    if cfg.get("dtype", "float32") not in ("float16", "float32", "float64", "bfloat16"):
        raise reader.error(f"model dtype {cfg.get('dtype')!r:.40} is not supported")
    if not all(isinstance(b, str) for b in h["buffers"]):
        raise reader.error("header field 'buffers' must list strings")
    meta = h.get("metadata")
    if meta is not None:
        h["metadata"] = checkpoint.check_metadata(
            meta, lambda msg: reader.error(f"has invalid metadata ({msg})"))
    return h


def load(path, backend, classes: dict):
    """Validate `path` against the architecture it declares, then build the model."""
    with checkpoint.open_checkpoint(path) as reader:
        try:
            return _load(reader, backend, classes)
        except CheckpointError:
            raise
        except (NNXError, KeyError, TypeError, ValueError, RecursionError, OverflowError,
                AttributeError, IndexError, MemoryError) as exc:
            raise reader.error(f"is invalid ({type(exc).__name__}: {exc})") from exc


def _load(reader, backend, classes):
    h = _check_header(reader)
    cfg = h["model"]
    try:
        net = LayerBuilder().build(cfg.get("net"))
    except (NNXError, KeyError, TypeError, ValueError, RecursionError, OverflowError) as exc:
        raise reader.error(f"has an invalid architecture ({exc})") from exc
    # every weight array: named by the header, present, and of the architecture's shape
    expected = _expected_weights(net)
    if len(h["weights"]) != len(expected):
        raise reader.error(f"declares {len(h['weights'])} weight arrays; its architecture has "
                           f"{len(expected)}")
    itemsize = np.dtype(cfg.get("dtype", "float32") if cfg.get("dtype") != "bfloat16"
                        else "float32").itemsize
    total = sum(math.prod(shape) for _l, _p, shape in expected) * itemsize
    stored = 0
    for i, (lname, pname, shape) in enumerate(expected):
        if h["weights"][i] != [lname, pname]:
            raise reader.error(f"weight {i} is {h['weights'][i]!r:.80}; the architecture "
                               f"expects {[lname, pname]!r}")
        got, dtype = reader.declared(f"w/{i:04d}")
        if got != shape:
            raise reader.error(f"{lname}.{pname} expects shape {shape}, got {got}")
        stored += math.prod(got) * dtype.itemsize
    if total > 4 * max(stored, 1) + 2**20:
        raise reader.error(f"declares {total} bytes of parameters but stores {stored}")
    allowed = {f"w/{i:04d}" for i in range(len(expected))}
    allowed |= {f"buf/{k}" for k in h["buffers"]}
    allowed |= {f"opt/{k}" for k in h["optimizer_state"]}
    unknown = [n for n in reader.names() if n not in allowed]
    if unknown:
        raise reader.error(f"has members its header does not name: {unknown[:3]}")
    weights = [reader.array(f"w/{i:04d}", shape) for i, (_l, _p, shape) in enumerate(expected)]

    cls = classes.get(cfg.get("model_class"), classes["Model"])
    model = cls(net, backend=backend, seed=cfg.get("seed"), dtype=cfg.get("dtype", "float32"),
                name=cfg.get("name") if isinstance(cfg.get("name"), str) else None)
    model.set_weights(weights)
    model.metadata = h.get("metadata") or {}
    current = model.get_buffers()
    if sorted(current) != sorted(h["buffers"]):
        raise reader.error(f"has buffers {sorted(h['buffers'])[:4]}; the model has "
                           f"{sorted(current)[:4]}")
    model.set_buffers({k: reader.array(f"buf/{k}", current[k].shape,
                                       nonnegative=k.endswith("/running_var"))
                       for k in current})
    if h.get("loss") is not None:
        try:
            model.compile(h.get("optimizer") or "adam", h["loss"], h["metrics"])
        except (NNXError, TypeError, ValueError) as exc:
            raise reader.error(f"has an invalid optimizer/loss ({exc})") from exc
        opt = model.optimizer
        opt.step = int(h["optimizer_step"])
        if sorted(h["optimizer_state"]) != sorted(opt.state):
            raise reader.error(f"has optimizer state {sorted(h['optimizer_state'])}; "
                               f"{type(opt).__name__} keeps {sorted(opt.state)}")
        # every buffer finite, of its shape, >= 0 where it is a sum or mean of squares
        # (opt.nonnegative_state); then what must hold between buffers (opt.check_state)
        arrays = {k: reader.array(f"opt/{k}", tuple(opt.state[k].shape),
                                  nonnegative=k in opt.nonnegative_state)
                  for k in h["optimizer_state"]}
        try:
            opt.check_state(arrays)
        except ValueError as exc:
            raise reader.error(f"has invalid optimizer state ({exc})") from exc
        for k, arr in arrays.items():
            opt.state[k][...] = model.ops.asarray(arr, dtype=opt.state[k].dtype)
    state = h.get("shuffle_state")
    if state is not None:
        try:
            model.trainer.shuffle_generator().bit_generator.state = state
        except (TypeError, ValueError, KeyError, OverflowError) as exc:
            raise reader.error(f"has an invalid shuffle_state ({exc})") from exc
    return model
