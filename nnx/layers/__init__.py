"""nnx layers: one layer per file; each calls the backend's ops and nothing else."""

from .activations import GELU, Activation, Identity, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from .base import LAYER_CLASSES, Layer, ParamSpec, layer_from_dict, layer_to_dict
from .container import Chain
from .dense import Dense
from .dropout import Dropout
from .flatten import Flatten

__all__ = [
    "Activation", "Chain", "Dense", "Dropout", "Flatten", "GELU", "Identity", "LAYER_CLASSES",
    "Layer", "LeakyReLU", "ParamSpec", "ReLU", "Sigmoid", "Softmax", "Tanh", "layer_from_dict",
    "layer_to_dict",
]
