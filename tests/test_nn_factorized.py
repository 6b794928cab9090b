"""FactorizedLinear / FactorizedConv2d: built from layers, data-aware, progressive."""

from __future__ import annotations

import pytest
import torch

from difflinalg.factorize import factorize_conv2d, factorize_matrix
from difflinalg.nn import FactorizedConv2d, FactorizedLinear

f64 = torch.float64


def _nmse(y, y_hat):
    y, y_hat = y.detach(), y_hat.detach()
    return float((y - y_hat).square().mean() / y.var())


def _correlated(n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, dtype=f64, generator=g) * torch.logspace(0, -2, d, dtype=f64)
    return torch.randn(n, d, dtype=f64, generator=g) @ mix


def test_linear_from_calibration_is_the_optimum_and_trains():
    torch.manual_seed(0)
    layer = torch.nn.Linear(32, 24).double()
    X = _correlated(2000, 32)
    small = FactorizedLinear.from_linear(layer, 6, calibration=X)
    assert small.weight_a.shape == (6, 32) and small.weight_b.shape == (24, 6)
    y, y_hat = layer(X), small(X)
    sol = factorize_matrix(X, None, layer.weight.detach().mT, bias=layer.bias, rank=6)
    assert _nmse(y, y_hat) == pytest.approx(sol.nmse, rel=1e-8)
    blind = FactorizedLinear.from_linear(layer, 6)
    assert _nmse(y, y_hat) < 0.5 * _nmse(y, blind(X))
    small(X).sum().backward()
    assert all(p.grad is not None for p in small.parameters())
    assert "rank=6" in repr(small)
    state = small.state_dict()
    again = FactorizedLinear(32, 24, 6).double()
    again.load_state_dict(state)
    torch.testing.assert_close(again(X), small(X))


def test_linear_set_rank_progressive():
    layer = torch.nn.Linear(32, 24).double()
    X = _correlated(1000, 32, seed=1)
    small = FactorizedLinear.from_linear(layer, 12, calibration=X)
    before = _nmse(layer(X), small(X))
    small.set_rank(4, calibration=X)
    assert small.rank == 4 and small.weight_a.shape == (4, 32)
    assert _nmse(layer(X), small(X)) > before
    small.set_rank(2)  # data-blind from the current factors
    assert small.weight_b.shape == (24, 2)


@pytest.mark.parametrize("groups,stride,dilation,mode", [(1, 1, 1, "zeros"), (2, 2, 2, "reflect")])
def test_conv_from_calibration_matches_reported_error(groups, stride, dilation, mode):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 12, 3, stride=stride, padding=2, dilation=dilation, groups=groups,
                           padding_mode=mode).double()
    X = torch.randn(6, 8, 13, 13, dtype=f64)
    small = FactorizedConv2d.from_conv2d(conv, 4, calibration=X)
    assert small.conv_a.weight.shape == (4, 8 // groups, 3, 3)
    assert small.conv_b.weight.shape == (12, 4 // groups, 1, 1)
    sol = factorize_conv2d(X, conv.weight, rank=4, biasA=conv.bias, stride=stride, padding=2,
                           dilation=dilation, groups=groups, padding_mode=mode)
    y = conv(X)
    assert small(X).shape == y.shape
    assert _nmse(y, small(X)) == pytest.approx(sol.nmse, rel=1e-8)
    blind = FactorizedConv2d.from_conv2d(conv, 4)
    assert blind(X).shape == y.shape
    small.set_rank(2, calibration=X)
    assert small.conv_a.out_channels == 2 and small(X).shape == y.shape


def test_bad_arguments():
    with pytest.raises(ValueError,
                       match=r"^FactorizedLinear: expected an integer rank in \[1, 4\]"):
        FactorizedLinear(4, 8, 5)
    with pytest.raises(ValueError,
                       match=r"^FactorizedLinear.from_linear: expected an nn.Linear"):
        FactorizedLinear.from_linear(torch.nn.Conv2d(2, 2, 1), 1)
    with pytest.raises(ValueError, match=r"^FactorizedConv2d: expected rank to be a multiple"):
        FactorizedConv2d(8, 12, 3, 3, groups=2)
    with pytest.raises(ValueError,
                       match=r"^FactorizedConv2d.from_conv2d: expected an nn.Conv2d"):
        FactorizedConv2d.from_conv2d(torch.nn.Conv2d(4, 4, 3, padding="same"), 2)
