"""`ProfilerHooks`: the profiler's part of a model's training step (`nnx.hooks.StepHooks`).

With `leaf_events = True` the step brackets every leaf layer's forward and backward with
`before/after_leaf_*`; this class opens and closes a timed region there ("layer:<name> forward",
"layer:<name> backward"), around the loss ("loss:<name>", between `before_loss` and
`after_loss`) and around the optimizer update ("optimizer:<class> update", between
`before_update` and `after_update`). Inference (`predict`, `evaluate`) brackets the leaves'
forward only. The kernels inside these regions are timed by the model's `ProfiledOps`.

Regions live in per-thread stacks (nnx.profile.timer), so a `predict` in another thread during
a profiled `fit` is timed on its own. A step that raises leaves its regions open; `end_step`
(called also then) drops them.

Hooks run in the order they were added (the closing `after_*` in reverse), so hooks added after
the profiler (a DistributedOptimizer compiled inside the block brings its strategy) run inside
its regions and their work counts in the layer or optimizer time; hooks added before it run
outside.
"""

from __future__ import annotations

from ..hooks import StepHooks

__all__ = ["ProfilerHooks"]

_LOSS = ("loss",)
_UPDATE = ("update",)


class ProfilerHooks(StepHooks):
    """Times one model's leaves, loss and optimizer update into `timer`; `sync` (a callable or
    None) and `nvtx` bracket each region on device backends, as for the kernels."""

    leaf_events = True

    def __init__(self, timer, sync=None, nvtx=None):
        self.timer = timer
        self.sync = sync
        self.nvtx = nvtx
        self._names: dict[int, tuple[str, str]] = {}

    def _layer_names(self, layer) -> tuple[str, str]:
        names = self._names.get(id(layer))
        if names is None:
            names = self._names[id(layer)] = (f"layer:{layer.name} forward",
                                              f"layer:{layer.name} backward")
        return names

    def attach(self, model) -> None:
        for layer in model.layers:
            self._layer_names(layer)

    # -- leaves -------------------------------------------------------------------------------
    def before_leaf_forward(self, layer) -> None:
        """Open the region 'layer:<name> forward'."""
        self.timer.open((id(layer), 0), self._layer_names(layer)[0], "layer", self.sync,
                        self.nvtx)

    def after_leaf_forward(self, layer) -> None:
        """Close the layer's forward region."""
        self.timer.close((id(layer), 0), self.sync)

    def before_leaf_backward(self, layer) -> None:
        """Open the region 'layer:<name> backward'."""
        self.timer.open((id(layer), 1), self._layer_names(layer)[1], "layer", self.sync,
                        self.nvtx)

    def after_leaf_backward(self, layer) -> None:
        """Close the layer's backward region."""
        self.timer.close((id(layer), 1), self.sync)

    # -- loss and update ----------------------------------------------------------------------
    def before_loss(self, model) -> None:
        """Open the region 'loss:<name>'."""
        loss = model.loss
        self.timer.open(_LOSS, f"loss:{getattr(loss, 'name', type(loss).__name__)}", "loss",
                        self.sync, self.nvtx)

    def after_loss(self, model) -> None:
        """Close the loss region."""
        self.timer.close(_LOSS, self.sync)

    def before_update(self, model, grads) -> None:
        """Open the region 'optimizer:<class> update'."""
        self.timer.open(_UPDATE, f"optimizer:{type(model.optimizer).__name__} update",
                        "optimizer", self.sync, self.nvtx)

    def after_update(self, model) -> None:
        """Close the update region."""
        self.timer.close(_UPDATE, self.sync)

    def end_step(self, model) -> None:
        """Drop the regions a step that raised left open."""
        self.timer.drop_open()
