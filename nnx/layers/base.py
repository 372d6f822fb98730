"""The layer contract.

A layer is a description (its config) plus parameters. It declares its parameters
(`param_specs`), holds them as views into its model's flat parameter buffer (`params`, `grads`),
and computes with the backend's ops (`self.ops`) only; no layer imports numpy, cupy or numba.

One call, no state left behind (thinc's `(Y, backprop)` contract):

    y, backprop = layer.begin_update(x, training=True)    # what backward needs lives in backprop
    dx = backprop(dy, need_dx=True)                       # writes the parameter gradients
    y = layer.forward(x)                                  # inference: the output only

A subclass implements `call(x, training) -> (y, backprop)`; `backprop(dy, need_dx)` writes its
parameter gradients into `self.grads` (overwriting them) and returns dx (None when not
`need_dx`). Nothing a call needs is stored on the layer, so a `predict` in another thread
cannot clobber a training step, and a dropped closure frees its saved tensors.

Ownership: a layer belongs to the one model (or `ParameterStore`) it was built into; binding it
into a second one raises `ValueError` naming both, and the first model is left untouched. Using
the same layer object twice inside one model is weight tying: its parameters are stored, counted
and saved once, and its gradient is the sum over its uses (`begin_update` wraps the closure of a
tied layer so that each use adds to the gradient instead of overwriting it; the training step
zeroes tied gradients before backward).

The output before its final activation (`begin_update_logits`): a layer whose output ends in an
activation it applies itself (Dense, Conv1D/Conv2D with `activation=`, the Activation layers)
says which in `output_activation()` and computes the values before it in `call_logits`; a Chain
delegates to its last layer. The training step uses this when the loss takes probabilities and
the output ends in the matching activation (softmax for categorical cross-entropy, sigmoid for
binary): the loss is then computed from the pre-activation values by the fused, stable
from-logits kernel, as Keras does, while `predict` still returns probabilities. A leaf's logits
call goes through `begin_update` like any call (so the step's observer brackets it); the
context variable PRE_ACTIVATION tells `run` that this call wants the values before the
activation (nothing is stored on the layer).

Shape inference: a layer may take its input size as None (`Dense(None, 10)`,
`Conv2D(None, 64, 3)`, `LSTM(None, 32)`, `LayerNorm(None)`, ...); `inferable` names that
argument. `infer(input_shape)` resolves it from the shape of one sample (without the batch
axis), checks the sizes already known against it, and returns the output shape; containers
pass the shape through their layers. A model calls it before its parameters exist
(`Model.build`, `Sequential(..., input_shape=)`, or its first batch), so the config saved in
checkpoints holds the resolved sizes and the parameters are initialized exactly as if the sizes
had been given.

Hook points: while a training step runs with hooks that want per-leaf events (the profiler, the
data-parallel gradient buckets), `begin_update` of a leaf goes through the step's observer (a
context variable, so other threads are not affected), which brackets the leaf's forward and
backward. Containers call their children's `begin_update`, never `call` directly.
"""

from __future__ import annotations

import contextvars
import itertools
from dataclasses import dataclass

from ..errors import NNXError, ShapeError, unknown

LAYER_CLASSES: dict[str, type] = {}
_counters: dict[str, itertools.count] = {}

# The observer of the running training step (None outside a step, or when no hook wants per-leaf
# events). It has one method: leaf_call(layer, x, training) -> (y, backprop), which must call
# `layer.run(x, training)`.
LEAF_OBSERVER: contextvars.ContextVar = contextvars.ContextVar("nnx_leaf_observer", default=None)
# The collector of `add_loss` terms of the running training step or evaluation (None elsewhere).
LOSS_TERMS: contextvars.ContextVar = contextvars.ContextVar("nnx_loss_terms", default=None)
RESERVED_TERMS = frozenset({"loss", "accuracy", "time", "samples_per_s"})
# The leaf whose running call should return its output before the final activation (set by
# `begin_update_logits` around one `begin_update`, read by `run`; None otherwise).
PRE_ACTIVATION: contextvars.ContextVar = contextvars.ContextVar("nnx_pre_activation",
                                                                default=None)


class NotBuiltError(NNXError, RuntimeError):
    """A layer or model whose sizes are not known yet (an input size given as None) was asked
    for parameters; the message says which sizes are missing and how to build it."""


@dataclass(frozen=True)
class ParamSpec:
    """One trainable parameter: its name on the layer, shape, initializer and regularizer."""

    name: str
    shape: tuple
    initializer: object = "zeros"
    regularizer: object = None
    fan: tuple | None = None  # (fan_in, fan_out) for variance-scaling initializers


