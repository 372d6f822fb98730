"""Model and Sequential: build, compile / fit / evaluate / predict, train_step, loss_and_grads,
get/set_weights, save/load, summary.

The model owns its layers (one model per layer; a layer used twice is tied), its flat parameter
store, its optimizer and loss, and the hooks of its training step (`nnx.hooks`). The step and
the epoch loop live in `nnx.training`, the bodies of fit / evaluate / predict in
`nnx.model_fit` (batches from arrays or iterables: `nnx.data_iter`), what compile decides in
`nnx.model_compile`; checkpoint files are read and written by `nnx.checkpoint`, and the model
assembles itself from them in `nnx.model_io`.

Building. A model whose layers know their sizes allocates its parameters when it is created.
Layers may leave their input size to be inferred (`Dense(None, 10)`, `Conv2D(None, 32, 3)`,
...): the model is then built from `input_shape=` (one sample's shape, without the batch
axis), `model.build(input_shape)`, or the shape of the first batch it is given (fit, evaluate,
predict, train_step, loss_and_grads, a call). Until then `count_params()`, `get_weights()` and
the like raise NotBuiltError saying how to build it. A model built late initializes exactly as
one built up front (same seed, same weights), and its checkpoints hold the resolved sizes.
"""

from __future__ import annotations

import itertools
import math

from . import generate as generation
from . import losses as losses_mod
from . import model_checks as checks
from . import model_compile, model_fit, model_io
from . import optim as optim_mod
from .backend import resolve
from .hooks import HookList, StepHooks, notify_model_use
from .layers.base import Layer, NotBuiltError, _snake
from .layers.container import Chain
from .params import ParameterStore
from .training import Trainer

_model_counters: dict[str, itertools.count] = {}


