"""The layer contract.

A layer declares its parameters (`param_specs`), holds them as views into the model's flat
parameter buffer (`params`, `grads`), and computes with the backend's ops (`self.ops`) only;
no layer imports numpy, cupy or numba. `forward` keeps what `backward` needs on the layer;
`backward(dy)` writes the parameter gradients into `grads` and returns dx.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from ..errors import ShapeError, unknown

LAYER_CLASSES: dict[str, type] = {}
_counters: dict[str, itertools.count] = {}


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
        self.name = name or f"{kind}_{next(_counters.setdefault(kind, itertools.count(1)))}"
        self.ops = None
        self.params: dict = {}
        self.grads: dict = {}
        self.buffers: dict = {}  # non-trainable state saved in checkpoints (running stats)
        self.training = False

    # -- structure ------------------------------------------------------------------------
    def param_specs(self) -> list[ParamSpec]:
        return []

    def sublayers(self) -> list[Layer]:
        return []

    def leaves(self):
        """Every layer of this tree that is not a container, in order."""
        subs = self.sublayers()
        if not subs:
            yield self
        for sub in subs:
            yield from sub.leaves()

    def bind(self, ops) -> None:
        """Attach the backend. Layers with buffers allocate them in `init_buffers`."""
        self.ops = ops
        self.init_buffers()
        for sub in self.sublayers():
            sub.bind(ops)

    def init_buffers(self) -> None:
        """Allocate non-trainable state on `self.ops` (override where needed)."""

    # -- computation ----------------------------------------------------------------------
    def forward(self, x, training: bool = False):
        raise NotImplementedError

    def backward(self, dy, need_dx: bool = True):
        raise NotImplementedError

    def __call__(self, x, training: bool = False):
        return self.forward(x, training)

    def output_shape(self, input_shape: tuple) -> tuple:
        """Shape of the output for an input shape (without the batch axis)."""
        return input_shape

    # -- configuration --------------------------------------------------------------------
    def get_config(self) -> dict:
        return {"name": self.name}

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "name")
        return f"{type(self).__name__}({args})"

    # -- helpers for subclasses -----------------------------------------------------------
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


def layer_from_dict(d) -> Layer:
    """Rebuild a layer from `layer_to_dict`'s output, validating it first (checkpoints may
    come from untrusted files: only registered layer classes, only plain config values)."""
    if not isinstance(d, dict) or set(d) != {"class", "config"}:
        raise ValueError(f"layer description must be {{'class', 'config'}}, got {d!r:.200}")
    cls_name, config = d["class"], d["config"]
    if cls_name not in LAYER_CLASSES:
        raise unknown("layer class", cls_name, LAYER_CLASSES)
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise ValueError(f"config of layer {cls_name} must be a dict with string keys")
    return LAYER_CLASSES[cls_name].from_config(dict(config))
