"""What `Model.compile` decides besides the optimizer: whether the loss is computed from the
values before the output's activation (the fused path), whether the loss can make sense of the
output at all, and the metrics (names and objects, fresh copies per fit and evaluation). Also
the documentation of the accepted names, generated from the registries (`losses.LOSSES`,
`optim.OPTIMIZERS`, `metrics.METRICS`) when the module is imported, so it cannot go stale.
"""

from __future__ import annotations

from . import losses as losses_mod
from . import metrics as metrics_mod
from . import optim as optim_mod
from .layers.base import RESERVED_TERMS
from .layers.container import Chain

# Activations whose outputs can be negative: never probabilities.
_NOT_PROBABILITIES = ("identity", "leaky_relu", "tanh", "gelu", "log_softmax")
_TAKES_PROBABILITIES = {"softmax": "categorical_crossentropy", "sigmoid": "binary_crossentropy"}


def output_layer(net):
    """The layer that produces the model's output (through nested Chains), for messages."""
    while isinstance(net, Chain) and net.layers:
        net = net.layers[-1]
    return net


def fused_loss(net, loss):
    """The from-logits loss the model computes on the values before its output activation
    (the fused path), or None; raises ValueError when the output and the loss clearly do not
    fit (a probability loss on outputs that can be negative, a from-logits cross-entropy on an
    output that already ends in softmax or sigmoid, nll on anything but log-probabilities)."""
    activation = net.output_activation()
    if activation is None:
        return None  # the output layer's activation is unknown: trust the user
    where = f"the model's output ends in {activation!r} ({output_layer(net).describe()})"
    if loss.takes == "probabilities" and activation in _NOT_PROBABILITIES:
        twin = {"softmax": "softmax_cross_entropy", "sigmoid": "binary_cross_entropy"}.get(
            loss.output_activation, "a from-logits loss")
        raise ValueError(
            f"loss {loss.name!r} takes probabilities, but {where}, whose values are not "
            f"probabilities: end the model with activation={loss.output_activation!r}, or use "
            f"a loss that takes logits ({twin!r}, or from_logits=True)")
    if loss.takes == "log-probabilities" and activation != "log_softmax":
        raise ValueError(
            f"loss {loss.name!r} takes log-probabilities, but {where}: end the model with "
            "activation='log_softmax' (or nnx.LogSoftmax()), or use 'softmax_cross_entropy' "
            "on logits")
    if loss.takes == "logits" and loss.has_accuracy and activation in _TAKES_PROBABILITIES:
        raise ValueError(
            f"loss {loss.name!r} takes logits, but {where}, so the {activation} would be "
            f"applied twice: drop the activation, or use "
            f"{_TAKES_PROBABILITIES[activation]!r} (takes probabilities)")
    if not loss.from_logits and activation == loss.output_activation:
        return loss.logits_loss()
    return None


class MetricSet:
    """The compiled metrics: `specs` (JSON-able: names, or `metrics.to_config` dicts, what a
    checkpoint saves and compile accepts back), `names` (their history keys) and `new()`,
    fresh metric objects for one fit epoch or one evaluation. Names are configured from the
    loss: classification metrics read probabilities when the loss takes them, and columns
    independently (binary) for binary cross-entropy."""

    def __init__(self, loss, metrics):
        if metrics is None:
            metrics = ("accuracy",) if loss.has_accuracy else ()
        if isinstance(metrics, (str, metrics_mod.Metric, dict)):
            metrics = (metrics,)
        try:
            metrics = tuple(metrics)
        except TypeError:
            raise ValueError(f"metrics must be a list of names and Metric objects, got "
                             f"{type(metrics).__name__}") from None
        binary = True if isinstance(loss, losses_mod.SigmoidCrossEntropy) else None
        self.protos, specs = [], []
        for m in metrics:
            obj = metrics_mod.get(m, from_logits=loss.from_logits, binary=binary)
            self.protos.append(obj)
            specs.append(m if isinstance(m, str) else metrics_mod.to_config(obj))
        self.specs = tuple(specs)
        self.names = tuple(m.name for m in self.protos)
        taken = set(RESERVED_TERMS - {"accuracy"})
        for name in self.names:
            if name in taken:
                raise ValueError(f"metrics: two metrics (or a metric and a log entry) report "
                                 f"under {name!r}; give one another name (Metric(name=...))")
            taken.add(name)

    def new(self) -> list:
        """Fresh copies of the metrics (no state shared with other fits or evaluations)."""
        return [type(m)(**m.get_config()) for m in self.protos]


def _wrap(text: str, indent: str = "            ", width: int = 96) -> str:
    words, lines, line = text.split(), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > width - len(indent):
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}" if line else w
    lines.append(line)
    return "\n".join(indent + ln for ln in lines)


def compile_doc() -> str:
    """The docstring of `Model.compile`, listing the names the registries accept now."""
    optimizers = ", ".join(f'"{n}"' for n in optim_mod.OPTIMIZERS)
    return f"""Set the optimizer, the loss and the metrics; returns the model.

        optimizer: an nnx optimizer object (nnx.Adam(1e-3), ...) or a name (default settings):
{_wrap(optimizers)}
        loss: a loss object (nnx.losses.CategoricalCrossentropy(from_logits=False), ...) or a
            name, with what the model's output must be:
{_wrap(losses_mod.names())}
            Keras's names ("categorical_crossentropy", "sparse_categorical_crossentropy",
            "binary_crossentropy") take probabilities: end the model with softmax / sigmoid,
            and the loss is computed from the values before it by the fused, stable kernel.
        metrics: None (accuracy for classification losses, nothing for the others), or a
            list of names and nnx.metrics objects (e.g. nnx.metrics.TopKAccuracy(k=3)):
{_wrap(metrics_mod.names())}
            Each is reported under its name in the history (val_<name> on validation data),
            weighted by sample_weight.

        Everything is validated before the model changes, so a failed compile leaves the
        previous one in place; a loss that cannot make sense of the model's output (e.g. a
        probability loss after a linear layer, a from-logits loss after softmax) is refused
        with the fix. A model whose input sizes are still to be inferred can be compiled: its
        optimizer state is allocated when it is built."""