class Model:
    """Model(net, backend=None, seed=0, dtype="float32", name=None, input_shape=None): a
    trainable network around one root layer (a Chain, or any composed block), on one backend.
    `input_shape` (one sample, without the batch axis) builds a model whose layers infer their
    input sizes (see the module docstring)."""

    def __init__(
        self,
        net: Layer,
        backend=None,
        seed: int | None = 0,
        dtype: str = "float32",
        name: str | None = None,
        input_shape: tuple | None = None,
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
        self._store = None
        self.input_shape: tuple | None = None  # one sample's shape, when known
        self.optimizer = None
        self.loss = None
        self.fused_loss = None  # the fused from-logits loss (see nnx.training), or None
        self.metrics: tuple = ()  # the compiled metrics' specs (names or config dicts)
        self._metric_set = None
        self.stop_training = False
        self.hooks = HookList()
        self._optimizer_hooks: list = []
        self.trainer = Trainer(self)
        if input_shape is not None:
            self.build(input_shape)
        elif not net.missing_sizes():
            self._create_store()

    def describe(self) -> str:
        """"<class> '<name>'", as error messages name a model."""
        return f"{type(self).__name__} {self.name!r}"

    # -- properties -----------------------------------------------------------------------
    @property
    def backend(self) -> str:
        """The backend's name ("numpy", "numba", "cupy")."""
        return self.ops.name

    @property
    def built(self) -> bool:
        """Whether the parameters exist (every layer size is known)."""
        return self._store is not None

    @property
    def store(self) -> ParameterStore:
        """The flat parameter and gradient buffers (NotBuiltError before the model is
        built)."""
        if self._store is None:
            self._not_built()
        return self._store

    @property
    def layers(self) -> list[Layer]:
        """The leaf layers, each once (a tied layer at its first use)."""
        seen, out = set(), []
        for layer in self.net.nodes():
            if id(layer) not in seen:
                seen.add(id(layer))
                if not layer.sublayers():
                    out.append(layer)
        return out

    @property
    def is_chief(self) -> bool:
        """Whether this process prints progress and writes checkpoints (all hooks agree)."""
        return self.hooks.is_chief

    @property
    def metric_names(self) -> tuple:
        """The history keys of the compiled metrics (validation adds "val_" to each)."""
        return self._metric_set.names if self._metric_set is not None else ()

    # -- building ---------------------------------------------------------------------------
    def build(self, input_shape) -> Model:
        """Infer the layers' sizes given as None from `input_shape` (one sample's shape,
        without the batch axis, e.g. (1, 28, 28)), check every layer's sizes against it, and
        allocate the parameters if not done yet; returns the model. ShapeError naming the
        first layer the shape does not fit (the layers are then left as they were)."""
        shape = checks.check_input_shape(input_shape, f"{self.describe()}: input_shape")
        built = self.built
        try:
            self.net.infer(shape)
        except Exception:
            if not built:
                self.net.forget_inferred()
            raise
        if not built:
            self._create_store()
        self.input_shape = shape
        return self

    def _ensure_built(self, sample_shape) -> None:
        """Build from the shape of the first batch's samples, if not built yet."""
        if self._store is None:
            self.build(tuple(sample_shape))

    def _create_store(self) -> None:
        self._store = ParameterStore(self.net, self.ops, self.seed, owner=self)
        if self.optimizer is not None:
            self._attach_optimizer()

    def _require_built(self) -> None:
        """NotBuiltError unless the parameters exist."""
        if self._store is None:
            self._not_built()

    def _not_built(self):
        raise NotBuiltError(
            f"{self.describe()} is not built yet: {', '.join(self.net.missing_sizes())} "
            "is None and not inferred. Build it with an input shape: nnx.Sequential([...], "
            "input_shape=(...)), model.build(input_shape), or give it data once (fit, "
            "predict, evaluate, train_step)")

    # -- the training step's seam -----------------------------------------------------------
    def add_hooks(self, hooks: StepHooks) -> StepHooks:
        """Add a `nnx.hooks.StepHooks` object to every following step; returns it."""
        self.hooks.add(hooks)
        hooks.attach(self)
        return hooks

    def remove_hooks(self, hooks: StepHooks) -> None:
        """Remove hooks added with `add_hooks` (a no-op for hooks not added)."""
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
        if self._store is not None:
            self._store.rebind(ops)
        self.ops = ops
        if self.optimizer is not None:
            self.optimizer.ops = ops
        return previous

    def count_params(self) -> int:
        """The number of trainable scalars (tied parameters once); NotBuiltError before the
        model is built."""
        return self.store.count

    # -- configuration --------------------------------------------------------------------
    def compile(self, optimizer="adam", loss="softmax_cross_entropy", metrics=None):
        optimizer = optim_mod.get(optimizer)
        loss = losses_mod.get(loss)
        fused_loss = model_compile.fused_loss(self.net, loss)
        metric_set = model_compile.MetricSet(loss, metrics)
        for h in self._optimizer_hooks:  # a recompile replaces the previous optimizer's hooks
            self.remove_hooks(h)
        self._optimizer_hooks = []
        self.optimizer = optimizer
        self.loss = loss
        self.fused_loss = fused_loss
        self._metric_set = metric_set
        self.metrics = metric_set.specs
        if self.built:
            self._attach_optimizer()
        return self

    compile.__doc__ = model_compile.compile_doc()

    def _attach_optimizer(self) -> None:
        self.optimizer.setup(self.ops, self._store.size)
        self.optimizer.attach(self)
        for h in self.optimizer.step_hooks():
            self._optimizer_hooks.append(self.add_hooks(h))

    def new_metrics(self) -> list:
        """Fresh objects of the compiled metrics (for one epoch or one evaluation)."""
        return self._metric_set.new() if self._metric_set is not None else []

    def _require_compiled(self, what: str):
        if self.loss is None:
            raise RuntimeError(f"call model.compile(optimizer, loss) before {what}")

    # -- input checks (host side, once per call; see nnx.model_checks) -------------------------
    def _input_shape(self):
        """One sample's shape when known: the build's, or a first Dense's (in_features,)."""
        if self.input_shape is not None:
            return self.input_shape
        first = self.layers[0] if self.layers else None
        size = getattr(first, "in_features", None)
        return (size,) if size is not None else None

    def _check_x(self, x, arg="x", allow_empty=True):
        return checks.check_x(self, x, arg, allow_empty)

    def _output_shape(self, x):
        return self.net.output_shape(tuple(x.shape[1:]))

    def _check_step(self, x, y, sample_weight, allow_empty=False):
        """(xb, yb, wb) on the backend for one step, checked (the model built if needed)."""
        x = self._check_x(x, "x", allow_empty)
        self._ensure_built(tuple(x.shape[1:]))
        y = checks.check_targets(self, x, y, "y")
        out_shape = self._output_shape(x)
        y = self.loss.check_targets(y, out_shape, "y")
        w = None
        if sample_weight is not None:
            w = self.ops.asarray(checks.check_sample_weight(self, sample_weight, len(x),
                                                            out_shape))
        return self._to_device(x), self.loss.device_targets(self.ops, y), w

    def _to_device(self, x):
        """A batch on the backend, cast to the model's dtype (ids of an Embedding-first model
        stay integers)."""
        return self.ops.asarray(x, dtype=checks.input_dtype(self))

    # -- one step -------------------------------------------------------------------------
    def train_step(self, x, y, sample_weight=None) -> float:
        """One optimizer step on one batch (host or backend arrays); returns the loss (the
        weighted mean with `sample_weight` (N,) or (N, T)). An empty batch is an error, unless
        a hook of the step takes part in empty steps (a data-parallel rank whose share of a
        global batch is empty). Builds the model from the batch if needed."""
        self._require_compiled("train_step")
        notify_model_use(self)
        xb, yb, wb = self._check_step(x, y, sample_weight, checks.takes_empty_steps(self))
        loss, _ = self.trainer.step(xb, yb, None, wb)
        return self.trainer.check_running(loss, 1)

    def loss_and_grads(self, x, y, sample_weight=None):
        """(loss, grads) for one batch without updating; grads are host arrays aligned with
        get_weights(). Builds the model from the batch if needed."""
        self._require_compiled("loss_and_grads")
        notify_model_use(self)
        xb, yb, wb = self._check_step(x, y, sample_weight)
        loss, _ = self.trainer.forward_backward(xb, yb, wb)
        grads = [self.ops.to_host(layer.grads[name]).copy() for layer, name in self.store.views()]
        return self.ops.to_float(loss), grads

    # -- fit / evaluate / predict ---------------------------------------------------------
    def fit(
        self,
        x,
        y=None,
        epochs: int = 1,
        batch_size: int = 32,
        validation_data=None,
        shuffle: bool = True,
        callbacks=None,
        verbose: int = 1,
        check_every: int | None = None,
        initial_epoch: int = 0,
        validation_split: float = 0.0,
        sample_weight=None,
        class_weight=None,
        steps_per_epoch: int | None = None,
        validation_steps: int | None = None,
    ):
        """Train for epochs initial_epoch .. epochs-1; returns a History (`history.history`:
        "loss", each metric's name, add_loss terms, "val_*", time, samples_per_s per epoch).

        x, y: arrays (x (N, ...), y (N, ...)), or x an iterable / generator of (x, y) or
            (x, y, sample_weight) batches with y None (see nnx.data_iter: prefetched in a
            background thread on GPU backends; `steps_per_epoch` batches per epoch, or until
            it ends; a source that runs out stops training with a warning, as Keras).
        validation_data: (x_val, y_val), (x_val, y_val, sample_weight_val) or an iterable of
            batches (`validation_steps` per evaluation); evaluated after each epoch.
        validation_split: a fraction in (0, 1): the last part of x, y (before shuffling) is
            held out for validation, as Keras (arrays only).
        sample_weight: (N,) per sample or (N, T) per position (0 masks padding): the loss is
            the weighted mean, the metrics are weighted. class_weight: {class: weight}, a
            factor on the loss weights of each sample's (or position's) class.
        initial_epoch: numbers the epochs of a resumed run on (callbacks, schedules).
        check_every: the loss is read back to the host (and checked for NaN) every so many
            batches: every batch on CPU backends, where it costs nothing, every 50 on a GPU.
        Builds the model from the first batch if needed."""
        self._require_compiled("fit")
        notify_model_use(self)
        return model_fit.fit(self, x, y, epochs, batch_size, validation_data, shuffle,
                             callbacks, verbose, check_every, initial_epoch, validation_split,
                             sample_weight, class_weight, steps_per_epoch, validation_steps)

    def evaluate(self, x, y=None, batch_size: int = 256, verbose: int = 0, sample_weight=None,
                 steps: int | None = None) -> dict:
        """{"loss", each metric's name, each add_loss term} over (x, y) (arrays, or x an
        iterable of batches with y None, `steps` of them or until it ends), in inference mode;
        the loss is the (weighted, with `sample_weight`) mean over every sample."""
        self._require_compiled("evaluate")
        notify_model_use(self)
        return model_fit.evaluate(self, x, y, batch_size, verbose, sample_weight, steps)

    def predict(self, x, batch_size: int = 256, steps: int | None = None):
        """Outputs for x (an array, or an iterable of batches: x, (x,) or (x, y, ...) items,
        `steps` of them or until it ends) in inference mode, as a NumPy array on the host:
        what the model outputs (probabilities for a softmax-ending model, whatever the loss)."""
        notify_model_use(self)
        return model_fit.predict(self, x, batch_size, steps)

    def __call__(self, x, training: bool = False):
        """Forward on backend arrays (no host copy), for composing with user code."""
        notify_model_use(self)
        self._ensure_built(tuple(x.shape[1:]))
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
        self._require_built()
        return {
            f"{layer.name}/{k}": self.ops.to_host(v).copy()
            for layer in self.layers
            for k, v in layer.buffers.items()
        }

    def set_buffers(self, buffers: dict) -> None:
        """Replace the non-trainable state (`get_buffers()` keys), checked like set_weights."""
        self._require_built()
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
        chief process (rank 0) writes. The architecture saved holds the inferred sizes."""
        if not self.is_chief:
            return
        self._require_built()
        model_io.save(self, path, self.metadata if metadata is None else metadata)

    @classmethod
    def load(cls, path, backend=None) -> Model:
        """Rebuild a model saved by `save` (on `backend`, or the current choice)."""
        return model_io.load(path, backend, {"Model": Model, "Sequential": Sequential})

    def get_config(self) -> dict:
        """The model's description as a checkpoint stores it (net, seed, name, dtype)."""
        return model_io.model_config(self)

    # -- display --------------------------------------------------------------------------
    def summary(self, input_shape: tuple | None = None, print_fn=print) -> str:
        """A table of the top-level layers (a Sequential's layers; a container counts as one
        row) with their output shapes (batch axis None) and parameter counts, and the total;
        printed with `print_fn` (None: not printed) and returned. `input_shape` (one sample)
        builds a model not built yet; without it such a model raises NotBuiltError."""
        if input_shape is not None:
            self.build(input_shape)
        store = self.store
        rows = [("Layer (type)", "Output shape", "Params")]
        shape = self._input_shape()
        counted: set = set()
        children = self.net.layers if isinstance(self.net, Chain) else [self.net]
        for layer in children:
            n = 0
            for leaf in layer.leaves():
                if id(leaf) not in counted:
                    counted.add(id(leaf))
                    n += sum(math.prod(s.shape) for s in leaf.param_specs())
            out = "?"
            if shape is not None:
                try:
                    shape = tuple(layer.output_shape(shape))
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
        text += [line, f"Total params: {store.count:,}"]
        out = "\n".join(text)
        if print_fn:
            print_fn(out)
        return out


def load(path, backend=None) -> Model:
    """Rebuild a model from a checkpoint written by `Model.save` (see nnx.checkpoint)."""
    return Model.load(path, backend)


class Sequential(Model):
    """Sequential(layers, backend=None, seed=0, dtype="float32", name=None, input_shape=None):
    a stack of layers, `Sequential([Dense(784, 256, "relu"), Dense(256, 10)])`; with
    `input_shape` (one sample's shape) layers may leave their input size to be inferred:
    `Sequential([Conv2D(None, 32, 3), Flatten(), Dense(None, 10)], input_shape=(1, 28, 28))`."""

    def __init__(
        self,
        layers,
        backend=None,
        seed: int | None = 0,
        dtype: str = "float32",
        name: str | None = None,
        input_shape: tuple | None = None,
    ):
        chain = layers if isinstance(layers, Chain) else Chain(layers)
        super().__init__(chain, backend=backend, seed=seed, dtype=dtype, name=name,
                         input_shape=input_shape)
