"""handgrad: neural networks whose every backward pass is written by hand, on PyTorch tensors."""

from . import check, functional, init, interop
from .aliases import Lin, Mse, Relu
from .layers import Linear, LogSoftmax, ReLU
from .losses import CrossEntropyLoss, MSELoss, NLLLoss
from .module import Module, Parameter, Sequential, WithLoss, add_grad
from .optim import SGD

__version__ = "0.1.0"

__all__ = [
    "CrossEntropyLoss", "Lin", "Linear", "LogSoftmax", "MSELoss", "Module", "Mse", "NLLLoss", "Parameter",
    "ReLU", "Relu", "SGD", "Sequential", "WithLoss", "add_grad", "check", "functional", "init", "interop",
]
