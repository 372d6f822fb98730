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

Hook points: while a training step runs with hooks that want per-leaf events (the profiler, the
data-parallel gradient buckets), `begin_update` of a leaf goes through the step's observer (a
context variable, so other threads are not affected), which brackets the leaf's forward and
backward. Containers call their children's `begin_update`, never `call` directly.
"""

from __future__ import annotations

import contextvars
import itertools
from dataclasses import dataclass

from ..errors import ShapeError, unknown

LAYER_CLASSES: dict[str, type] = {}
_counters: dict[str, itertools.count] = {}

# The observer of the running training step (None outside a step, or when no hook wants per-leaf
# events). It has one method: leaf_call(layer, x, training) -> (y, backprop), which must call
# `layer.run(x, training)`.
LEAF_OBSERVER: contextvars.ContextVar = contextvars.ContextVar("nnx_leaf_observer", default=None)
# The collector of `add_loss` terms of the running training step or evaluation (None elsewhere).
LOSS_TERMS: contextvars.ContextVar = contextvars.ContextVar("nnx_loss_terms", default=None)
RESERVED_TERMS = frozenset({"loss", "accuracy", "time", "samples_per_s"})


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

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
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

    # -- structure ------------------------------------------------------------------------
    def param_specs(self) -> list[ParamSpec]:
        return []

    def sublayers(self) -> list[Layer]:
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
        return self.forward(x, training)

    def output_shape(self, input_shape: tuple) -> tuple:
        """Shape of the output for an input shape (without the batch axis)."""
        return input_shape

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
        return {"name": self.name}

    @classmethod
    def from_config(cls, config: dict, builder: LayerBuilder | None = None):
        """Rebuild from `get_config()`; containers rebuild their sublayers with `builder`."""
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name")
        return f"{type(self).__name__}({args})"

    def describe(self) -> str:
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
