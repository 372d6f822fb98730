"""Model and Sequential: compile / fit / evaluate / predict, train_step, loss_and_grads,
get/set_weights, save/load.

The model owns its layers (one model per layer; a layer used twice is tied), its flat parameter
store, its optimizer and loss, and the hooks of its training step (`nnx.hooks`). The step and
the epoch loop live in `nnx.training`; checkpoint files are read and written by
`nnx.checkpoint`, and the model assembles itself from them in `nnx.model_io`.
"""

from __future__ import annotations

import itertools

import numpy as np

from . import generate as generation
from . import losses as losses_mod
from . import model_checks as checks
from . import model_io
from . import optim as optim_mod
from .backend import resolve
from .callbacks import CallbackList, History, ProgressBar
from .hooks import HookList, StepHooks, notify_model_use
from .layers.base import Layer, _snake
from .layers.container import Chain
from .params import ParameterStore
from .training import Trainer, collect_loss_terms

_model_counters: dict[str, itertools.count] = {}


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
        seed = checks.check_seed(seed, type(self).__name__)
        kind = _snake(type(self).__name__)
        self.name = name or f"{kind}_{next(_model_counters.setdefault(kind, itertools.count(1)))}"
        self.net = net
        self.seed = seed
        self.metadata: dict = {}  # saved with every checkpoint (see save)
        self.ops = resolve(backend, seed=seed, dtype=dtype)
        self.store = ParameterStore(net, self.ops, seed, owner=self)
        self.optimizer = None
        self.loss = None
        self.metrics: tuple = ()
        self.stop_training = False
        self.hooks = HookList()
        self._optimizer_hooks: list = []
        self.trainer = Trainer(self)

    def describe(self) -> str:
        return f"{type(self).__name__} {self.name!r}"

    # -- properties -----------------------------------------------------------------------
    @property
    def backend(self) -> str:
        return self.ops.name

    @property
    def layers(self) -> list[Layer]:
        """The leaf layers, each once (a tied layer at its first use)."""
        return [layer for layer in self.store.layers if not layer.sublayers()]

    @property
    def is_chief(self) -> bool:
        """Whether this process prints progress and writes checkpoints (all hooks agree)."""
        return self.hooks.is_chief

    # -- the training step's seam -----------------------------------------------------------
    def add_hooks(self, hooks: StepHooks) -> StepHooks:
        """Add a `nnx.hooks.StepHooks` object to every following step; returns it."""
        self.hooks.add(hooks)
        hooks.attach(self)
        return hooks

    def remove_hooks(self, hooks: StepHooks) -> None:
        if any(h is hooks for h in self.hooks):
            self.hooks.remove(hooks)
            hooks.detach(self)

    def bind_ops(self, ops):
        """Run the model's layers, loss and optimizer on `ops` (an Ops object, or a wrapper of
        this model's Ops such as the profiler's); returns the previous one. Parameters, buffers
        and optimizer state stay where they are, so `ops` must use the same device and dtype."""
        previous = self.ops
        if getattr(ops, "dtype", None) != previous.dtype:
            raise ValueError(f"bind_ops: expected ops with dtype {previous.dtype}, got "
                             f"{getattr(ops, 'dtype', None)}")
        self.store.rebind(ops)
        self.ops = ops
        if self.optimizer is not None:
            self.optimizer.ops = ops
        return previous

    def count_params(self) -> int:
        return self.store.count

    # -- configuration --------------------------------------------------------------------
    def compile(self, optimizer="adam", loss="softmax_cross_entropy", metrics=None):
        """Set the optimizer, the loss and the metrics. `metrics=None` reports accuracy for
        classification losses and nothing else for the others. Everything is validated before
        the model changes, so a failed compile leaves the previous one in place."""
        optimizer = optim_mod.get(optimizer)
        loss = losses_mod.get(loss)
        if metrics is None:
            metrics = ("accuracy",) if loss.has_accuracy else ()
        metrics = tuple(metrics)
        for m in metrics:
            if m != "accuracy":
                raise ValueError(f"unknown metric {m!r}; expected one of: accuracy")
            if not loss.has_accuracy:
                raise ValueError(f"metric 'accuracy' needs a classification loss, not {loss.name}")
        for h in self._optimizer_hooks:  # a recompile replaces the previous optimizer's hooks
            self.remove_hooks(h)
        self._optimizer_hooks = []
        self.optimizer = optimizer
        self.optimizer.setup(self.ops, self.store.size)
        self.optimizer.attach(self)
        self.loss = loss
        self.metrics = metrics
        for h in self.optimizer.step_hooks():
            self._optimizer_hooks.append(self.add_hooks(h))
        return self

    def _require_compiled(self, what: str):
        if self.loss is None:
            raise RuntimeError(f"call model.compile(optimizer, loss) before {what}")

    # -- input checks (host side, once per call; see nnx.model_checks) -------------------------
    def _input_shape(self):
        first = self.layers[0] if self.layers else None
        return getattr(first, "in_features", None)

    def _check_x(self, x, arg="x", allow_empty=True):
        return checks.check_x(self, x, arg, allow_empty)

    def _output_shape(self, x):
        return self.net.output_shape(tuple(x.shape[1:]))

    def _check_xy(self, x, y, arg="x/y", allow_empty=False):
        x = self._check_x(x, arg.split("/")[0], allow_empty)
        y = checks.check_targets(self, x, y, arg.split("/")[-1])
        y = self.loss.check_targets(y, self._output_shape(x), arg.split("/")[-1])
        return x, y

    def _to_device(self, x):
        """A batch on the backend, cast to the model's dtype (ids of an Embedding-first model
        stay integers)."""
        return self.ops.asarray(x, dtype=checks.input_dtype(self))

    # -- one step -------------------------------------------------------------------------
    def train_step(self, x, y) -> float:
        """One optimizer step on one batch (host or backend arrays); returns the loss. An empty
        batch is an error, unless a hook of the step takes part in empty steps (a data-parallel
        rank whose share of a global batch is empty)."""
        self._require_compiled("train_step")
        notify_model_use(self)
        x, y = self._check_xy(x, y, allow_empty=checks.takes_empty_steps(self))
        loss, _ = self.trainer.step(self._to_device(x), self.loss.device_targets(self.ops, y))
        return self.trainer.check_running(loss, 1)

    def loss_and_grads(self, x, y):
        """(loss, grads) for one batch without updating; grads are host arrays aligned with
        get_weights()."""
        self._require_compiled("loss_and_grads")
        notify_model_use(self)
        x, y = self._check_xy(x, y)
        loss, _ = self.trainer.forward_backward(
            self._to_device(x), self.loss.device_targets(self.ops, y)
        )
        grads = [self.ops.to_host(layer.grads[name]).copy() for layer, name in self.store.views()]
        return self.ops.to_float(loss), grads

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
        initial_epoch: int = 0,
    ):
        """Train for `epochs` passes over (x, y); returns a History.

        `initial_epoch` numbers the epochs of a resumed run on (epochs initial_epoch ..
        epochs-1 run). The loss is read back to the host (and checked for NaN) every
        `check_every` batches: every batch on CPU backends, where it costs nothing, every 50 on
        a GPU."""
        self._require_compiled("fit")
        notify_model_use(self)
        epochs = checks.check_int("epochs", epochs, 0, "fit")
        batch_size = checks.check_batch_size(batch_size, "fit")
        initial_epoch = checks.check_int("initial_epoch", initial_epoch, 0, "fit")
        shuffle = checks.check_flag("shuffle", shuffle, "fit")
        verbose = checks.check_verbose(verbose, "fit")
        if check_every is not None:
            check_every = checks.check_int("check_every", check_every, 1, "fit")
        if initial_epoch > epochs:
            raise ValueError(f"initial_epoch ({initial_epoch}) must not exceed epochs ({epochs})")
        x, y = self._check_xy(x, y)
        if validation_data is not None:
            validation_data = self._check_xy(*checks.check_validation_data(validation_data),
                                             arg="validation_data")
        check_every = check_every or (1 if self.ops.on_host else 50)
        plan = {"epochs": epochs, "batch_size": batch_size, "shuffle": shuffle,
                "initial_epoch": initial_epoch}
        n = len(x)
        history = History()
        cbs = CallbackList(list(callbacks or []) + [history], self)
        if verbose and self.is_chief:
            cbs.append(ProgressBar(verbose))
        # Callbacks check what they need (a val_* monitor needs validation data, a checkpoint
        # directory must exist) before any work, so a mistake costs no training time.
        cbs.on_train_begin({"epochs": epochs, "samples": n, "batch_size": batch_size,
                            "initial_epoch": initial_epoch, "metrics": self.metrics,
                            "validation": validation_data is not None})
        self.hooks.call("begin_fit", self, x, y, plan)
        xd, yd = self.ops.device_dataset(x), self.ops.device_dataset(y)
        self.stop_training = False
        # Overflow on the way to a diverged loss is reported by the NaN check, with advice,
        # instead of as a stream of NumPy RuntimeWarnings.
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                self.trainer.run_epochs(cbs, xd, yd, n, plan, check_every, validation_data)
        finally:
            self.hooks.call_reversed("end_fit", self)
        cbs.on_train_end()
        return history

    def evaluate(self, x, y, batch_size: int = 256, verbose: int = 0) -> dict:
        """{'loss': ..., 'accuracy': ...} over (x, y), in inference mode."""
        self._require_compiled("evaluate")
        notify_model_use(self)
        batch_size = checks.check_batch_size(batch_size, "evaluate")
        x, y = self._check_xy(x, y)
        result = self._evaluate(x, y, batch_size)
        if verbose:
            print("  ".join(f"{k}: {v:.4f}" for k, v in result.items()))
        return result

    def _evaluate(self, x, y, batch_size):
        loss_sum, correct, term_sums = 0.0, 0, {}
        with self.hooks.observing():
            for start in range(0, len(x), batch_size):
                xb = self._to_device(x[start : start + batch_size])
                yb = self.loss.device_targets(self.ops, y[start : start + batch_size])
                with collect_loss_terms() as terms:
                    out = self.net.forward(xb, training=False)
                loss, _ = self.loss(self.ops, out, yb)
                for name, value in terms.items():
                    loss = loss + value
                    term_sums[name] = term_sums.get(name, 0.0) + value * len(xb)
                loss_sum = loss_sum + loss * len(xb)
                if self.metrics:
                    correct = correct + self.loss.correct(self.ops, out, yb)
        n = len(x)  # >= 1: callers refuse empty data
        result = {"loss": self.ops.to_float(loss_sum) / n}
        if self.metrics:
            result["accuracy"] = self.ops.to_float(correct) / n
        for name in sorted(term_sums):
            result[name] = self.ops.to_float(term_sums[name]) / n
        return result

    def predict(self, x, batch_size: int = 256):
        """Outputs for x in inference mode, as a NumPy array on the host."""
        notify_model_use(self)
        batch_size = checks.check_batch_size(batch_size, "predict")
        x = self._check_x(x)
        with self.hooks.observing():
            outs = [
                self.ops.to_host(self.net.forward(self._to_device(x[s : s + batch_size])))
                for s in range(0, len(x), batch_size)
            ]
        if outs:
            return np.concatenate(outs)
        return np.zeros((0, *self._output_shape(x)), dtype=self.ops.dtype)

    def __call__(self, x, training: bool = False):
        """Forward on backend arrays (no host copy), for composing with user code."""
        notify_model_use(self)
        with self.hooks.observing():
            return self.net.forward(self._to_device(x), training)

    def generate(self, prompt, max_new_tokens: int, temperature: float = 1.0, top_k=None,
                 top_p=None, seed=None, *, use_cache: bool = True):
        """Continue token ids `prompt` ((T,) or (N, T)) by `max_new_tokens` sampled tokens;
        returns prompt + new ids. `top_k=1` is greedy; incremental decoding with per-layer
        caches (see nnx.generate)."""
        notify_model_use(self)
        return generation.generate(self, prompt, max_new_tokens, temperature, top_k, top_p,
                                   seed, use_cache=use_cache)

    # -- weights --------------------------------------------------------------------------
    def get_weights(self) -> list:
        """Host copies of the parameters in layer order (W then b for each Dense)."""
        return [self.ops.to_host(layer.params[name]).copy() for layer, name in self.store.views()]

    def set_weights(self, weights) -> None:
        """Replace the parameters (arrays in get_weights() order): real numbers of the right
        shapes, finite in the model's dtype; all are checked before any is written."""
        views = self.store.views()
        for (layer, name), w in zip(views, checks.check_weights(self, weights)):
            layer.params[name][...] = self.ops.asarray(w)

    def get_buffers(self) -> dict:
        """Non-trainable state (e.g. batch-norm running statistics) as host arrays."""
        return {
            f"{layer.name}/{k}": self.ops.to_host(v).copy()
            for layer in self.layers
            for k, v in layer.buffers.items()
        }

    def set_buffers(self, buffers: dict) -> None:
        """Replace the non-trainable state (`get_buffers()` keys), checked like set_weights."""
        checked = checks.check_buffers(self, buffers)
        for layer in self.layers:
            for k, v in layer.buffers.items():
                v[...] = self.ops.asarray(checked[f"{layer.name}/{k}"], dtype=v.dtype)

    # -- persistence ----------------------------------------------------------------------
    def save(self, path, metadata: dict | None = None) -> None:
        """Write weights, architecture, optimizer state and `metadata` atomically to `path`
        (see nnx.checkpoint); `nnx.load` gives the metadata back as `model.metadata`.

        `metadata`: a JSON-able dict (string keys; str, finite numbers, bools, None, lists,
        dicts; at most nnx.checkpoint.MAX_METADATA_BYTES as JSON), e.g. a tokenizer; None saves
        `self.metadata`. The destination directory must exist (it is not created): a missing
        one raises CheckpointError before anything is written. Under data parallelism only the
        chief process (rank 0) writes."""
        if not self.is_chief:
            return
        model_io.save(self, path, self.metadata if metadata is None else metadata)

    @classmethod
    def load(cls, path, backend=None) -> Model:
        """Rebuild a model saved by `save` (on `backend`, or the current choice)."""
        return model_io.load(path, backend, {"Model": Model, "Sequential": Sequential})

    def get_config(self) -> dict:
        return model_io.model_config(self)

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


def load(path, backend=None) -> Model:
    """Rebuild a model from a checkpoint written by `Model.save` (see nnx.checkpoint)."""
    return Model.load(path, backend)


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
