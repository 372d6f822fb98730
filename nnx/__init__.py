"""nnx: one backend abstraction, the same layers on NumPy, Numba and CuPy.

import nnx
model = nnx.Sequential([nnx.Dense(784, 256, "relu"), nnx.Dense(256, 10)], backend="numba")
model.compile(nnx.Adam(1e-3), "softmax_cross_entropy", ["accuracy"])
model.fit(x, y, epochs=5, batch_size=128)
"""

# isort: off
from . import compat  # noqa: F401  (first: thread settings before NumPy loads its BLAS)
# isort: on
from . import (
    callbacks,
    datasets,
    distributed,
    hooks,
    initializers,
    interop,
    layers,
    losses,
    metrics,
    models,
    optim,
    preprocessing,
    profile,
    regularizers,
    text,
)
from .backend import (
    available_backends,
    backend_names,
    get_backend,
    get_ops,
    register_backend,
    set_backend,
    use_backend,
)
from .callbacks import EarlyStopping, History, ModelCheckpoint, ProgressBar
from .errors import (
    BackendUnavailableError,
    CheckpointError,
    DeviceOutOfMemoryError,
    InputError,
    NNXError,
    ShapeError,
    TrainingDivergedError,
    UnknownNameError,
)
from .hooks import StepHooks
from .layers import *  # noqa: F403
from .layers import __all__ as _layer_names
from .layers.sampling import Sampling as Sampling
from .model import Model, Sequential, load
from .optim import SGD, Adadelta, Adagrad, Adam, AdamW, CosineDecay, RMSprop, StepDecay
from .regularizers import L1, L1L2, L2

__version__ = "0.1.0"

__all__ = [
    *_layer_names,
    "Adadelta",
    "Adagrad",
    "Adam",
    "AdamW",
    "BackendUnavailableError",
    "CheckpointError",
    "CosineDecay",
    "DeviceOutOfMemoryError",
    "EarlyStopping",
    "History",
    "InputError",
    "L1",
    "L1L2",
    "L2",
    "Model",
    "ModelCheckpoint",
    "NNXError",
    "ProgressBar",
    "RMSprop",
    "SGD",
    "StepHooks",
    "Sequential",
    "ShapeError",
    "StepDecay",
    "TrainingDivergedError",
    "UnknownNameError",
    "available_backends",
    "backend_names",
    "callbacks",
    "datasets",
    "distributed",
    "get_backend",
    "get_ops",
    "hooks",
    "initializers",
    "interop",
    "layers",
    "load",
    "losses",
    "metrics",
    "models",
    "optim",
    "preprocessing",
    "profile",
    "regularizers",
    "register_backend",
    "text",
    "set_backend",
    "use_backend",
]
