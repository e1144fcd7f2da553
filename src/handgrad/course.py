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

    `Lin(w, b)` (w: (n_in, n_out), b: (n_out,)) keeps them as `self.w` and `self.b`; its parameters share their
    memory (an optimizer's step changes `w` too, and a change to `w` shows in the layer), and each backward of
    the layer sets `w.g` and `b.g` to the parameters' gradients, as the seeds' `Lin.backward` did.
    """

    def __init__(self, *args, **kwargs) -> None:
        if args and isinstance(args[0], Tensor):
            if len(args) > 2 or kwargs.keys() - {"b"}:
                raise TypeError("Lin(w, b) takes the weight (n_in, n_out) and the bias (n_out,) tensors")
            w, b = args[0], args[1] if len(args) > 1 else kwargs.get("b")
            if w.dim() != 2 or (b is not None and tuple(b.shape) != (w.shape[1],)):
                raise ValueError(f"Lin(w, b) expects w of shape (n_in, n_out) and b of shape (n_out,), got "
                                 f"{list(w.shape)} and {None if b is None else list(b.shape)}")
            super().__init__(w.shape[0], w.shape[1], bias=b is not None, dtype=w.dtype, device=w.device)
            self.weight = Parameter(w)  # the same memory as w
            self.bias = Parameter(b) if b is not None else None
            self.w, self.b = w, b
        else:
            super().__init__(*args, **kwargs)
            self.w, self.b = self.weight, self.bias

    def bwd(self, dy: Tensor, x: Tensor) -> Tensor | None:
        """As Linear's; then the seeds' tensors get their `.g` (the parameters' gradients)."""
        dx = super().bwd(dy, x)
        if self.w is not self.weight:
            self.w.g = self.weight.g
            if self.b is not None:
                self.b.g = self.bias.g
        return dx


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
            w1, b1, w2, b2 = args if args[1].dim() == 1 else (args[0], args[2], args[1], args[3])  # or (w1, w2, b1, b2)
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
