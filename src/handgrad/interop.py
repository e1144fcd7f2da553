"""PyTorch interop: the same model in torch.nn, weights (and running statistics) carried both ways."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from . import layers as L
from .module import Module, Sequential


class TorchResidual(nn.Module):
    """torch.nn twin of handgrad's Residual: body(x) + shortcut(x)."""

    def __init__(self, body: nn.Module, shortcut: nn.Module | None = None) -> None:
        super().__init__()
        self.body, self.shortcut = body, shortcut

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + (x if self.shortcut is None else self.shortcut(x))


class TorchGeneralRelu(nn.Module):
    """torch.nn twin of the course's GeneralRelu."""

    def __init__(self, leak: float | None = None, sub: float | None = None, maxv: float | None = None) -> None:
        super().__init__()
        self.leak, self.sub, self.maxv = leak, sub, maxv

    def forward(self, x: Tensor) -> Tensor:
        x = nn.functional.leaky_relu(x, self.leak) if self.leak is not None else nn.functional.relu(x)
        if self.sub is not None:
            x = x - self.sub
        return x.clamp_max(self.maxv) if self.maxv is not None else x


def _bn_to_torch(m: L.BatchNorm1d | L.BatchNorm2d) -> nn.Module:
    cls = nn.BatchNorm1d if isinstance(m, L.BatchNorm1d) else nn.BatchNorm2d
    return cls(m.num_features, m.eps, m.momentum, affine=m.weight is not None)


def _bn_from_torch(m: nn.BatchNorm1d | nn.BatchNorm2d) -> Module:
    cls = L.BatchNorm1d if isinstance(m, nn.BatchNorm1d) else L.BatchNorm2d
    if m.momentum is None:
        raise TypeError("BatchNorm with momentum=None (cumulative average) has no handgrad equivalent")
    return cls(m.num_features, m.eps, m.momentum, affine=m.affine)


# handgrad class -> builder of the torch.nn module with the same structure (weights loaded afterwards)
_TO_TORCH: dict[type, Callable[[Module], nn.Module]] = {
    L.Linear: lambda m: nn.Linear(m.in_features, m.out_features, bias=m.bias is not None),
    L.Conv2d: lambda m: nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                                  m.groups, bias=m.bias is not None),
    L.BatchNorm1d: _bn_to_torch,
    L.BatchNorm2d: _bn_to_torch,
    L.LayerNorm: lambda m: nn.LayerNorm(m.normalized_shape, m.eps, elementwise_affine=m.weight is not None,
                                        bias=m.bias is not None),
    L.Embedding: lambda m: nn.Embedding(m.num_embeddings, m.embedding_dim, m.padding_idx),
    L.MaxPool2d: lambda m: nn.MaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation),
    L.AvgPool2d: lambda m: nn.AvgPool2d(m.kernel_size, m.stride, m.padding),
    L.AdaptiveAvgPool2d: lambda m: nn.AdaptiveAvgPool2d(m.output_size),
    L.Flatten: lambda m: nn.Flatten(m.start_dim, m.end_dim),
    L.Unflatten: lambda m: nn.Unflatten(m.dim, m.sizes),
    L.Dropout: lambda m: nn.Dropout(m.p),
    L.ReLU: lambda m: nn.ReLU(),
    L.LeakyReLU: lambda m: nn.LeakyReLU(m.negative_slope),
    L.GeneralRelu: lambda m: TorchGeneralRelu(m.leak, m.sub, m.maxv),
    L.GELU: lambda m: nn.GELU(m.approximate),
    L.Sigmoid: lambda m: nn.Sigmoid(),
    L.Tanh: lambda m: nn.Tanh(),
    L.SiLU: lambda m: nn.SiLU(),
    L.Softmax: lambda m: nn.Softmax(m.dim),
    L.LogSoftmax: lambda m: nn.LogSoftmax(m.dim),
    Sequential: lambda m: nn.Sequential(*(_structure_to_torch(c) for c in m)),
    L.Residual: lambda m: TorchResidual(_structure_to_torch(m.body),
                                        None if m.shortcut is None else _structure_to_torch(m.shortcut)),
}

