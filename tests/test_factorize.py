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


# ----------------------------------------------------------------------------- conv2d
from difflinalg.factorize import factorize_conv2d  # noqa: E402

F = torch.nn.functional


def _conv_problem(groups=1, seed=0, n=6, c_in=8, c_out=12, size=9):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(c_in, c_in, dtype=f64, generator=g) * torch.logspace(0, -1.5, c_in,
                                                                           dtype=f64)
    X = torch.einsum("nchw,cd->ndhw", torch.randn(n, c_in, size, size, dtype=f64,
                                                  generator=g), mix)
    W = torch.randn(c_out, c_in // groups, 3, 3, dtype=f64, generator=g) / 3
    b = torch.randn(c_out, dtype=f64, generator=g)
    return X, W, b


def _apply(sol, X, groups, **kw):
    if sol.Wb is None:
        return F.conv2d(X, sol.Wa, sol.bias, groups=groups, **kw)
    mid = F.conv2d(X, sol.Wa, None, groups=groups, **kw)
    return F.conv2d(mid, sol.Wb, sol.bias, groups=groups)


def _nmse(Y, Y_hat):
    return float((Y - Y_hat).square().mean() / Y.var())


def test_conv_matches_the_patch_regression_optimum():
    X, W, b = _conv_problem()
    sol = factorize_conv2d(X, W, rank=4, biasA=b, padding=1)
    assert sol.Wa.shape == (4, 8, 3, 3) and sol.Wb.shape == (12, 4, 1, 1) and sol.rank == 4
    cols = F.unfold(X, 3, padding=1).transpose(1, 2).reshape(-1, 72)
    Y = F.conv2d(X, W, b, padding=1)
    Ym = Y.permute(0, 2, 3, 1).reshape(-1, 12)
    B_ref, b_ref = reduced_rank_regression_reference(cols, Ym, 4)
    B = sol.Wa.reshape(4, 72).mT @ sol.Wb.reshape(12, 4).mT
    torch.testing.assert_close(B, B_ref, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(sol.bias, b_ref, rtol=1e-8, atol=1e-9)
    assert sol.nmse == pytest.approx(_nmse(Y, _apply(sol, X, 1, padding=1)), rel=1e-8)


@pytest.mark.parametrize("mode", ["zeros", "reflect", "circular"])
def test_conv_stride_dilation_groups_padding_modes(mode):
    X, W, b = _conv_problem(groups=2, size=11)
    kw = dict(stride=2, dilation=2, padding=2)
    if mode == "zeros":
        Y = F.conv2d(X, W, b, groups=2, **kw)
    else:
        Y = F.conv2d(F.pad(X, (2, 2, 2, 2), mode=mode), W, b, groups=2, stride=2, dilation=2)
    sol = factorize_conv2d(X, W, rank=6, biasA=b, groups=2, padding_mode=mode, **kw)
    assert sol.Wa.shape == (6, 4, 3, 3) and sol.Wb.shape == (12, 3, 1, 1)
    if mode == "zeros":
        Y_hat = _apply(sol, X, 2, **kw)
    else:
        Y_hat = _apply(sol, F.pad(X, (2, 2, 2, 2), mode=mode), 2, stride=2, dilation=2)
    assert sol.nmse == pytest.approx(_nmse(Y, Y_hat), rel=1e-8)
    assert 0.0 < sol.nmse < 0.5
    # a data-blind SVD of each group's weight is much worse on these correlated inputs
    blind = []
    for g in range(2):
        w = W[g * 6:(g + 1) * 6].reshape(6, 36)
        U, s, Vt = torch.linalg.svd(w, full_matrices=False)
        blind.append((U[:, :3] * s[:3], Vt[:3]))
    wa = torch.cat([vt for _, vt in blind]).reshape(6, 4, 3, 3)
    wb = torch.cat([u for u, _ in blind]).reshape(12, 3, 1, 1)
    svd = LowRankSolution(wa, wb, b, 6)
    Y_svd = (_apply(svd, X, 2, **kw) if mode == "zeros"
             else _apply(svd, F.pad(X, (2, 2, 2, 2), mode=mode), 2, stride=2, dilation=2))
    assert sol.nmse < 0.8 * _nmse(Y, Y_svd)


def test_conv_streamed_batches_and_progressive_rank():
    X, W, b = _conv_problem(n=8)
    whole = factorize_conv2d(X, W, rank=6, biasA=b, padding=1)
    parts = factorize_conv2d(list(X.split(3)), W, rank=6, biasA=b, padding=1)
    torch.testing.assert_close(parts.Wa.reshape(6, -1).mT @ parts.Wb.reshape(12, 6).mT,
                               whole.Wa.reshape(6, -1).mT @ whole.Wb.reshape(12, 6).mT)
    smaller = factorize_conv2d(X, whole.Wa, whole.Wb, rank=3, biasB=whole.bias, padding=1)
    assert smaller.rank == 3 and smaller.Wa.shape == (3, 8, 3, 3)
    same = factorize_conv2d(X, whole.Wa, whole.Wb, rank=6, biasB=whole.bias, padding=1)
    assert same.rank == -1 and torch.equal(same.Wa, whole.Wa)
    assert same.nmse < 1e-12  # measured against the outputs of the factorised conv itself
    full = factorize_conv2d(X, W, rank=12, biasA=b, padding=1)  # >= out: a single conv
    assert full.rank == -1 and full.Wb is None and full.Wa.shape == W.shape
    assert full.nmse < 1e-12


def test_conv_bad_input():
    X, W, b = _conv_problem(groups=2)
    with pytest.raises(ValueError, match=r"^factorize_conv2d: expected rank to be a multiple"):
        factorize_conv2d(X, W, rank=5, groups=2)
    with pytest.raises(ValueError, match=r"^factorize_conv2d: unexpected conv2d arguments"):
        factorize_conv2d(X, W, rank=4, groups=2, bias=b)
    with pytest.raises(ValueError, match=r"^factorize_conv2d: got biasB but Wb=None"):
        factorize_conv2d(X, W, rank=4, groups=2, biasB=b)
    with pytest.raises(ValueError, match=r"^factorize_conv2d: expected X of shape \(N, 8, H, W\)"):
        factorize_conv2d(X[:, :3], W, rank=4, groups=2)
    with pytest.raises(ValueError, match=r"^factorize_conv2d: expected Wa of shape"):
        factorize_conv2d(X, W[0], rank=4)
    with pytest.raises(ValueError, match=r"^factorize_conv2d: expected numeric padding"):
        factorize_conv2d(X, W, rank=4, groups=2, padding="same")


# ------------------------------------------------------- the edge cases Composer's tests pin
@pytest.mark.parametrize("op", ["linear", "conv2d"])
@pytest.mark.parametrize("c_in,c_now,c_new,c_out", [(16, 16, 16, 16), (16, 8, 4, 16),
                                                    (16, 8, 12, 16), (16, 16, 32, 16),
                                                    (16, 16, 16, 8), (32, 16, 16, 16)])
@pytest.mark.parametrize("factorised", [False, True])
def test_composer_shape_conventions(op, c_in, c_now, c_new, c_out, factorised):
    """Single matrix when the rank cannot help (checked first), the input unchanged when it
    is already at or below the rank, else factors of the requested rank; nmse < 1 even when
    underdetermined (a 4 x 4 image gives 4 patches of 288 values)."""
    torch.manual_seed(123)
    if op == "linear":
        X = torch.randn(100, c_in)
        bias = torch.randn(c_out)
        if factorised:
            Wa, Wb = torch.randn(c_in, c_now), torch.randn(c_now, c_out)
            Y = X @ Wa @ Wb + bias
        else:
            Wa, Wb = torch.randn(c_in, c_out), None
            Y = X @ Wa + bias
        sol = factorize_matrix(X, Y, Wa, Wb, bias=bias, rank=c_new, n_iters=2)
        in_dim, out_dim = 0, 1
    else:
        X = torch.randn(1, c_in, 4, 4)
        if factorised:
            Wa, Wb = torch.randn(c_now, c_in, 3, 3), torch.randn(c_out, c_now, 1, 1)
            sol = factorize_conv2d(X, Wa, Wb, rank=c_new, biasA=torch.randn(c_now),
                                   biasB=torch.randn(c_out))
        else:
            sol = factorize_conv2d(X, torch.randn(c_out, c_in, 3, 3), rank=c_new,
                                   biasA=torch.randn(c_out))
        in_dim, out_dim = 1, 0
    if c_new >= c_in or c_new >= c_out:
        assert sol.Wb is None and sol.rank == -1
        assert sol.Wa.shape[in_dim] == c_in and sol.Wa.shape[out_dim] == c_out
    elif factorised and c_new >= c_now:
        assert sol.Wa.shape[in_dim] == c_in and sol.Wa.shape[out_dim] == c_now
    else:
        assert sol.rank == c_new and sol.bias.shape == (c_out,)
        assert sol.Wa.shape[in_dim] == c_in and sol.Wa.shape[out_dim] == c_new
        assert sol.Wb.shape[in_dim] == c_new and sol.Wb.shape[out_dim] == c_out
    assert sol.nmse < 1.0


@pytest.mark.parametrize("op", ["linear", "conv2d"])
def test_more_latent_dimensions_never_hurt(op):
    torch.manual_seed(123)
    prev = float("inf")
    X = torch.randn(100, 32) if op == "linear" else torch.randn(2, 32, 6, 6)
    W = torch.randn(32, 64) if op == "linear" else torch.randn(24, 32, 3, 3)
    for rank in (1, 4, 16, 32):
        if op == "linear":
            nmse = factorize_matrix(X, X @ W, W, rank=rank).nmse
        else:
            nmse = factorize_conv2d(X, W, rank=rank).nmse
        assert nmse <= prev + 1e-8
        prev = nmse
