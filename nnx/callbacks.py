"""Callbacks: History, EarlyStopping, ModelCheckpoint, LearningRateScheduler, ReduceLROnPlateau
and a ProgressBar.

`on_train_begin(info)` runs at the start of `fit`, before any training work; `info` holds
epochs, samples, batch_size, initial_epoch, metrics and validation (whether validation data was
given). Callbacks check there what they will need, so that a mistake (a `val_*` monitor without
validation data, a checkpoint directory that does not exist) is reported before the first epoch
instead of after it.

The callbacks of one fit share each epoch's `logs` dict, in order: the user's callbacks, then
History, then the ProgressBar, so what a callback adds to the logs (the learning-rate callbacks
add "learning_rate", as Keras's do) is recorded and shown.
"""

from __future__ import annotations

import inspect
import math
import numbers
import os
import string
import sys
import time

import numpy as np

from . import checkpoint, model_io
from .errors import CheckpointError
from .model_checks import check_flag, check_int, check_verbose
from .optim import ScaledSchedule


class Callback:
    """Base class of fit's callbacks: every hook is a no-op; override the ones you need.
    `self.model` is the model being fitted (set when fit starts). Hooks, in order:
    on_train_begin(info), then per epoch on_epoch_begin(epoch), on_batch_end(batch, state)
    after each batch (state: seen, loss_sum, weight_sum), on_epoch_end(epoch, logs), and
    on_train_end()."""

    model = None

    def on_train_begin(self, info):
        """At the start of `fit`, before any training work. `info`: dict with epochs, samples,
        batch_size, initial_epoch, metrics and validation; check here what the callback needs, so
        mistakes are reported before the first epoch. Returns None."""
    def on_epoch_begin(self, epoch):
        """Before epoch `epoch` (0-based int) starts. Returns None."""
    def on_batch_end(self, batch, state):
        """After each batch: `batch` is its index in the epoch, `state` a dict with seen, loss_sum
        and weight_sum so far. Returns None."""
    def on_epoch_end(self, epoch, logs):
        """After epoch `epoch` (0-based): `logs` is the epoch's dict (loss, metrics, val_*), shared
        by the fit's callbacks in order; a callback may add entries. Returns None."""
    def on_train_end(self):
        """Once, when `fit` finishes. Returns None."""


class CallbackList:
    """The callbacks of one fit, called in order: `cbs.on_epoch_end(epoch, logs)` calls each
    callback's hook with the same arguments (one logs dict, shared)."""

    def __init__(self, callbacks, model):
        self.callbacks = []
        for cb in callbacks:
            self.append(cb, model)
        self.model = model

    def append(self, cb, model=None):
        """Add callback `cb` (a `Callback`, else TypeError), setting its `model` to `model` or this
        list's model. Returns None."""
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
        """Record `epoch` and append each value of `logs` to `history[name]`."""
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
    metrics = tuple(info.get("metrics", ("accuracy",)))
    known = {"accuracy", "acc", "top_k_accuracy", "precision", "recall", "f1", "mae", "mse",
             "rmse"}
    if base in known and base not in metrics and base != "loss":
        raise ValueError(f"{owner}: {name!r} needs the {base!r} metric; compile with "
                         f"metrics=[{base!r}] (compiled: {list(metrics)})")


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
        """Check that the monitor will be logged (`info`, as `Callback.on_train_begin`) and reset
        best, wait and stopped_epoch."""
        _check_log_name("EarlyStopping", self.monitor, info)
        self.best = math.inf if self.mode == "min" else -math.inf
        self.wait, self.best_weights, self.stopped_epoch = 0, None, None

    def _improved(self, value):
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, epoch, logs):
        """Compare `logs[monitor]` with the best so far; after `patience` epochs without improvement
        set `model.stop_training` (restoring the best weights if asked)."""
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
        """Check that the destination is writable and every name in the path and the monitor will be
        logged (`info`); set the best value to beat (when resuming, the one the existing file
        records)."""
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
        """Save the model for `epoch` to the path formatted with `logs` (with save_best_only only
        when `logs[monitor]` improved on the best)."""
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


