"""nnx layers: one layer per file; each calls the backend's ops and nothing else."""

from .activations import GELU, Activation, Identity, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from .attention import MultiHeadSelfAttention, PositionalEmbedding
from .base import LAYER_CLASSES, Layer, ParamSpec, layer_from_dict, layer_to_dict
from .compose import Parallel, Residual
from .container import Chain
from .dense import Dense
from .dropout import Dropout
from .embedding import Embedding
from .flatten import Flatten
from .gru import GRU
from .lstm import LSTM
from .sequence_pool import GlobalAveragePooling1D, SequencePool
from .simple_rnn import RecurrentLayer, SimpleRNN
from .transformer import TransformerEncoderBlock

__all__ = [
    "Embedding", "GRU", "GlobalAveragePooling1D", "LSTM", "MultiHeadSelfAttention", "Parallel",
    "PositionalEmbedding", "RecurrentLayer", "Residual", "SequencePool", "SimpleRNN",
    "TransformerEncoderBlock",
    "Activation", "Chain", "Dense", "Dropout", "Flatten", "GELU", "Identity", "LAYER_CLASSES",
    "Layer", "LeakyReLU", "ParamSpec", "ReLU", "Sigmoid", "Softmax", "Tanh", "layer_from_dict",
    "layer_to_dict",
]
