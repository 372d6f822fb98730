"""The bodies of `Model.fit`, `evaluate` and `predict`: argument checks, arrays or batch
sources (`nnx.data_iter`), sample and class weights, the validation split, and the callbacks
around the epoch loop of `nnx.training`.

Weights. `sample_weight` (N,) or (N, T) weighs the loss (a weighted mean) and the metrics;
`class_weight` {class: weight} multiplies into the loss weights only (the metrics count what
was predicted, weighted by sample_weight). A batch source carries its sample weights in its
items ((x, y, sample_weight)); class_weight applies to them too.
"""

from __future__ import annotations

import numpy as np

from . import model_checks as checks
from .callbacks import CallbackList, History, ProgressBar
from .data_iter import (
    ArrayBatches,
    SourceBatches,
    first_item,
    is_batch_source,
    unpack,
)
from .thread_monitor import ThreadMonitor


def loss_weights(model, sample_weight, class_weight, y, n, output_shape, arg=""):
    """(loss weights, metric weights) host arrays or None: sample_weight checked, times the
    class weights of the targets (see the module docstring)."""
    sw = None if sample_weight is None else checks.check_sample_weight(
        model, sample_weight, n, output_shape, f"{arg}sample_weight")
    if class_weight is None:
        return sw, sw
    cw = checks.class_weights(model, y, class_weight, output_shape)
    if sw is None:
        return cw, None
    rank = max(sw.ndim, cw.ndim)
    a = sw.reshape(sw.shape + (1,) * (rank - sw.ndim))
    b = cw.reshape(cw.shape + (1,) * (rank - cw.ndim))
    return a * b, sw


def check_arrays(model, x, y, sample_weight, class_weight, arg="x/y", prefix=""):
    """Checked (x, y, loss weights, metric weights) host arrays; builds the model from x's
    shape if it is not built yet."""
    x = model._check_x(x, f"{prefix}{arg.split('/')[0]}", allow_empty=False)
    model._ensure_built(tuple(x.shape[1:]))
    y = checks.check_targets(model, x, y, f"{prefix}{arg.split('/')[-1]}")
    out_shape = model._output_shape(x)
    y = model.loss.check_targets(y, out_shape, f"{prefix}{arg.split('/')[-1]}")
    w, mw = loss_weights(model, sample_weight, class_weight, y, len(x), out_shape, prefix)
    return x, y, w, mw


def batch_preparer(model, what, class_weight=None, targets=True):
    """`prepare(item, index) -> (xb, yb, wb, mwb)`: one item of a batch source checked like
    arrays and moved to the backend (runs in the prefetch thread: host checks and copies
    only, nothing touches a layer)."""
    ops = model.ops

    def prepare(item, index):
        x, y, w = unpack(item, what, index, targets)
        prefix = f"{what}: batch {index + 1}: "
        if not targets:
            return model._to_device(model._check_x(x, f"{prefix}x", allow_empty=False)), \
                None, None, None
        x, y, w, mw = check_arrays(model, x, y, w, class_weight, prefix=prefix)
        xb = model._to_device(x)
        yb = model.loss.device_targets(ops, y)
        wb = None if w is None else ops.asarray(w)
        mwb = wb if mw is w else (None if mw is None else ops.asarray(mw))
        return xb, yb, wb, mwb

    return prepare


def source_batches(model, source, what, steps, epochs=1, split=False, class_weight=None,
                   targets=True):
    """SourceBatches over `source`, with the model built from its first batch; (batches, an
    estimate of the samples per epoch or 0)."""
    iterator, first = first_item(source, what)
    x, _y, _w = unpack(first, what, 0, targets)
    x = model._check_x(x, f"{what}: batch 1: x", allow_empty=False)
    model._ensure_built(tuple(x.shape[1:]))
    prepare = batch_preparer(model, what, class_weight, targets)
    batches = SourceBatches(model, source, prepare, what, steps, epochs, split, first, iterator)
    return batches, (steps or 0) * len(x)


def _step_count(arg, value, what):
    return None if value is None else checks.check_int(arg, value, 1, what)


