"""PyTorch interop: the same model in torch.nn, weights carried both ways."""

from __future__ import annotations

from torch import nn

from .layers import Linear, LogSoftmax, ReLU
from .module import Module, Sequential


def to_torch(module: Module) -> nn.Module:
    """The torch.nn twin of a handgrad model, holding copies of its weights (torch's layout)."""
    if isinstance(module, Linear):
        w = module.weight
        twin = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                         dtype=w.dtype, device=w.device)
    elif isinstance(module, ReLU):
        return nn.ReLU()
    elif isinstance(module, LogSoftmax):
        return nn.LogSoftmax(dim=module.dim)
    elif isinstance(module, Sequential):
        return nn.Sequential(*(to_torch(layer) for layer in module))
    else:
        raise TypeError(f"no torch.nn twin for {type(module).__name__}")
    twin.load_state_dict(module.state_dict())
    return twin


def from_torch(module: nn.Module) -> Module:
    """A handgrad model equal to a torch.nn one (Linear, ReLU, LogSoftmax, Sequential), weights copied."""
    if isinstance(module, nn.Linear):
        w = module.weight
        layer = Linear(module.in_features, module.out_features, bias=module.bias is not None,
                       dtype=w.dtype, device=w.device)
        layer.load_state_dict(module.state_dict())
        return layer
    if isinstance(module, nn.ReLU):
        return ReLU()
    if isinstance(module, nn.LogSoftmax):
        return LogSoftmax(dim=module.dim if module.dim is not None else -1)
    if isinstance(module, nn.Sequential):
        return Sequential(*(from_torch(m) for m in module))
    raise TypeError(f"no handgrad equivalent for torch module {type(module).__name__}")


__all__ = ["from_torch", "to_torch"]
