"""The training step, the epoch loop and the evaluation loop, with the hook points of
`nnx.hooks` in their places.

One step, as data walks it: forward through the layers' closures -> loss (fused forward and
backward) -> the closures in reverse, writing the flat gradient buffer -> regularizer gradients
-> `before_update` hooks (gradient reduction) -> one optimizer update over the flat buffers.
The loss stays on the backend (a 0-d array) until a value is needed, so a GPU step has no host
sync. What backward needs lives in the closures of this step, nothing on the layers, so an
inference call in another thread cannot disturb it.

When compile decided the fused path (`model.fused_loss` is set: the loss takes probabilities
and the output ends in the matching activation), the step runs `net.begin_update_logits`, takes
the loss from the values before the activation with the from-logits kernel, and applies the
activation afterwards only to report the output (metrics see what `predict` returns).

Weights (`sample_weight`, class weights): the loss of a batch is the weighted mean over its
positions; the epoch's loss is the weighted mean over the epoch (each batch's loss times its
total weight, divided by the epoch's total weight). Metrics are updated on the backend after
every batch with the sample weights (no host sync) and read once per epoch; under data
parallelism their sums are reduced across processes at the epoch end (`hooks.end_epoch`).
"""

from __future__ import annotations

import time

import numpy as np

from .errors import TrainingDivergedError
from .layers.base import LOSS_TERMS


class collect_loss_terms:
    """Collects the `Layer.add_loss` terms of one forward pass (a dict name -> 0-d array)."""

    def __enter__(self):
        self.terms = {}
        self.token = LOSS_TERMS.set(self.terms)
        return self.terms

    def __exit__(self, *exc):
        LOSS_TERMS.reset(self.token)
        return False


def compute_loss(loss_fn, ops, out, yb, wb):
    """(loss, grad, total weight or None) of `loss_fn` on one batch (weighted when `wb`)."""
    if wb is None:
        loss, grad = loss_fn(ops, out, yb)
        return loss, grad, None
    return loss_fn.weighted(ops, out, yb, wb)


def _float(ops, value) -> float:
    """A Python float from a number (as is) or a 0-d backend array (a host sync)."""
    return float(value) if isinstance(value, (int, float)) else ops.to_float(value)


