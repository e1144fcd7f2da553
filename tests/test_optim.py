import pytest
import torch

import handgrad as hg


@pytest.mark.parametrize("kw", [dict(), dict(momentum=0.9), dict(momentum=0.9, nesterov=True),
                                dict(momentum=0.5, weight_decay=0.01), dict(weight_decay=0.1)])
def test_sgd_matches_torch_step_for_step(kw):
    torch.manual_seed(0)
    model = hg.Sequential(hg.Linear(5, 4), hg.ReLU(), hg.Linear(4, 3)).double()
    twin = hg.interop.to_torch(model)
    opt, topt = hg.SGD(model.parameters(), lr=0.1, **kw), torch.optim.SGD(twin.parameters(), lr=0.1, **kw)
    loss_fn = hg.CrossEntropyLoss()
    for step in range(5):
        x, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss_fn.backward()
        model.backward()
        opt.step()
        tloss = torch.nn.functional.cross_entropy(twin(x), y)
        topt.zero_grad()
        tloss.backward()
        topt.step()
        torch.testing.assert_close(loss, tloss.detach())
        for (k, v), tv in zip(model.state_dict().items(), twin.state_dict().values()):
            torch.testing.assert_close(v, tv, rtol=1e-12, atol=1e-12, msg=lambda m, k=k, s=step: f"{k} step {s}: {m}")


@pytest.mark.parametrize("kw, match", [(dict(lr=0), "learning rate must be positive, got 0"),
                                       (dict(lr=0.1, momentum=1.0), r"momentum must be in \[0, 1\)"),
                                       (dict(lr=0.1, weight_decay=-1), "weight decay must be >= 0"),
                                       (dict(lr=0.1, nesterov=True), "Nesterov momentum needs momentum > 0")])
def test_sgd_bad_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        hg.SGD(hg.Linear(2, 2).parameters(), **kw)


def _train_twins(make_hg, make_torch, steps=6, clip=None, dtype=torch.float64, build=None):
    """Train a handgrad model and its torch twin side by side; `build()` may give the pair (else a 5-4-3 MLP)."""
    torch.manual_seed(0)
    if build is None:
        model = hg.Sequential(hg.Linear(5, 4), hg.ReLU(), hg.Linear(4, 3)).to(dtype=dtype)
        twin = hg.interop.to_torch(model)
    else:
        model, twin = build()
    opt, topt = make_hg(model.parameters()), make_torch(twin.parameters())
    loss_fn = hg.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        x, y = torch.randn(8, 5, generator=gen, dtype=dtype), torch.randint(0, 3, (8,), generator=gen)
        loss_fn(model(x), y)
        opt.zero_grad()
        loss_fn.backward()
        model.backward()
        tloss = torch.nn.functional.cross_entropy(twin(x), y)
        topt.zero_grad()
        tloss.backward()
        if clip is not None:
            norm = hg.optim.clip_grad_norm(model.parameters(), clip)
            tnorm = torch.nn.utils.clip_grad_norm_(twin.parameters(), clip)
            assert norm == pytest.approx(float(tnorm), rel=1e-10)
        opt.step()
        topt.step()
        for (k, v), tv in zip(model.state_dict().items(), twin.state_dict().values()):
            torch.testing.assert_close(v, tv, rtol=1e-10, atol=1e-12, msg=lambda m, k=k, s=step: f"{k} step {s}: {m}")


@pytest.mark.parametrize("kw", [dict(), dict(weight_decay=0.1), dict(betas=(0.8, 0.99), eps=1e-6)])
def test_adam_matches_torch(kw):
    _train_twins(lambda p: hg.optim.Adam(p, lr=0.01, **kw), lambda p: torch.optim.Adam(p, lr=0.01, **kw))


@pytest.mark.parametrize("kw", [dict(), dict(weight_decay=0.3)])
def test_adamw_matches_torch(kw):
    _train_twins(lambda p: hg.optim.AdamW(p, lr=0.01, **kw), lambda p: torch.optim.AdamW(p, lr=0.01, **kw))


def test_clip_grad_norm_matches_torch():
    _train_twins(lambda p: hg.SGD(p, lr=0.5, momentum=0.9), lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9),
                 clip=0.05)


