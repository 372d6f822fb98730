"""Model and Sequential: compile / fit / evaluate / predict, train_step, loss_and_grads,
get/set_weights, save/load.

A training step as data walks it: each layer's forward (backend ops) -> the loss's fused
forward+backward -> each layer's backward in reverse, writing into the flat gradient buffer ->
regularizer gradients -> one optimizer update over the flat buffers. The loss stays on the
backend (a 0-d array) until a value is actually needed, so a GPU step has no host sync.
"""

from __future__ import annotations

import time

import numpy as np

from . import losses as losses_mod
from . import optim as optim_mod
from .backend import resolve
from .callbacks import CallbackList, History, ProgressBar
from .errors import InputError, ShapeError, TrainingDivergedError
from .layers.base import Layer
from .layers.container import Chain
from .params import ParameterStore


class Model:
    """A trainable network around one root layer (a Chain, or any composed block)."""

    def __init__(
        self,
        net: Layer,
        backend=None,
        seed: int | None = 0,
        dtype: str = "float32",
        name: str | None = None,
    ):
        if not isinstance(net, Layer):
            raise TypeError(f"Model expects an nnx Layer, got {type(net).__name__}")
        self.net = net
        self.seed = seed
        self.name = name or "model"
        self.ops = resolve(backend, seed=seed, dtype=dtype)
        self.store = ParameterStore(net, self.ops, seed)
        self.optimizer = None
        self.loss = None
        self.metrics: tuple = ()
        self.stop_training = False
        self.step_callback = None  # hook for the profiler / distributed wrapper

    # -- properties -----------------------------------------------------------------------
    @property
    def backend(self) -> str:
        return self.ops.name

    @property
    def layers(self) -> list[Layer]:
        return list(self.net.leaves())

    def count_params(self) -> int:
        return self.store.count

    # -- configuration --------------------------------------------------------------------
    def compile(self, optimizer="adam", loss="softmax_cross_entropy", metrics=("accuracy",)):
        self.optimizer = optim_mod.get(optimizer)
        self.optimizer.setup(self.ops, self.store.size)
        self.optimizer.attach(self)
        self.loss = losses_mod.get(loss)
        metrics = tuple(metrics or ())
        for m in metrics:
            if m != "accuracy":
                raise ValueError(f"unknown metric {m!r}; expected one of: accuracy")
            if not self.loss.has_accuracy:
                raise ValueError(
                    f"metric 'accuracy' needs a classification loss, not {self.loss.name}"
                )
        self.metrics = metrics
        return self

    def _require_compiled(self, what: str):
        if self.loss is None:
            raise RuntimeError(f"call model.compile(optimizer, loss) before {what}")

    # -- input checks (host side, once per call) ------------------------------------------
    def _input_shape(self):
        first = self.layers[0] if self.layers else None
        return getattr(first, "in_features", None)

    def _check_x(self, x, arg="x"):
        if hasattr(x, "__cuda_array_interface__") and not self.ops.on_host:
            return x  # already on the device; skip the host scan
        x = np.asarray(self.ops.to_host(x) if hasattr(x, "get") else x)
        if x.dtype.kind not in "fiub":
            raise InputError(f"{arg}: expected a numeric array, got dtype {x.dtype}")
        if x.ndim < 2:
            raise ShapeError(f"{arg}: expected a batch of shape (N, features...), got {x.shape}")
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            bad = tuple(int(i) for i in np.argwhere(~np.isfinite(x))[0])
            raise InputError(f"{arg} contains NaN or inf (first at index {bad})")
        return x

    def _output_shape(self, x):
        return self.net.output_shape(tuple(x.shape[1:]))

    def _check_xy(self, x, y, arg="x/y"):
        x = self._check_x(x, arg.split("/")[0])
        y = np.asarray(y)
        if len(x) != len(y):
            raise ShapeError(f"{arg}: x has {len(x)} samples but y has {len(y)}")
        y = self.loss.check_targets(y, self._output_shape(x), arg.split("/")[-1])
        return x, y

    # -- one step -------------------------------------------------------------------------
    def _forward_backward(self, xb, yb):
        """Forward, loss, backward into the flat grad buffer. Returns (loss, output) on device."""
        out = self.net.forward(xb, training=True)
        loss, dout = self.loss(self.ops, out, yb)
        self.net.backward(dout, need_dx=False)
        for layer, spec in self.store.regularized():
            W = layer.params[spec.name]
            loss = loss + spec.regularizer.penalty(self.ops, W)
            spec.regularizer.add_grad(self.ops, layer.grads[spec.name], W)
        return loss, out

    def _step(self, xb, yb):
        loss, out = self._forward_backward(xb, yb)
        self.optimizer.update(self.store.params, self.store.grads)
        return loss, out

    def train_step(self, x, y) -> float:
        """One optimizer step on one batch (host or backend arrays); returns the loss."""
        self._require_compiled("train_step")
        if self.optimizer is None:
            raise RuntimeError("call model.compile(optimizer, loss) before train_step")
        x, y = self._check_xy(x, y)
        loss, _ = self._step(self.ops.asarray(x), self.loss.device_targets(self.ops, y))
        return self._finite_loss(loss)

    def loss_and_grads(self, x, y):
        """(loss, grads) for one batch without updating; grads are host arrays aligned with
        get_weights()."""
        self._require_compiled("loss_and_grads")
        x, y = self._check_xy(x, y)
        loss, _ = self._forward_backward(self.ops.asarray(x), self.loss.device_targets(self.ops, y))
        grads = [self.ops.to_host(layer.grads[name]).copy() for layer, name in self.store.views()]
        return self.ops.to_float(loss), grads

    def _finite_loss(self, loss) -> float:
        value = self.ops.to_float(loss)
        if not np.isfinite(value):
            raise TrainingDivergedError(
                f"training loss became {value} at optimizer step {self.optimizer.step}: "
                "lower the learning rate, check the inputs for extreme values, or scale them"
            )
        return value

    # -- fit / evaluate / predict ---------------------------------------------------------
    def fit(
        self,
        x,
        y,
        epochs: int = 1,
        batch_size: int = 32,
        validation_data=None,
        shuffle: bool = True,
        callbacks=None,
        verbose: int = 1,
        check_every: int | None = None,
    ):
        """Train for `epochs` passes over (x, y); returns a History.

        The loss is read back to the host (and checked for NaN) every `check_every` batches:
        every batch on CPU backends, where it costs nothing, every 50 on a GPU."""
        self._require_compiled("fit")
        if not isinstance(epochs, int) or epochs < 0:
            raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        x, y = self._check_xy(x, y)
        if validation_data is not None:
            validation_data = self._check_xy(*validation_data, arg="validation_data")
        check_every = check_every or (1 if self.ops.on_host else 50)
        n = len(x)
        history = History()
        cbs = CallbackList(list(callbacks or []) + [history], self)
        if verbose and self.optimizer.is_chief:
            cbs.append(ProgressBar(verbose))
        xd, yd = self.ops.device_dataset(x), self.ops.device_dataset(y)
        order_rng = self._shuffle_generator()
        self.stop_training = False
        cbs.on_train_begin({"epochs": epochs, "samples": n, "batch_size": batch_size})
        # Overflow on the way to a diverged loss is reported by the NaN check below, with advice,
        # instead of as a stream of NumPy RuntimeWarnings.
        with np.errstate(over="ignore", invalid="ignore"):
            self._fit_epochs(
                cbs, xd, yd, n, epochs, batch_size, shuffle, check_every, validation_data, order_rng
            )
        cbs.on_train_end()
        return history

    def _fit_epochs(
        self, cbs, xd, yd, n, epochs, batch_size, shuffle, check_every, validation_data, order_rng
    ):
        for epoch in range(epochs):
            cbs.on_epoch_begin(epoch)
            t0 = time.perf_counter()
            order = order_rng.permutation(n) if shuffle else np.arange(n)
            loss_sum, correct, seen = 0.0, 0, 0
            for bi, start in enumerate(range(0, n, batch_size)):
                idx = self.optimizer.local_batch(order[start : start + batch_size])
                xb = self.ops.take_batch(xd, idx)
                yb = self.loss.device_targets(self.ops, self.ops.take_batch(yd, idx))
                loss, out = self._step(xb, yb)
                m = len(xb)
                loss_sum = loss_sum + loss * m
                if self.metrics:
                    correct = correct + self.loss.correct(self.ops, out, yb)
                seen += m
                if (bi + 1) % check_every == 0:
                    self._check_running(loss_sum, seen)
                cbs.on_batch_end(bi, {"seen": seen, "loss_sum": loss_sum, "correct": correct})
                if self.stop_training:
                    break
            loss_sum, correct, seen = self.optimizer.reduce_sums([loss_sum, correct, seen])
            logs = {"loss": self._check_running(loss_sum, seen)}
            if self.metrics:
                logs["accuracy"] = self.ops.to_float(correct) / max(seen, 1)
            logs["time"] = time.perf_counter() - t0
            logs["samples_per_s"] = seen / logs["time"] if logs["time"] > 0 else float("inf")
            if validation_data is not None:
                for k, v in self._evaluate(
                    *validation_data, batch_size=max(batch_size, 256)
                ).items():
                    logs["val_" + k] = v
            cbs.on_epoch_end(epoch, logs)
            if self.stop_training:
                break

    def _shuffle_generator(self):
        """The epoch-order generator: seeded from the model's seed once and kept across fit
        calls (fit(epochs=1) called twice shuffles differently each time); rebuilt only when
        the seed changes (a distributed wrapper broadcasts rank 0's seed)."""
        if getattr(self, "_order_seed", object()) != self.seed:
            self._order_rng = np.random.default_rng(self.seed)
            self._order_seed = self.seed
        return self._order_rng

    def _check_running(self, loss_sum, seen) -> float:
        value = self.ops.to_float(loss_sum) / max(seen, 1)
        if not np.isfinite(value):
            raise TrainingDivergedError(
                f"training loss became {value} at optimizer step {self.optimizer.step}: "
                "lower the learning rate, check the inputs for extreme values, or scale them"
            )
        return value

    def evaluate(self, x, y, batch_size: int = 256, verbose: int = 0) -> dict:
        """{'loss': ..., 'accuracy': ...} over (x, y), in inference mode."""
        self._require_compiled("evaluate")
        x, y = self._check_xy(x, y)
        result = self._evaluate(x, y, batch_size)
        if verbose:
            print("  ".join(f"{k}: {v:.4f}" for k, v in result.items()))
        return result

    def _evaluate(self, x, y, batch_size):
        loss_sum, correct = 0.0, 0
        for start in range(0, len(x), batch_size):
            xb = self.ops.asarray(x[start : start + batch_size])
            yb = self.loss.device_targets(self.ops, y[start : start + batch_size])
            out = self.net.forward(xb, training=False)
            loss, _ = self.loss(self.ops, out, yb)
            loss_sum = loss_sum + loss * len(xb)
            if self.metrics:
                correct = correct + self.loss.correct(self.ops, out, yb)
        result = {"loss": self.ops.to_float(loss_sum) / max(len(x), 1)}
        if self.metrics:
            result["accuracy"] = self.ops.to_float(correct) / max(len(x), 1)
        return result

    def predict(self, x, batch_size: int = 256):
        """Outputs for x in inference mode, as a NumPy array on the host."""
        x = self._check_x(x)
        outs = [
            self.ops.to_host(self.net.forward(self.ops.asarray(x[s : s + batch_size])))
            for s in range(0, len(x), batch_size)
        ]
        return np.concatenate(outs) if outs else np.zeros((0,))

    def __call__(self, x, training: bool = False):
        """Forward on backend arrays (no host copy), for composing with user code."""
        return self.net.forward(self.ops.asarray(x), training)

    # -- weights --------------------------------------------------------------------------
    def get_weights(self) -> list:
        """Host copies of the parameters in layer order (W then b for each Dense)."""
        return [self.ops.to_host(layer.params[name]).copy() for layer, name in self.store.views()]

    def set_weights(self, weights) -> None:
        views = self.store.views()
        weights = list(weights)
        if len(weights) != len(views):
            raise ValueError(f"set_weights: expected {len(views)} arrays, got {len(weights)}")
        for (layer, name), w in zip(views, weights):
            target = layer.params[name]
            w = np.asarray(self.ops.to_host(w))
            if w.shape != tuple(target.shape):
                raise ShapeError(
                    f"set_weights: {layer.name}.{name} expects shape "
                    f"{tuple(target.shape)}, got {w.shape}"
                )
        for (layer, name), w in zip(views, weights):
            layer.params[name][...] = self.ops.asarray(np.asarray(self.ops.to_host(w)))

    def get_buffers(self) -> dict:
        """Non-trainable state (e.g. batch-norm running statistics) as host arrays."""
        return {
            f"{layer.name}/{k}": self.ops.to_host(v).copy()
            for layer in self.layers
            for k, v in layer.buffers.items()
        }

    def set_buffers(self, buffers: dict) -> None:
        for layer in self.layers:
            for k, v in layer.buffers.items():
                key = f"{layer.name}/{k}"
                if key not in buffers:
                    raise ValueError(f"set_buffers: missing {key}")
                arr = np.asarray(buffers[key])
                if arr.shape != tuple(v.shape):
                    raise ShapeError(
                        f"set_buffers: {key} expects shape {tuple(v.shape)}, got {arr.shape}"
                    )
                v[...] = self.ops.asarray(arr, dtype=v.dtype)

    # -- persistence ----------------------------------------------------------------------
    def save(self, path) -> None:
        """Write weights, architecture and optimizer state atomically (see nnx.checkpoint).

        Under data parallelism only the chief process (rank 0) writes."""
        from .checkpoint import save

        if self.optimizer is not None and not self.optimizer.is_chief:
            return
        save(self, path)

    def get_config(self) -> dict:
        from .layers.base import layer_to_dict

        return {
            "net": layer_to_dict(self.net),
            "seed": self.seed,
            "name": self.name,
            "dtype": str(self.ops.dtype),
            "model_class": type(self).__name__,
        }

    # -- display --------------------------------------------------------------------------
    def summary(self, input_shape: tuple | None = None, print_fn=print) -> str:
        rows = [("Layer (type)", "Output shape", "Params")]
        shape = input_shape
        if shape is None and self._input_shape():
            shape = (self._input_shape(),)
        for layer in self.layers:
            n = sum(int(np.prod(s.shape)) for s in layer.param_specs())
            out = "?"
            if shape is not None:
                try:
                    shape = layer.output_shape(shape)
                    out = str((None, *shape))
                except Exception:
                    shape = None
            rows.append((f"{layer.name} ({type(layer).__name__})", out, f"{n:,}"))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        line = "-" * (sum(widths) + 6)
        text = [f'Model "{self.name}" on backend {self.backend} ({self.ops.dtype})', line]
        for i, r in enumerate(rows):
            text.append(f"{r[0]:<{widths[0]}}   {r[1]:<{widths[1]}}   {r[2]:>{widths[2]}}")
            if i == 0:
                text.append(line)
        text += [line, f"Total params: {self.count_params():,}"]
        out = "\n".join(text)
        if print_fn:
            print_fn(out)
        return out


class Sequential(Model):
    """A stack of layers: `Sequential([Dense(784, 256, "relu"), Dense(256, 10)])`."""

    def __init__(
        self,
        layers,
        backend=None,
        seed: int | None = 0,
        dtype: str = "float32",
        name: str | None = None,
    ):
        chain = layers if isinstance(layers, Chain) else Chain(layers)
        super().__init__(chain, backend=backend, seed=seed, dtype=dtype, name=name)
