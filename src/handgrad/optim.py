"""Optimizers that read the hand-written gradients in `.g` and update parameters in place.

Each follows its torch.optim counterpart's arithmetic (tests compare them step by step).
`lr` (and `momentum`, the SGD momentum or Adam's beta1) are plain attributes a
schedule may change between steps; `state_dict()` holds everything needed to resume.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor

from .module import Parameter


class Optimizer:
    def __init__(self, params: Iterable[Parameter], lr: float) -> None:
        self.params = list(params)
        if not lr > 0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        self.lr = lr
        self.steps = 0
        self.state: list[dict[str, Tensor]] = [{} for _ in self.params]

    def zero_grad(self) -> None:
        """Set every `.g` to None (the parameter keeps its buffer; the next backward writes into it)."""
        for p in self.params:
            p.g = None

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        for p, state in zip(self.params, self.state):
            if p.g is not None:
                self.update(p, p.g, state)

    def update(self, p: Tensor, g: Tensor, state: dict[str, Tensor]) -> None:
        raise NotImplementedError

    # Hyper-parameters a schedule may change, saved with the state.
    hyper: tuple[str, ...] = ("lr",)

    def state_dict(self) -> dict:
        return {"steps": self.steps, "hyper": {k: getattr(self, k) for k in self.hyper},
                "state": [{k: v.clone() for k, v in s.items()} for s in self.state]}

    def load_state_dict(self, state: dict) -> None:
        if len(state["state"]) != len(self.params):
            raise ValueError(f"optimizer state holds {len(state['state'])} parameters, the model has "
                             f"{len(self.params)}")
        self.steps = int(state["steps"])
        for k, v in state["hyper"].items():
            setattr(self, k, v)
        self.state = [{k: v.to(p.device) for k, v in s.items()} for s, p in zip(state["state"], self.params)]


class SGD(Optimizer):
    """Stochastic gradient descent, as torch.optim.SGD computes it:

        d = g + weight_decay * p
        b = momentum * b + d          (b = d on the first step)
        d = d + momentum * b if nesterov else b
        p = p - lr * d
    """

    hyper = ("lr", "momentum")

    def __init__(self, params: Iterable[Parameter], lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False) -> None:
        super().__init__(params, lr)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight decay must be >= 0, got {weight_decay}")
        if nesterov and momentum == 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.momentum, self.weight_decay, self.nesterov = momentum, weight_decay, nesterov

    @torch.no_grad()
    def step(self) -> None:
        """The formula above for all parameters at once (torch's multi-tensor `_foreach` kernels)."""
        self.steps += 1
        live = [i for i, p in enumerate(self.params) if p.g is not None]
        if not live:
            return
        ps = [self.params[i] for i in live]
        ds = [p.g for p in ps]
        if self.weight_decay:
            ds = torch._foreach_add(ds, ps, alpha=self.weight_decay)
        if self.momentum:
            states = [self.state[i] for i in live]
            old = [k for k, st in enumerate(states) if "momentum_buffer" in st]
            if old:
                bufs = [states[k]["momentum_buffer"] for k in old]
                torch._foreach_mul_(bufs, self.momentum)
                torch._foreach_add_(bufs, [ds[k] for k in old])
            for k, st in enumerate(states):
                if "momentum_buffer" not in st:  # b = d on a parameter's first step
                    st["momentum_buffer"] = ds[k].clone()
            bufs = [st["momentum_buffer"] for st in states]
            ds = torch._foreach_add(ds, bufs, alpha=self.momentum) if self.nesterov else bufs
        torch._foreach_add_(ps, ds, alpha=-self.lr)


class Adam(Optimizer):
    """Adam, as torch.optim.Adam computes it (weight decay added to the gradient, L2 style):

        m = b1 m + (1 - b1) g,   v = b2 v + (1 - b2) g^2
        p = p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    """

    hyper = ("lr", "momentum")
    decoupled = False

    def __init__(self, params: Iterable[Parameter], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr)
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if weight_decay < 0:
            raise ValueError(f"weight decay must be >= 0, got {weight_decay}")
        self.momentum, self.beta2, self.eps, self.weight_decay = betas[0], betas[1], eps, weight_decay

    def update(self, p: Tensor, g: Tensor, state: dict[str, Tensor]) -> None:
        if self.weight_decay:
            if self.decoupled:
                p.mul_(1 - self.lr * self.weight_decay)
            else:
                g = g.add(p, alpha=self.weight_decay)
        if not state:
            state["step"] = torch.zeros(())
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        t = float(state["step"])
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.lerp_(g, 1 - self.momentum)
        v.mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
        step_size = self.lr / (1 - self.momentum ** t)
        denom = (v.sqrt() / math.sqrt(1 - self.beta2 ** t)).add_(self.eps)
        p.addcdiv_(m, denom, value=-step_size)


class AdamW(Adam):
    """Adam with decoupled weight decay (torch.optim.AdamW): p = p (1 - lr wd) before the Adam step."""

    decoupled = True

    def __init__(self, params: Iterable[Parameter], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2) -> None:
        super().__init__(params, lr, betas, eps, weight_decay)


@torch.no_grad()
def clip_grad_norm(params: Iterable[Parameter], max_norm: float) -> float:
    """Scale every `.g` by min(1, max_norm / (norm + 1e-6)), the norm over all gradients (as torch's
    clip_grad_norm_); returns the norm before clipping."""
    grads = [p.g for p in params if p.g is not None]
    if not grads:
        return 0.0
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef)
    return float(total)