class Trainer:
    """Runs steps, epochs and evaluations for one model. The model owns it (`model.trainer`).

    `last_terms` / `last_weight` are the add_loss terms and the total loss weight of the last
    step; `epoch_metrics` the metric objects of the running fit's current epoch (read by
    `hooks.end_epoch` to reduce them across processes)."""

    def __init__(self, model):
        self.model = model
        self._order_seed = object()
        self._order_rng = None
        self.last_terms: dict = {}  # the add_loss terms of the last step (name -> 0-d array)
        self.last_weight = None  # the last step's total loss weight (0-d array), None unweighted
        self.epoch_metrics: list = []

    def shuffle_generator(self):
        """The epoch-order generator: seeded from the model's seed once and kept across fit
        calls (fit(epochs=1) twice shuffles differently each time); rebuilt only when the seed
        changes (a data-parallel strategy broadcasts rank 0's seed)."""
        if self._order_seed != self.model.seed:
            self._order_rng = np.random.default_rng(self.model.seed)
            self._order_seed = self.model.seed
        return self._order_rng

    # -- one step ---------------------------------------------------------------------------
    def forward_backward(self, xb, yb, wb=None, wscale=None):
        """Forward, loss, backward into the flat grad buffer; (loss, output) on the device.
        `wb`: the batch's loss weights ((N,) or (N, T)) or None; `wscale`: a factor on the
        loss gradient (a share of a weighted global batch, `data_iter.split_scale`) or None."""
        model = self.model
        hooks = model.hooks
        fused = model.fused_loss
        with hooks.observing():
            with collect_loss_terms() as terms:
                if fused is not None:
                    z, backprop, activation = model.net.begin_update_logits(xb, training=True)
                else:
                    z, backprop = model.net.begin_update(xb, training=True)
            hooks.call("before_loss", model)
            loss, dz, self.last_weight = compute_loss(fused or model.loss, model.ops, z, yb, wb)
            if wscale is not None:
                dz = dz * wscale
            for value in terms.values():
                loss = loss + value
            self.last_terms = terms
            hooks.call_reversed("after_loss", model)
            out = z if fused is None else model.ops.activation_forward(z, activation)[0]
            model.store.zero_tied_grads()
            backprop(dz, need_dx=False)
        for layer, spec in model.store.regularized():
            W = layer.params[spec.name]
            loss = loss + spec.regularizer.penalty(model.ops, W)
            spec.regularizer.add_grad(model.ops, layer.grads[spec.name], W)
        return loss, out

    def step(self, xb, yb, n_global: int | None = None, wb=None, wscale=None):
        """One optimizer step on a batch already on the device; (loss, output) on the device.
        `n_global` is the size of the global batch this local batch is part of (fit), None in
        a user's own train_step loop; `wb` the batch's loss weights or None (`wscale`: see
        forward_backward)."""
        model = self.model
        hooks = model.hooks
        n = int(xb.shape[0])
        hooks.call("begin_step", model, n, n_global)
        try:
            if n == 0:  # an empty share of a global batch (more processes than samples)
                self.last_terms = {}
                self.last_weight = None if wb is None else model.ops.zeros(())
                model.store.grads[...] = 0
                hooks.call("empty_step", model)
                loss = model.ops.zeros(())
                out = model.ops.zeros((0, *model.net.output_shape(tuple(xb.shape[1:]))))
            else:
                loss, out = self.forward_backward(xb, yb, wb, wscale)
            hooks.call("before_update", model, model.store.grads)
            model.optimizer.update(model.store.params, model.store.grads)
            hooks.call_reversed("after_update", model)
        finally:
            hooks.call_reversed("end_step", model)
        return loss, out

    # -- epochs -----------------------------------------------------------------------------
    def run_epochs(self, cbs, batches, plan, check_every, validation=None):
        """The epochs of one fit. `batches.epoch(e)` yields (xb, yb, wb, mwb, n_global, wscale)
        on the device (loss weights, metric weights: see nnx.data_iter); `validation` is a
        batch source for `evaluate`, or None. Stops early when `model.stop_training` is set
        or `batches` runs out."""
        model = self.model
        ops, hooks = model.ops, model.hooks
        for epoch in range(plan["initial_epoch"], plan["epochs"]):
            model.optimizer.begin_epoch(epoch)
            cbs.on_epoch_begin(epoch)
            t0 = time.perf_counter()
            metrics = self.epoch_metrics = model.new_metrics()
            loss_sum, weight_sum, seen = 0.0, 0.0, 0
            term_sums: dict = {}
            bi = -1
            for bi, (xb, yb, wb, mwb, n_global, wscale) in enumerate(batches.epoch(epoch)):
                loss, out = self.step(xb, yb, n_global, wb, wscale)
                m = int(xb.shape[0])
                weight = m if self.last_weight is None else self.last_weight
                loss_sum = loss_sum + loss * weight
                weight_sum = weight_sum + weight
                for name, value in self.last_terms.items():
                    term_sums[name] = term_sums.get(name, 0.0) + value * m
                for metric in metrics:  # also on an empty share: every process has states
                    metric.update(ops, out, yb, mwb)
                seen += m
                if (bi + 1) % check_every == 0:
                    self.check_running(loss_sum, weight_sum)
                cbs.on_batch_end(bi, {"seen": seen, "loss_sum": loss_sum,
                                      "weight_sum": weight_sum})
                if model.stop_training:
                    break
            if bi < 0:  # the batch source ran out before this epoch (it warned)
                break
            names = sorted(term_sums)
            sums = [_float(ops, loss_sum), _float(ops, weight_sum), seen]
            sums += [_float(ops, term_sums[k]) for k in names]
            loss_sum, weight_sum, seen, *terms = hooks.end_epoch(model, sums)
            logs = {"loss": self.check_running(loss_sum, weight_sum)}
            for metric in metrics:
                logs[metric.name] = metric.result()
            for name, value in zip(names, terms, strict=True):
                logs[name] = value / max(seen, 1)
            logs["time"] = time.perf_counter() - t0
            logs["samples_per_s"] = seen / logs["time"] if logs["time"] > 0 else float("inf")
            if validation is not None:
                for k, v in self.evaluate(validation.epoch(epoch)).items():
                    logs["val_" + k] = v
            cbs.on_epoch_end(epoch, logs)
            if model.stop_training or batches.exhausted:
                break
        self.epoch_metrics = []

    # -- evaluation ---------------------------------------------------------------------------
    def evaluate(self, batches) -> dict:
        """{"loss", each metric's name, each add_loss term} over `batches` ((xb, yb, wb, mwb,
        n, wscale) on the device), in inference mode: the (weighted) mean loss and the metrics over
        every sample. Fresh metric objects per call, so evaluations do not share state."""
        model = self.model
        ops = model.ops
        fused = model.fused_loss
        metrics = model.new_metrics()
        loss_sum, weight_sum, n, term_sums = 0.0, 0.0, 0, {}
        with model.hooks.observing():
            for xb, yb, wb, mwb, _n, _scale in batches:
                m = int(xb.shape[0])
                if not m:
                    continue
                with collect_loss_terms() as terms:
                    if fused is not None:
                        z, _bp, activation = model.net.begin_update_logits(xb, training=False)
                        del _bp  # inference: nothing is kept for a backward pass
                    else:
                        z = model.net.forward(xb, training=False)
                loss, _grad, total = compute_loss(fused or model.loss, ops, z, yb, wb)
                weight = m if total is None else total
                for name, value in terms.items():
                    loss = loss + value
                    term_sums[name] = term_sums.get(name, 0.0) + value * m
                loss_sum = loss_sum + loss * weight
                weight_sum = weight_sum + weight
                if metrics:
                    out = z if fused is None else ops.activation_forward(z, activation)[0]
                    for metric in metrics:
                        metric.update(ops, out, yb, mwb)
                n += m
        if n == 0:
            raise ValueError("evaluate: no samples (the batch source yielded none)")
        total_weight = _float(ops, weight_sum)
        result = {"loss": _float(ops, loss_sum) / max(total_weight, np.finfo(float).tiny)}
        for metric in metrics:
            result[metric.name] = metric.result()
        for name in sorted(term_sums):
            result[name] = _float(ops, term_sums[name]) / n
        return result

    def check_running(self, loss_sum, weight) -> float:
        """The running mean loss loss_sum / weight as a float (a host sync); raises
        TrainingDivergedError when it is NaN or infinite."""
        weight, total = _float(self.model.ops, weight), _float(self.model.ops, loss_sum)
        value = total / weight if weight else total  # all weights 0: the sum is 0 too
        if not np.isfinite(value):
            raise TrainingDivergedError(
                f"training loss became {value} at optimizer step {self.model.optimizer.step}: "
                "lower the learning rate, check the inputs for extreme values, or scale them"
            )
        return value
