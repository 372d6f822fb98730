"""Callbacks: History, EarlyStopping, ModelCheckpoint and a ProgressBar.

`on_train_begin(info)` runs at the start of `fit`, before any training work; `info` holds
epochs, samples, batch_size, initial_epoch, metrics and validation (whether validation data was
given). Callbacks check there what they will need, so that a mistake (a `val_*` monitor without
validation data, a checkpoint directory that does not exist) is reported before the first epoch
instead of after it.
"""

from __future__ import annotations

import math
import numbers
import os
import string
import sys
import time

import numpy as np

from . import checkpoint, model_io
from .errors import CheckpointError
from .model_checks import check_flag, check_int


class Callback:
    model = None

    def on_train_begin(self, info): ...
    def on_epoch_begin(self, epoch): ...
    def on_batch_end(self, batch, state): ...
    def on_epoch_end(self, epoch, logs): ...
    def on_train_end(self): ...


class CallbackList:
    def __init__(self, callbacks, model):
        self.callbacks = []
        for cb in callbacks:
            self.append(cb, model)
        self.model = model

    def append(self, cb, model=None):
        if not isinstance(cb, Callback):
            raise TypeError(
                f"callbacks must be nnx.callbacks.Callback instances, got {type(cb).__name__}"
            )
        cb.model = model or self.model
        self.callbacks.append(cb)

    def __getattr__(self, hook):
        def call(*args):
            for cb in self.callbacks:
                getattr(cb, hook)(*args)

        return call


class History(Callback):
    """Per-epoch logs: `history.history['loss']`, `['val_accuracy']`, ..."""

    def __init__(self):
        self.history: dict[str, list] = {}
        self.epochs: list[int] = []

    def on_epoch_end(self, epoch, logs):
        self.epochs.append(epoch)
        for k, v in logs.items():
            self.history.setdefault(k, []).append(v)


def _mode(owner, monitor, mode):
    if not isinstance(monitor, str) or not monitor:
        raise ValueError(f"{owner}: monitor must be a log name such as 'val_loss', got "
                         f"{monitor!r}")
    if mode == "auto":
        mode = "max" if "acc" in monitor else "min"
    if mode not in ("min", "max"):
        raise ValueError(f"{owner}: mode must be 'min', 'max' or 'auto', got {mode!r}")
    return mode


def _check_log_name(owner: str, name: str, info: dict) -> None:
    """Refuse, at fit start, a log name that fit cannot produce: val_* without validation
    data, accuracy without the metric. (Other names may be add_loss terms, known only once the
    first step ran: they are checked at the end of the first epoch.)"""
    if name.startswith("val_") and not info.get("validation", True):
        raise ValueError(f"{owner}: {name!r} needs validation data, and fit was given none: pass "
                         f"validation_data=(x_val, y_val), or use {name[4:]!r}")
    base = name[4:] if name.startswith("val_") else name
    if base == "accuracy" and "accuracy" not in info.get("metrics", ("accuracy",)):
        raise ValueError(f"{owner}: {name!r} needs the 'accuracy' metric; compile with "
                         "metrics=['accuracy']")


