"""Optimizers that read the hand-written gradients in `.g` and update parameters in place.

Each follows its torch.optim counterpart's arithmetic (tests compare them step by step), with torch-style
parameter groups: `opt.param_groups` is a list of dicts, each holding its 'params' and its own
hyper-parameters. `lr` and `momentum` (the SGD momentum or Adam's beta1) are properties a schedule may
set between steps (see `Optimizer`); `state_dict()` holds everything needed to resume.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from .module import Parameter


def _real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _like_param(v: Tensor, p: Tensor) -> Tensor:
    """A state tensor on its parameter's device, and in its dtype when it is per element (momentum, moments;
    not a step count)."""
    per_element = v.shape == p.shape and v.is_floating_point()
    return v.to(device=p.device, dtype=p.dtype if per_element else None)


class Optimizer:
    """Base of the optimizers: parameter groups, the step loop, the state to save and load.

    `params` is an iterable of Parameters (one group) or a list of dicts, each with 'params' and any of
    the optimizer's options (`options`); options a group leaves out take the constructor's values. A
    parameter listed twice in a group is stepped once; one in two groups is an error.

    `opt.lr`, `opt.momentum`, `opt.weight_decay` read group 0. `opt.lr = v` sets every group's lr to v
    times its initial ratio to group 0's (a schedule drives all groups, as torch's LambdaLR does);
    `opt.momentum = m` and `opt.weight_decay = w` set every group's.
    """

    # the options a parameter group may set besides 'params' (subclasses name theirs)
    options: tuple[str, ...] = ("lr", "weight_decay")

    def __init__(self, params: Iterable[Parameter] | Iterable[dict[str, Any]], defaults: dict[str, Any]) -> None:
        self.defaults = self._checked(defaults, "")
        self.param_groups: list[dict[str, Any]] = []
        seen: dict[int, int] = {}  # id(parameter) -> the group that has it
        for gi, group in enumerate(self._group_dicts(params)):
            where = f"{type(self).__name__} parameter group {gi}"
            plist = self._param_list(group["params"], where, lone_ok=True)
            unique = []
            for j, p in enumerate(plist):
                if not isinstance(p, Parameter) and not (isinstance(p, torch.Tensor) and p.is_floating_point()
                                                          and not p.requires_grad):
                    # (a plain floating tensor is a seeds'-form layer's parameter: `self.w = w`)
                    raise ValueError(f"{where}, entry {j}: expected a handgrad Parameter, got {type(p).__name__}")
                first = seen.get(id(p))
                if first is None:
                    seen[id(p)] = gi
                    unique.append(p)
                elif first != gi:
                    raise ValueError(f"{where}, entry {j}: parameter (shape {list(p.shape)}) appears in groups "
                                     f"{first} and {gi}; expected each parameter in one group")
                # else listed again in this group (tied weights): kept at its first place, stepped once
            opts = {k: group.get(k, self.defaults[k]) for k in self.options}
            self.param_groups.append({"params": unique, **self._checked(opts, where + ": ")})
        self.params: list[Parameter] = [p for g in self.param_groups for p in g["params"]]
        lr0 = self.param_groups[0]["lr"]
        # each group's lr relative to group 0's, kept when a schedule sets `lr` (group 0's is exactly 1)
        self._lr_ratio = [1.0] + [g["lr"] / lr0 for g in self.param_groups[1:]]
        self.steps = 0
        self.state: list[dict[str, Tensor]] = [{} for _ in self.params]

    def _group_dicts(self, params: Any) -> list[dict[str, Any]]:
        """The groups as given: one {'params': ...} for a plain iterable; dicts checked for their keys."""
        name = type(self).__name__
        items = self._param_list(params, name)
        is_dict = [isinstance(x, dict) for x in items]
        if not any(is_dict):
            return [{"params": items}]
        if not all(is_dict):
            k = is_dict.index(not is_dict[0])
            raise ValueError(f"{name} expected all Parameters or all parameter-group dicts, got a "
                             f"{type(items[0]).__name__} at 0 and a {type(items[k]).__name__} at {k}")
        allowed = ("params", *self.options)
        for gi, group in enumerate(items):
            if "params" not in group:
                raise ValueError(f"{name} parameter group {gi}: expected a dict with 'params' and optional "
                                 f"{', '.join(self.options)}, got keys {sorted(group)}")
            unknown = [k for k in group if k not in allowed]
            if unknown:
                raise ValueError(f"{name} parameter group {gi}: unknown option {unknown[0]!r}, expected some "
                                 f"of {', '.join(allowed)}")
        return items

    @staticmethod
    def _param_list(params: Any, where: str, lone_ok: bool = False) -> list[Any]:
        """`params` as a list; a lone Parameter only where torch takes one (a group's 'params')."""
        if isinstance(params, Tensor) and lone_ok:
            return [params]
        # a set's order changes between runs (the saved state is matched to parameters by order); a lone
        # tensor or dict would be iterated over its rows or keys
        if isinstance(params, (Tensor, dict, set, frozenset, str)) or not isinstance(params, Iterable):
            raise ValueError(f"{where}: expected a list (or other ordered iterable) of Parameters"
                             f"{'' if lone_ok else ' or of parameter-group dicts'}, got a {type(params).__name__}")
        return list(params)

    def _checked(self, opts: dict[str, Any], where: str) -> dict[str, Any]:
        """`opts` with its values checked (ValueError naming the first bad one) and normalised."""
        out = dict(opts)
        lr = opts["lr"]
        if not (_real(lr) and lr > 0):
            raise ValueError(f"{where}learning rate must be positive, got {lr!r}")
        wd = opts["weight_decay"]
        if not (_real(wd) and wd >= 0):
            raise ValueError(f"{where}weight decay must be >= 0, got {wd!r}")
        out["lr"], out["weight_decay"] = float(lr), float(wd)
        return out

    def zero_grad(self) -> None:
        """Set every `.g` to None (the parameter keeps its buffer; the next backward writes into it)."""
        for p in self.params:
            p.g = None

    @torch.no_grad()
    def step(self) -> None:
        for k, p in enumerate(self.params):
            g = getattr(p, "g", None)
            if g is None:
                if "g" not in getattr(p, "__dict__", {}) and not isinstance(p, Parameter):
                    p.g = None  # a plain tensor that has had no gradient yet
            elif g.shape != p.shape:  # a broadcastable mistake (a bias gradient not summed) must not pass
                raise ValueError(f"{type(self).__name__}: parameter {k} (shape {list(p.shape)}) has a gradient of "
                                 f"shape {list(g.shape)}; expected the parameter's shape")
        for p, state in zip(self.params, self.state):  # the model moved or was cast (Module.to): state follows
            for name, v in state.items():
                if v.device != p.device or (v.dtype != p.dtype and v.shape == p.shape and v.is_floating_point()):
                    state[name] = _like_param(v, p)
        self.steps += 1
        start = 0
        for group in self.param_groups:
            n = len(group["params"])
            self._step_group(group, self.state[start:start + n])
            start += n

    def _step_group(self, group: dict[str, Any], states: list[dict[str, Tensor]]) -> None:
        """One group's update, with its own hyper-parameters; `states[k]` belongs to `group['params'][k]`."""
        for p, state in zip(group["params"], states):
            if p.g is not None:
                self.update(p, p.g, state, group)

    def update(self, p: Tensor, g: Tensor, state: dict[str, Tensor], group: dict[str, Any]) -> None:
        raise NotImplementedError

    # ---------------------------------------------------------------- what schedules set
    @property
    def lr(self) -> float:
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        for group, ratio in zip(self.param_groups, self._lr_ratio):
            group["lr"] = value * ratio

    @property
    def weight_decay(self) -> float:
        return self.param_groups[0]["weight_decay"]

    @weight_decay.setter
    def weight_decay(self, value: float) -> None:
        for group in self.param_groups:
            group["weight_decay"] = value

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """{"steps", "hyper": {"groups": [options, "n_params", "lr_ratio" per group]}, "state": one dict per
        parameter of `params`}; "hyper" is plain JSON (a checkpoint keeps it in its metadata)."""
        groups = [{**{k: list(g[k]) if isinstance(g[k], tuple) else g[k] for k in self.options},
                   "n_params": len(g["params"]), "lr_ratio": r} for g, r in zip(self.param_groups, self._lr_ratio)]
        return {"steps": self.steps, "hyper": {"groups": groups},
                "state": [{k: v.clone() for k, v in s.items()} for s in self.state]}

    def load_state_dict(self, state: dict) -> None:
        """Resume from `state_dict()`. Also loads the single-group format of earlier versions, {"steps",
        "hyper": {"lr", "momentum"}, "state"}: its values go through the `lr` / `momentum` setters."""
        name, hyper = type(self).__name__, state["hyper"]
        saved = hyper.get("groups")
        if saved is not None:
            if len(saved) != len(self.param_groups):
                raise ValueError(f"optimizer state holds {len(saved)} parameter groups, the {name} has "
                                 f"{len(self.param_groups)}")
            for gi, (s, g) in enumerate(zip(saved, self.param_groups)):
                if s.get("n_params") != len(g["params"]):
                    raise ValueError(f"optimizer state's parameter group {gi} holds {s.get('n_params')} parameters, "
                                     f"the {name}'s has {len(g['params'])}")
        if len(state["state"]) != len(self.params):
            raise ValueError(f"optimizer state holds {len(state['state'])} parameters, the model has "
                             f"{len(self.params)}")
        if saved is not None:
            options = []
            for gi, s in enumerate(saved):  # check everything before changing anything
                keys = sorted(k for k in s if k not in ("n_params", "lr_ratio"))
                if keys != sorted(self.options):
                    raise ValueError(f"optimizer state's parameter group {gi} has options {keys}, {name} expected "
                                     f"{sorted(self.options)}")
                options.append(self._checked({k: s[k] for k in self.options}, f"optimizer state's parameter "
                                             f"group {gi}: "))
            for g, opts in zip(self.param_groups, options):
                g.update(opts)
            self._lr_ratio = [float(s.get("lr_ratio", g["lr"] / options[0]["lr"])) for s, g in zip(saved, options)]
        else:
            unknown = [k for k in hyper if not isinstance(getattr(type(self), k, None), property)]
            if unknown:
                raise ValueError(f"optimizer state sets {unknown[0]!r}, expected groups or some of lr, momentum")
            for k, v in hyper.items():
                setattr(self, k, v)
        self.steps = int(state["steps"])
        self.state = [{k: _like_param(v, p) for k, v in s.items()} for s, p in zip(state["state"], self.params)]


class SGD(Optimizer):
    """Stochastic gradient descent, as torch.optim.SGD computes it (per group, with its options):

        d = g + weight_decay * p
        b = momentum * b + d          (b = d on the first step)
        d = d + momentum * b if nesterov else b
        p = p - lr * d

    Groups take lr, momentum, weight_decay, nesterov. `opt.lr = v` scales every group's lr (each keeps
    its initial ratio to group 0's); `opt.momentum = m` sets every group's.
    """

    options = ("lr", "momentum", "weight_decay", "nesterov")

    def __init__(self, params: Iterable[Parameter] | Iterable[dict[str, Any]], lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov))

    def _checked(self, opts: dict[str, Any], where: str) -> dict[str, Any]:
        out = super()._checked(opts, where)
        momentum, nesterov = opts["momentum"], opts["nesterov"]
        if not (_real(momentum) and 0.0 <= momentum < 1.0):
            raise ValueError(f"{where}momentum must be in [0, 1), got {momentum!r}")
        if not isinstance(nesterov, bool):
            raise ValueError(f"{where}nesterov must be True or False, got {nesterov!r}")
        if nesterov and momentum == 0:
            raise ValueError(f"{where}Nesterov momentum needs momentum > 0")
        out["momentum"] = float(momentum)
        return out

    @property
    def momentum(self) -> float:
        return self.param_groups[0]["momentum"]

    @momentum.setter
    def momentum(self, value: float) -> None:
        for group in self.param_groups:
            group["momentum"] = value

    def _step_group(self, group: dict[str, Any], states: list[dict[str, Tensor]]) -> None:
        """The formula above for all the group's parameters at once (torch's multi-tensor `_foreach` kernels)."""
        live = [k for k, p in enumerate(group["params"]) if p.g is not None]
        if not live:
            return
        lr, momentum, weight_decay = group["lr"], group["momentum"], group["weight_decay"]
        ps = [group["params"][k] for k in live]
        ds = [p.g for p in ps]
        if weight_decay:
            ds = torch._foreach_add(ds, ps, alpha=weight_decay)
        if momentum:
            states = [states[k] for k in live]
            old = [k for k, st in enumerate(states) if "momentum_buffer" in st]
            if old:
                bufs = [states[k]["momentum_buffer"] for k in old]
                torch._foreach_mul_(bufs, momentum)
                torch._foreach_add_(bufs, [ds[k] for k in old])
            for k, st in enumerate(states):
                if "momentum_buffer" not in st:  # b = d on a parameter's first step
                    st["momentum_buffer"] = ds[k].clone()
            bufs = [st["momentum_buffer"] for st in states]
            ds = torch._foreach_add(ds, bufs, alpha=momentum) if group["nesterov"] else bufs
        torch._foreach_add_(ps, ds, alpha=-lr)