# -- learning-rate callbacks ------------------------------------------------------------------
def _real(owner: str, arg: str, value, low: float, high: float | None = None,
          open_ends: bool = False) -> float:
    """`value` as a float: a real number (not a bool), finite, >= low (> low and < high with
    `open_ends`); ValueError naming `owner` and `arg` otherwise."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) \
        and math.isfinite(value)
    if ok:
        v = float(value)
        ok = (v > low if open_ends else v >= low) and (high is None or v < high)
    if not ok:
        where = f"in ({low:g}, {high:g})" if high is not None else \
            (f"> {low:g}" if open_ends else f">= {low:g}")
        raise ValueError(f"{owner}: {arg} must be a finite number {where}, got {value!r}")
    return float(value)


def _agreed(optimizer, value):
    """`value` as rank 0 has it under data parallelism (the optimizer's communicator, if it
    has one of several ranks), so that every rank changes its rate alike; as is otherwise."""
    comm = getattr(optimizer, "comm", None)
    if comm is None or getattr(comm, "size", 1) <= 1 or not hasattr(comm, "bcast"):
        return value
    return comm.bcast(value, root=0)


def _takes_lr(fn) -> bool:
    """Whether `fn` takes (epoch, lr) rather than (epoch) alone."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: Keras's (epoch, lr)
        return True
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return True
    positional = [p for p in params if p.kind in kinds]
    if not positional:
        raise ValueError("LearningRateScheduler: schedule must take (epoch, lr) or (epoch), "
                         f"got a callable of signature {inspect.signature(fn)}")
    return len(positional) >= 2


class LearningRateScheduler(Callback):
    """Keras's LearningRateScheduler: at the start of each epoch the optimizer's rate becomes
    `schedule(epoch, lr)` (epoch 0-based, lr the current rate as a float; a function of the
    epoch alone works too), set in place as `model.optimizer.lr`, so the epoch's first step
    uses it on every backend. The value must be a finite number > 0 (ValueError naming the
    epoch otherwise); `verbose=1` prints each change. Each epoch's rate is logged as
    "learning_rate".

    The optimizer must have a float rate: one with a schedule (`nnx.StepDecay`, ...) is refused
    when fit starts, since a rate with two owners would follow neither. Under data parallelism
    (a DistributedOptimizer) rank 0's value is used on every rank."""

    def __init__(self, schedule, verbose=0):
        if not callable(schedule):
            raise ValueError(f"LearningRateScheduler: schedule must be a callable "
                             f"(epoch, lr) -> lr, got {schedule!r}")
        self.schedule = schedule
        self._with_lr = _takes_lr(schedule)
        self.verbose = check_verbose(verbose, "LearningRateScheduler")

    def on_train_begin(self, info):
        """Check that the optimizer's rate is a float the callback may set (not already a schedule);
        ValueError otherwise."""
        lr = self.model.optimizer.lr
        if callable(lr):
            raise ValueError(
                f"LearningRateScheduler: the optimizer's rate is already a schedule ({lr!r}); "
                "compile with a float lr for the callback to set, or drop the callback")

    def on_epoch_begin(self, epoch):
        """Set the optimizer's rate to `schedule(epoch[, lr])` (rank 0's value on every rank);
        ValueError unless it is a finite number > 0."""
        opt = self.model.optimizer
        lr = float(opt.lr)
        new = self.schedule(epoch, lr) if self._with_lr else self.schedule(epoch)
        new = _agreed(opt, new)
        if not isinstance(new, numbers.Real) or isinstance(new, (bool, np.bool_)) \
                or not math.isfinite(new) or new <= 0:
            raise ValueError(f"LearningRateScheduler: schedule returned {new!r} for epoch "
                             f"{epoch}; expected a finite number > 0")
        opt.lr = float(new)
        if self.verbose and self.model.is_chief:
            print(f"\nEpoch {epoch + 1}: LearningRateScheduler setting learning rate to "
                  f"{float(new)}.")

    def on_epoch_end(self, epoch, logs):
        """Add the epoch's rate to `logs['learning_rate']`."""
        logs["learning_rate"] = self.model.optimizer.current_lr()


