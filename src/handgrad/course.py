"""The seeds' course names, taking the seeds' arguments: `Lin(w1, b1)`, `Relu()`, `Mse()`, `Model(w1, b1, w2, b2)`.

The lesson builds its MLP from the tensors it made by hand (`w1 = torch.randn(784, 50)`, ...) and after
`model.backward()` reads the gradients from those same tensors (`w1.g`). These classes are handgrad's layers
under the course names, so the lesson's code runs as written on the library, and the library's optimizers,
checks and conversions work on what it builds.
"""

from __future__ import annotations

from torch import Tensor

from .layers import Linear, ReLU
from .losses import MSELoss
from .module import Module, Parameter

Relu = ReLU
Mse = MSELoss


class Lin(Linear):
    """Linear under the course's name: `Lin(n_in, n_out)` as Linear, or `Lin(w, b)` with the seeds' tensors.

    `Lin(w, b)` (w: (n_in, n_out), b: (n_out,)) uses the tensors it is given as its weight and bias (also
    reachable as `.w` and `.b`, the seeds' names): each backward sets `w.g` and `b.g`, an optimizer's step
    changes `w` itself, and two layers given the same `w` share it (its `.g` sums both). Plain tensors follow
    the seeds: their `.g` is the gradient of the latest forward (see handgrad.add_grad); given a layer's
    Parameters (`Lin(other.weight, other.bias)`), the layer is tied to that one.
    """

    def __init__(self, *args, **kwargs) -> None:
        if not (args and isinstance(args[0], Tensor)):
            super().__init__(*args, **kwargs)
            return
        if len(args) > 2 or kwargs.keys() - {"b"}:
            raise TypeError("Lin(w, b) takes the weight (n_in, n_out) and the bias (n_out,) tensors")
        w, b = args[0], args[1] if len(args) > 1 else kwargs.get("b")
        if not w.is_floating_point() or w.dim() != 2:
            raise ValueError(f"Lin(w, b) expects w a 2-d floating-point tensor (n_in, n_out), got {w.dtype} of "
                             f"shape {list(w.shape)}")
        if b is not None and (not isinstance(b, Tensor) or tuple(b.shape) != (w.shape[1],) or b.dtype != w.dtype
                              or b.device != w.device):
            got = f"{b.dtype} {list(b.shape)} on {b.device}" if isinstance(b, Tensor) else type(b).__name__
            raise ValueError(f"Lin(w, b) expects b of shape [{w.shape[1]}] with w's dtype and device ({w.dtype} on "
                             f"{w.device}), got {got}")
        Module.__init__(self)
        self.in_features, self.out_features = w.shape
        self.weight, self.bias = w, b
        # plain tensors are this layer's parameters, as a seeds'-form layer's are (see Module.__setattr__)
        self.__dict__["_plain_params"] = [n for n, t in (("weight", w), ("bias", b))
                                          if t is not None and not isinstance(t, Parameter)]

    @property
    def w(self) -> Tensor:
        return self.weight

    @property
    def b(self) -> Tensor | None:
        return self.bias


LinearLayer = Lin  # another spelling the course used


class Model(Module):
    """The seeds' MLP with its loss inside: Lin -> Relu -> Lin, then Mse; `model(x, targ)` returns the loss.

    `Model(w1, b1, w2, b2)` from the seeds' tensors (the order `Model(w1, w2, b1, b2)` some copies of the lesson
    use is recognised by the shapes), or `Model(n_in, nh, n_out)` with fresh weights. `model.backward()` fills
    every `.g`: the weights', the biases' and the input's. After a call, `model.preds` and `model.final_loss`
    hold the predictions and the loss, as in the lesson.
    """

    def __init__(self, *args) -> None:
        super().__init__()
        if len(args) == 4 and all(isinstance(a, Tensor) for a in args):
            w1, b1, w2, b2 = args
            if args[1].dim() == 2 and args[2].dim() == 1:  # the order (w1, w2, b1, b2)
                w1, w2, b1, b2 = args
            if w1.dim() != 2 or w2.dim() != 2 or w2.shape[0] != w1.shape[1]:
                raise ValueError(f"Model(w1, b1, w2, b2) expects w1 (n_in, nh), b1 (nh,), w2 (nh, n_out), b2 (n_out,), "
                                 f"got shapes {[list(a.shape) for a in args]}")
            self.layers = [Lin(w1, b1), Relu(), Lin(w2, b2)]
        elif len(args) == 3 and all(isinstance(a, int) for a in args):
            n_in, nh, n_out = args
            self.layers = [Lin(n_in, nh, init="randn"), Relu(), Lin(nh, n_out, init="randn")]
        else:
            raise TypeError(f"Model expects the seeds' tensors (w1, b1, w2, b2) or sizes (n_in, nh, n_out), got "
                            f"{len(args)} arguments of types {[type(a).__name__ for a in args]}")
        self.loss = Mse()

    def forward(self, x: Tensor, targ: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        self.preds = x
        self.final_loss = self.loss(x, targ)
        return self.final_loss


__all__ = ["Lin", "LinearLayer", "Model", "Mse", "Relu"]
