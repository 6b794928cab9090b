"""factorize_matrix: the closed-form optimum of the output error, streamed statistics."""

from __future__ import annotations

import pytest
import torch

from difflinalg.factorize import LowRankSolution, factorize_matrix
from difflinalg.testing import reduced_rank_regression_reference

f32, f64 = torch.float32, torch.float64


def _problem(n=3000, d=48, m=40, dtype=f64, seed=0, noise=0.1):
    """Correlated inputs (a few strong directions, like real activations) and a layer."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, dtype=f64, generator=g) * torch.logspace(0, -2, d, dtype=f64)
    X = torch.randn(n, d, dtype=f64, generator=g) @ mix + torch.randn(d, dtype=f64, generator=g)
    W = torch.randn(d, m, dtype=f64, generator=g) / d ** 0.5
    bias = torch.randn(m, dtype=f64, generator=g)
    Y = X @ W + bias + noise * torch.randn(n, m, dtype=f64, generator=g)
    return X.to(dtype), Y.to(dtype), W.to(dtype), bias.to(dtype)


def _true_nmse(X, Y, sol):
    X, Y = X.double(), Y.double()
    B = sol.Wa.double() if sol.Wb is None else sol.Wa.double() @ sol.Wb.double()
    err = Y - X @ B - sol.bias.double()
    return float(err.square().mean() / Y.var())


def _als(X, Y, W, k, n_iters=3):
    """Composer's algorithm (SVD start, alternating least squares, mean bias), for comparison."""
    X, Y = X.double(), Y.double()
    U, s, Vt = torch.linalg.svd(W.double(), full_matrices=False)
    Wa, Wb = U[:, :k] * s[:k].sqrt(), s[:k].sqrt()[:, None] * Vt[:k]
    Ya = torch.linalg.lstsq(X, Y).solution
    for _ in range(n_iters):
        Wb = torch.linalg.lstsq(X @ Wa, Y).solution
        Wa = torch.linalg.lstsq(Wb.T, Ya.T).solution.T
    b = (Y - X @ Wa @ Wb).mean(0)
    return LowRankSolution(Wa, Wb, b, k)


