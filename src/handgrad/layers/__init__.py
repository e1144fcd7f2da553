"""Layers, one file per family."""

from .activation import LogSoftmax, ReLU
from .linear import Linear

__all__ = ["Linear", "LogSoftmax", "ReLU"]
