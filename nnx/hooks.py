"""The training step's seam: named hook points, in the order a step calls them.

Everything that must take part in a step (data-parallel training, the profiler, users' own
instrumentation) is a `StepHooks` object added to a model (`model.add_hooks(h)`; a
`DistributedOptimizer` brings its strategy at `compile`). The model calls the hooks; hooks never
replace methods of the model, its layers or its optimizer. With no hooks added, a step pays for
one empty loop per hook point.

One step of `fit` (Keras callbacks and Chainer's updater/extension split are the models):

    begin_fit(model, x, y, plan)                 once per fit, before the first epoch
    per batch:
      split_batch(index) -> index                the part of the global batch this process runs
      begin_step(model, n_local, n_global)       n_global is None for train_step() loops
      [local share empty: empty_step(model)]     take part in collectives without data
      before_leaf_forward(layer) / after_leaf_forward(layer)     \\ only for hooks with
      before_loss(model) / after_loss(model)                      | leaf_events = True
      before_leaf_backward(layer) / after_leaf_backward(layer)   /  (per leaf, per use)
      before_update(model, grads)                after backward and regularizers: allreduce
      after_update(model)
      end_step(model)                            always, also when the step raised
    end_epoch(model, sums) -> sums               reduce per-process running sums ([loss_sum,
                                                 weight_sum, seen, *add_loss terms]); buffers
    end_fit(model)

`is_chief` (all hooks must agree) decides who prints progress and writes checkpoints.
Inference (`predict`, `evaluate`) calls the leaf hooks only (no step, no update).
"""

from __future__ import annotations

import threading
import time

from .layers.base import LEAF_OBSERVER


class StepHooks:
    """Base class: every hook point is a no-op; override the ones you need."""

    leaf_events = False  # True: receive before/after_leaf_forward/backward (costs a wrapper)

    def attach(self, model) -> None:
        """Called when added to `model` (once its parameters and optimizer exist)."""

    def detach(self, model) -> None:
        """Called when removed from `model`."""

    def begin_fit(self, model, x, y, plan: dict) -> None:
        """`plan` holds epochs, batch_size, shuffle and initial_epoch of this fit call."""

    def end_fit(self, model) -> None:
        """Once per fit, after the last epoch (also when fit raised)."""

    def split_batch(self, index):
        """`index`: the global batch's sample indices; returns the part this process runs (all of it
        by default)."""
        return index

    def begin_step(self, model, n_local: int, n_global: int | None) -> None:
        """At a step's start: `n_local` samples run here of `n_global` in the global batch (None in
        a user's `train_step` loop)."""

    def empty_step(self, model) -> None:
        """This process's share of the batch is empty: take part in the collectives the other
        processes make, without data."""

    def before_leaf_forward(self, layer) -> None:
        """Before leaf `layer`'s forward (only with `leaf_events`)."""

    def after_leaf_forward(self, layer) -> None:
        """After leaf `layer`'s forward (only with `leaf_events`)."""

    def before_loss(self, model) -> None:
        """Before the loss of `model` is computed (only with `leaf_events`)."""

    def after_loss(self, model) -> None:
        """After the loss of `model` is computed (only with `leaf_events`)."""

    def before_leaf_backward(self, layer) -> None:
        """Before leaf `layer`'s backward (only with `leaf_events`)."""

    def after_leaf_backward(self, layer) -> None:
        """After leaf `layer`'s backward (only with `leaf_events`)."""

    def before_update(self, model, grads) -> None:
        """After backward and regularizers, before the optimizer update: `grads` is the model's
        gradient buffer, which may be changed in place (e.g. allreduced)."""

    def after_update(self, model) -> None:
        """After the optimizer has updated `model`'s parameters."""

    def end_step(self, model) -> None:
        """At a step's end; always called, also when the step raised."""

    def end_epoch(self, model, sums: list) -> list:
        """`sums`: the epoch's running sums ([loss_sum, weight_sum, seen, *add_loss terms]); returns
        them reduced over processes (as given by default)."""
        return sums

    @property
    def is_chief(self) -> bool:
        """Whether this process prints progress and writes checkpoints (True by default; all hooks
        must agree)."""
        return True


