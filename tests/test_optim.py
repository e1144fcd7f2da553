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


def _train_twins(make_hg, make_torch, steps=6, clip=None, dtype=torch.float64):
    torch.manual_seed(0)
    model = hg.Sequential(hg.Linear(5, 4), hg.ReLU(), hg.Linear(4, 3)).to(dtype=dtype)
    twin = hg.interop.to_torch(model)
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