def fit(model, x, y, epochs, batch_size, validation_data, shuffle, callbacks, verbose,
        check_every, initial_epoch, validation_split, sample_weight, class_weight,
        steps_per_epoch, validation_steps):
    """Model.fit (see its docstring)."""
    epochs = checks.check_int("epochs", epochs, 0, "fit")
    batch_size = checks.check_batch_size(batch_size, "fit")
    initial_epoch = checks.check_int("initial_epoch", initial_epoch, 0, "fit")
    shuffle = checks.check_flag("shuffle", shuffle, "fit")
    verbose = checks.check_verbose(verbose, "fit")
    if check_every is not None:
        check_every = checks.check_int("check_every", check_every, 1, "fit")
    steps_per_epoch = _step_count("steps_per_epoch", steps_per_epoch, "fit")
    validation_steps = _step_count("validation_steps", validation_steps, "fit")
    if initial_epoch > epochs:
        raise ValueError(f"initial_epoch ({initial_epoch}) must not exceed epochs ({epochs})")
    if validation_split and validation_data is not None:
        raise ValueError("fit: pass validation_data or validation_split, not both")
    runs = epochs - initial_epoch
    closers = []
    try:
        if is_batch_source(x):
            if y is not None or sample_weight is not None:
                raise ValueError("fit: x is an iterable of batches, which carries the targets "
                                 "(and sample weights): (x, y) or (x, y, sample_weight) items; "
                                 "pass y=None and sample_weight=None")
            if validation_split:
                raise ValueError("fit: validation_split needs arrays; with an iterable of "
                                 "batches pass validation_data")
            batches, samples = source_batches(model, x, "fit", steps_per_epoch, runs, True,
                                              class_weight)
            closers.append(batches)
            hook_x = hook_y = None
        else:
            if y is None:
                raise ValueError("fit: y is missing: pass targets y with array data x (or an "
                                 "iterable of (x, y) batches as x)")
            if steps_per_epoch is not None:
                raise ValueError("fit: steps_per_epoch applies to iterables of batches; with "
                                 "arrays an epoch is one pass over x")
            x, y, w, mw = check_arrays(model, x, y, sample_weight, class_weight)
            if validation_split:
                at = checks.check_validation_split(validation_split, len(x))
                validation_data = (x[at:], y[at:], None if mw is None else mw[at:])
                x, y = x[:at], y[:at]
                w, mw = (None if w is None else w[:at]), (None if mw is None else mw[:at])
                validation_data = ArrayBatches(model, *validation_data[:2], validation_data[2],
                                               validation_data[2], max(batch_size, 256))
            samples, hook_x, hook_y = len(x), x, y
            batches = None
        validation = _validation(model, validation_data, validation_steps, batch_size, runs)
        if validation is not None:
            closers.append(validation)
        check_every = check_every or (1 if model.ops.on_host else 50)
        plan = {"epochs": epochs, "batch_size": batch_size, "shuffle": shuffle,
                "initial_epoch": initial_epoch, "steps_per_epoch": steps_per_epoch}
        history = History()
        cbs = CallbackList(list(callbacks or []) + [history], model)
        if verbose and model.is_chief:
            cbs.append(ProgressBar(verbose))
            cbs.append(ThreadMonitor(verbose))  # says (once per epoch) when the host is crowded
        # Callbacks check what they need (a val_* monitor needs validation data, a checkpoint
        # directory must exist) before any work, so a mistake costs no training time.
        cbs.on_train_begin({"epochs": epochs, "samples": samples, "batch_size": batch_size,
                            "initial_epoch": initial_epoch, "metrics": model.metric_names,
                            "validation": validation is not None})
        model.hooks.call("begin_fit", model, hook_x, hook_y, plan)
        try:
            if batches is None:
                batches = ArrayBatches(model, x, y, w, mw, batch_size, shuffle, split=True)
            model.stop_training = False
            # Overflow on the way to a diverged loss is reported by the NaN check, with
            # advice, instead of as a stream of NumPy RuntimeWarnings.
            with np.errstate(over="ignore", invalid="ignore"):
                model.trainer.run_epochs(cbs, batches, plan, check_every, validation)
        finally:
            model.hooks.call_reversed("end_fit", model)
    finally:
        for c in closers:
            c.close()
    cbs.on_train_end()
    return history


def _validation(model, validation_data, steps, batch_size, runs):
    """The validation batches of a fit: ArrayBatches (built once, reused every epoch), a
    SourceBatches, or None."""
    if validation_data is None or isinstance(validation_data, ArrayBatches):
        return validation_data
    if is_batch_source(validation_data):
        if hasattr(validation_data, "__next__") and steps is None and runs > 1:
            raise ValueError("fit: validation_data is an iterator (read once) and fit runs "
                             f"{runs} epochs: pass validation_steps=..., or a re-iterable "
                             "object (a Dataset with __iter__, a DataLoader)")
        return source_batches(model, validation_data, "validation_data", steps, runs)[0]
    vx, vy, vw = checks.check_validation_data(validation_data)
    vx, vy, w, mw = check_arrays(model, vx, vy, vw, None, "validation_data")
    return ArrayBatches(model, vx, vy, w, mw, max(batch_size, 256))


def evaluate(model, x, y, batch_size, verbose, sample_weight, steps):
    """Model.evaluate (see its docstring)."""
    batch_size = checks.check_batch_size(batch_size, "evaluate")
    verbose = checks.check_verbose(verbose, "evaluate")
    steps = _step_count("steps", steps, "evaluate")
    if is_batch_source(x):
        if y is not None or sample_weight is not None:
            raise ValueError("evaluate: x is an iterable of batches, which carries the targets "
                             "(and sample weights): pass y=None and sample_weight=None")
        batches = source_batches(model, x, "evaluate", steps)[0]
    else:
        if y is None:
            raise ValueError("evaluate: y is missing: pass targets y with array data x")
        x, y, w, mw = check_arrays(model, x, y, sample_weight, None)
        batches = ArrayBatches(model, x, y, w, mw, batch_size)
    try:
        result = model.trainer.evaluate(batches.epoch(0))
    finally:
        batches.close()
    if verbose:
        print("  ".join(f"{k}: {v:.4f}" for k, v in result.items()))
    return result


def predict(model, x, batch_size, steps):
    """Model.predict (see its docstring)."""
    batch_size = checks.check_batch_size(batch_size, "predict")
    steps = _step_count("steps", steps, "predict")
    ops = model.ops
    with model.hooks.observing():
        if is_batch_source(x):
            batches = source_batches(model, x, "predict", steps, targets=False)[0]
            try:
                outs = [ops.to_host(model.net.forward(xb)) for xb, *_ in batches.epoch(0)]
            finally:
                batches.close()
            return np.concatenate(outs)
        x = model._check_x(x)
        model._ensure_built(tuple(x.shape[1:]))
        outs = [
            ops.to_host(model.net.forward(model._to_device(x[s: s + batch_size])))
            for s in range(0, len(x), batch_size)
        ]
    if outs:
        return np.concatenate(outs)
    return np.zeros((0, *model._output_shape(x)), dtype=ops.dtype)