class HookList:
    """The hooks of one model, called in order (reverse order for the closing `after_*`)."""

    def __init__(self):
        self.items: list[StepHooks] = []
        self._leaf: list[StepHooks] = []

    def add(self, hooks: StepHooks) -> None:
        """Add `hooks` (a `StepHooks`, else TypeError; ValueError if already added). Returns
        None."""
        if not isinstance(hooks, StepHooks):
            raise TypeError(f"hooks must be nnx.hooks.StepHooks instances, got "
                            f"{type(hooks).__name__}")
        if any(h is hooks for h in self.items):
            raise ValueError(f"{type(hooks).__name__} is already added to this model")
        self.items.append(hooks)
        self._leaf = [h for h in self.items if h.leaf_events]

    def remove(self, hooks: StepHooks) -> None:
        """Remove `hooks` if present. Returns None."""
        self.items = [h for h in self.items if h is not hooks]
        self._leaf = [h for h in self.items if h.leaf_events]

    def __iter__(self):
        return iter(list(self.items))

    def __len__(self):
        return len(self.items)

    @property
    def is_chief(self) -> bool:
        """True when every hook's `is_chief` is (True without hooks)."""
        return all(h.is_chief for h in self.items)

    def split_batch(self, index):
        """`index` passed through each hook's `split_batch` in order; returns the part this process
        runs."""
        for h in self.items:
            index = h.split_batch(index)
        return index

    def end_epoch(self, model, sums: list) -> list:
        """`sums` passed through each hook's `end_epoch` in order; returns the result."""
        for h in self.items:
            sums = h.end_epoch(model, sums)
        return sums

    def call(self, point: str, *args) -> None:
        """Call hook point `point` (a method name) of every hook in order with `args`. Returns
        None."""
        for h in self.items:
            getattr(h, point)(*args)

    def call_reversed(self, point: str, *args) -> None:
        """Call hook point `point` of every hook in reverse order (for the closing `after_*`) with
        `args`. Returns None."""
        for h in reversed(self.items):
            getattr(h, point)(*args)

    def observing(self):
        """A context that routes leaf calls through the leaf hooks (a no-op without them)."""
        return _Observing(self._leaf) if self._leaf else _NULL


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_NULL = _Null()


class _Observing:
    """Sets the layer observer for this thread's context while a step (or inference) runs."""

    def __init__(self, hooks):
        self.hooks = hooks
        self.token = None

    def __enter__(self):
        self.token = LEAF_OBSERVER.set(self)
        return self

    def __exit__(self, *exc):
        LEAF_OBSERVER.reset(self.token)
        return False

    def leaf_call(self, layer, x, training):
        hooks = self.hooks
        for h in hooks:
            h.before_leaf_forward(layer)
        y, backprop = layer.run(x, training)
        for h in reversed(hooks):
            h.after_leaf_forward(layer)

        def observed_backprop(dy, need_dx=True):
            for h in hooks:
                h.before_leaf_backward(layer)
            dx = backprop(dy, need_dx)
            for h in reversed(hooks):
                h.after_leaf_backward(layer)
            return dx

        return y, observed_backprop


# -- hooks for every model used in a block (the profiler's `profile()` without a model) --------
_GLOBAL_LOCK = threading.Lock()
_GLOBAL_WATCHERS: list = []


def add_model_watcher(watcher) -> None:
    """`watcher(model)` is called when any model's fit / train_step / evaluate / predict /
    loss_and_grads starts, until `remove_model_watcher`. Process-wide (all threads)."""
    with _GLOBAL_LOCK:
        _GLOBAL_WATCHERS.append(watcher)


def remove_model_watcher(watcher) -> None:
    """Stop calling `watcher` (added by `add_model_watcher`); no-op if absent. Returns None."""
    with _GLOBAL_LOCK:
        if watcher in _GLOBAL_WATCHERS:
            _GLOBAL_WATCHERS.remove(watcher)


def notify_model_use(model) -> None:
    """Called by Model at the start of each public entry point."""
    if _GLOBAL_WATCHERS:
        with _GLOBAL_LOCK:
            watchers = list(_GLOBAL_WATCHERS)
        for w in watchers:
            w(model)


class StepTimer(StepHooks):
    """A small example of the seam: wall time of each step (seconds) in `times`."""

    def __init__(self):
        self.times: list[float] = []
        self._t0 = 0.0

    def begin_step(self, model, n_local, n_global):
        """Start the step's clock."""
        self._t0 = time.perf_counter()

    def end_step(self, model):
        """Append the step's wall time (seconds) to `times`."""
        self.times.append(time.perf_counter() - self._t0)
