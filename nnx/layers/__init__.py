"""nnx layers: one layer per file; each calls the backend's ops and nothing else."""

from .activations import (
    GELU,
    Activation,
    Identity,
    LeakyReLU,
    LogSoftmax,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
)
from .attention import MultiHeadSelfAttention
from .avg_pool import AvgPool2D
from .avg_pool1d import AvgPool1D
from .base import LAYER_CLASSES, Layer, ParamSpec, layer_from_dict, layer_to_dict
from .batchnorm import BatchNorm1d, BatchNorm2d
from .compose import Parallel, Residual
from .container import Chain
from .conv1d import Conv1D
from .conv2d import Conv2D
from .dense import Dense
from .dropout import Dropout
from .embedding import Embedding
from .flatten import Flatten
from .global_avg_pool import GlobalAvgPool2D
from .global_avg_pool1d import GlobalAvgPool1D
from .gru import GRU
from .layernorm import LayerNorm
from .lstm import LSTM
from .max_pool import MaxPool2D
from .max_pool1d import MaxPool1D
from .positional import PositionalEmbedding
from .recurrent import RecurrentLayer
from .reshape import Reshape
from .sampling import Sampling as Sampling
from .sequence_pool import GlobalAveragePooling1D, SequencePool
from .simple_rnn import SimpleRNN
from .sync_batchnorm import SyncBatchNorm as SyncBatchNorm
from .transformer import TransformerEncoderBlock

__all__ = [
    "AvgPool2D", "BatchNorm1d", "BatchNorm2d", "Conv2D", "GlobalAvgPool2D", "LayerNorm",
    "MaxPool2D", "Reshape",
    "AvgPool1D", "Conv1D", "GlobalAvgPool1D", "MaxPool1D",
    "Embedding", "GRU", "GlobalAveragePooling1D", "LSTM", "MultiHeadSelfAttention", "Parallel",
    "PositionalEmbedding", "RecurrentLayer", "Residual", "SequencePool", "SimpleRNN",
    "TransformerEncoderBlock",
    "Activation", "Chain", "Dense", "Dropout", "Flatten", "GELU", "Identity", "LAYER_CLASSES",
    "Layer", "LeakyReLU", "LogSoftmax", "ParamSpec", "ReLU", "Sigmoid", "Softmax", "Tanh",
    "layer_from_dict", "layer_to_dict",
]
