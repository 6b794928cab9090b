"""CovariancePooling: covariance, normalisation, flattening, gradients, errors."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

import difflinalg as dl
from difflinalg.nn import CovariancePooling

f64 = torch.float64


def _reference(x, eps, center=True):
    feats = x.flatten(2).double()
    if center:
        feats = feats - feats.mean(-1, keepdim=True)
    cov = feats @ feats.mT / feats.shape[-1]
    c = cov.shape[-1]
    cov = cov + eps * (cov.diagonal(dim1=-2, dim2=-1).sum(-1) / c)[:, None, None] * torch.eye(
        c, dtype=f64)
    lam, v = torch.linalg.eigh(cov)
    return cov, (v * lam.sqrt().unsqueeze(-2)) @ v.mT, (v * lam.log().unsqueeze(-2)) @ v.mT


@pytest.mark.parametrize("method", ["auto", "eigh", "newton_schulz", "pade"])
def test_sqrt_pooling_matches_reference(method):
    x = torch.randn(3, 6, 5, 4, dtype=f64)
    pool = CovariancePooling(method=method, flatten="none", eps=1e-3)
    cov, root, _ = _reference(x, 1e-3)
    torch.testing.assert_close(pool.covariance(x), cov)
    torch.testing.assert_close(pool(x), root, rtol=1e-10, atol=1e-12)


def test_log_none_and_triu():
    x = torch.randn(2, 5, 30, dtype=f64)
    cov, root, log = _reference(x, 1e-5)
    torch.testing.assert_close(CovariancePooling(normalization="log", flatten="none")(x), log)
    torch.testing.assert_close(CovariancePooling(normalization="none", flatten="none")(x), cov)
    flat = CovariancePooling()(x)
    rows, cols = torch.triu_indices(5, 5)
    assert flat.shape == (2, 15)
    torch.testing.assert_close(flat, root[:, rows, cols], rtol=1e-10, atol=1e-12)


def test_uncentred_and_float32():
    x = torch.rand(4, 8, 9, 9)
    out = CovariancePooling(center=False, flatten="none")(x)
    _, root, _ = _reference(x, 1e-5, center=False)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), root, rtol=1e-4, atol=1e-5)


def test_rank_deficient_and_zero_features_stay_finite():
    x = torch.randn(2, 16, 3, 3)  # 9 positions for 16 channels: rank <= 8
    assert torch.isfinite(CovariancePooling()(x)).all()
    assert torch.isfinite(CovariancePooling()(torch.zeros(2, 4, 3, 3))).all()


@pytest.mark.parametrize("normalization", ["sqrt", "log"])
def test_gradcheck(normalization):
    x = torch.randn(2, 3, 4, 2, dtype=f64, requires_grad=True)
    pool = CovariancePooling(normalization=normalization, eps=1e-2)
    assert gradcheck(pool, (x,))


def test_trains_in_a_network():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), CovariancePooling(), torch.nn.Linear(36, 2))
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 0, 1])
    loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_bad_arguments_and_input():
    with pytest.raises(ValueError, match=r"^CovariancePooling: expected normalization"):
        CovariancePooling(normalization="power")
    with pytest.raises(ValueError, match=r"^CovariancePooling: expected method"):
        CovariancePooling(method="svd")
    with pytest.raises(ValueError, match=r"^CovariancePooling: expected flatten"):
        CovariancePooling(flatten="tril")
    with pytest.raises(ValueError, match=r"^CovariancePooling: expected eps >= 0"):
        CovariancePooling(eps=-1.0)
    with pytest.raises(ValueError, match=r"^CovariancePooling: expected input of shape"):
        CovariancePooling()(torch.randn(3, 4))
    with pytest.raises(TypeError, match=r"^CovariancePooling: "):
        CovariancePooling()(torch.ones(2, 3, 4, dtype=torch.int64))
    assert "normalization='sqrt'" in repr(CovariancePooling())
    assert dl.nn.CovariancePooling is CovariancePooling
