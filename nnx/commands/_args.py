"""What the `nnx` subcommands share: argument types that refuse invalid values while the command
line is parsed, destination checks, and the zoo-model options.

The rule of the CLI: an invalid value is refused before any work (no model built, no data read,
no benchmark run), with one line naming the flag and exit code 2. Argument types below raise
`argparse.ArgumentTypeError`, which argparse reports as ``argument --flag: message``; checks
that need more than one value (the model's options) or touch the file system (destinations) run
first thing in `run(args)` and raise `UsageError`, which `nnx.cli.main` reports the same way.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
from pathlib import Path

MAX_SEED = 2**63 - 1
MAX_HIDDEN = 1 << 16  # units per hidden layer: beyond this the zoo models only exhaust memory


class UsageError(Exception):
    """A command-line value refused before any work: exit code 2, one line.

    ``prog`` is the parser's name ("nnx train"), filled in by the parser or by `nnx.cli`."""

    def __init__(self, message: str, prog: str | None = None):
        super().__init__(message)
        self.prog = prog


def int_range(lo: int, hi: int | None = None):
    """Type: a base-10 integer in [lo, hi] (hi None: no upper bound)."""
    want = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"expected {want}, got {value}")
        return value

    return parse


def float_range(lo: float, hi: float | None = None, lo_open: bool = False, hi_open: bool = False):
    """Type: a finite float in the interval (open or closed at each end; hi None: unbounded)."""
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    want = f"a finite number in {left}{lo:g}, {'inf)' if hi is None else f'{hi:g}{right}'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        bad = not math.isfinite(value) or value < lo or (lo_open and value == lo)
        if hi is not None:
            bad = bad or value > hi or (hi_open and value == hi)
        if bad:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}")
        return value

    return parse


POSITIVE_INT = int_range(1)
SEED = int_range(0, MAX_SEED)
LEARNING_RATE = float_range(0.0, lo_open=True)
DROPOUT = float_range(0.0, 1.0, hi_open=True)
NON_NEGATIVE = float_range(0.0)
POSITIVE = float_range(0.0, lo_open=True)


def hidden_sizes(text: str) -> tuple[int, ...]:
    """Type: comma-separated layer sizes, e.g. "512,256"; each in [1, MAX_HIDDEN]."""
    want = f"comma-separated sizes in [1, {MAX_HIDDEN}] such as 512,256"
    parts = text.split(",")
    if not text.strip() or any(not p.strip() for p in parts):
        raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}")
    sizes = []
    for p in parts:
        try:
            size = int(p, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        if not 1 <= size <= MAX_HIDDEN:
            raise argparse.ArgumentTypeError(f"expected {want}, got {size} in {text!r}")
        sizes.append(size)
    return tuple(sizes)


MNIST_INPUTS = ("image", "flat", "rows")  # the zoo INPUT kinds that `load_data` provides


def _zoo_model(text: str, kinds: tuple, what: str) -> str:
    from nnx import models

    names = models.names()
    if text not in names:
        raise argparse.ArgumentTypeError(
            f"unknown model {text!r}; expected one of: {', '.join(names)}"
        )
    kind = getattr(models.get(text), "INPUT", None)
    if kind not in kinds:
        usable = [n for n in names if getattr(models.get(n), "INPUT", None) in kinds]
        raise argparse.ArgumentTypeError(
            f"model {text!r} reads {kind!r} data, not {what}; this command trains: "
            f"{', '.join(usable)}"
        )
    return text


def zoo_model_name(text: str) -> str:
    """Type: a zoo model `nnx train` can feed: MNIST models, and text models (INPUT "text"),
    which it routes to nnx/commands/train_text.py."""
    return _zoo_model(text, (*MNIST_INPUTS, "text"), "MNIST or text")


def model_name(text: str) -> str:
    """Type: a model of the zoo (nnx/models/) that trains on MNIST (what `nnx profile` feeds
    it); a model of other data (a text model) is refused by name, rather than fed digits it
    cannot read."""
    return _zoo_model(text, MNIST_INPUTS, "MNIST")


def backend_name(text: str) -> str:
    """Type: a backend that is registered and available on this machine."""
    from nnx.backend import available_backends, backend_module, backend_names

    if text not in backend_names():
        raise argparse.ArgumentTypeError(
            f"unknown backend {text!r}; expected one of: {', '.join(backend_names())}"
        )
    mod = backend_module(text)
    if not mod.is_available():
        raise argparse.ArgumentTypeError(
            f"backend {text!r} is not available here: {mod.unavailable_reason()}. Available: "
            f"{', '.join(available_backends())}. To install it: {mod.INSTALL_HINT}"
        )
    return text


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _make_dir(flag: str, path: Path) -> None:
    """Create directory path (and its parents), or UsageError saying why it cannot be."""
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise UsageError(f"argument {flag}: directory {path} is not writable")
        return
    base = _nearest_existing(path)
    if not base.is_dir():
        raise UsageError(f"argument {flag}: cannot create directory {path}: {base} is not a "
                         "directory")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UsageError(f"argument {flag}: cannot create directory {path}: {base} is not "
                         "writable")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"argument {flag}: cannot create directory {path}: {exc}") from exc


def file_destination(flag: str, path: str) -> str:
    """Check, before any work, that a file can be written at path; creates missing parent
    directories (so that `--save runs/today/model.npz` works). Returns path unchanged.

    Refused (UsageError): path is a directory, a parent is not a directory or not writable,
    the existing file is not writable."""
    p = Path(path)
    if not path or p.is_dir():
        raise UsageError(f"argument {flag}: {path!r} is a directory; expected a file path")
    _make_dir(flag, p.parent if str(p.parent) else Path("."))
    if p.exists() and not os.access(p, os.W_OK):
        raise UsageError(f"argument {flag}: {path} exists and is not writable")
    return path


def dir_destination(flag: str, path: str) -> str:
    """Check, before any work, that path is (or can be made) a writable directory; creates it."""
    if not path:
        raise UsageError(f"argument {flag}: expected a directory, got ''")
    _make_dir(flag, Path(path))
    return path


def model_options(zoo, name: str, hidden: tuple[int, ...] | None,
                  dropout: float | None) -> dict:
    """The zoo builder's keyword options for --hidden and --dropout, or UsageError when the model
    has no such option (a flag is never silently ignored). A model whose `hidden` is one size
    takes exactly one; the MLP takes one per layer."""
    params = inspect.signature(zoo.build).parameters
    options = {}
    if hidden is not None:
        if "hidden" not in params:
            raise UsageError(f"argument --hidden: model {name!r} has no hidden-size option")
        if isinstance(params["hidden"].default, tuple):
            options["hidden"] = hidden
        elif len(hidden) != 1:
            raise UsageError(f"argument --hidden: model {name!r} takes one hidden size, got "
                             f"{len(hidden)} ({','.join(map(str, hidden))})")
        else:
            options["hidden"] = hidden[0]
    if dropout is not None:
        if "dropout" not in params:
            raise UsageError(f"argument --dropout: model {name!r} has no dropout option")
        options["dropout"] = dropout
    return options
