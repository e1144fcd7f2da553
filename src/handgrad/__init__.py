"""handgrad: neural networks whose every backward pass is written by hand, on PyTorch tensors."""

import os

# torch's profiler (kineto), with which `handgrad bench` measures memory on the CPU, writes lines to stderr
# each time it starts and stops unless its log level, read once as torch loads, is above all of its levels.
# A level set by the user is kept.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")

from . import check, functional, init, interop, models
from .course import Lin, LinearLayer, Model, Mse, Relu
from .layers import (GELU, AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Dropout, Embedding, Flatten,
                     GeneralRelu, LayerNorm, LeakyReLU, Linear, LogSoftmax, LSTM, MaxPool2d, MultiheadAttention, ReLU,
                     Residual, RNN,
                     Sigmoid, SiLU, Softmax, Tanh, TiedLinear, Unflatten, conv_bn, res_block)
from .losses import CrossEntropyLoss, MSELoss, NLLLoss, TokenCrossEntropyLoss
from .allocator import keep_freed_memory
from .fused import FusedStep, training_step
from .graph import draw
from .module import Module, Parameter, Sequential, WithLoss, add_grad, lean
from .optim import SGD, Adam, AdamW

__version__ = "0.1.0"

__all__ = [
    "GELU", "AdaptiveAvgPool2d", "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "Conv2d", "Dropout", "Embedding",
    "Flatten", "GeneralRelu", "LayerNorm", "LeakyReLU", "LSTM", "MaxPool2d", "MultiheadAttention", "RNN", "Residual",
    "Sigmoid", "SiLU",
    "Softmax", "Tanh",
    "TiedLinear",
    "Unflatten", "conv_bn", "res_block",
    "CrossEntropyLoss", "Lin", "Linear", "LinearLayer", "Model", "LogSoftmax", "MSELoss", "Module", "Mse", "NLLLoss", "Parameter", "TokenCrossEntropyLoss",
    "ReLU", "Relu", "SGD", "Sequential", "WithLoss", "add_grad", "check", "functional", "init", "interop", "models",
    "Adam", "AdamW", "FusedStep", "draw", "keep_freed_memory", "lean", "training_step",
]
