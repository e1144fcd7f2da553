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