class Layer:
    """Base class of every layer (and of containers such as `Chain`)."""

    def __init_subclass__(cls, abstract: bool = False, **kwargs):
        super().__init_subclass__(**kwargs)
        if not abstract:  # a shared base (class X(Layer, abstract=True)) is not rebuildable
            LAYER_CLASSES[cls.__name__] = cls

    def __init__(self, name: str | None = None):
        kind = _snake(type(self).__name__)
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"{type(self).__name__}: name must be a non-empty string, "
                             f"got {name!r}")
        self.name = name or f"{kind}_{next(_counters.setdefault(kind, itertools.count(1)))}"
        self.ops = None
        self.params: dict = {}
        self.grads: dict = {}
        self.buffers: dict = {}  # non-trainable state saved in checkpoints (running stats)
        self._owner = None  # weak reference to the model (ParameterStore) this layer belongs to
        self._uses = 1  # how often the layer occurs in its model; > 1 is weight tying
        self._inferred = False  # whether `inferable` was set by `infer` (see forget_inferred)

    # -- structure ------------------------------------------------------------------------
    def param_specs(self) -> list[ParamSpec]:
        """The trainable parameters (name, shape, initializer, regularizer); [] by default."""
        return []

    def has_params(self) -> bool:
        """Whether the layer has trainable parameters; known before its sizes are (a layer whose
        input size is still to be inferred has some)."""
        if self.inferable is not None and getattr(self, self.inferable) is None:
            return True
        return bool(self.param_specs())

    def sublayers(self) -> list[Layer]:
        """The direct children of a container (Chain, Residual, ...); [] for a leaf."""
        return []

    def leaves(self):
        """Every layer of this tree that is not a container, in call order (a tied layer once
        per use)."""
        subs = self.sublayers()
        if not subs:
            yield self
        for sub in subs:
            yield from sub.leaves()

    def nodes(self):
        """Every layer of this tree, containers included, depth first (repeats included)."""
        yield self
        for sub in self.sublayers():
            yield from sub.nodes()

    def init_buffers(self) -> None:
        """Allocate non-trainable state on `self.ops` (override where needed). Called once,
        when the layer is built into its model."""

    @property
    def owner(self):
        """The model (or ParameterStore) this layer belongs to, or None."""
        return self._owner() if self._owner is not None else None

    # -- computation ----------------------------------------------------------------------
    def call(self, x, training: bool):
        """Compute the output and the backward closure: (y, backprop). Subclasses implement
        this; callers use `begin_update` (training) or `forward` (inference)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement call()")

    def run(self, x, training: bool):
        """`call`, with gradient accumulation when the layer is tied (used more than once in its
        model). The step observer calls this; everyone else calls `begin_update`."""
        if self.ops is None:
            raise RuntimeError(f"{type(self).__name__} {self.name!r} is not built into a model: "
                               "put it in nnx.Sequential/Model (or nnx.testing.build) first")
        if PRE_ACTIVATION.get() is self:
            y, backprop = self.call_logits(x, training)
        else:
            y, backprop = self.call(x, training)
        if self._uses > 1:
            backprop = _accumulating(self, backprop)
        return y, backprop

    def begin_update(self, x, training: bool = True):
        """(y, backprop) for one call: `backprop(dy, need_dx=True) -> dx` writes this layer's
        parameter gradients (summed over uses for a tied layer)."""
        observer = LEAF_OBSERVER.get()
        if observer is None or self.sublayers():
            return self.run(x, training)
        return observer.leaf_call(self, x, training)

    def forward(self, x, training: bool = False):
        """The output only; nothing is kept for a backward pass."""
        return self.begin_update(x, training)[0]

    def __call__(self, x, training: bool = False):
        """`forward(x, training)`: the output for backend array x."""
        return self.forward(x, training)

    # -- the output before its final activation (see the module docstring) ----------------
    def output_activation(self) -> str | None:
        """The activation this layer's output ends in, when the layer can also compute the
        values before it (`begin_update_logits`); None when it cannot or does not know."""
        return None

    def call_logits(self, x, training: bool):
        """Like `call`, but returns the values before the final activation and their backward
        closure: (z, backprop_z). Layers whose `output_activation()` is not None implement
        it."""
        raise NotImplementedError(f"{type(self).__name__} does not implement call_logits()")

    def begin_update_logits(self, x, training: bool = True):
        """(z, backprop_z, activation): the output before its final `activation` (the output is
        activation(z)) and the closure `backprop_z(dz, need_dx=True) -> dx`, which writes the
        parameter gradients like `begin_update`'s. ValueError naming the layer when its output
        does not end in a known activation (`output_activation()` is None)."""
        activation = self.output_activation()
        if activation is None:
            raise ValueError(f"{self.describe()}: its output does not end in an activation it "
                             "applies itself, so it has no pre-activation output")
        if self.sublayers():
            z, backprop = self.call_logits(x, training)
            return z, backprop, activation
        token = PRE_ACTIVATION.set(self)
        try:
            z, backprop = self.begin_update(x, training)  # through the step's observer
        finally:
            PRE_ACTIVATION.reset(token)
        return z, backprop, activation

    # -- shapes -----------------------------------------------------------------------------
    inferable: str | None = None  # the constructor size that may be None (see infer)

    def output_shape(self, input_shape: tuple) -> tuple:
        """Shape of the output for an input shape (without the batch axis)."""
        return input_shape

    def missing_sizes(self) -> list[str]:
        """'<layer>: <argument>' for every constructor size of this layer's tree given as None
        and not inferred yet; [] when the sizes are all known (parameters can be allocated)."""
        subs = self.sublayers()
        if subs:
            out: list[str] = []
            for sub in subs:
                out += [m for m in sub.missing_sizes() if m not in out]
            return out
        if self.inferable is not None and getattr(self, self.inferable) is None:
            return [f"{self.describe()}: {self.inferable}"]
        return []

    def size_from_input(self, input_shape: tuple):
        """The value of the `inferable` argument that `input_shape` (one sample, no batch
        axis) implies; ShapeError naming the layer when the shape cannot feed it."""
        raise NotImplementedError(f"{type(self).__name__} does not implement size_from_input()")

    def set_input_size(self, value) -> None:
        """Set the `inferable` argument to `value` (None forgets it). Called by `infer` and
        `forget_inferred` only: sizes are configuration, fixed once the model is built."""
        raise NotImplementedError(f"{type(self).__name__} does not implement set_input_size()")

    def infer(self, input_shape: tuple) -> tuple:
        """Resolve the size given as None (`inferable`) from `input_shape` (one sample, without
        the batch axis), check a size that is known against it, and return the output shape.
        Containers override it to pass the shape through their layers. Raises ShapeError
        naming the layer, the expected and the actual shape when the input does not fit."""
        input_shape = tuple(int(d) for d in input_shape)
        if self.inferable is not None:
            want = self.size_from_input(input_shape)
            have = getattr(self, self.inferable)
            if have is None:
                self.set_input_size(want)
                self._inferred = True
            elif _as_size(have) != _as_size(want):
                raise ShapeError(
                    f"{self.describe()}: expected an input with {self.inferable}={have!r}, got "
                    f"input shape {(None, *input_shape)} (which has {self.inferable}={want!r})")
        return tuple(self.output_shape(input_shape))

    def forget_inferred(self) -> None:
        """Forget every size `infer` set in this layer's tree (a failed build leaves the layers
        as they were constructed)."""
        for node in self.nodes():
            if getattr(node, "_inferred", False):
                node.set_input_size(None)
                node._inferred = False

    def _require_sizes(self) -> None:
        """NotBuiltError unless every size of this layer is known (before parameters exist)."""
        missing = self.missing_sizes()
        if missing:
            raise NotBuiltError(
                f"{self.describe()} is not built: {', '.join(missing)} is None and not inferred "
                "yet; build the model with an input shape (nnx.Sequential([...], input_shape="
                "...), model.build(input_shape)) or give it one batch (fit / predict / "
                "evaluate / train_step)")

    def add_loss(self, value, name: str = "aux_loss") -> None:
        """Add `value` (a 0-d backend array, already weighted) to the loss of the running
        training step or evaluation; it is reported per term in the history under `name`
        (terms with the same name are summed) and included in `loss`. Outside a step (a plain
        `forward`, `predict`) it is dropped. The term's gradient is the layer's own job: its
        backprop adds d(value)/d(input) to dx (and to its parameter gradients), as `Sampling`
        does for its KL term."""
        terms = LOSS_TERMS.get()
        if terms is None:
            return
        if not isinstance(name, str) or not name.isidentifier() or name in RESERVED_TERMS:
            raise ValueError(f"{self.describe()}: add_loss name must be an identifier other "
                             f"than {sorted(RESERVED_TERMS)}, got {name!r}")
        terms[name] = terms[name] + value if name in terms else value

    # -- configuration --------------------------------------------------------------------
    def get_config(self) -> dict:
        """The constructor's arguments (JSON-able): what a checkpoint saves, `from_config`
        rebuilds."""
        return {"name": self.name}

    @classmethod
    def from_config(cls, config: dict, builder: LayerBuilder | None = None):
        """Rebuild from `get_config()`; containers rebuild their sublayers with `builder`."""
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name")
        return f"{type(self).__name__}({args})"

    def describe(self) -> str:
        """"<class> '<name>'", as error messages name a layer."""
        return f"{type(self).__name__} {self.name!r}"

    # -- helpers for subclasses -----------------------------------------------------------
    def _check_positive_ints(self, **args) -> None:
        """Raise ValueError naming the layer and the argument unless each value is an int >= 1."""
        for arg, v in args.items():
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{type(self).__name__} {self.name!r}: {arg} must be a positive "
                                 f"int, got {v!r}")

    def _expect(self, what: str, expected, actual) -> ShapeError:
        return ShapeError(
            f"{type(self).__name__} {self.name!r}: expected {what} {expected}, got {actual}"
        )

    def _check_last_dim(self, x, size: int, arg: str = "in_features") -> None:
        if x.ndim < 2 or x.shape[-1] != size:
            raise ShapeError(
                f"{type(self).__name__} {self.name!r}: expected input of shape (batch, ..., {size})"
                f" ({arg}={size}), got shape {tuple(x.shape)}"
            )


def _as_size(v):
    """A size for comparison: ints as they are, lists and tuples as tuples."""
    return tuple(v) if isinstance(v, (list, tuple)) else v


def _accumulating(layer: Layer, backprop):
    """Wrap a tied layer's closure: the kernels overwrite `layer.grads`, so keep what earlier
    uses wrote and add it back (the step zeroes tied gradients before backward)."""

    def backprop_accumulate(dy, need_dx=True):
        before = {k: g.copy() for k, g in layer.grads.items()}
        dx = backprop(dy, need_dx)
        for k, g in layer.grads.items():
            g += before[k]
        return dx

    return backprop_accumulate


def _snake(name: str) -> str:
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i and not name[i - 1].isupper() and not name[i - 1].isdigit():
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


def layer_to_dict(layer: Layer) -> dict:
    """A JSON-able description of a layer (and its sublayers): class name and config."""
    return {"class": type(layer).__name__, "config": layer.get_config()}


class LayerBuilder:
    """Rebuilds a layer tree from `layer_to_dict` output, validating it first (checkpoints may
    come from untrusted files: only registered layer classes, only plain config values, bounded
    depth and count). Within one tree, names are unique per layer object, so a name seen twice
    with the same description is one tied layer; with a different description it is an error."""

    def __init__(self, max_depth: int = 64, max_layers: int = 100_000):
        self.max_depth, self.max_layers = max_depth, max_layers
        self.by_name: dict[str, tuple[dict, Layer]] = {}
        self.depth = 0
        self.count = 0

    def build(self, d) -> Layer:
        """The layer (tree) described by `d` ({"class", "config"}), validated; a name seen
        before with the same description is the same (tied) layer."""
        if not isinstance(d, dict) or set(d) != {"class", "config"}:
            raise ValueError(f"layer description must be {{'class', 'config'}}, got {d!r:.200}")
        cls_name, config = d["class"], d["config"]
        if not isinstance(cls_name, str) or cls_name not in LAYER_CLASSES:
            raise unknown("layer class", cls_name, LAYER_CLASSES)
        if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
            raise ValueError(f"config of layer {cls_name} must be a dict with string keys")
        name = config.get("name")
        if isinstance(name, str) and name in self.by_name:
            seen, layer = self.by_name[name]
            if seen != d:
                raise ValueError(f"two different layers are named {name!r}; layer names must be "
                                 "unique within a model")
            return layer  # the same layer used twice: weight tying
        self.count += 1
        if self.count > self.max_layers:
            raise ValueError(f"more than {self.max_layers} layers in one description")
        self.depth += 1
        if self.depth > self.max_depth:
            raise ValueError(f"layers nested more than {self.max_depth} deep")
        try:
            layer = LAYER_CLASSES[cls_name].from_config(dict(config), self)
        finally:
            self.depth -= 1
        if isinstance(name, str):
            self.by_name[name] = (d, layer)
        return layer


def layer_from_dict(d, builder: LayerBuilder | None = None) -> Layer:
    """Rebuild a layer from `layer_to_dict`'s output (see LayerBuilder)."""
    return (builder or LayerBuilder()).build(d)