class Adam(Optimizer):
    """Adam, as torch.optim.Adam computes it (weight decay added to the gradient, L2 style):

        m = b1 m + (1 - b1) g,   v = b2 v + (1 - b2) g^2
        p = p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

    Groups take lr, betas, eps, weight_decay. `opt.lr = v` scales every group's lr (each keeps its
    initial ratio to group 0's); `opt.momentum = b1` sets every group's beta1.
    """

    options = ("lr", "betas", "eps", "weight_decay")
    decoupled = False

    def __init__(self, params: Iterable[Parameter] | Iterable[dict[str, Any]], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    def _checked(self, opts: dict[str, Any], where: str) -> dict[str, Any]:
        out = super()._checked(opts, where)
        betas, eps = opts["betas"], opts["eps"]
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2 and all(_real(b) and 0.0 <= b < 1.0
                                                                             for b in betas)):
            raise ValueError(f"{where}betas must be two numbers in [0, 1), got {betas!r}")
        if not (_real(eps) and eps >= 0):
            raise ValueError(f"{where}eps must be >= 0, got {eps!r}")
        out["betas"], out["eps"] = (float(betas[0]), float(betas[1])), float(eps)  # a list after a JSON round trip
        return out

    @property
    def momentum(self) -> float:
        """beta1 of group 0 (the name schedules use for SGD momentum and Adam's beta1 alike)."""
        return self.param_groups[0]["betas"][0]

    @momentum.setter
    def momentum(self, value: float) -> None:
        for group in self.param_groups:
            group["betas"] = (value, group["betas"][1])

    def update(self, p: Tensor, g: Tensor, state: dict[str, Tensor], group: dict[str, Any]) -> None:
        lr, (beta1, beta2), weight_decay = group["lr"], group["betas"], group["weight_decay"]
        if weight_decay:
            if self.decoupled:
                p.mul_(1 - lr * weight_decay)
            else:
                g = g.add(p, alpha=weight_decay)
        if not state:
            state["step"] = torch.zeros(())
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        t = float(state["step"])
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        step_size = lr / (1 - beta1 ** t)
        denom = (v.sqrt() / math.sqrt(1 - beta2 ** t)).add_(group["eps"])
        p.addcdiv_(m, denom, value=-step_size)


class AdamW(Adam):
    """Adam with decoupled weight decay (torch.optim.AdamW): p = p (1 - lr wd) before the Adam step."""

    decoupled = True

    def __init__(self, params: Iterable[Parameter] | Iterable[dict[str, Any]], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2) -> None:
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