def test_optimizer_state_dict_round_trip_continues_identically():
    torch.manual_seed(0)
    p = hg.Parameter(torch.randn(4))
    q = hg.Parameter(p.detach().clone())
    a, b = hg.optim.AdamW([p], lr=0.1), hg.optim.AdamW([q], lr=0.1)
    for i in range(6):
        g = torch.randn(4, generator=torch.Generator().manual_seed(i))
        p.g, q.g = g.clone(), g.clone()
        a.step()
        if i == 2:  # b restarts from a's saved state
            b.load_state_dict(a.state_dict())
            q.data.copy_(p.data)
        elif i > 2:
            b.step()
    assert torch.equal(p, q)


def _torch_lrs(opt, sched, steps):
    out = []
    for _ in range(steps):
        out.append((opt.param_groups[0]["lr"], opt.param_groups[0].get("momentum", opt.param_groups[0].get("betas",
                                                                                                         (None,))[0])))
        opt.step()
        sched.step()
    return out


def test_one_cycle_matches_torch_lr_and_momentum():
    from handgrad.schedules import OneCycle

    p = [torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD(p, lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=50)
    ours = OneCycle("one-cycle", 0.1, 50)
    for t, (lr, mom) in enumerate(_torch_lrs(opt, sched, 50)):
        assert ours.lr(t) == pytest.approx(lr, rel=1e-9, abs=1e-15) and ours.momentum(t) == pytest.approx(mom)


def test_cosine_with_warmup_matches_torch():
    from handgrad.schedules import CosineWarmup

    p = [torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD(p, lr=0.2)
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.01, total_iters=10)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=40)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [warm, cos], milestones=[10])
    ours = CosineWarmup("cosine", 0.2, 50, warmup_steps=10)
    for t, (lr, _) in enumerate(_torch_lrs(opt, sched, 50)):
        assert ours.lr(t) == pytest.approx(lr, rel=1e-9, abs=1e-12), t


