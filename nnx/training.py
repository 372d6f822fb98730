"""The training step and the epoch loop, with the hook points of `nnx.hooks` in their places.

One step, as data walks it: forward through the layers' closures -> loss (fused forward and
backward) -> the closures in reverse, writing the flat gradient buffer -> regularizer gradients
-> `before_update` hooks (gradient reduction) -> one optimizer update over the flat buffers.
The loss stays on the backend (a 0-d array) until a value is needed, so a GPU step has no host
sync. What backward needs lives in the closures of this step, nothing on the layers, so an
inference call in another thread cannot disturb it.
"""

from __future__ import annotations

import time

import numpy as np

from .errors import TrainingDivergedError
from .layers.base import LOSS_TERMS
from .model_checks import input_dtype


class collect_loss_terms:
    """Collects the `Layer.add_loss` terms of one forward pass (a dict name -> 0-d array)."""

    def __enter__(self):
        self.terms = {}
        self.token = LOSS_TERMS.set(self.terms)
        return self.terms

    def __exit__(self, *exc):
        LOSS_TERMS.reset(self.token)
        return False


class Trainer:
    """Runs steps and epochs for one model. The model owns it (`model.trainer`)."""

    def __init__(self, model):
        self.model = model
        self._order_seed = object()
        self._order_rng = None
        self.last_terms: dict = {}  # the add_loss terms of the last step (name -> 0-d array)

    def shuffle_generator(self):
        """The epoch-order generator: seeded from the model's seed once and kept across fit
        calls (fit(epochs=1) twice shuffles differently each time); rebuilt only when the seed
        changes (a data-parallel strategy broadcasts rank 0's seed)."""
        if self._order_seed != self.model.seed:
            self._order_rng = np.random.default_rng(self.model.seed)
            self._order_seed = self.model.seed
        return self._order_rng

    # -- one step ---------------------------------------------------------------------------
    def forward_backward(self, xb, yb):
        """Forward, loss, backward into the flat grad buffer; (loss, output) on the device."""
        model = self.model
        hooks = model.hooks
        with hooks.observing():
            with collect_loss_terms() as terms:
                out, backprop = model.net.begin_update(xb, training=True)
            hooks.call("before_loss", model)
            loss, dout = model.loss(model.ops, out, yb)
            for value in terms.values():
                loss = loss + value
            self.last_terms = terms
            hooks.call_reversed("after_loss", model)
            model.store.zero_tied_grads()
            backprop(dout, need_dx=False)
        for layer, spec in model.store.regularized():
            W = layer.params[spec.name]
            loss = loss + spec.regularizer.penalty(model.ops, W)
            spec.regularizer.add_grad(model.ops, layer.grads[spec.name], W)
        return loss, out

    def step(self, xb, yb, n_global: int | None = None):
        """One optimizer step on a batch already on the device; (loss, output) on the device.
        `n_global` is the size of the global batch this local batch is part of (fit), None in
        a user's own train_step loop."""
        model = self.model
        hooks = model.hooks
        n = int(xb.shape[0])
        hooks.call("begin_step", model, n, n_global)
        try:
            if n == 0:  # an empty share of a global batch (more processes than samples)
                self.last_terms = {}
                model.store.grads[...] = 0
                hooks.call("empty_step", model)
                loss = model.ops.zeros(())
                out = model.ops.zeros((0, *model.net.output_shape(tuple(xb.shape[1:]))))
            else:
                loss, out = self.forward_backward(xb, yb)
            hooks.call("before_update", model, model.store.grads)
            model.optimizer.update(model.store.params, model.store.grads)
            hooks.call_reversed("after_update", model)
        finally:
            hooks.call_reversed("end_step", model)
        return loss, out

    # -- epochs -----------------------------------------------------------------------------
    def run_epochs(self, cbs, xd, yd, n, plan, check_every, validation_data, weights=None):
        model = self.model
        ops, loss_fn, hooks = model.ops, model.loss, model.hooks
        batch_size = plan["batch_size"]
        x_dtype = input_dtype(model)  # int/bool inputs become the model's dtype per batch
        order_rng = self.shuffle_generator()
        for epoch in range(plan["initial_epoch"], plan["epochs"]):
            model.optimizer.begin_epoch(epoch)
            cbs.on_epoch_begin(epoch)
            t0 = time.perf_counter()
            order = order_rng.permutation(n) if plan["shuffle"] else np.arange(n)
            loss_sum, correct, seen = 0.0, 0, 0
            term_sums: dict = {}
            for bi, start in enumerate(range(0, n, batch_size)):
                batch = order[start : start + batch_size]
                idx = hooks.split_batch(batch)
                xb = ops.take_batch(xd, idx)
                if x_dtype is not None and xb.dtype != x_dtype:
                    xb = xb.astype(x_dtype)
                yb = loss_fn.device_targets(ops, ops.take_batch(yd, idx))
                loss, out = self.step(xb, yb, len(batch))
                m = len(xb)
                loss_sum = loss_sum + loss * m
                for name, value in self.last_terms.items():
                    term_sums[name] = term_sums.get(name, 0.0) + value * m
                if model.metrics and m:
                    correct = correct + loss_fn.correct(ops, out, yb)
                seen += m
                if (bi + 1) % check_every == 0:
                    self.check_running(loss_sum, seen)
                cbs.on_batch_end(bi, {"seen": seen, "loss_sum": loss_sum, "correct": correct})
                if model.stop_training:
                    break
            names = sorted(term_sums)
            sums = [ops.to_float(loss_sum), ops.to_float(correct), seen]
            sums += [ops.to_float(term_sums[k]) for k in names]
            loss_sum, correct, seen, *terms = hooks.end_epoch(model, sums)
            logs = {"loss": self.check_running(loss_sum, seen)}
            if model.metrics:
                logs["accuracy"] = float(correct) / max(seen, 1)
            for name, value in zip(names, terms, strict=True):
                logs[name] = value / max(seen, 1)
            logs["time"] = time.perf_counter() - t0
            logs["samples_per_s"] = seen / logs["time"] if logs["time"] > 0 else float("inf")
            if validation_data is not None:
                for k, v in model._evaluate(
                    *validation_data, batch_size=max(batch_size, 256)
                ).items():
                    logs["val_" + k] = v
            cbs.on_epoch_end(epoch, logs)
            if model.stop_training:
                break

    def check_running(self, loss_sum, seen) -> float:
        value = self.model.ops.to_float(loss_sum) / max(seen, 1)
        if not np.isfinite(value):
            raise TrainingDivergedError(
                f"training loss became {value} at optimizer step {self.model.optimizer.step}: "
                "lower the learning rate, check the inputs for extreme values, or scale them"
            )
        return value
