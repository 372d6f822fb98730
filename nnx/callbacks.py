"""Callbacks: History, EarlyStopping, ModelCheckpoint and a ProgressBar."""

from __future__ import annotations

import math
import sys
import time


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


def _mode(monitor, mode):
    if mode == "auto":
        mode = "max" if "acc" in monitor else "min"
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min', 'max' or 'auto', got {mode!r}")
    return mode


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved by `min_delta` for `patience` epochs; optionally
    restore the best weights seen."""

    def __init__(
        self, monitor="val_loss", patience=3, min_delta=0.0, mode="auto", restore_best_weights=True
    ):
        self.monitor, self.patience, self.min_delta = monitor, int(patience), float(min_delta)
        self.mode = _mode(monitor, mode)
        self.restore_best_weights = restore_best_weights
        self.stopped_epoch = None

    def on_train_begin(self, info):
        self.best = math.inf if self.mode == "min" else -math.inf
        self.wait, self.best_weights, self.stopped_epoch = 0, None, None

    def _improved(self, value):
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, epoch, logs):
        if self.monitor not in logs:
            raise KeyError(
                f"EarlyStopping: monitor {self.monitor!r} not in logs "
                f"{sorted(logs)} (pass validation_data for val_* metrics)"
            )
        value = logs[self.monitor]
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
    `path` may contain `{epoch}` and any log key, e.g. "ckpt-{epoch:02d}-{val_loss:.3f}.npz"."""

    def __init__(self, path, monitor="val_loss", save_best_only=False, mode="auto"):
        self.path, self.monitor, self.save_best_only = str(path), monitor, save_best_only
        self.mode = _mode(monitor, mode)
        self.saved: list[str] = []

    def on_train_begin(self, info):
        self.best = math.inf if self.mode == "min" else -math.inf

    def on_epoch_end(self, epoch, logs):
        if self.save_best_only:
            if self.monitor not in logs:
                raise KeyError(
                    f"ModelCheckpoint: monitor {self.monitor!r} not in logs {sorted(logs)}"
                )
            value = logs[self.monitor]
            better = value < self.best if self.mode == "min" else value > self.best
            if not better:
                return
            self.best = value
        path = self.path.format(epoch=epoch + 1, **logs)
        self.model.save(path)
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