class ReduceLROnPlateau(Callback):
    """Keras's ReduceLROnPlateau: when `monitor` has not improved by more than `min_delta` for
    `patience` epochs, multiply the optimizer's rate by `factor` (not below `min_lr`), then
    wait `cooldown` epochs before counting again. The rate changes in place
    (`model.optimizer.lr`) and the next step uses it. `mode`: "min", "max", or "auto" (max
    for a monitor containing "acc", else min). Each epoch's rate (before a reduction) is
    logged as "learning_rate".

    An optimizer with a schedule keeps it: the schedule is wrapped in `nnx.optim.ScaledSchedule`
    with the scale that brings its current value to max(current * factor, min_lr), so warm-up
    and decay go on at the lower level; min_lr bounds the reductions made here, not the
    schedule's own decay. Under data parallelism rank 0's monitored value decides on every rank.

    factor in (0, 1), patience and cooldown ints >= 0, min_delta and min_lr finite >= 0; all
    but the first three by keyword (Keras's positional order differs: `verbose` comes 4th)."""

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, *, min_delta=1e-4,
                 min_lr=0.0, cooldown=0, mode="auto", verbose=0):
        owner = "ReduceLROnPlateau"
        self.mode = _mode(owner, monitor, mode)
        self.monitor = monitor
        self.factor = _real(owner, "factor", factor, 0.0, 1.0, open_ends=True)
        self.patience = check_int("patience", patience, 0, owner)
        self.min_delta = _real(owner, "min_delta", min_delta, 0.0)
        self.min_lr = _real(owner, "min_lr", min_lr, 0.0)
        self.cooldown = check_int("cooldown", cooldown, 0, owner)
        self.verbose = check_verbose(verbose, owner)
        self._reset()

    def _reset(self):
        self.best = math.inf if self.mode == "min" else -math.inf
        self.wait = 0
        self.cooldown_counter = 0

    def on_train_begin(self, info):
        """Check that the monitor will be logged (`info`) and reset best, wait and cooldown."""
        _check_log_name("ReduceLROnPlateau", self.monitor, info)
        self._reset()

    def _improved(self, value) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, epoch, logs):
        """Log the rate in `logs['learning_rate']`; after `patience` epochs without improvement of
        `logs[monitor]` multiply the rate by `factor` (not below `min_lr`) and start the
        cooldown."""
        opt = self.model.optimizer
        logs["learning_rate"] = opt.current_lr()
        current = _agreed(opt, float(_log_value("ReduceLROnPlateau", self.monitor, logs)))
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improved(current):
            self.best, self.wait = current, 0
        elif self.cooldown_counter <= 0:
            self.wait += 1
            if self.wait >= self.patience:
                old = opt.current_lr()
                if old > self.min_lr:
                    new = max(old * self.factor, self.min_lr)
                    opt.lr = ScaledSchedule(opt.lr, new / old) if callable(opt.lr) else new
                    if self.verbose and self.model.is_chief:
                        print(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning rate "
                              f"to {new}.")
                    self.cooldown_counter = self.cooldown
                    self.wait = 0


def _format_log(value) -> str:
    """A log value for one line of text: ints as is, floats with 4 decimals (in scientific
    notation when that would hide them: a learning rate of 1e-5), anything else by str()."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        v = float(value)
        if v == 0 or not math.isfinite(v) or 1e-3 <= abs(v) < 1e6:
            return f"{v:.4f}"
        return f"{v:.4g}"
    if isinstance(value, np.ndarray):
        return np.array2string(value, precision=4, separator=" ", threshold=8)
    return str(value)


class ProgressBar(Callback):
    """Per-epoch lines with every value the epoch's logs carry (loss, each metric, add_loss
    terms, the val_* values, what other callbacks add such as learning_rate) in the logs'
    order, then the epoch's time and samples/s; a live bar over batches on a TTY."""

    def __init__(self, verbose=1, stream=None):
        self.verbose, self.stream = verbose, stream or sys.stdout

    def on_train_begin(self, info):
        """Note epochs and samples from `info`; a live bar only on a TTY with verbose >= 1."""
        self.epochs, self.total = info["epochs"], info["samples"]
        self.live = self.verbose >= 1 and self.stream.isatty()

    def on_epoch_begin(self, epoch):
        """Start timing epoch `epoch`."""
        self.epoch, self.t0, self.last = epoch, time.perf_counter(), 0.0

    def on_batch_end(self, batch, state):
        """Redraw the live bar from `state['seen']` (at most every 0.2 s)."""
        now = time.perf_counter()
        if not self.live or now - self.last < 0.2:
            return
        self.last = now
        if not self.total:  # a batch source of unknown length: no bar
            rate = state["seen"] / max(now - self.t0, 1e-9)
            self.stream.write(f"\repoch {self.epoch + 1}/{self.epochs} {state['seen']} "
                              f"samples  {rate:,.0f} samples/s")
            self.stream.flush()
            return
        done = state["seen"] / max(self.total, 1)
        bar = "=" * int(done * 30)
        rate = state["seen"] / max(now - self.t0, 1e-9)
        self.stream.write(
            f"\repoch {self.epoch + 1}/{self.epochs} [{bar:<30}] "
            f"{state['seen']}/{self.total}  {rate:,.0f} samples/s"
        )
        self.stream.flush()

    def on_epoch_end(self, epoch, logs):
        """Write the epoch's line: every value in `logs`, its time and samples/s."""
        parts = [f"epoch {epoch + 1}/{self.epochs}"]
        for k, v in logs.items():
            if k not in ("time", "samples_per_s"):
                parts.append(f"{k} {_format_log(v)}")
        if "time" in logs:
            parts.append(f"time {logs['time']:.2f}s")
        if "samples_per_s" in logs:
            parts.append(f"{logs['samples_per_s']:,.0f} samples/s")
        self.stream.write(("\r" if self.live else "") + "  ".join(parts) + " " * 10 + "\n")
        self.stream.flush()
