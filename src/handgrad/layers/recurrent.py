"""RNN and LSTM: torch.nn's recurrent layers, with backpropagation through time written by hand.

Names, shapes and layouts are torch.nn's (`weight_ih_l{k}` (G*H, I), `weight_hh_l{k}` (G*H, H), `bias_ih_l{k}`,
`bias_hh_l{k}`; the LSTM's gates in torch's order i, f, g, o), so each loads torch's state_dict and back. Inputs are
(T, N, I), or (N, T, I) with batch_first, or unbatched (T, I) with states (num_layers, H); the forward returns (output, h_n) for RNN and (output, (h_n, c_n)) for
LSTM, as torch does. backward takes the gradient of the first output, or a tuple of them all (the others count
as zero).

Each layer's forward makes one GEMM for the input projection of all T steps, then a loop of T small GEMMs with
W_hh; it keeps what its backward reads: the states h_{t-1}, the gate activations (and c_t, tanh c_t for LSTM).
The backward walks the steps in reverse, gathering every step's gate gradients, and forms the weight gradients
with one GEMM each over all steps.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..module import Module, Parameter, accumulate_mm, add_grad


class _Recurrent(Module):
    GATES = 1  # gate blocks in the weights: 1 for RNN, 4 for LSTM

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, *, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        for name, v in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{type(self).__name__}: {name} must be a positive integer, got {v!r}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first = bias, batch_first
        bound = 1.0 / math.sqrt(hidden_size)  # torch's default: U(-1/sqrt(H), 1/sqrt(H)) for every tensor
        kw = {"dtype": dtype, "device": device}
        g = self.GATES * hidden_size
        for k in range(num_layers):
            fan_in = input_size if k == 0 else hidden_size
            setattr(self, f"weight_ih_l{k}", Parameter(torch.empty(g, fan_in, **kw).uniform_(-bound, bound)))
            setattr(self, f"weight_hh_l{k}", Parameter(torch.empty(g, hidden_size, **kw).uniform_(-bound, bound)))
            if bias:
                setattr(self, f"bias_ih_l{k}", Parameter(torch.empty(g, **kw).uniform_(-bound, bound)))
                setattr(self, f"bias_hh_l{k}", Parameter(torch.empty(g, **kw).uniform_(-bound, bound)))

    def _weights(self, k: int) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        d = self.__dict__
        return d[f"weight_ih_l{k}"], d[f"weight_hh_l{k}"], d.get(f"bias_ih_l{k}"), d.get(f"bias_hh_l{k}")

    def _batched(self, x: Tensor, state: object) -> tuple[Tensor, object]:
        """An unbatched input (T, I) and its states (num_layers, H), as torch takes them, as a batch of one; sets
        self.unbatched (the forward's return and the backward's gradients lose that batch dim again)."""
        self.unbatched = isinstance(x, Tensor) and x.dim() == 2
        if not self.unbatched:
            return x, state

        def one(s: object) -> object:
            if isinstance(s, Tensor):
                if s.dim() != 2:
                    raise ValueError(f"{type(self).__name__}: with an unbatched input (T, input_size) the states "
                                     f"are (num_layers, hidden_size), got {list(s.shape)}")
                return s.unsqueeze(1)
            return type(s)(one(t) for t in s) if isinstance(s, (tuple, list)) else s
        return x.unsqueeze(0 if self.batch_first else 1), one(state)

    def _unbatched(self, out: Tensor | None, state: object) -> tuple[Tensor | None, object]:
        """The output (or its gradient) and the states without the batch dim of one an unbatched input got."""
        if not self.__dict__.get("unbatched"):
            return out, state

        def drop(s: object) -> object:
            if isinstance(s, Tensor):
                return s.squeeze(1)
            return type(s)(drop(t) for t in s) if isinstance(s, (tuple, list)) else s
        return (None if out is None else out.squeeze(0 if self.batch_first else 1)), drop(state)

    def _check_input(self, x: Tensor) -> Tensor:
        """x as (T, N, I)."""
        name = type(self).__name__
        if isinstance(x, Tensor) and x.dim() == 3 and x.shape[1 if self.batch_first else 0] == 0:
            raise ValueError(f"{name}({self.input_size}, {self.hidden_size}): the input holds no time step (a sequence "
                             "length of 0); expected at least one")
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.input_size:
            layout = "[N, T, input_size] (or unbatched [T, input_size])" if self.batch_first else \
                "[T, N, input_size] (or unbatched [T, input_size])"
            got = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name}({self.input_size}, {self.hidden_size}) expects input {layout} with input_size "
                             f"{self.input_size}, got {got}")
        return x.transpose(0, 1) if self.batch_first else x

    def _state(self, h: Tensor | None, n: int, like: Tensor, what: str) -> Tensor:
        shape = (self.num_layers, n, self.hidden_size)
        if h is None:
            return like.new_zeros(shape)
        if not isinstance(h, Tensor) or tuple(h.shape) != shape:
            got = list(h.shape) if isinstance(h, Tensor) else type(h).__name__
            if self.__dict__.get("unbatched") and isinstance(h, Tensor):  # say it in the shapes the user gave
                raise ValueError(f"{type(self).__name__}: {what} must be {[shape[0], shape[2]]} (num_layers, "
                                 f"hidden_size) for an unbatched input, got {[got[0], got[2]]}")
            raise ValueError(f"{type(self).__name__}: {what} must be {list(shape)} (num_layers, batch, hidden_size), "
                             f"got {got}")
        return h

    def _input_projection(self, x: Tensor, k: int) -> Tensor:
        """X @ W_ih.T + b_ih + b_hh for all steps at once: (T, N, G*H)."""
        w_ih, _, b_ih, b_hh = self._weights(k)
        t, n, i = x.shape
        xw = x.reshape(t * n, i) @ w_ih.t()
        if b_ih is not None:
            xw.add_(b_ih + b_hh)  # in place (torch's addmm spreads the bias over its output first, which costs more)
        return xw.view(t, n, -1)

    def _weight_grads(self, k: int, dpre: Tensor, x: Tensor, h_prev: Tensor) -> Tensor | None:
        """From the pre-activation gradients of all steps dpre (T, N, G*H): dW_ih = dpre.T @ X, dW_hh = dpre.T @ H_prev,
        db_ih = db_hh = dpre summed over steps and batch; returns dX = dpre @ W_ih (T, N, I)."""
        w_ih, w_hh, b_ih, b_hh = self._weights(k)
        t, n, _ = dpre.shape
        d2 = dpre.reshape(t * n, -1)  # (T*N, G*H)
        accumulate_mm(w_ih, d2.t(), x.reshape(t * n, -1))  # (G*H, I)
        accumulate_mm(w_hh, d2.t(), h_prev.reshape(t * n, -1))  # (G*H, H)
        if b_ih is not None:
            db = d2.sum(0)
            add_grad(b_ih, db)
            add_grad(b_hh, db)
        return (d2 @ w_ih).view(t, n, -1)

    def _output(self, y: Tensor) -> Tensor:
        return y.transpose(0, 1) if self.batch_first else y

    def extra_repr(self) -> str:
        extra = "" if self.num_layers == 1 else f", num_layers={self.num_layers}"
        extra += "" if self.bias else ", bias=False"
        extra += ", batch_first=True" if self.batch_first else ""
        return f"{self.input_size}, {self.hidden_size}{extra}"


class RNN(_Recurrent):
    """h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)   (nonlinearity='relu': max(., 0)), per layer.

    forward(x, h0=None) -> (output (T, N, H), h_n (num_layers, N, H)).
    """

    GATES = 1

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, *, dtype: torch.dtype | None = None,
                 device: torch.device | str | None = None) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNN: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dtype=dtype, device=device)
        self.nonlinearity = nonlinearity

    def forward(self, x: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x, h0 = self._batched(x, h0)
        x = self._check_input(x)  # (T, N, I)
        t_steps, n, _ = x.shape
        h0 = self._state(h0, n, x, "h0")
        act = torch.tanh if self.nonlinearity == "tanh" else torch.relu
        inputs, states, h_n = [], [], []
        layer_in = x
        for k in range(self.num_layers):
            _, w_hh, _, _ = self._weights(k)
            xw = self._input_projection(layer_in, k)  # (T, N, H)
            h_list = [h0[k]]  # h_0 .. h_T of this layer (a list, stacked once: autograd can run this forward too)
            for t in range(t_steps):
                h_list.append(act(torch.addmm(xw[t], h_list[-1], w_hh.t())))
            hs = torch.stack(h_list)  # (T+1, N, H)
            inputs.append(layer_in)
            states.append(hs)
            h_n.append(hs[-1])
            layer_in = hs[1:]
        self.inputs, self.states = inputs, states
        return self._unbatched(self._output(layer_in), torch.stack(h_n))

    def bwd(self, douts: tuple[Tensor, Tensor], x: Tensor, h0: Tensor | None = None
            ) -> tuple[Tensor | None, Tensor | None]:
        """Backpropagation through time, per layer from the top: with a_t = h_t's pre-activation,
        da_t = (dY_t + dh_{t+1} from step t+1) * act'(a_t),  dh_t (to step t-1) = da_t @ W_hh;
        dW_ih = sum_t da_t^T x_t, dW_hh = sum_t da_t^T h_{t-1}, db_ih = db_hh = sum_t da_t, dx_t = da_t @ W_ih."""
        dout, dh_n = douts
        if self.unbatched:
            dout, dh_n = dout.unsqueeze(0 if self.batch_first else 1), dh_n.unsqueeze(1)
        dy = self._output(dout)  # (T, N, H), the top layer's output gradient
        dh0 = torch.empty_like(dh_n)
        for k in reversed(range(self.num_layers)):
            _, w_hh, _, _ = self._weights(k)
            hs = self.states[k]  # (T+1, N, H)
            t_steps = hs.shape[0] - 1
            dpre = torch.empty_like(hs[1:])
            dh = dh_n[k]
            for t in reversed(range(t_steps)):
                h = hs[t + 1]
                d = dy[t] + dh
                dpre[t] = d * (1 - h * h) if self.nonlinearity == "tanh" else d * (h > 0)
                dh = dpre[t] @ w_hh  # (N, H)
            dh0[k] = dh
            dy = self._weight_grads(k, dpre, self.inputs[k], hs[:-1])
        dx = self._output(dy) if self.needs_input_grad else None
        return self._unbatched(dx, dh0 if h0 is not None else None)


class LSTM(_Recurrent):
    """i, f, g, o = sigma, sigma, tanh, sigma(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)  (torch's gate order);
    c_t = f * c_{t-1} + i * g,  h_t = o * tanh(c_t), per layer.

    forward(x, hx=None) with hx = (h0, c0) -> (output (T, N, H), (h_n, c_n) (num_layers, N, H) each).

    Per layer the forward keeps, for all steps, the gates (T, N, 4H) (i, f, o after their sigmoid; the g block
    holds its sigmoid too, unused), g and tanh(c_t) (T, N, H), the cells c_0..c_T and the states h_0..h_T.
    """

    GATES = 4

    def forward(self, x: Tensor, hx: tuple[Tensor, Tensor] | None = None
                ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        x, hx = self._batched(x, hx)
        x = self._check_input(x)  # (T, N, I)
        t_steps, n, _ = x.shape
        if hx is not None and not (isinstance(hx, (tuple, list)) and len(hx) == 2):
            raise ValueError(f"LSTM: hx must be a pair (h0, c0), got {type(hx).__name__}")
        h0 = self._state(None if hx is None else hx[0], n, x, "h0")
        c0 = self._state(None if hx is None else hx[1], n, x, "c0")
        hid = self.hidden_size
        # Without autograd, every step writes into buffers that hold all the steps (out=, the gates in place over
        # the input projection); when autograd records this forward (`handgrad check` differentiates it), the
        # same steps make new tensors, stacked at the end.
        records = torch.is_grad_enabled() and any(t.requires_grad for t in (x, h0, c0, *self.parameters()))
        inputs, states, cells, gates, gs, tcs, h_n, c_n = [], [], [], [], [], [], [], []
        layer_in = x
        for k in range(self.num_layers):
            w_hh_t = self._weights(k)[1].t()  # (H, 4H)
            xw = self._input_projection(layer_in, k)  # (T, N, 4H)
            if records:
                hs, cs, acts, g_seq, tc_seq = [h0[k]], [c0[k]], [], [], []
                outs = [(xw_t, None, None, None, None, None, None) for xw_t in xw.unbind(0)]
            else:
                w_hh_t = w_hh_t.contiguous()  # row-major: MKL runs the T small GEMMs below faster with it
                hs, cs = x.new_empty(t_steps + 1, n, hid), x.new_empty(t_steps + 1, n, hid)
                hs[0], cs[0] = h0[k], c0[k]
                acts, g_seq, tc_seq = xw, x.new_empty(t_steps, n, hid), x.new_empty(t_steps, n, hid)
                # step t: its input projection, written over by its gates (i, f, g, o: views made once), then where
                # g, tanh(c_t), c_t and h_t go
                gates_t = zip(*(xw[..., j * hid:(j + 1) * hid].unbind(0) for j in range(4)))
                outs = list(zip(xw.unbind(0), xw.unbind(0), gates_t, g_seq.unbind(0), tc_seq.unbind(0),
                                cs[1:].unbind(0), hs[1:].unbind(0)))
            h, c = h0[k], c0[k]
            for xw_t, a_out, views, g_out, tc_out, c_out, h_out in outs:
                pre = torch.addmm(xw_t, h, w_hh_t, out=a_out)  # (N, 4H) pre-activations
                i, f, g, o = views or (pre[:, j * hid:(j + 1) * hid] for j in range(4))
                g = torch.tanh(g, out=g_out)
                a = pre.sigmoid_()  # i, f, o (views of it)
                c = torch.mul(f, c, out=c_out).addcmul_(i, g)  # c_t = f c_{t-1} + i g
                tc = torch.tanh(c, out=tc_out)
                h = torch.mul(o, tc, out=h_out)  # h_t = o tanh(c_t)
                if records:
                    for seq, v in zip((hs, cs, acts, g_seq, tc_seq), (h, c, a, g, tc)):
                        seq.append(v)
            if records:
                hs, cs, acts, g_seq, tc_seq = (torch.stack(seq) for seq in (hs, cs, acts, g_seq, tc_seq))
            inputs.append(layer_in)
            states.append(hs)  # (T+1, N, H)
            cells.append(cs)  # (T+1, N, H)
            gates.append(acts)  # (T, N, 4H)
            gs.append(g_seq)  # (T, N, H)
            tcs.append(tc_seq)  # (T, N, H)
            h_n.append(hs[-1])
            c_n.append(cs[-1])
            layer_in = hs[1:]
        self.inputs, self.states, self.cells, self.gates, self.gs, self.tcs = inputs, states, cells, gates, gs, tcs
        return self._unbatched(self._output(layer_in), (torch.stack(h_n), torch.stack(c_n)))

    TIME_BLOCK = 32  # backward: steps whose factors are formed together, just before their steps run

    @staticmethod
    def _factors(acts: Tensor, g: Tensor, tc: Tensor, c_prev: Tensor, out: Tensor, carry: Tensor) -> None:
        """For a run of steps (.., N, .): the factors of dpre_t = [di, df, dg, do] = out * [dc_t, dc_t, dc_t, dh_t],
        out = [g i (1 - i), c_{t-1} f (1 - f), i (1 - g^2), tanh(c_t) o (1 - o)], and carry = o (1 - tanh^2 c_t),
        dh_t's share of dc_t."""
        hid = g.shape[-1]
        i, f, o = acts[..., :hid], acts[..., hid:2 * hid], acts[..., 3 * hid:]
        one = acts.new_ones(())
        torch.addcmul(i, i, i, value=-1.0, out=out[..., :hid]).mul_(g)
        torch.addcmul(f, f, f, value=-1.0, out=out[..., hid:2 * hid]).mul_(c_prev)
        torch.addcmul(one, g, g, value=-1.0, out=out[..., 2 * hid:3 * hid]).mul_(i)
        torch.addcmul(o, o, o, value=-1.0, out=out[..., 3 * hid:]).mul_(tc)
        torch.addcmul(one, tc, tc, value=-1.0, out=carry).mul_(o)

    def bwd(self, douts: tuple, x: Tensor, hx: tuple[Tensor, Tensor] | None = None
            ) -> tuple[Tensor | None, tuple[Tensor, Tensor] | None]:
        """Backpropagation through time, per layer from the top, steps in reverse:
        dh_t = dY_t + dpre_{t+1} @ W_hh,  dc_t = dc_{t+1} * f_{t+1} + dh_t * o_t (1 - tanh^2 c_t);
        the gates' pre-activation gradients dpre_t = [di, df, dg, do] with
        di = dc_t g i (1 - i),  df = dc_t c_{t-1} f (1 - f),  dg = dc_t i (1 - g^2),  do = dh_t tanh(c_t) o (1 - o);
        then dW_ih = sum dpre_t^T x_t, dW_hh = sum dpre_t^T h_{t-1}, db_ih = db_hh = sum dpre_t, dx_t = dpre_t @ W_ih,
        each one GEMM over all steps. The factors that do not depend on dh_t and dc_t (see _factors) are formed
        TIME_BLOCK steps at a time into dpre's memory, just before those steps scale them."""
        dout, (dh_n, dc_n) = douts
        if self.unbatched:
            dout, dh_n, dc_n = dout.unsqueeze(0 if self.batch_first else 1), dh_n.unsqueeze(1), dc_n.unsqueeze(1)
        dy = self._output(dout)  # (T, N, H)
        hid = self.hidden_size
        dh0, dc0 = torch.empty_like(dh_n), torch.empty_like(dc_n)
        for k in reversed(range(self.num_layers)):
            w_hh = self._weights(k)[1]  # (4H, H)
            hs, cs, acts, g, tc = self.states[k], self.cells[k], self.gates[k], self.gs[k], self.tcs[k]
            t_steps, n, _ = acts.shape
            dpre, carry = torch.empty_like(acts), torch.empty_like(tc)  # (T, N, 4H), (T, N, H)
            steps = list(zip(dpre.unbind(0), dy.unbind(0), carry.unbind(0)))
            f = acts[..., hid:2 * hid].unbind(0)
            dh, dc = dh_n[k], dc_n[k].clone()
            for hi in range(t_steps, 0, -self.TIME_BLOCK):
                lo = max(hi - self.TIME_BLOCK, 0)
                self._factors(acts[lo:hi], g[lo:hi], tc[lo:hi], cs[lo:hi], dpre[lo:hi], carry[lo:hi])
                for t in range(hi - 1, lo - 1, -1):
                    d, dy_t, carry_t = steps[t]
                    if t == t_steps - 1:
                        dh = dy_t + dh
                    else:
                        dh = torch.addmm(dy_t, steps[t + 1][0], w_hh)  # (N, H)
                        dc = dc.mul_(f[t + 1])
                    dc.addcmul_(dh, carry_t)
                    d[:, :3 * hid].view(n, 3, hid).mul_(dc[:, None])  # di, df, dg
                    d[:, 3 * hid:].mul_(dh)  # do
            if t_steps:
                dh, dc = dpre[0] @ w_hh, dc * f[0]
            dh0[k], dc0[k] = dh, dc
            del acts, g, tc, carry, steps, f
            if self.lean:  # this layer's saved tensors are read for the last time below
                self.cells[k] = self.gates[k] = self.gs[k] = self.tcs[k] = None
            dy = self._weight_grads(k, dpre, self.inputs[k], hs[:-1])
            if self.lean:
                self.states[k] = self.inputs[k] = None
        dx = self._output(dy) if self.needs_input_grad else None
        return self._unbatched(dx, (dh0, dc0) if hx is not None else None)
