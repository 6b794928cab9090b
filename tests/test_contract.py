"""Lazy reductions: trace / diagonal / inner product of products, cheapest trace of a chain."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

from difflinalg.contract import (
    chain_plan,
    diag_product,
    frobenius_inner,
    trace_chain,
    trace_product,
)

f64 = torch.float64


@pytest.mark.parametrize("batch_a,batch_b", [((), ()), ((3,), (3,)), ((2, 1), (4,)), ((0,), ())])
@pytest.mark.parametrize("m,n", [(5, 5), (3, 7), (1, 4), (6, 1)])
def test_against_the_product(batch_a, batch_b, m, n):
    A = torch.randn(*batch_a, m, n, dtype=f64)
    B = torch.randn(*batch_b, n, m, dtype=f64)
    AB = A @ B
    torch.testing.assert_close(trace_product(A, B), AB.diagonal(dim1=-2, dim2=-1).sum(-1))
    torch.testing.assert_close(diag_product(A, B), AB.diagonal(dim1=-2, dim2=-1))
    C = torch.randn(*batch_b, m, n, dtype=f64)
    torch.testing.assert_close(frobenius_inner(A, C), (A * C).sum((-2, -1)))


def test_gradients():
    A = torch.randn(2, 4, 3, dtype=f64, requires_grad=True)
    B = torch.randn(2, 3, 4, dtype=f64, requires_grad=True)
    C = torch.randn(2, 4, 3, dtype=f64, requires_grad=True)
    assert gradcheck(trace_product, (A, B))
    assert gradcheck(diag_product, (A, B))
    assert gradcheck(frobenius_inner, (A, C))
    assert gradcheck(lambda a, b, c: trace_chain(a, b, c @ c.mT), (A, B, C))


def test_float32_against_float64():
    A, B = torch.randn(64, 48), torch.randn(48, 64)
    ref = torch.trace(A.double() @ B.double())
    scale = float((A.double().abs() @ B.double().abs()).trace())
    assert abs(float(trace_product(A, B)) - float(ref)) <= 1e-5 * scale


@pytest.mark.parametrize("shapes", [[(4, 4)], [(3, 5), (5, 3)], [(6, 1), (1, 6), (6, 6)],
                                    [(2, 7), (7, 3), (3, 5), (5, 2)],
                                    [(8, 1), (1, 8), (8, 2), (2, 8)]])
def test_trace_chain_matches_the_product(shapes):
    mats = [torch.randn(3, *s, dtype=f64) for s in shapes]
    prod = mats[0]
    for m in mats[1:]:
        prod = prod @ m
    torch.testing.assert_close(trace_chain(*mats), prod.diagonal(dim1=-2, dim2=-1).sum(-1))


def test_chain_plan_avoids_the_big_products():
    n = 1000
    rotation, split, flops = chain_plan([(n, 1), (1, n), (n, n)])
    assert flops <= 2 * n * n  # v^T M u and an inner product, never n x n x n
    naive = n * 1 * n + n * n * n  # (u v^T) M
    assert flops < naive / 100


def test_bad_input():
    A = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"^trace_product: expected B of shape \(\*, n, m\)"):
        trace_product(A, torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"^frobenius_inner: expected B of shape the same"):
        frobenius_inner(A, torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"^diag_product: expected broadcastable batch dims"):
        diag_product(torch.randn(2, 3, 4), torch.randn(5, 4, 3))
    with pytest.raises(TypeError, match=r"^trace_product: "):
        trace_product(A, torch.randn(4, 3, dtype=f64))
    with pytest.raises(ValueError, match=r"^trace_chain: expected A2 columns to match A1 rows"):
        trace_chain(torch.randn(3, 4), torch.randn(4, 5))
    with pytest.raises(ValueError, match=r"^trace_chain: expected at least one matrix"):
        trace_chain()


@pytest.mark.parametrize("batch", [(), (3,), (2, 2)])
@pytest.mark.parametrize("m,n", [(40, 24), (37, 50), (16, 5)])
def test_block_diagonal_path_matches_the_product(monkeypatch, batch, m, n):
    """The bmm-on-views path (forced at small sizes), with remainder rows and batches."""
    import sys
    contract_module = sys.modules["difflinalg.contract"]  # the attribute is the function
    monkeypatch.setattr(contract_module, "_DIAG_MIN_ROWS", 1)
    monkeypatch.setattr(contract_module, "_DIAG_BLOCK", 8)
    A = torch.randn(*batch, m, n, dtype=f64, requires_grad=True)
    B = torch.randn(*batch, n, m, dtype=f64, requires_grad=True)
    AB = A @ B
    torch.testing.assert_close(diag_product(A, B), AB.diagonal(dim1=-2, dim2=-1))
    torch.testing.assert_close(trace_product(A, B), AB.diagonal(dim1=-2, dim2=-1).sum(-1))
    g = torch.randn(*batch, m, dtype=f64)
    ga, gb = torch.autograd.grad((diag_product(A, B) * g).sum(), (A, B))
    ra, rb = torch.autograd.grad(((A @ B).diagonal(dim1=-2, dim2=-1) * g).sum(), (A, B))
    torch.testing.assert_close(ga, ra)
    torch.testing.assert_close(gb, rb)


def test_block_diagonal_path_gradcheck(monkeypatch):
    import sys
    contract_module = sys.modules["difflinalg.contract"]
    monkeypatch.setattr(contract_module, "_DIAG_MIN_ROWS", 1)
    monkeypatch.setattr(contract_module, "_DIAG_BLOCK", 4)
    A = torch.randn(2, 10, 3, dtype=f64, requires_grad=True)   # 2 blocks + 2 remainder rows
    B = torch.randn(2, 3, 10, dtype=f64, requires_grad=True)
    assert gradcheck(diag_product, (A, B))
    assert gradcheck(trace_product, (A, B))


def test_block_diagonal_path_at_its_real_size_float32():
    A, B = torch.randn(600, 300), torch.randn(300, 600).mT.contiguous().mT  # B column-major
    ref = (A.double() @ B.double()).diagonal()
    scale = (A.double().abs() @ B.double().abs()).diagonal()
    assert ((diag_product(A, B).double() - ref).abs() <= 1e-5 * scale).all()