@pytest.mark.parametrize("k", [1, 8, 20])
def test_matches_float64_reference_optimum(k):
    X, Y, W, bias = _problem()
    sol = factorize_matrix(X, Y, W, bias=bias, rank=k)
    B_ref, b_ref = reduced_rank_regression_reference(X, Y, k)
    assert sol.Wa.shape == (48, k) and sol.Wb.shape == (k, 40) and sol.rank == k
    torch.testing.assert_close(sol.Wa @ sol.Wb, B_ref, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(sol.bias, b_ref, rtol=1e-8, atol=1e-9)
    ref = LowRankSolution(B_ref, None, b_ref)
    assert sol.nmse == pytest.approx(_true_nmse(X, Y, ref), rel=1e-9)
    assert sol.nmse == pytest.approx(_true_nmse(X, Y, sol), rel=1e-9)


def test_float32_within_a_thousandth_of_the_optimum():
    X, Y, W, bias = _problem(dtype=f32)
    sol = factorize_matrix(X, Y, W, bias=bias, rank=12)
    assert sol.Wa.dtype == sol.Wb.dtype == sol.bias.dtype == f32
    B_ref, b_ref = reduced_rank_regression_reference(X, Y, 12)
    best = _true_nmse(X, Y, LowRankSolution(B_ref, None, b_ref))
    assert _true_nmse(X, Y, sol) <= best * 1.001
    assert sol.nmse == pytest.approx(_true_nmse(X, Y, sol), rel=1e-4)


def test_beats_alternating_least_squares_and_truncated_svd():
    X, Y, W, bias = _problem(noise=0.0)
    for k in (4, 12):
        ours = factorize_matrix(X, Y, W, bias=bias, rank=k).nmse
        als = _true_nmse(X, Y, _als(X, Y, W, k))
        U, s, Vt = torch.linalg.svd(W, full_matrices=False)
        svd = LowRankSolution(U[:, :k] * s[:k], Vt[:k], bias, k)
        assert ours <= als * (1 + 1e-9)
        assert ours < 0.5 * _true_nmse(X, Y, svd)  # data-blind SVD on correlated inputs


def test_streamed_chunks_and_computed_outputs_give_the_same_solution():
    X, Y, W, bias = _problem(noise=0.0)
    whole = factorize_matrix(X, Y, W, bias=bias, rank=10)
    chunks = factorize_matrix(list(X.split(700)), list(Y.split(700)), W, bias=bias, rank=10)
    generated = factorize_matrix((x for x in X.split(512)), None, W, bias=bias, rank=10)
    for other in (chunks, generated):
        torch.testing.assert_close(other.Wa @ other.Wb, whole.Wa @ whole.Wb)
        torch.testing.assert_close(other.bias, whole.bias)
        assert other.nmse == pytest.approx(whole.nmse, rel=1e-8, abs=1e-12)


def test_reported_nmse_is_the_true_one_with_a_bias():
    X, Y, W, bias = _problem()
    sol = factorize_matrix(X, Y, W, bias=10.0 + bias, rank=6)
    assert sol.nmse == pytest.approx(_true_nmse(X, Y, sol), rel=1e-9)
    assert 0.0 < sol.nmse < 1.0


def test_rank_conventions():
    X, Y, W, bias = _problem()
    assert factorize_matrix(X, Y, W, rank=0.25).rank == 12             # int(0.25 * D)
    full = factorize_matrix(X, Y, W, bias=bias, rank=40)               # >= min(D, M)
    assert full.rank == -1 and full.Wb is None and full.Wa.shape == (48, 40)
    ols = torch.linalg.lstsq(torch.cat([X, torch.ones(len(X), 1, dtype=f64)], 1), Y).solution
    torch.testing.assert_close(full.Wa, ols[:-1], rtol=1e-8, atol=1e-9)
    assert full.nmse == pytest.approx(_true_nmse(X, Y, full), rel=1e-9)
    # progressive reduction: (Wa, Wb) of rank 20 -> 8; and "already small enough" -> unchanged
    first = factorize_matrix(X, Y, W, bias=bias, rank=20)
    second = factorize_matrix(X, Y, first.Wa, first.Wb, bias=first.bias, rank=8)
    assert second.rank == 8 and second.Wa.shape == (48, 8)
    assert second.nmse >= first.nmse
    same = factorize_matrix(X, Y, first.Wa, first.Wb, bias=first.bias, rank=30)
    assert same.rank == -1 and same.Wa is not None and torch.equal(same.Wb, first.Wb)
    assert same.nmse == pytest.approx(_true_nmse(X, Y, same), rel=1e-9)
    capped = factorize_matrix(X, Y, first.Wa, first.Wb, bias=first.bias, rank=0.9)
    assert capped.rank == -1 and torch.equal(capped.Wa, first.Wa)  # 0.9 * D capped at d = 20


def test_fewer_samples_than_features_and_dead_inputs():
    X, Y, W, bias = _problem(n=30)
    X[:, 5] = 0.0
    Y = X @ W + bias
    sol = factorize_matrix(X, Y, W, bias=bias, rank=8)
    assert torch.isfinite(sol.Wa).all() and torch.isfinite(sol.Wb).all()
    B_ref, b_ref = reduced_rank_regression_reference(X, Y, 8)
    best = _true_nmse(X, Y, LowRankSolution(B_ref, None, b_ref))
    assert _true_nmse(X, Y, sol) <= best + 1e-9
    assert sol.Wa[5].abs().max() < 1e-8  # minimum norm: nothing on a dead input


def test_inputs_not_mutated_and_no_gradient_needed():
    X, Y, W, bias = _problem(n=200)
    W.requires_grad_()
    copies = [t.detach().clone() for t in (X, Y, W, bias)]
    sol = factorize_matrix(X, Y, W, bias=bias, rank=5)
    assert not sol.Wa.requires_grad
    for t, c in zip((X, Y, W, bias), copies):
        assert torch.equal(t.detach(), c)


def test_bad_input():
    X, Y, W, bias = _problem(n=100)
    for rank in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=r"^factorize_matrix: expected .*rank"):
            factorize_matrix(X, Y, W, rank=rank)
    with pytest.raises(ValueError, match=r"^factorize_matrix: expected X of shape \(N, 48\)"):
        factorize_matrix(X[:, :10], Y, W)
    with pytest.raises(ValueError, match=r"^factorize_matrix: expected Y of shape \(100, 40\)"):
        factorize_matrix(X, Y[:, :3], W)
    with pytest.raises(ValueError, match=r"^factorize_matrix: expected Y of shape"):
        factorize_matrix([X, X], [Y], W)
    with pytest.raises(ValueError, match=r"^factorize_matrix: expected Wb of shape"):
        factorize_matrix(X, Y, W[:, :8], torch.randn(5, 40, dtype=f64))
    with pytest.raises(ValueError, match=r"^factorize_matrix: expected bias of shape \(40,\)"):
        factorize_matrix(X, Y, W, bias=bias[:3])
    with pytest.raises(ValueError, match=r"^factorize_matrix: expected at least one sample"):
        factorize_matrix([], [], W)
    with pytest.raises(TypeError, match=r"^factorize_matrix: expected X to be a tensor or an"):
        factorize_matrix(3.0, Y, W)
    with pytest.raises(TypeError, match=r"^factorize_matrix: "):
        factorize_matrix(X, Y, W.to(torch.int64))