_FROM_TORCH: dict[type, Callable[[nn.Module], Module]] = {
    nn.Linear: lambda m: L.Linear(m.in_features, m.out_features, bias=m.bias is not None),
    nn.Conv2d: lambda m: L.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                                  m.groups, bias=m.bias is not None),
    nn.BatchNorm1d: _bn_from_torch,
    nn.BatchNorm2d: _bn_from_torch,
    nn.LayerNorm: lambda m: L.LayerNorm(m.normalized_shape, m.eps, elementwise_affine=m.elementwise_affine,
                                        bias=m.bias is not None),
    nn.Embedding: lambda m: L.Embedding(m.num_embeddings, m.embedding_dim, m.padding_idx),
    nn.MaxPool2d: lambda m: L.MaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation),
    nn.AvgPool2d: lambda m: L.AvgPool2d(m.kernel_size, m.stride, m.padding),
    nn.AdaptiveAvgPool2d: lambda m: L.AdaptiveAvgPool2d(m.output_size),
    nn.Flatten: lambda m: L.Flatten(m.start_dim, m.end_dim),
    nn.Unflatten: lambda m: L.Unflatten(m.dim, m.unflattened_size),
    nn.Dropout: lambda m: L.Dropout(m.p),
    nn.ReLU: lambda m: L.ReLU(),
    nn.LeakyReLU: lambda m: L.LeakyReLU(m.negative_slope),
    TorchGeneralRelu: lambda m: L.GeneralRelu(m.leak, m.sub, m.maxv),
    nn.GELU: lambda m: L.GELU(m.approximate),
    nn.Sigmoid: lambda m: L.Sigmoid(),
    nn.Tanh: lambda m: L.Tanh(),
    nn.SiLU: lambda m: L.SiLU(),
    nn.Softmax: lambda m: L.Softmax(m.dim if m.dim is not None else -1),
    nn.LogSoftmax: lambda m: L.LogSoftmax(m.dim if m.dim is not None else -1),
    nn.Sequential: lambda m: Sequential(*(_structure_from_torch(c) for c in m)),
    TorchResidual: lambda m: L.Residual(_structure_from_torch(m.body),
                                        None if m.shortcut is None else _structure_from_torch(m.shortcut)),
}


def _structure_to_torch(m: Module) -> nn.Module:
    build = _TO_TORCH.get(type(m))
    if build is None:
        raise TypeError(f"no torch.nn twin for {type(m).__name__}")
    return build(m)


def _structure_from_torch(m: nn.Module) -> Module:
    build = _FROM_TORCH.get(type(m))
    if build is None:
        raise TypeError(f"no handgrad equivalent for torch module {type(m).__name__}")
    return build(m)


def _first_tensor(tensors: list[Tensor]) -> tuple[torch.dtype | None, torch.device | None]:
    return (tensors[0].dtype, tensors[0].device) if tensors else (None, None)


def to_torch(module: Module) -> nn.Module:
    """The torch.nn twin of a handgrad model: same structure, copies of its weights and buffers, same mode."""
    twin = _structure_to_torch(module)
    dtype, device = _first_tensor(module.parameters())
    twin.to(device=device, dtype=dtype)
    twin.load_state_dict(module.state_dict())
    twin.train(module.training)
    return twin


def from_torch(module: nn.Module) -> Module:
    """A handgrad model equal to a torch.nn one: same structure, copies of its weights and buffers, same mode."""
    model = _structure_from_torch(module)
    dtype, device = _first_tensor(list(module.parameters()))
    model.to(device=device, dtype=dtype)
    model.load_state_dict(module.state_dict())
    model.train(module.training)
    return model


__all__ = ["TorchGeneralRelu", "TorchResidual", "from_torch", "to_torch"]


# ------------------------------------------------------------------ handgrad layers inside torch.nn


class _HandgradFunction(torch.autograd.Function):
    """A torch.autograd.Function whose backward is the handgrad module's hand-written one."""

    @staticmethod
    def forward(ctx, module: Module, n_inputs: int, *tensors: Tensor) -> Tensor:  # type: ignore[override]
        inputs = [t.detach() for t in tensors[:n_inputs]]
        ctx.module, ctx.inputs, ctx.rng_state = module, inputs, torch.get_rng_state()
        return module(*inputs).detach()

    @staticmethod
    def backward(ctx, dy: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        module, inputs = ctx.module, ctx.inputs
        params = module.parameters()
        for p in params:
            p.g = None  # this call's contribution only: autograd accumulates into .grad itself
        if any(a is not x for a, x in zip(module.args, inputs)):
            # another forward ran since (gradcheck perturbing inputs): rebuild this one's saved state,
            # with the random numbers it drew (dropout masks)
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(ctx.rng_state)
                module(*inputs)
        module.reopen_backward()  # autograd may ask for several backward passes of one forward
        module.backward(dy.contiguous())
        d_inputs = [getattr(x, "g", None) if x.is_floating_point() else None for x in inputs]
        return (None, None, *d_inputs, *(p.g for p in params))


class TorchModule(nn.Module):
    """A handgrad Module running inside torch.nn: autograd calls its hand-written backward.

    The torch parameters share storage with the handgrad ones, so a torch optimizer
    trains the handgrad module, and `loss.backward()` fills `.grad` from its `.g`.
    """

    def __init__(self, module: Module) -> None:
        super().__init__()
        self.handgrad_module = module  # a plain attribute: not an nn.Module
        self.names = [n for n, _ in module.named_parameters()]
        self.params = nn.ParameterList([nn.Parameter(p.data) for p in module.parameters()])

    def forward(self, *inputs: Tensor) -> Tensor:
        m = self.handgrad_module
        m.train(self.training)
        for hp, tp in zip(m.parameters(), self.params):
            hp.data = tp.data  # follow .to(), .double() and in-place optimizer updates on the torch side
        return _HandgradFunction.apply(m, len(inputs), *inputs, *self.params)

    def extra_repr(self) -> str:
        return repr(self.handgrad_module)


def wrap(module: Module) -> TorchModule:
    """Use a handgrad Module (built-in or your own) as a torch.nn.Module trained by autograd."""
    return TorchModule(module)


__all__ += ["TorchModule", "wrap"]
