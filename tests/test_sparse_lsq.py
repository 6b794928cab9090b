"""Tests of difflinalg.sparse.lsq (lsqr, lsmr) and the operator layer under them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

from difflinalg.sparse._operator import as_operator
from difflinalg.sparse.lsq import STOP_REASONS, lsmr, lsqr

sp = pytest.importorskip("scipy.sparse")
sla = pytest.importorskip("scipy.sparse.linalg")

f64, f32 = torch.float64, torch.float32
SOLVERS = {"lsqr": (lsqr, sla.lsqr), "lsmr": (lsmr, sla.lsmr)}
TIGHT = {"atol": 1e-14, "btol": 1e-14, "conlim": 1e14}  # inner solves to convergence


def _random(m, n, density, seed, scale=None):
    rng = np.random.default_rng(seed)
    S = sp.random(m, n, density=density, random_state=rng, format="csr")
    S = S + sp.eye(m, n, format="csr")  # no empty columns: full column rank when m >= n
    if scale is not None:
        S = (S @ sp.diags(scale)).tocsr()
    return S.tocsr(), rng


def _torch(S, layout="csr"):
    S = S.tocsr()
    S.sort_indices()
    csr = torch.sparse_csr_tensor(torch.from_numpy(S.indptr).long(),
                                  torch.from_numpy(S.indices).long(),
                                  torch.from_numpy(S.data.copy()), S.shape)
    return {"csr": csr, "coo": csr.to_sparse_coo(), "dense": csr.to_dense()}[layout]


def _problem(case):
    """(scipy matrix, b (m,) numpy, damp)."""
    if case == "overdetermined":  # inconsistent: random b
        S, rng = _random(300, 60, 0.05, 1)
        return S, rng.standard_normal(300), 0.0
    if case == "underdetermined":
        S, rng = _random(60, 200, 0.05, 2)
        return S, rng.standard_normal(60), 0.0
    if case == "damped":
        S, rng = _random(200, 80, 0.05, 3)
        return S, rng.standard_normal(200), 0.3
    if case == "ill_conditioned":
        S, rng = _random(200, 50, 0.1, 4, scale=np.logspace(0, -3, 50))
        return S, rng.standard_normal(200), 0.0
    if case == "consistent":
        S, rng = _random(150, 50, 0.05, 5)
        return S, S @ rng.standard_normal(50), 0.0
    if case == "rank_deficient":  # 10 repeated columns
        S, rng = _random(120, 40, 0.1, 6)
        S = sp.hstack([S, S[:, :10]]).tocsr()
        return S, rng.standard_normal(120), 0.0
    if case == "zero_rhs":
        S, _ = _random(80, 30, 0.1, 7)
        return S, np.zeros(80), 0.0
    raise AssertionError(case)


CASES = ["overdetermined", "underdetermined", "damped", "ill_conditioned", "consistent",
         "rank_deficient", "zero_rhs"]


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("method", list(SOLVERS))
def test_matches_scipy(method, case):
    ours, theirs = SOLVERS[method]
    S, b, damp = _problem(case)
    kw = {"atol": 1e-10, "btol": 1e-10}
    limit = "iter_lim" if method == "lsqr" else "maxiter"
    ref = theirs(S, b, damp=damp, **kw, **{limit: 2000})
    res = ours(_torch(S), torch.from_numpy(b), damp=damp, max_iter=2000, **kw)
    x_ref, istop_ref, itn_ref = ref[0], ref[1], ref[2]
    assert res.x.shape == (S.shape[1],) and res.x.dtype == f64
    assert res.info.istop.shape == () and res.info.istop.dtype == torch.int64
    assert int(res.info.iterations) <= itn_ref * 1.1 + 1
    assert int(res.info.istop) == istop_ref
    assert res.info.stop_reason == STOP_REASONS[istop_ref]
    scale = max(np.abs(x_ref).max(), 1.0)
    rtol = 1e-5 if case == "ill_conditioned" else 1e-8
    torch.testing.assert_close(res.x, torch.from_numpy(x_ref), rtol=0, atol=rtol * scale)
    # the true residuals, not the estimates
    r_ours = np.linalg.norm(b - S @ res.x.numpy())
    r_ref = np.linalg.norm(b - S @ x_ref)
    assert r_ours <= r_ref * (1 + 1e-8) + 1e-12
    torch.testing.assert_close(res.info.residual_norm, torch.tensor(r_ours, dtype=f64),
                               rtol=1e-6, atol=1e-9)
    ar = np.linalg.norm(S.T @ (b - S @ res.x.numpy()) - damp**2 * res.x.numpy())
    assert float(res.info.normal_residual_norm) == pytest.approx(ar, rel=1e-3, abs=1e-8)


@pytest.mark.parametrize("method", list(SOLVERS))
def test_batched_rhs_equals_separate_solves(method):
    ours, _ = SOLVERS[method]
    S, rng = _random(200, 50, 0.05, 11)
    B = np.stack([rng.standard_normal(200), S @ rng.standard_normal(50),
                  np.zeros(200)], 1)  # inconsistent, consistent, zero: different stops
    A = _torch(S)
    res = ours(A, torch.from_numpy(B), atol=1e-10, btol=1e-10)
    assert res.x.shape == (50, 3) and res.info.istop.shape == (3,)
    assert isinstance(res.info.stop_reason, tuple) and len(res.info.stop_reason) == 3
    for j in range(3):
        one = ours(A, torch.from_numpy(B[:, j]), atol=1e-10, btol=1e-10)
        assert int(res.info.istop[j]) == int(one.info.istop)
        assert int(res.info.iterations[j]) == int(one.info.iterations)
        torch.testing.assert_close(res.x[:, j], one.x, rtol=1e-12, atol=1e-12)
    assert len(set(res.info.iterations.tolist())) == 3  # the columns stopped separately


@pytest.mark.parametrize("layout", ["coo", "dense", "callable", "operator"])
@pytest.mark.parametrize("method", list(SOLVERS))
def test_layouts_agree(method, layout):
    ours, _ = SOLVERS[method]
    S, b, _ = _problem("overdetermined")
    b = torch.from_numpy(b)
    ref = ours(_torch(S), b, atol=1e-10, btol=1e-10)
    if layout == "callable":
        D = _torch(S, "dense")
        A = (lambda x: D @ x, lambda y: D.mT @ y, tuple(D.shape))
    elif layout == "operator":
        A = as_operator(_torch(S, "coo"))
    else:
        A = _torch(S, layout)
    res = ours(A, b, atol=1e-10, btol=1e-10)
    torch.testing.assert_close(res.x, ref.x, rtol=1e-10, atol=1e-10)
    assert int(res.info.iterations) == int(ref.info.iterations)


@pytest.mark.parametrize("method", list(SOLVERS))
def test_x0_max_iter_conlim_match_scipy(method):
    ours, theirs = SOLVERS[method]
    limit = "iter_lim" if method == "lsqr" else "maxiter"
    x0 = np.random.default_rng(0).standard_normal(60)
    # a conlim reached early: on this problem the Krylov paths of any two implementations
    # part (rounding amplified by the loss of orthogonality) after ~13 steps
    conlim = {"lsqr": 30.0, "lsmr": 10.0}[method]
    for case, kw, ours_kw in (("overdetermined", {"x0": x0}, {"x0": torch.from_numpy(x0)}),
                              ("overdetermined", {limit: 5}, {"max_iter": 5}),
                              ("ill_conditioned", {"conlim": conlim}, {"conlim": conlim})):
        S, b, _ = _problem(case)
        ref = theirs(S, b, atol=1e-10, btol=1e-10, **kw)
        res = ours(_torch(S), torch.from_numpy(b), atol=1e-10, btol=1e-10, **ours_kw)
        assert int(res.info.istop) == ref[1] and int(res.info.iterations) == ref[2]
        torch.testing.assert_close(res.x, torch.from_numpy(ref[0]), rtol=1e-8, atol=1e-8)
    assert {int(res.info.istop), ref[1]} == {3}
    S, b, _ = _problem("overdetermined")
    res = ours(_torch(S), torch.from_numpy(b), max_iter=0, x0=torch.from_numpy(x0))
    assert int(res.info.istop) == 0 and int(res.info.iterations) == 0
    torch.testing.assert_close(res.x, torch.from_numpy(x0))


@pytest.mark.parametrize("method", list(SOLVERS))
def test_float32_close_to_float64(method):
    ours, _ = SOLVERS[method]
    S, b, _ = _problem("overdetermined")
    A64, b64 = _torch(S), torch.from_numpy(b)
    x64 = ours(A64, b64, atol=1e-10, btol=1e-10).x
    res = ours(A64.to(f32), b64.to(f32), atol=1e-6, btol=1e-6)
    assert res.x.dtype == f32 and res.info.residual_norm.dtype == f32
    torch.testing.assert_close(res.x.double(), x64, rtol=0, atol=1e-4 * float(x64.abs().max()))


@pytest.mark.parametrize("shape", [(0, 4), (5, 0), (0, 0)])
@pytest.mark.parametrize("method", list(SOLVERS))
def test_empty(method, shape):
    ours, _ = SOLVERS[method]
    A = torch.zeros(shape, dtype=f64).to_sparse_csr()
    res = ours(A, torch.zeros(shape[0], dtype=f64))
    assert res.x.shape == (shape[1],) and int(res.info.istop) == 0
    res = ours(torch.randn(6, 3, dtype=f64), torch.randn(6, 0, dtype=f64))
    assert res.x.shape == (3, 0) and res.info.istop.shape == (0,)


# ----------------------------------------------------------------------------- gradients


def _grad_problem(m=9, n=5, k=2):
    D = torch.randn(m, n, dtype=f64) * (torch.rand(m, n) < 0.5) + 2 * torch.eye(m, n, dtype=f64)
    return D, torch.randn(m, k, dtype=f64, requires_grad=True)


@pytest.mark.parametrize("damp", [0.0, 0.6])
@pytest.mark.parametrize("layout", ["csr", "coo", "dense"])
@pytest.mark.parametrize("method", list(SOLVERS))
def test_gradcheck(method, layout, damp):
    ours, _ = SOLVERS[method]
    D, b = _grad_problem()
    if layout == "dense":
        def fn(values, b):
            return ours(values, b, damp=damp, **TIGHT).x
        values = D.clone().requires_grad_()
    else:
        S = D.to_sparse_csr() if layout == "csr" else D.to_sparse_coo().coalesce()
        if layout == "csr":
            crow, col = S.crow_indices(), S.col_indices()

            def build(v):
                return torch.sparse_csr_tensor(crow, col, v, D.shape)
        else:
            idx = S.indices()

            def build(v):
                return torch.sparse_coo_tensor(idx, v, D.shape)

        def fn(values, b):
            return ours(build(values), b, damp=damp, **TIGHT).x
        values = S.values().clone().requires_grad_()
    assert gradcheck(fn, (values, b))


@pytest.mark.parametrize("method", list(SOLVERS))
@pytest.mark.parametrize("damp", [0.0, 0.6])
def test_gradient_matches_normal_equations(method, damp):
    """Against autograd through x = (A^T A + d^2 I)^{-1} A^T b, dense, and the sparse
    gradient keeps A's pattern (same indices, only the stored entries)."""
    ours, _ = SOLVERS[method]
    D, b = _grad_problem(m=12, n=6, k=3)
    upstream = torch.randn(6, 3, dtype=f64)
    A = D.clone().requires_grad_()
    x = torch.linalg.solve(A.mT @ A + damp**2 * torch.eye(6, dtype=f64), A.mT @ b)
    gA_ref, gb_ref = torch.autograd.grad((x * upstream).sum(), (A, b))
    for layout in ("csr", "coo"):
        S = (D.to_sparse_csr() if layout == "csr" else D.to_sparse_coo().coalesce())
        S.requires_grad_()
        bl = b.detach().clone().requires_grad_()
        (ours(S, bl, damp=damp, **TIGHT).x * upstream).sum().backward()
        g = S.grad
        assert g.layout == S.layout
        if layout == "csr":
            assert torch.equal(g.crow_indices(), S.crow_indices())
            assert torch.equal(g.col_indices(), S.col_indices())
        else:
            assert torch.equal(g._indices(), S._indices())
        gv = g.values() if layout == "csr" else g._values()
        assert gv.numel() == D.count_nonzero()
        mask = D != 0
        torch.testing.assert_close(g.to_dense(), gA_ref * mask, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(bl.grad, gb_ref, rtol=1e-8, atol=1e-10)


def test_gradient_only_b_and_callable_operator():
    D, b = _grad_problem()
    op = (lambda x: D @ x, lambda y: D.mT @ y, tuple(D.shape))
    assert gradcheck(lambda b: lsqr(op, b, **TIGHT).x, (b,))
    assert gradcheck(lambda b: lsmr(op, b[:, 0], damp=0.3, **TIGHT).x, (b,))


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("method", list(SOLVERS))
def test_errors(method):
    ours, _ = SOLVERS[method]
    A = torch.randn(6, 4, dtype=f64)
    b = torch.randn(6, dtype=f64)
    prefix = rf"^{method}: "
    with pytest.raises(ValueError, match=prefix + r"expected a dense b of shape .*b.shape=\(5,\)"):
        ours(A, b[:5])
    with pytest.raises(ValueError, match=prefix + r"expected a dense b"):
        ours(A, torch.randn(6, 2, 2, dtype=f64))
    with pytest.raises(ValueError, match=prefix + r"expected a dense x0 of shape \(n,\)"):
        ours(A, b, x0=torch.zeros(3, dtype=f64))
    with pytest.raises(ValueError, match=prefix + r"expected x0 of shape \(n, k\)"):
        ours(A, torch.randn(6, 2, dtype=f64), x0=torch.zeros(4, 3, dtype=f64))
    with pytest.raises(ValueError, match=prefix + r"expected A with layout one of"):
        ours(A.to_sparse_csc(), b)
    with pytest.raises(ValueError, match=prefix + r"expected A with layout one of"):
        ours(A.to_sparse_bsr((2, 2)), b)
    with pytest.raises(ValueError, match=prefix + r"expected A to be a matrix"):
        ours(torch.randn(2, 6, 4, dtype=f64), b)
    with pytest.raises(TypeError, match=prefix + r"expected A to be a torch.Tensor"):
        ours(A.numpy(), b)
    with pytest.raises(TypeError, match=prefix + r"expected a real floating dtype"):
        ours(A, torch.ones(6, dtype=torch.int64))
    with pytest.raises(TypeError, match=prefix + r"complex"):
        ours(A.to(torch.complex128), b)
    with pytest.raises(TypeError, match=prefix + r"expected b to have the same dtype as A"):
        ours(A.float(), b)
    with pytest.raises(ValueError, match=prefix + r"expected damp to be a finite float >= 0"):
        ours(A, b, damp=-1.0)
    with pytest.raises(ValueError, match=prefix + r"expected max_iter to be None or an int"):
        ours(A, b, max_iter=-2)
    with pytest.raises(ValueError, match=prefix + r"expected A's shape"):
        ours((lambda x: x, lambda y: y, (6,)), b)
    bad = A.clone()
    bad[0, 0] = float("nan")
    ours(bad, b)  # no data-dependent check unless asked
    with pytest.raises(ValueError, match=prefix + r"expected finite values in A"):
        ours(bad.to_sparse_csr(), b, check=True)
    with pytest.raises(ValueError, match=prefix + r"expected finite values in b"):
        ours(A, b * float("inf"), check=True)


def test_singular_and_inconsistent_are_reported_not_raised():
    A = torch.zeros(5, 3, dtype=f64)
    A[0, 0] = 1.0
    res = lsqr(A.to_sparse_coo(), torch.ones(5, dtype=f64))
    assert int(res.info.istop) in (1, 2) and float(res.info.residual_norm) == pytest.approx(2.0)
    res = lsmr(torch.zeros(5, 3, dtype=f64), torch.ones(5, dtype=f64))
    assert int(res.info.istop) == 0 and res.info.stop_reason == STOP_REASONS[0]
    assert torch.equal(res.x, torch.zeros(3, dtype=f64))
