"""factorize_model: hooks, budgets, atomic replacement, report."""

from __future__ import annotations

import copy

import pytest
import torch

from difflinalg.nn import FactorizedConv2d, FactorizedLinear, factorize_model

f64 = torch.float64


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 32, 3, stride=2, padding=1, groups=2)
        self.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 4 * 4, 64),
                                        torch.nn.ReLU(), torch.nn.Linear(64, 10))

    def forward(self, x):
        return self.head(torch.relu(self.conv2(torch.relu(self.conv1(x)))))


def _setup(seed=0):
    torch.manual_seed(seed)
    net = Net().double()
    batches = [torch.randn(16, 3, 8, 8, dtype=f64) for _ in range(4)]
    return net, batches


def _params(model):
    return sum(p.numel() for p in model.parameters())


def _layer_nmse(original, layer_name, new_model, batches):
    """Output error of one replaced layer on the inputs it saw, against its original."""
    seen = []
    h = original.get_submodule(layer_name).register_forward_hook(
        lambda m, a, o: seen.append(a[0].detach()))
    with torch.no_grad():
        for b in batches:
            original(b)
    h.remove()
    old, new = original.get_submodule(layer_name), new_model.get_submodule(layer_name)
    with torch.no_grad():
        y = torch.cat([old(x).flatten() for x in seen])
        y_hat = torch.cat([new(x).flatten() for x in seen])
    return float((y - y_hat).square().mean() / y.var())


def test_fixed_rank_replaces_layers_with_reported_error():
    net, batches = _setup()
    original = copy.deepcopy(net)
    report = factorize_model(net, batches, rank=0.5, min_channels=16, min_features=16,
                             progress=False)
    assert isinstance(net.conv2, FactorizedConv2d) and isinstance(net.head[1], FactorizedLinear)
    assert isinstance(net.conv1, torch.nn.Conv2d)  # 3 input channels: not a candidate
    by_name = {r.name: r for r in report.layers}
    assert by_name["conv2"].rank == 8 and by_name["head.1"].rank == 32
    for name in ("conv2", "head.1"):
        assert _layer_nmse(original, name, net, batches) == pytest.approx(
            by_name[name].nmse, rel=1e-6, abs=1e-12)
    assert report.params_after == _params(net) < report.params_before == _params(original)
    assert "conv2" in str(report) and "head.1" in str(report)


@pytest.mark.parametrize("key", ["target_params", "target_flops"])
def test_budget_is_met_with_the_least_error_first(key):
    net, batches = _setup()
    report = factorize_model(net, batches, **{key: 0.6}, progress=False)
    if key == "target_params":
        assert _params(net) <= 0.6 * report.params_before
    else:
        assert report.flops_after <= 0.6 * report.flops_before
    assert any(r.rank is not None for r in report.layers)
    assert all(0 <= r.nmse < 1 for r in report.layers)


def test_greedy_spends_error_where_it_is_cheapest():
    """A layer whose outputs are nearly low-rank is compressed before a full-rank one."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.Linear(32, 32)).double()
    with torch.no_grad():
        u = torch.randn(32, 2, dtype=f64)
        net[1].weight.copy_(u @ torch.randn(2, 32, dtype=f64) + 1e-4 * torch.randn(32, 32))
    batches = [torch.randn(256, 32, dtype=f64) for _ in range(2)]
    report = factorize_model(net, batches, target_params=0.8, progress=False)
    by_name = {r.name: r for r in report.layers}
    assert by_name["1"].rank is not None and by_name["1"].nmse < 1e-6
    assert by_name["0"].rank is None


def test_failures_leave_the_model_untouched():
    net, batches = _setup()
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(ValueError, match=r"^factorize_model: the budget"):
        factorize_model(net, batches, target_params=0.05, progress=False)
    with pytest.raises(ValueError, match=r"^factorize_model: expected at least one calibration"):
        factorize_model(net, [], rank=4, progress=False)
    with pytest.raises(ValueError, match=r"^factorize_model: expected exactly one of"):
        factorize_model(net, batches, rank=4, target_params=0.5, progress=False)
    with pytest.raises(ValueError, match=r"^factorize_model: expected rank > 0"):
        factorize_model(net, batches, rank=0, progress=False)
    with pytest.raises(ValueError, match=r"^factorize_model: expected at least one nn.Linear"):
        factorize_model(torch.nn.Sequential(torch.nn.Linear(4, 4)), [torch.randn(2, 4)],
                        rank=2, progress=False)
    assert isinstance(net.conv2, torch.nn.Conv2d) and isinstance(net.head[1], torch.nn.Linear)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_calibration_runs_in_eval_mode_and_restores_the_mode():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.BatchNorm1d(32),
                              torch.nn.Linear(32, 32)).double()
    stats = net[1].running_mean.clone()
    factorize_model(net, [torch.randn(64, 32, dtype=f64) + 3.0], rank=4, progress=False)
    assert net.training and torch.equal(net[1].running_mean, stats)


def test_accepts_dataloader_style_batches_and_reports_progress(capsys):
    net, batches = _setup()
    factorize_model(net, [(b, torch.zeros(16)) for b in batches], rank=8, progress=True)
    assert "calibration batch 4" in capsys.readouterr().out
