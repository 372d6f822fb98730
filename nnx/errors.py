"""nnx's exception types. Each message names the argument or layer, the expected and the
actual value; the types subclass the builtin a caller would catch anyway."""


class NNXError(Exception):
    """Base class of nnx's own errors."""


class BackendUnavailableError(NNXError, RuntimeError):
    """A backend was asked for that cannot run on this machine."""


class UnknownNameError(NNXError, ValueError):
    """An unknown activation, loss, optimizer, initializer, layer or backend name."""


class ShapeError(NNXError, ValueError):
    """An input or weight of the wrong shape."""


class InputError(NNXError, ValueError):
    """Invalid input values: NaN/inf, labels out of range, wrong dtype."""


class CheckpointError(NNXError, ValueError):
    """A corrupt, truncated or invalid checkpoint file."""


class DeviceOutOfMemoryError(NNXError, MemoryError):
    """The GPU ran out of memory; says how many bytes were asked for."""

    def __init__(self, message: str, requested_bytes: int | None = None):
        super().__init__(message)
        self.requested_bytes = requested_bytes


class TrainingDivergedError(NNXError, FloatingPointError):
    """The training loss became NaN or infinite."""


def unknown(kind: str, name, known) -> UnknownNameError:
    """An UnknownNameError for `name` of `kind` (e.g. 'optimizer'), listing the `known` names,
    sorted. Returns it (the caller raises)."""
    return UnknownNameError(f"unknown {kind} {name!r}; expected one of: {', '.join(sorted(known))}")