def _log_value(owner: str, name: str, logs: dict) -> float:
    if name not in logs:
        raise ValueError(f"{owner}: {name!r} is not in this epoch's logs {sorted(logs)}")
    return logs[name]


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved by `min_delta` for `patience` epochs; optionally
    restore the best weights seen. A `val_*` monitor needs validation data: fit without it
    raises ValueError before the first epoch."""

    def __init__(
        self, monitor="val_loss", patience=3, min_delta=0.0, mode="auto", restore_best_weights=True
    ):
        self.mode = _mode("EarlyStopping", monitor, mode)
        self.monitor = monitor
        self.patience = check_int("patience", patience, 0, "EarlyStopping")
        if not isinstance(min_delta, numbers.Real) or isinstance(min_delta, (bool, np.bool_)) \
                or not math.isfinite(min_delta) or min_delta < 0:
            raise ValueError(f"EarlyStopping: min_delta must be a finite number >= 0, got "
                             f"{min_delta!r}")
        self.min_delta = float(min_delta)
        self.restore_best_weights = check_flag("restore_best_weights", restore_best_weights,
                                               "EarlyStopping")
        self.stopped_epoch = None

    def on_train_begin(self, info):
        _check_log_name("EarlyStopping", self.monitor, info)
        self.best = math.inf if self.mode == "min" else -math.inf
        self.wait, self.best_weights, self.stopped_epoch = 0, None, None

    def _improved(self, value):
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, epoch, logs):
        value = _log_value("EarlyStopping", self.monitor, logs)
        if self._improved(value):
            self.best, self.wait = value, 0
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.model.stop_training = True
                self.stopped_epoch = epoch
                if self.best_weights is not None:
                    self.model.set_weights(self.best_weights)


class ModelCheckpoint(Callback):
    """Save the model after each epoch (atomically), or only when `monitor` improves.

    `path` may contain `{epoch}` (1-based, numbered on in a resumed `fit(initial_epoch=k)`, so
    a resumed run never overwrites the first run's files) and any log key in its file name,
    e.g. "ckpt-{epoch:02d}-{val_loss:.3f}.npz". Its directory is not created: it must exist
    when fit starts (checked in on_train_begin, before any training). With `save_best_only`,
    the best value so far is recorded in each file; a resumed run (initial_epoch > 0) that
    saves to a fixed path reads it back, so it replaces the first run's best file only with a
    better model. Only the chief process writes (data parallelism)."""

    def __init__(self, path, monitor="val_loss", save_best_only=False, mode="auto"):
        self.path = os.fspath(path)
        if not isinstance(self.path, str) or not self.path:
            raise ValueError(f"ModelCheckpoint: path must be a non-empty path, got {path!r}")
        self.mode = _mode("ModelCheckpoint", monitor, mode)
        self.monitor = monitor
        self.save_best_only = check_flag("save_best_only", save_best_only, "ModelCheckpoint")
        directory, filename = os.path.split(self.path)
        if "{" in directory or "}" in directory:
            raise ValueError(f"ModelCheckpoint: format fields are allowed in the file name only, "
                             f"not in the directory {directory!r}")
        try:
            self.fields = [f for _t, f, _s, _c in string.Formatter().parse(filename) if f]
        except ValueError as exc:
            raise ValueError(f"ModelCheckpoint: path {self.path!r} is not a valid format string "
                             f"({exc})") from exc
        if any(not f.isidentifier() for f in self.fields):
            raise ValueError(f"ModelCheckpoint: path fields must be names such as {{epoch}} or "
                             f"{{val_loss:.3f}}, got {self.fields}")
        self.saved: list[str] = []
        self.best = None

    def _initial_best(self):
        return math.inf if self.mode == "min" else -math.inf

    def on_train_begin(self, info):
        if self.model is None or self.model.is_chief:  # the process that will write
            checkpoint.destination(self.path)  # the directory exists and is writable
        for name in [f for f in self.fields if f != "epoch"]:
            _check_log_name("ModelCheckpoint", name, info)
        if self.save_best_only:
            _check_log_name("ModelCheckpoint", self.monitor, info)
        resuming = info.get("initial_epoch", 0) > 0
        if not resuming or self.best is None:
            self.best = self._initial_best()
            if resuming and self.save_best_only and not self.fields:
                self.best = self._recorded_best()

    def _recorded_best(self):
        """The best value the file at a fixed path was saved with, if it records one for this
        monitor (a resumed run must not replace a better model with a worse one)."""
        if not os.path.exists(self.path):
            return self._initial_best()
        try:
            progress = checkpoint.read_header(self.path).get("progress")
        except (CheckpointError, OSError):
            return self._initial_best()
        if isinstance(progress, dict) and progress.get("monitor") == self.monitor:
            best = progress.get("best")
            if isinstance(best, (int, float)) and not isinstance(best, bool) \
                    and math.isfinite(best):
                return float(best)
        return self._initial_best()

    def on_epoch_end(self, epoch, logs):
        if self.save_best_only:
            value = _log_value("ModelCheckpoint", self.monitor, logs)
            better = value < self.best if self.mode == "min" else value > self.best
            if not better:
                return
            self.best = value
        values = {}
        for name in self.fields:
            if name != "epoch":
                values[name] = _log_value("ModelCheckpoint", name, logs)
        path = self.path.format(epoch=epoch + 1, **values)
        if self.model.is_chief:
            value = logs.get(self.monitor)
            recorded = float(value) if isinstance(value, (int, float)) and math.isfinite(value) \
                else None
            model_io.save(self.model, path, getattr(self.model, "metadata", None),
                          progress={"epoch": epoch + 1, "monitor": self.monitor,
                                    "best": recorded if self.save_best_only else None})
        self.saved.append(path)


class ProgressBar(Callback):
    """Per-epoch lines (loss, accuracy, time, samples/s); a live bar over batches on a TTY."""

    def __init__(self, verbose=1, stream=None):
        self.verbose, self.stream = verbose, stream or sys.stdout

    def on_train_begin(self, info):
        self.epochs, self.total = info["epochs"], info["samples"]
        self.live = self.verbose >= 1 and self.stream.isatty()

    def on_epoch_begin(self, epoch):
        self.epoch, self.t0, self.last = epoch, time.perf_counter(), 0.0

    def on_batch_end(self, batch, state):
        now = time.perf_counter()
        if not self.live or now - self.last < 0.2:
            return
        self.last = now
        done = state["seen"] / max(self.total, 1)
        bar = "=" * int(done * 30)
        rate = state["seen"] / max(now - self.t0, 1e-9)
        self.stream.write(
            f"\repoch {self.epoch + 1}/{self.epochs} [{bar:<30}] "
            f"{state['seen']}/{self.total}  {rate:,.0f} samples/s"
        )
        self.stream.flush()

    def on_epoch_end(self, epoch, logs):
        parts = [f"epoch {epoch + 1}/{self.epochs}"]
        for k, v in logs.items():
            if k == "time":
                parts.append(f"time {v:.2f}s")
            elif k == "samples_per_s":
                parts.append(f"{v:,.0f} samples/s")
            else:
                parts.append(f"{k} {v:.4f}")
        self.stream.write(("\r" if self.live else "") + "  ".join(parts) + " " * 10 + "\n")
        self.stream.flush()
