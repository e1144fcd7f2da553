"""Layers, one file per family, named as in torch.nn."""

from .activation import GELU, GeneralRelu, LeakyReLU, LogSoftmax, ReLU, Sigmoid, SiLU, Softmax, Tanh
from .conv import Conv2d
from .dropout import Dropout
from .embedding import Embedding
from .fused_output import LinearCrossEntropy
from .attention import MultiheadAttention
from .checkpoint import Recompute
from .linear import Linear, TiedLinear
from .normalization import BatchNorm1d, BatchNorm2d, LayerNorm
from .pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d
from .recurrent import LSTM, RNN
from .residual import Residual, conv_bn, res_block
from .shape import Flatten, Unflatten

__all__ = [
    "AdaptiveAvgPool2d", "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "Conv2d", "Dropout", "Embedding", "Flatten",
    "GELU", "GeneralRelu", "LSTM", "LayerNorm", "LeakyReLU", "Linear", "LinearCrossEntropy", "LogSoftmax", "MaxPool2d",
    "MultiheadAttention", "RNN", "ReLU", "Recompute", "Residual", "SiLU", "Sigmoid", "Softmax", "Tanh", "TiedLinear", "Unflatten", "conv_bn", "res_block",
]
