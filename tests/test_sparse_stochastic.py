"""sgd_lstsq: sparse gradients, loss-scale invariance, convergence on consistent systems."""

from __future__ import annotations

import pytest
import torch

from difflinalg.sparse.stochastic import sgd_lstsq, sparse_gradient

f64 = torch.float64


def _system(m=400, n=60, density=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.rand(m, n, dtype=f64, generator=g) * (torch.rand(m, n, generator=g) < density)
    A = A * torch.logspace(0, 2, n, dtype=f64)        # badly scaled columns
    x_true = torch.randn(n, dtype=f64, generator=g)
    return A, x_true, A @ x_true


def test_sparse_gradient_is_sparse_and_exact():
    A, _, _ = _system(m=50, n=30, density=0.1)
    rows = A[:8].to_sparse_csr()
    r = torch.randn(8, dtype=f64)
    g = sparse_gradient(rows, r, 30)
    assert g.layout == torch.sparse_coo and g.is_coalesced()
    touched = (A[:8] != 0).any(0)
    assert g._nnz() == int(touched.sum())          # support = columns the batch touches
    torch.testing.assert_close(g.to_dense(), A[:8].T @ r)


def test_mean_and_sum_losses_take_the_same_steps():
    A, _, b = _system()
    As = A.to_sparse_csr()
    kw = dict(batch_size=40, epochs=3, lr=0.3, generator=None, shuffle=False)  # equal batches
    xm = sgd_lstsq(As, b, reduction="mean", **kw).x
    xs = sgd_lstsq(As, b, reduction="sum", **kw).x
    torch.testing.assert_close(xm, xs, rtol=1e-9, atol=1e-12)


def test_converges_on_a_consistent_system():
    A, x_true, b = _system()
    res = sgd_lstsq(A.to_sparse(), b, batch_size=40, epochs=300, lr=0.5,
                    generator=torch.Generator().manual_seed(1))
    assert res.residual_norms[-1] < 1e-2 * float(b.norm())
    assert res.residual_norms[-1] < res.residual_norms[0] / 10
    assert res.steps == 300 * 10


def test_untouched_columns_do_not_move():
    A, _, b = _system(m=20, n=40, density=0.05)
    A[:, 5] = 0.0                                   # a column no row touches
    x0 = torch.randn(40, dtype=f64)
    res = sgd_lstsq(A.to_sparse_csr(), b, x0=x0, batch_size=4, epochs=2)
    assert res.x[5] == x0[5]


def test_stream_of_minibatches():
    A, _, b = _system(m=200, n=30)
    As = A.to_sparse_csr()

    def stream():
        for r0 in range(0, 200, 50):
            yield A[r0:r0 + 50].to_sparse_csr(), b[r0:r0 + 50]

    res = sgd_lstsq(stream, n=30, epochs=50, lr=0.5)
    assert res.residual_norms == [] and res.steps == 200
    assert float((As @ res.x - b).norm()) < 0.5 * float(b.norm())


def test_errors():
    A, _, b = _system(m=10, n=5)
    with pytest.raises(TypeError, match=r"^sgd_lstsq: expected A to be a sparse COO or CSR"):
        sgd_lstsq(A, b)
    with pytest.raises(ValueError, match=r"^sgd_lstsq: expected b of shape \(10,\)"):
        sgd_lstsq(A.to_sparse(), b[:3])
    with pytest.raises(ValueError, match=r"^sgd_lstsq: expected reduction"):
        sgd_lstsq(A.to_sparse(), b, reduction="avg")
    with pytest.raises(ValueError, match=r"^sgd_lstsq: expected n"):
        sgd_lstsq(lambda: iter(()))
