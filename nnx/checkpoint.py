"""Checkpoints: one .npz (zip) file with the weights, buffers, optimizer state and a JSON header.

- Atomic: written to a temporary file beside the target, fsynced, then `os.replace`d, so a crash
  mid-save leaves the previous checkpoint intact.
- Safe: no pickle anywhere (arrays load with `allow_pickle=False`; the architecture is JSON, and
  only registered layer classes with plain config values are rebuilt), so loading an untrusted
  file cannot run code.
- Portable: arrays are stored as host NumPy arrays; a checkpoint from any backend loads on any.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

from .errors import CheckpointError

FORMAT, VERSION = "nnx-checkpoint", 1
HEADER = "__nnx__"


def save(model, path) -> None:
    path = os.fspath(path)
    arrays = {}
    weights = model.get_weights()
    for i, w in enumerate(weights):
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
        "format": FORMAT,
        "version": VERSION,
        "model": model.get_config(),
        "backend": model.backend,
        "weights": [[layer.name, name] for layer, name in model.store.views()],
        "buffers": sorted(buffers),
        "optimizer": opt.get_config() if opt is not None else None,
        "optimizer_step": opt.step if opt is not None else 0,
        "optimizer_state": opt_state,
        "loss": model.loss.get_config() if model.loss is not None else None,
        "metrics": list(model.metrics),
        # the epoch-shuffle generator, so that a resumed fit continues the same order
        "shuffle_state": model._shuffle_generator().bit_generator.state,
    }
    arrays[HEADER] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".nnx-ckpt-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _read(path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as exc:
        raise CheckpointError(
            f"checkpoint {os.fspath(path)!r} is corrupt or truncated ({type(exc).__name__}: {exc})"
        ) from exc


def _header(data, path) -> dict:
    if HEADER not in data:
        raise CheckpointError(f"{path!r} is not an nnx checkpoint (no {HEADER} entry)")
    try:
        header = json.loads(bytes(data[HEADER].astype(np.uint8)).decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path!r}: header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(
            f"{path!r} is not an nnx checkpoint (format "
            f"{header.get('format') if isinstance(header, dict) else None!r})"
        )
    if header.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint {path!r} has version {header.get('version')!r}; "
            f"this nnx reads version {VERSION}"
        )
    for key, kind in (
        ("model", dict),
        ("weights", list),
        ("buffers", list),
        ("optimizer_state", dict),
        ("metrics", list),
    ):
        if not isinstance(header.get(key), kind):
            raise CheckpointError(
                f"checkpoint {path!r}: header field {key!r} must be a "
                f"{kind.__name__}, got {type(header.get(key)).__name__}"
            )
    return header


def load(path, backend=None):
    """Rebuild a model from `path` on `backend` (a name, Ops, or None for the current choice)."""
    from .layers.base import layer_from_dict
    from .model import Model, Sequential

    path = os.fspath(path)
    data = _read(path)
    header = _header(data, path)
    cfg = header["model"]
    try:
        net = layer_from_dict(cfg["net"])
        cls = Sequential if cfg.get("model_class") == "Sequential" else Model
        model = cls(
            net,
            backend=backend,
            seed=cfg.get("seed"),
            dtype=cfg.get("dtype", "float32"),
            name=cfg.get("name"),
        )
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path!r}: invalid architecture ({exc})") from exc
    n = len(model.store.views())
    missing = [f"w/{i:04d}" for i in range(n) if f"w/{i:04d}" not in data]
    if missing or len(header["weights"]) != n:
        raise CheckpointError(
            f"checkpoint {path!r}: expected {n} weight arrays, missing {missing[:3]}"
        )
    try:
        model.set_weights([data[f"w/{i:04d}"] for i in range(n)])
        model.set_buffers({k: data[f"buf/{k}"] for k in header["buffers"]})
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path!r}: {exc}") from exc
    if header.get("loss") is not None:
        try:
            model.compile(header["optimizer"] or "adam", header["loss"], header["metrics"])
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path!r}: invalid optimizer/loss ({exc})") from exc
        opt = model.optimizer
        opt.step = int(header.get("optimizer_step", 0))
        for k in header["optimizer_state"]:
            arr = data.get(f"opt/{k}")
            if arr is None or k not in opt.state or arr.shape != tuple(opt.state[k].shape):
                raise CheckpointError(
                    f"checkpoint {path!r}: optimizer state {k!r} is missing or has the wrong shape"
                )
            opt.state[k][...] = model.ops.asarray(arr)
    state = header.get("shuffle_state")
    if state is not None:
        try:
            model._shuffle_generator().bit_generator.state = state
        except (TypeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"checkpoint {path!r}: invalid shuffle_state ({exc})") from exc
    return model
