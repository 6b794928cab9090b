"""Tests of solve_sylvester and solve_lyapunov."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from difflinalg.lyapunov import solve_lyapunov, solve_sylvester

scipy_linalg = pytest.importorskip("scipy.linalg")

f64, f32 = torch.float64, torch.float32
BATCHES = [(), (3,), (2, 1)]
# (rtol, atol) of each comparison against a float64 reference
TOL = {"f64": (1e-9, 1e-11), "f32": (1e-4, 1e-5), "f64_nonnormal": (1e-7, 1e-9)}


def _stable(batch, n, dtype=f64, sign=1.0):
    """Eigenvalues in the disc |z - 2 sign| < ~1.5: positive (or negative) stable, normal-ish."""
    a = torch.randn(*batch, n, n, dtype=f64) / n**0.5 + 2.0 * torch.eye(n, dtype=f64)
    return (sign * a).to(dtype)


def _spd(batch, n, dtype=f64):
    x = torch.randn(*batch, n, n, dtype=f64)
    return (x @ x.mT / n + torch.eye(n, dtype=f64)).to(dtype)


def _nonnormal(batch, n, dtype=f64):
    """Upper triangular, eigenvalues 1..2, strong off-diagonal coupling (cond(U) ~ 1e3+)."""
    diag = torch.linspace(1.0, 2.0, n, dtype=f64).expand(*batch, n)
    a = torch.diag_embed(diag) + 3.0 * torch.randn(*batch, n, n, dtype=f64).triu(1)
    return a.to(dtype)


MAKERS = {"random": _stable, "spd": _spd, "nonnormal": _nonnormal}


def _scipy_batched(fun, *mats):
    """A scipy solver applied to each matrix of broadcast batches (float64)."""
    batch = torch.broadcast_shapes(*(m.shape[:-2] for m in mats))
    arrs = [np.broadcast_to(m.detach().double().numpy(), batch + m.shape[-2:]) for m in mats]
    flat = [a.reshape(-1, *a.shape[-2:]) for a in arrs]
    out = [fun(*ms) for ms in zip(*flat)]
    shape = batch + out[0].shape[-2:] if out else batch + (mats[0].shape[-1], mats[-1].shape[-1])
    return torch.from_numpy(np.asarray(out).reshape(shape))


def _methods_for(case):
    methods = ["auto", "sign"] if case == "nonnormal" else ["auto", "eig", "sign"]
    return methods + (["eigh"] if case == "spd" else [])


def _triples(case, batch, m=4, n=3, dtype=f64):
    make = MAKERS[case]
    return make(batch, m, dtype), make(batch, n, dtype), torch.randn(*batch, m, n).to(dtype)


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("case", list(MAKERS))
def test_sylvester_matches_scipy(case, batch):
    A, B, C = _triples(case, batch)
    ref = _scipy_batched(scipy_linalg.solve_sylvester, A, B, C)
    rtol, atol = TOL["f64_nonnormal" if case == "nonnormal" else "f64"]
    for method in _methods_for(case):
        X = solve_sylvester(A, B, C, method=method)
        assert X.shape == batch + (4, 3) and X.dtype == f64
        torch.testing.assert_close(X, ref, rtol=rtol, atol=atol * float(ref.abs().max()),
                                   msg=lambda m, method=method: f"{method}: {m}")


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("case", ["random", "spd", "nonnormal", "stable"])
def test_lyapunov_matches_scipy(case, batch):
    if case == "stable":  # the control-theory case: S Hurwitz, S X + X S^T + Q = 0
        S = _stable(batch, 5, sign=-1.0)
    else:
        S = MAKERS[case](batch, 5)
    C = torch.randn(*batch, 5, 5, dtype=f64)
    ref = _scipy_batched(scipy_linalg.solve_continuous_lyapunov, S, C)
    rtol, atol = TOL["f64_nonnormal" if case == "nonnormal" else "f64"]
    for method in _methods_for(case):
        X = solve_lyapunov(S, C, method=method)
        torch.testing.assert_close(X, ref, rtol=rtol, atol=atol * float(ref.abs().max()),
                                   msg=lambda m, method=method: f"{method}: {m}")
        torch.testing.assert_close(X, solve_sylvester(S, S.mT, C, method=method))


@pytest.mark.parametrize("case", list(MAKERS))
def test_float32_matches_float64_reference(case):
    A, B, C = _triples(case, (3,), m=6, n=5)
    ref = _scipy_batched(scipy_linalg.solve_sylvester, A.float(), B.float(), C.float())
    rtol, atol = TOL["f32"]
    for method in _methods_for(case):
        X = solve_sylvester(A.float(), B.float(), C.float(), method=method)
        assert X.dtype == f32
        torch.testing.assert_close(X.double(), ref, rtol=rtol, atol=atol * float(ref.abs().max()),
                                   msg=lambda m, method=method: f"{method}: {m}")
        Q = (C @ C.mT).float()
        ref_l = _scipy_batched(scipy_linalg.solve_continuous_lyapunov, A.float(), Q)
        XL = solve_lyapunov(A.float(), Q, method=method)
        torch.testing.assert_close(XL.double(), ref_l, rtol=rtol,
                                   atol=atol * float(ref_l.abs().max()))


@pytest.mark.parametrize("method", ["auto", "eig", "sign"])
def test_residual_with_broadcast_batches(method):
    A = _stable((3, 1), 7)
    B = _stable((), 4)
    C = torch.randn(1, 2, 7, 4, dtype=f64)
    X = solve_sylvester(A, B, C, method=method)
    assert X.shape == (3, 2, 7, 4)
    res = (A @ X + X @ B - C).flatten(-2).norm(dim=-1)
    scale = (A.flatten(-2).norm(dim=-1) + B.flatten(-2).norm(dim=-1)) * X.flatten(-2).norm(dim=-1)
    assert float((res / scale).max()) < 50 * torch.finfo(f64).eps


def test_sign_handles_negative_stable_and_auto_falls_back_for_mixed_spectra():
    A = _stable((2,), 4, sign=-1.0)
    B = _stable((2,), 3, sign=-1.0)
    C = torch.randn(2, 4, 3, dtype=f64)
    ref = _scipy_batched(scipy_linalg.solve_sylvester, A, B, C)
    torch.testing.assert_close(solve_sylvester(A, B, C, method="sign"), ref)
    # eigenvalues 1, 2, -3 and 0.5, 4: l_i + mu_j != 0 but not separated by the imaginary axis
    V = torch.randn(3, 3, dtype=f64) + 3 * torch.eye(3, dtype=f64)
    Am = V @ torch.diag(torch.tensor([1.0, 2.0, -3.0], dtype=f64)) @ torch.linalg.inv(V)
    Bm = torch.tensor([[0.5, 1.0], [0.0, 4.0]], dtype=f64)
    Cm = torch.randn(3, 2, dtype=f64)
    ref = _scipy_batched(scipy_linalg.solve_sylvester, Am, Bm, Cm)
    torch.testing.assert_close(solve_sylvester(Am, Bm, Cm), ref)
    with pytest.raises(ValueError, match=r"^solve_sylvester: method='sign' expected A and B"):
        solve_sylvester(Am, Bm, Cm, method="sign")
    # one bad element sends the whole batch to eig, still right everywhere
    A2, B2 = torch.stack([Am, Am.abs() + 3 * torch.eye(3, dtype=f64)]), Bm.expand(2, 2, 2)
    ref2 = _scipy_batched(scipy_linalg.solve_sylvester, A2, B2, Cm)
    torch.testing.assert_close(solve_sylvester(A2, B2, Cm), ref2)
    # inside vmap the convergence decision covers all the vmapped slices too
    torch.testing.assert_close(torch.func.vmap(solve_sylvester, in_dims=(0, 0, None))(A2, B2, Cm),
                               ref2)


@pytest.mark.parametrize("m,n", [(0, 3), (3, 0), (0, 0), (1, 1), (1, 4)])
@pytest.mark.parametrize("batch", [(), (0,), (2,)])
def test_small_and_empty_sizes(m, n, batch):
    A = _stable(batch, m).requires_grad_()
    B = _stable(batch, n).requires_grad_()
    C = torch.randn(*batch, m, n, dtype=f64, requires_grad=True)
    for method in ("auto", "eig", "sign"):
        X = solve_sylvester(A, B, C, method=method)
        assert X.shape == batch + (m, n)
        torch.testing.assert_close(A @ X + X @ B, C.detach().expand_as(X), atol=1e-12, rtol=0)
        gA, gB, gC = torch.autograd.grad(X.sum(), (A, B, C))
        assert gA.shape == A.shape and gB.shape == B.shape and gC.shape == C.shape
    S = _stable(batch, n)
    assert solve_lyapunov(S, torch.randn(*batch, n, n, dtype=f64)).shape == batch + (n, n)


# ----------------------------------------------------------------------------- gradients


def _sym(x):
    return (x + x.mT) / 2


GRAD_CASES = {
    # name -> (function of (A, B, C), input maker)
    "auto_sym": (lambda a, b, c: solve_sylvester(a, b, c), "spd"),
    "eigh": (lambda a, b, c: solve_sylvester(_sym(a), _sym(b), c, method="eigh"), "spd"),
    "eig": (lambda a, b, c: solve_sylvester(a, b, c, method="eig"), "random"),
    "sign": (lambda a, b, c: solve_sylvester(a, b, c, method="sign"), "random"),
}


@pytest.mark.parametrize("name", list(GRAD_CASES))
@pytest.mark.parametrize("batch", [(), (2,)])
def test_sylvester_gradcheck_and_forward_ad(name, batch):
    fn, case = GRAD_CASES[name]
    A, B, C = (t.requires_grad_() for t in _triples(case, batch, m=3, n=2))
    assert gradcheck(fn, (A, B, C), check_forward_ad=True, check_batched_grad=batch == ())


@pytest.mark.parametrize("name", ["auto_sym", "eigh", "eig", "sign"])
def test_sylvester_gradgradcheck(name):
    fn, case = GRAD_CASES[name]
    A, B, C = (t.requires_grad_() for t in _triples(case, (), m=3, n=2))
    assert gradgradcheck(fn, (A, B, C))


@pytest.mark.parametrize("method,case", [("auto", "spd"), ("eig", "random"), ("sign", "random"),
                                         ("sign", "spd")])
def test_lyapunov_gradcheck(method, case):
    S = MAKERS[case]((2,), 3).requires_grad_()
    C = torch.randn(2, 3, 3, dtype=f64, requires_grad=True)

    def fn(s, c):
        return solve_lyapunov(s, c, method=method)

    assert gradcheck(fn, (S, C), check_forward_ad=True)
    if case == "random" or method == "auto":
        assert gradgradcheck(fn, (S, C))


def test_lyapunov_gradient_sums_both_occurrences_of_s():
    S = _stable((), 4).requires_grad_()
    C = torch.randn(4, 4, dtype=f64)
    G = torch.randn(4, 4, dtype=f64)
    (g_lyap,) = torch.autograd.grad((solve_lyapunov(S, C) * G).sum(), S)
    (g_syl,) = torch.autograd.grad((solve_sylvester(S, S.mT, C, method="eig") * G).sum(), S)
    torch.testing.assert_close(g_lyap, g_syl)
    # closed form: S^T Y + Y S = G, dS = -Y X^T - Y^T X
    X = solve_lyapunov(S.detach(), C)
    Y = solve_lyapunov(S.detach().mT, G)
    torch.testing.assert_close(g_lyap, -Y @ X.mT - Y.mT @ X)


def test_gradient_of_broadcast_input_is_reduced():
    A = _stable((), 3).requires_grad_()
    B = _stable((4, 1), 2).requires_grad_()
    C = torch.randn(5, 3, 2, dtype=f64, requires_grad=True)
    X = solve_sylvester(A, B, C)
    assert X.shape == (4, 5, 3, 2)
    gA, gB, gC = torch.autograd.grad(X.square().sum(), (A, B, C))
    assert gA.shape == A.shape and gB.shape == B.shape and gC.shape == C.shape
    Ae = A.detach().expand(4, 5, 3, 3).clone().requires_grad_()
    (gAe,) = torch.autograd.grad(solve_sylvester(Ae, B.detach(), C.detach()).square().sum(), Ae)
    torch.testing.assert_close(gA, gAe.sum((0, 1)))


@pytest.mark.parametrize("method", ["auto", "eigh", "eig", "sign"])
def test_vmap_jacrev_jvp(method):
    maker = _spd if method in ("auto", "eigh") else _stable
    A, B, C = maker((3,), 3), maker((3,), 2), torch.randn(3, 3, 2, dtype=f64)

    def fn(a, b, c):
        return solve_sylvester(a, b, c, method=method)

    torch.testing.assert_close(torch.func.vmap(fn)(A, B, C), fn(A, B, C))
    torch.testing.assert_close(torch.func.vmap(fn, in_dims=(0, None, 0))(A, B[0], C),
                               fn(A, B[0], C))
    lyap = torch.func.vmap(lambda s, c: solve_lyapunov(s, c, method=method))(A, C @ C.mT)
    torch.testing.assert_close(lyap, solve_lyapunov(A, C @ C.mT, method=method))
    jac = torch.func.jacrev(fn, argnums=(0, 1, 2))(A[0], B[0], C[0])
    assert [j.shape for j in jac] == [(3, 2, 3, 3), (3, 2, 2, 2), (3, 2, 3, 2)]
    # jvp against the linearised equation A dX + dX B = dC - dA X - X dB
    dA, dB, dC = torch.randn_like(A), torch.randn_like(B), torch.randn_like(C)
    X, dX = torch.func.jvp(fn, (A, B, C), (dA, dB, dC))
    torch.testing.assert_close(A @ dX + dX @ B, dC - dA @ X - X @ dB)


def test_double_backward_through_hessian_vector_product():
    A, B, C = _triples("random", (), m=3, n=3)
    A.requires_grad_()
    X = solve_sylvester(A, B, C)
    (g,) = torch.autograd.grad(X.square().sum(), A, create_graph=True)
    v = torch.randn_like(A)
    (hv,) = torch.autograd.grad((g * v).sum(), A)
    h = 1e-6
    def grad_at(a):
        a = a.detach().requires_grad_()
        return torch.autograd.grad(solve_sylvester(a, B, C).square().sum(), a)[0]
    fd = (grad_at(A + h * v) - grad_at(A - h * v)) / (2 * h)
    torch.testing.assert_close(hv, fd, rtol=1e-6, atol=1e-7)


def test_inputs_not_mutated():
    A, B, C = _triples("random", (2,))
    S = _spd((2,), 4)
    saved = [t.clone() for t in (A, B, C, S)]
    for method in ("auto", "eig", "sign"):
        a, b, c = (t.clone().requires_grad_() for t in (A, B, C))
        solve_sylvester(a, b, c, method=method).sum().backward()
        s = S.clone().requires_grad_()
        solve_lyapunov(s, S, method=method).sum().backward()
        for t, t0 in zip((a, b, c, s), saved):
            assert torch.equal(t.detach(), t0)


# ----------------------------------------------------------------------------- errors


def test_shape_errors_name_op_and_argument():
    A, B, C = torch.eye(3), torch.eye(2), torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"^solve_sylvester: expected a square matrix A .*"
                                         r"A\.shape=\(3, 4\)"):
        solve_sylvester(torch.zeros(3, 4), B, C)
    with pytest.raises(ValueError, match=r"^solve_sylvester: expected a square matrix B"):
        solve_sylvester(A, torch.zeros(2, 3), C)
    with pytest.raises(ValueError, match=r"^solve_sylvester: expected B of shape \(\*, n, n\)"):
        solve_sylvester(A, torch.zeros(2), C)
    with pytest.raises(ValueError, match=r"^solve_sylvester: expected C of shape \(\*, m, n\) = "
                                         r"\(\*, 3, 2\), but got C\.shape=\(2, 3\)"):
        solve_sylvester(A, B, torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"^solve_sylvester: expected batch dimensions that "
                                         r"broadcast, but got A\.shape=\(4, 3, 3\)"):
        solve_sylvester(torch.eye(3).expand(4, 3, 3), B, torch.zeros(5, 3, 2))
    with pytest.raises(ValueError, match=r"^solve_lyapunov: expected a square matrix S"):
        solve_lyapunov(torch.zeros(2, 3), torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"^solve_lyapunov: expected C of shape"):
        solve_lyapunov(torch.eye(2), torch.zeros(2, 3))


def test_dtype_and_method_errors():
    A, B, C = torch.eye(3), torch.eye(2), torch.zeros(3, 2)
    with pytest.raises(TypeError, match=r"^solve_sylvester: expected a real floating dtype .*"
                                        r"A\.shape=\(3, 3\), dtype=int64"):
        solve_sylvester(torch.eye(3, dtype=torch.int64), B, C)
    with pytest.raises(TypeError, match=r"^solve_sylvester: complex inputs are not supported"):
        solve_sylvester(A, B, C.to(torch.complex64))
    with pytest.raises(TypeError, match=r"^solve_sylvester: expected B to have the same dtype "
                                        r"as A \(float32\)"):
        solve_sylvester(A, B.double(), C)
    with pytest.raises(TypeError, match=r"^solve_sylvester: expected C on the same device"):
        solve_sylvester(A, B, torch.zeros(3, 2, device="meta"))
    with pytest.raises(TypeError, match=r"^solve_lyapunov: expected S to be a torch\.Tensor"):
        solve_lyapunov([[1.0]], torch.eye(1))
    with pytest.raises(ValueError, match=r"^solve_sylvester: expected method to be one of "
                                         r"'auto', 'eigh', 'eig', 'sign', but got 'schur'"):
        solve_sylvester(A, B, C, method="schur")


def test_data_dependent_checks():
    A, B, C = torch.eye(3, dtype=f64), torch.eye(2, dtype=f64), torch.zeros(3, 2, dtype=f64)
    bad = C.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"^solve_sylvester: expected finite values in C"):
        solve_sylvester(A, B, bad, check=True)
    with pytest.raises(ValueError, match=r"^solve_lyapunov: expected finite values in S"):
        solve_lyapunov(torch.full((2, 2), float("inf")), torch.eye(2), check=True)
    # l = 1 and mu = -1: A X + X B = C has no unique solution
    As = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=f64))
    Bs = torch.diag(torch.tensor([-1.0, 5.0], dtype=f64))
    for method in ("auto", "eigh", "eig"):
        with pytest.raises(ValueError, match=r"^solve_sylvester: expected a nonsingular "
                                             r"operator \(l_i \+ mu_j != 0"):
            solve_sylvester(As, Bs, C + 1, method=method, check=True)
    with pytest.raises(ValueError, match=r"^solve_sylvester: method='sign' expected A and B"):
        solve_sylvester(As, Bs, C + 1, method="sign")
    with pytest.raises(ValueError, match=r"^solve_lyapunov: expected a nonsingular operator"):
        solve_lyapunov(torch.diag(torch.tensor([1.0, -1.0], dtype=f64)), torch.eye(2, dtype=f64),
                       method="eig", check=True)
    # documented: without check, a singular operator gives inf/NaN from eig/eigh
    assert not torch.isfinite(solve_sylvester(As, Bs, C + 1, method="eig")).all()
    with pytest.raises(ValueError, match=r"^solve_sylvester: method='eigh' expected a symmetric "
                                         r"A"):
        solve_sylvester(torch.triu(torch.ones(3, 3)), torch.eye(2), torch.zeros(3, 2),
                        method="eigh", check=True)


def test_error_messages_do_not_print_values():
    with pytest.raises(ValueError) as info:
        solve_sylvester(torch.full((3, 4), 123.456), torch.eye(2), torch.zeros(3, 2))
    assert "123" not in str(info.value)