def test_step_decay_matches_torch():
    from handgrad.schedules import StepDecay

    p = [torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD(p, lr=0.3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.5)
    ours = StepDecay("step", 0.3, 7, 0.5)
    for t, (lr, _) in enumerate(_torch_lrs(opt, sched, 30)):
        assert ours.lr(t) == pytest.approx(lr, rel=1e-12)


# ------------------------------------------------------------------ parameter groups and tied parameters
def _groups(params, first, second):
    """Torch-style groups over a model's parameters: the first layer's (weight, bias) and the rest."""
    params = list(params)
    return [{"params": params[:2], **first}, {"params": params[2:], **second}]


@pytest.mark.parametrize("first, second, kw", [
    (dict(lr=0.03), dict(), dict(momentum=0.9)),
    (dict(lr=0.03, momentum=0.5, weight_decay=0.1), dict(nesterov=True), dict(momentum=0.9)),
    (dict(weight_decay=0.2), dict(momentum=0.0), dict(momentum=0.8, weight_decay=0.01)),
])
def test_sgd_param_groups_match_torch(first, second, kw):
    _train_twins(lambda p: hg.SGD(_groups(p, first, second), lr=0.1, **kw),
                 lambda p: torch.optim.SGD(_groups(p, first, second), lr=0.1, **kw))


@pytest.mark.parametrize("cls, tcls", [(hg.Adam, torch.optim.Adam), (hg.AdamW, torch.optim.AdamW)])
def test_adam_param_groups_match_torch(cls, tcls):
    first, second = dict(lr=0.03, betas=(0.8, 0.99), weight_decay=0.2), dict(eps=1e-3)
    _train_twins(lambda p: cls(_groups(p, first, second), lr=0.01, weight_decay=0.05),
                 lambda p: tcls(_groups(p, first, second), lr=0.01, weight_decay=0.05))


def test_param_groups_look_like_torch():
    model = hg.Sequential(hg.Linear(5, 4), hg.ReLU(), hg.Linear(4, 3))
    p = model.parameters()
    opt = hg.SGD([{"params": p[:2], "lr": 0.01}, {"params": iter(p[2:])}], lr=0.1, momentum=0.9)
    assert [g["params"] for g in opt.param_groups] == [p[:2], p[2:]] and opt.params == p
    assert opt.param_groups[0] == {"params": p[:2], "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0,
                                   "nesterov": False}
    assert opt.param_groups[1]["lr"] == 0.1 and opt.lr == 0.01 and opt.momentum == 0.9 and opt.weight_decay == 0
    adam = hg.Adam([{"params": p[:2], "betas": (0.5, 0.9)}, {"params": p[2:], "eps": 1e-3}], lr=0.1)
    assert [(g["betas"], g["eps"]) for g in adam.param_groups] == [((0.5, 0.9), 1e-8), ((0.9, 0.999), 1e-3)]
    assert adam.momentum == 0.5


def _tied_pair(dtype=torch.float64):
    """An MLP whose last two Linears share one weight, and its torch twin tied the same way."""
    torch.manual_seed(0)
    model = hg.Sequential(hg.Linear(5, 4), hg.ReLU(), hg.Linear(4, 4), hg.ReLU(), hg.Linear(4, 4)).to(dtype=dtype)
    model[4].weight = model[2].weight
    twin = hg.interop.to_torch(model)
    twin[4].weight = twin[2].weight
    return model, twin


@pytest.mark.parametrize("make_hg, make_torch", [
    (lambda p: hg.SGD(p, lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    (lambda p: hg.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1),
     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.1)),
    (lambda p: hg.AdamW(p, lr=0.01), lambda p: torch.optim.AdamW(p, lr=0.01)),
])
def test_tied_parameter_is_stepped_once(make_hg, make_torch):
    model, twin = _tied_pair()
    # each Linear's parameters in turn: the tied weight twice (torch's twin.parameters() has it once)
    per_layer = [p for m in model if isinstance(m, hg.Linear) for p in (m.weight, m.bias)]
    assert len(per_layer) == 6 and per_layer[2] is per_layer[4] and len(list(twin.parameters())) == 5
    _train_twins(lambda _: make_hg(per_layer), make_torch, build=lambda: (model, twin))


def test_duplicates_within_a_group_keep_first_position():
    a, b = hg.Parameter(torch.zeros(2)), hg.Parameter(torch.zeros(3))
    opt = hg.SGD([{"params": [b, a, b]}, {"params": [hg.Parameter(torch.zeros(1))]}], lr=1.0)
    assert opt.param_groups[0]["params"] == [b, a] and len(opt.params) == 3 and len(opt.state) == 3
    a.g, b.g = torch.ones(2), torch.ones(3)
    opt.step()
    assert torch.equal(a, -torch.ones(2)) and torch.equal(b, -torch.ones(3))  # -2 if stepped twice


def _ps(n=3):
    return [hg.Parameter(torch.zeros(2)) for _ in range(n)]


@pytest.mark.parametrize("make, match", [
    (lambda p: hg.SGD([{"params": p[:1], "betas": (0.9, 0.99)}], lr=0.1),
     r"^SGD parameter group 0: unknown option 'betas', expected some of params, lr, momentum, weight_decay, "
     r"nesterov$"),
    (lambda p: hg.Adam([{"params": p[:1]}, {"params": p[1:], "momentum": 0.9}]),
     r"^Adam parameter group 1: unknown option 'momentum', expected some of params, lr, betas, eps, weight_decay$"),
    (lambda p: hg.SGD([{"params": p[:1]}, {"lr": 0.1}], lr=0.1),
     r"^SGD parameter group 1: expected a dict with 'params' and optional lr, momentum, weight_decay, nesterov, "
     r"got keys \['lr'\]$"),
    (lambda p: hg.SGD([{"params": [p[0], torch.zeros(2, dtype=torch.long)]}], lr=0.1),
     r"^SGD parameter group 0, entry 1: expected a handgrad Parameter, got Tensor$"),
    (lambda p: hg.SGD([{"params": [p[0], torch.zeros(2, requires_grad=True)]}], lr=0.1),
     r"^SGD parameter group 0, entry 1: expected a handgrad Parameter, got Tensor$"),
    (lambda p: hg.SGD([p[0], torch.nn.Parameter(torch.zeros(2))], lr=0.1),
     r"^SGD parameter group 0, entry 1: expected a handgrad Parameter, got Parameter$"),
    (lambda p: hg.SGD([p[0], {"params": p[1:]}], lr=0.1),
     r"^SGD expected all Parameters or all parameter-group dicts, got a Parameter at 0 and a dict at 1$"),
    (lambda p: hg.SGD(p[0], lr=0.1),
     r"^SGD: expected a list \(or other ordered iterable\) of Parameters or of parameter-group dicts, "
     r"got a Parameter$"),
    (lambda p: hg.SGD([{"params": set(p)}], lr=0.1),
     r"^SGD parameter group 0: expected a list \(or other ordered iterable\) of Parameters, got a set$"),
    (lambda p: hg.SGD([{"params": p[:2]}, {"params": p[1:]}], lr=0.1),
     r"^SGD parameter group 1, entry 0: parameter \(shape \[2\]\) appears in groups 0 and 1; expected each "
     r"parameter in one group$"),
    (lambda p: hg.SGD([{"params": p[:1]}, {"params": p[1:], "lr": 0}], lr=0.1),
     r"^SGD parameter group 1: learning rate must be positive, got 0$"),
    (lambda p: hg.SGD([{"params": p[:1]}, {"params": p[1:], "lr": "0.1"}], lr=0.1),
     r"^SGD parameter group 1: learning rate must be positive, got '0.1'$"),
    (lambda p: hg.SGD([{"params": p[:1], "momentum": 1.0}], lr=0.1),
     r"^SGD parameter group 0: momentum must be in \[0, 1\), got 1.0$"),
    (lambda p: hg.SGD([{"params": p[:1], "momentum": -0.1}], lr=0.1),
     r"^SGD parameter group 0: momentum must be in \[0, 1\), got -0.1$"),
    (lambda p: hg.SGD([{"params": p[:1], "weight_decay": -1}], lr=0.1),
     r"^SGD parameter group 0: weight decay must be >= 0, got -1$"),
    (lambda p: hg.SGD([{"params": p[:1], "nesterov": True}], lr=0.1),
     r"^SGD parameter group 0: Nesterov momentum needs momentum > 0$"),
    (lambda p: hg.SGD([{"params": p[:1], "momentum": 0.0}], lr=0.1, momentum=0.9, nesterov=True),
     r"^SGD parameter group 0: Nesterov momentum needs momentum > 0$"),
    (lambda p: hg.SGD([{"params": p[:1], "nesterov": 1}], lr=0.1, momentum=0.9),
     r"^SGD parameter group 0: nesterov must be True or False, got 1$"),
    (lambda p: hg.Adam([{"params": p[:1], "betas": (0.9, 1.0)}]),
     r"^Adam parameter group 0: betas must be two numbers in \[0, 1\), got \(0.9, 1.0\)$"),
    (lambda p: hg.AdamW([{"params": p[:1], "betas": 0.9}]),
     r"^AdamW parameter group 0: betas must be two numbers in \[0, 1\), got 0.9$"),
    (lambda p: hg.AdamW([{"params": p[:1], "eps": -1e-8}]), r"^AdamW parameter group 0: eps must be >= 0, got -1e-08$"),
    (lambda p: hg.Adam([{"params": p[:1], "lr": -1.0}]),
     r"^Adam parameter group 0: learning rate must be positive, got -1.0$"),
])
def test_bad_param_groups(make, match):
    """(A plain floating tensor is accepted: the parameters of a layer written in the seeds' form, `self.w = w`.)"""
    with pytest.raises(ValueError, match=match):
        make(_ps())


class _Scheduled:
    """An optimizer with a per-step schedule: `before(opt, t)` runs before the t-th step, `after()` after it."""

    def __init__(self, opt, before, after=lambda: None):
        self.opt, self.before, self.after, self.t = opt, before, after, 0

    def zero_grad(self):
        self.opt.zero_grad()

    def step(self):
        self.before(self.opt, self.t)
        self.opt.step()
        self.after()
        self.t += 1


def test_setting_lr_scales_every_group_like_lambda_lr():
    """`opt.lr = v` (what the schedule callback does every batch) drives all groups as torch's LambdaLR:
    each keeps its initial ratio to group 0; momentum and weight decay are set in every group."""
    factor = [1.0, 0.5, 2.0, 0.1, 0.7, 0.3]
    first, second = dict(lr=0.02, weight_decay=0.1), dict()

    def hg_schedule(opt, t):  # as ScheduleCB: lr from group 0's initial lr, the same momentum everywhere
        opt.lr = 0.02 * factor[t]
        opt.momentum = 0.9 - 0.01 * t

    def torch_momentum(opt, t):
        for g in opt.param_groups:
            g["momentum"] = 0.9 - 0.01 * t

    def make_torch(p):
        opt = torch.optim.SGD(_groups(p, first, second), lr=0.1, momentum=0.9)
        return _Scheduled(opt, torch_momentum, torch.optim.lr_scheduler.LambdaLR(opt, factor.__getitem__).step)

    _train_twins(lambda p: _Scheduled(hg.SGD(_groups(p, first, second), lr=0.1, momentum=0.9), hg_schedule),
                 make_torch, steps=len(factor) - 1)
    opt = hg.SGD([{"params": _ps(1), "lr": 0.02}, {"params": _ps(2)}], lr=0.1, momentum=0.9)
    opt.lr = 0.04
    opt.momentum, opt.weight_decay = 0.5, 0.01
    assert [(g["lr"], g["momentum"], g["weight_decay"]) for g in opt.param_groups] == [
        (0.04, 0.5, 0.01), (pytest.approx(0.2, rel=1e-15), 0.5, 0.01)]
    assert opt.lr == 0.04 and opt.momentum == 0.5 and opt.weight_decay == 0.01
    adam = hg.Adam([{"params": _ps(1)}, {"params": _ps(2), "betas": (0.8, 0.9)}])
    adam.momentum = 0.7
    assert [g["betas"] for g in adam.param_groups] == [(0.7, 0.999), (0.7, 0.9)] and adam.momentum == 0.7


def _grouped_sgd(params, lr0=0.05):
    return hg.SGD([{"params": params[:1], "lr": lr0, "momentum": 0.5}, {"params": params[1:]}], lr=0.1, momentum=0.9)


def _options(opt):
    return [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]


@pytest.mark.parametrize("make", [_grouped_sgd,
                                  lambda ps, lr0=0.05: hg.AdamW([{"params": ps[:1], "lr": lr0, "betas": (0.8, 0.9)},
                                                                 {"params": ps[1:], "weight_decay": 0.5}], lr=0.1)])
def test_state_dict_round_trip_with_groups_continues_identically(make):
    import json

    torch.manual_seed(0)
    ps = [hg.Parameter(torch.randn(2)) for _ in range(3)]
    qs = [hg.Parameter(p.detach().clone()) for p in ps]
    a, b = make(ps), make(qs, lr0=0.01)  # b's lr ratio between the groups comes from a's state
    for i in range(6):
        gen = torch.Generator().manual_seed(i)
        for p, q in zip(ps, qs):
            p.g = torch.randn(2, generator=gen, dtype=p.dtype)
            q.g = p.g.clone()
        a.step()
        if i == 1:  # what a schedule or a person changed must come back too
            a.lr = 0.3
            a.momentum = 0.7
            a.param_groups[1]["weight_decay"] = 0.2
        if i == 2:  # b restarts from a's saved state, its hyper-parameters through JSON (as a checkpoint's)
            state = a.state_dict()
            state["hyper"] = json.loads(json.dumps(state["hyper"]))
            b.load_state_dict(state)
            for p, q in zip(ps, qs):
                q.data.copy_(p.data)
            assert _options(b) == _options(a) and b.steps == a.steps == 3
        elif i > 2:
            b.step()
    assert all(torch.equal(p, q) for p, q in zip(ps, qs))
    a.lr = b.lr = 0.5  # the saved lr ratios keep scaling group 1
    assert b.param_groups[1]["lr"] == a.param_groups[1]["lr"] == pytest.approx(1.0)


def test_load_state_dict_of_the_old_single_group_format():
    """Checkpoints written before parameter groups hold {"steps", "hyper": {"lr", "momentum"}, "state"}."""
    ps = _ps(2)
    for p in ps:
        p.data.fill_(1.0)
        p.g = torch.full((2,), 0.5)
    bufs = [torch.tensor([0.1, 0.2]), torch.tensor([0.3, 0.4])]
    old = {"steps": 7, "hyper": {"lr": 0.05, "momentum": 0.8}, "state": [{"momentum_buffer": b} for b in bufs]}
    expected = [1.0 - 0.05 * (0.8 * b + 0.5) for b in bufs]  # b <- 0.8 b + g,  p <- p - 0.05 b
    opt = hg.SGD(ps, lr=0.1, momentum=0.9)
    opt.load_state_dict(old)
    assert (opt.steps, opt.lr, opt.momentum) == (7, 0.05, 0.8)
    opt.step()
    for p, e in zip(ps, expected):
        torch.testing.assert_close(p.detach(), e, rtol=0, atol=1e-7)
    adam = hg.Adam([{"params": ps[:1], "lr": 0.01}, {"params": ps[1:], "lr": 0.02}])
    adam.load_state_dict({"steps": 2, "hyper": {"lr": 0.005, "momentum": 0.5}, "state": [{}, {}]})
    assert [(g["lr"], g["betas"]) for g in adam.param_groups] == [(0.005, (0.5, 0.999)), (0.01, (0.5, 0.999))]


@pytest.mark.parametrize("saved, load, match", [
    (lambda ps: _grouped_sgd(ps), lambda ps: hg.SGD(ps, lr=0.1),
     r"^optimizer state holds 2 parameter groups, the SGD has 1$"),
    (lambda ps: _grouped_sgd(ps), lambda ps: hg.SGD([{"params": ps[:2]}, {"params": ps[2:]}], lr=0.1),
     r"^optimizer state's parameter group 0 holds 1 parameters, the SGD's has 2$"),
    (lambda ps: hg.SGD(ps[:2], lr=0.1), lambda ps: hg.SGD(ps, lr=0.1),
     r"^optimizer state's parameter group 0 holds 2 parameters, the SGD's has 3$"),
    (lambda ps: hg.Adam(ps), lambda ps: hg.SGD(ps, lr=0.1),
     r"^optimizer state's parameter group 0 has options \['betas', 'eps', 'lr', 'weight_decay'\], SGD expected "
     r"\['lr', 'momentum', 'nesterov', 'weight_decay'\]$"),
])
def test_load_state_dict_that_does_not_fit(saved, load, match):
    ps = _ps()
    opt = load(ps)
    before = opt.state_dict()
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(saved(_ps()).state_dict())
    assert opt.state_dict() == before  # nothing half-loaded


def test_load_old_format_that_does_not_fit():
    opt = hg.SGD(_ps(), lr=0.1)
    with pytest.raises(ValueError, match=r"^optimizer state holds 2 parameters, the model has 3$"):
        opt.load_state_dict({"steps": 1, "hyper": {"lr": 0.1, "momentum": 0.0}, "state": [{}, {}]})
    with pytest.raises(ValueError, match=r"^optimizer state sets 'beta2', expected groups or some of lr, momentum$"):
        opt.load_state_dict({"steps": 1, "hyper": {"lr": 0.1, "beta2": 0.9}, "state": [{}, {}, {}]})


def test_sgd_steps_a_seeds_form_layers_plain_tensors():
    """A seeds'-form layer keeps plain tensors as its parameters: handgrad's SGD steps them in place."""
    from helpers import SeedsLin as Lin

    w, b = torch.randn(3, 2), torch.zeros(2)
    lin = Lin(w, b)
    opt = hg.SGD(lin.parameters(), lr=0.1)
    x = torch.randn(4, 3)
    lin(x)
    lin.backward(torch.ones(4, 2))
    expected_w = w - 0.1 * (x.t() @ torch.ones(4, 2))
    opt.step()
    torch.testing.assert_close(lin.w, expected_w)
    assert lin.w is w  # the caller's own tensor, changed in place
