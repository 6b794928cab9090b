"""Tests of householder_product, householder_orgqr and householder_apply."""

from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import difflinalg as dl
from difflinalg import _householder
from difflinalg.testing import (
    exact_tau,
    householder_apply_reference,
    householder_orgqr_reference,
    householder_product_reference,
    orthogonality_error,
)

f64 = torch.float64
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-4, atol=1e-5)}
BATCHES = [(), (0,), (3,), (2, 1)]
# (m, n, k): square, tall, k < n, k = 0, single column, single row
SHAPES = [(4, 4, 4), (5, 3, 3), (7, 4, 2), (6, 6, 0), (3, 1, 1), (1, 1, 1), (5, 0, 0)]


def _inputs(batch, m, n, k, dtype=f64, requires_grad=False, scale=1.0):
    A = (scale * torch.randn(*batch, m, n, dtype=dtype)).requires_grad_(requires_grad)
    tau = (2 * torch.rand(*batch, k, dtype=dtype)).requires_grad_(requires_grad)
    return A, tau


@pytest.fixture(params=["auto", "cwy"])
def backend(request, monkeypatch):
    """Run a test with the default forward dispatch and with the CWY forward forced."""
    monkeypatch.setattr(_householder, "FORWARD_BACKEND", request.param)
    return request.param


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_product_matches_torch_and_reference(batch, m, n, k):
    A, tau = _inputs(batch, m, n, k)
    out = dl.householder_product(A, tau)
    assert out.shape == A.shape
    torch.testing.assert_close(out, torch.linalg.householder_product(A, tau), **TOL[f64])
    torch.testing.assert_close(out, householder_product_reference(A, tau), **TOL[f64])


@pytest.mark.parametrize("m,n", [(8, 8), (9, 4), (300, 280), (600, 300)])
def test_product_both_backends_agree(m, n, monkeypatch):
    A = torch.randn(m, n, dtype=f64)
    outs = []
    for b in ("auto", "cwy"):
        monkeypatch.setattr(_householder, "FORWARD_BACKEND", b)
        outs.append(dl.householder_product(A))
    torch.testing.assert_close(outs[0], outs[1], **TOL[f64])
    torch.testing.assert_close(outs[0], torch.linalg.householder_product(A, exact_tau(A)),
                               **TOL[f64])


@pytest.mark.parametrize("batch", [(), (3,)])
def test_tau_none_is_exact_reflections(batch):
    A = torch.randn(*batch, 9, 5, dtype=f64)
    torch.testing.assert_close(dl.householder_product(A),
                               dl.householder_product(A, exact_tau(A)), **TOL[f64])
    assert orthogonality_error(dl.householder_product(A)).max() < 1e-14


def test_upper_part_and_diagonal_are_ignored():
    A = torch.randn(6, 4, dtype=f64)
    B = A.tril(-1) + 5.0 * torch.randn(6, 4, dtype=f64).triu()
    torch.testing.assert_close(dl.householder_product(A), dl.householder_product(B))


@pytest.mark.parametrize("small", [True, False])
@pytest.mark.parametrize("m,n", [(6, 4), (40, 5), (5, 5)])
@pytest.mark.parametrize("upper", ["huge", "nan", "inf"])
def test_upper_part_does_not_reach_the_gradient(small, m, n, upper, monkeypatch):
    """The backward reads the strictly lower part only: huge entries on and above the
    diagonal (R of a geqrf output), or even non-finite ones, leave the gradient unchanged,
    with zeros there."""
    if not small:
        monkeypatch.setattr(_householder, "SMALL_MAX_K", 0)
    A = torch.randn(m, n, dtype=f64)
    fill = {"huge": 1e6 * torch.randn(m, n, dtype=f64), "nan": torch.full((m, n), math.nan,
            dtype=f64), "inf": torch.full((m, n), -math.inf, dtype=f64)}[upper]
    B = torch.where(torch.ones(m, n, dtype=torch.bool).tril(-1), A, fill)
    G = torch.randn(m, n, dtype=f64)
    grads = []
    for X in (A, B):
        X = X.clone().requires_grad_()
        (grad,) = torch.autograd.grad((dl.householder_product(X) * G).sum(), X)
        grads.append(grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-12)
    assert torch.equal(grads[1].triu(), torch.zeros_like(grads[1]))


def test_zero_tau_is_identity_reflector():
    A = torch.randn(5, 3, dtype=f64)
    tau = torch.tensor([0.0, 0.7, 0.0], dtype=f64)
    torch.testing.assert_close(dl.householder_product(A, tau),
                               householder_product_reference(A, tau), **TOL[f64])


def test_inputs_not_mutated():
    A, tau = _inputs((2,), 6, 4, 3, requires_grad=True)
    X = torch.randn(2, 6, 3, dtype=f64, requires_grad=True)
    copies = [t.detach().clone() for t in (A, tau, X)]
    out = dl.householder_product(A, tau).sum() + dl.householder_apply(A, tau, X).sum()
    out = out + dl.householder_orgqr(A, None, X[..., :4] if X.shape[-1] >= 4 else None).sum()
    out.backward()
    for t, c in zip((A, tau, X), copies):
        assert torch.equal(t.detach(), c)


# ------------------------------------------------------------------------------ float32


@pytest.mark.parametrize("scale", [1e-3, 1e-2, 1e-1, 1.0, 1e1, 1e2])
@pytest.mark.parametrize("m,n", [(256, 256), (1024, 64), (300, 7)])
def test_float32_orthogonality_no_worse_than_lapack(scale, m, n, backend):
    A = scale * torch.randn(2, m, n)
    ours = orthogonality_error(dl.householder_product(A)).max()
    lapack = orthogonality_error(torch.linalg.householder_product(A, exact_tau(A))).max()
    eps = torch.finfo(torch.float32).eps
    assert ours <= 1.5 * lapack + 4 * eps, (ours.item(), lapack.item())


@pytest.mark.parametrize("m,n", [(128, 128), (512, 32)])
def test_float32_gradient_error_no_worse_than_torch(m, n, backend):
    A32 = torch.randn(m, n)
    G = torch.randn(m, n, dtype=f64)

    def grad(fn, A):
        A = A.clone().requires_grad_()
        (fn(A) * G.to(A.dtype)).sum().backward()
        return A.grad.double()

    ref = grad(dl.householder_product, A32.double())
    ours = grad(dl.householder_product, A32)
    theirs = grad(lambda A: torch.linalg.householder_product(A, exact_tau(A)), A32)
    err_ours = (ours - ref).norm() / ref.norm()
    err_theirs = (theirs - ref).norm() / ref.norm()
    assert err_ours <= 2.0 * err_theirs + 1e-6, (err_ours.item(), err_theirs.item())


# ---------------------------------------------------------------------------- gradients


GRAD_SHAPES = [((), 5, 3, 3), ((2,), 6, 6, 4), ((2, 1), 7, 4, 2), ((), 4, 4, 4)]


@pytest.mark.parametrize("batch,m,n,k", GRAD_SHAPES)
def test_product_gradcheck(batch, m, n, k, backend):
    A, tau = _inputs(batch, m, n, k, requires_grad=True)
    fast = backend == "cwy"  # the full Jacobian once per shape, the fast check for the other
    assert gradcheck(dl.householder_product, (A, tau), check_forward_ad=True,
                     check_batched_grad=True, fast_mode=fast)
    assert gradcheck(lambda A: dl.householder_product(A), (A,), check_forward_ad=True,
                     check_batched_grad=True, fast_mode=fast)


@pytest.mark.parametrize("batch,m,n,k", [((), 5, 3, 3), ((2,), 4, 4, 3), ((2, 1), 5, 3, 2)])
def test_product_gradgradcheck(batch, m, n, k):
    A, tau = _inputs(batch, m, n, k, requires_grad=True)
    assert gradgradcheck(dl.householder_product, (A, tau))
    assert gradgradcheck(lambda A: dl.householder_product(A), (A,))


def test_product_gradients_match_torch():
    A, tau = _inputs((3,), 10, 6, 5, requires_grad=True)
    G = torch.randn(3, 10, 6, dtype=f64)
    ga = torch.autograd.grad((dl.householder_product(A, tau) * G).sum(), (A, tau))
    gb = torch.autograd.grad((torch.linalg.householder_product(A, tau) * G).sum(), (A, tau))
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, **TOL[f64])


@pytest.mark.parametrize("left,adjoint", list(itertools.product([True, False], repeat=2)))
@pytest.mark.parametrize("batch,m,kk,k,n", [((), 5, 3, 3, 2), ((2,), 5, 5, 4, 2),
                                              ((2, 1), 4, 7, 4, 1)])
def test_apply_values_and_gradcheck(left, adjoint, batch, m, kk, k, n):
    A = torch.randn(*batch, m, kk, dtype=f64, requires_grad=True)
    tau = torch.rand(*batch, k, dtype=f64, requires_grad=True)
    xs = (m, n) if left else (n, m)
    X = torch.randn(*batch, *xs, dtype=f64, requires_grad=True)
    out = dl.householder_apply(A, tau, X, left=left, adjoint=adjoint)
    ref = householder_apply_reference(A, tau, X, left=left, adjoint=adjoint)
    torch.testing.assert_close(out, ref, **TOL[f64])
    if m <= kk and not batch:
        torch.testing.assert_close(out, torch.ormqr(A, tau, X, left=left, transpose=adjoint),
                                   **TOL[f64])

    def fn(A, tau, X):
        return dl.householder_apply(A, tau, X, left=left, adjoint=adjoint)

    assert gradcheck(fn, (A, tau, X), check_forward_ad=True, check_batched_grad=True,
                     fast_mode=bool(batch))
    if not batch:
        assert gradgradcheck(fn, (A, tau, X))
    assert gradcheck(lambda A, X: dl.householder_apply(A, None, X, left=left,
                                                       adjoint=adjoint), (A, X),
                     fast_mode=True)


def test_apply_broadcasts_one_transform_over_a_batch():
    A = torch.randn(6, 6, dtype=f64, requires_grad=True)
    X = torch.randn(4, 6, 3, dtype=f64, requires_grad=True)
    out = dl.householder_apply(A, None, X)
    Q = dl.householder_product(A)
    torch.testing.assert_close(out, Q @ X, **TOL[f64])
    assert gradcheck(lambda A, X: dl.householder_apply(A, None, X), (A, X))


def test_apply_inverse_roundtrip():
    A = torch.randn(8, 5, dtype=f64)
    X = torch.randn(8, 3, dtype=f64)
    Y = dl.householder_apply(A, None, X)
    torch.testing.assert_close(dl.householder_apply(A, None, Y, adjoint=True), X, **TOL[f64])


# ------------------------------------------------------------------- torch.func support


def test_vmap_jacrev_jvp():
    A = torch.randn(4, 6, 3, dtype=f64)
    out = torch.func.vmap(dl.householder_product)(A)
    torch.testing.assert_close(out, dl.householder_product(A), **TOL[f64])
    tau = torch.rand(4, 3, dtype=f64)
    out = torch.func.vmap(dl.householder_product)(A, tau)
    torch.testing.assert_close(out, torch.linalg.householder_product(A, tau), **TOL[f64])

    J = torch.func.jacrev(dl.householder_product)(A[0])
    Jr = torch.func.jacrev(householder_product_reference)(A[0])
    torch.testing.assert_close(J, Jr, **TOL[f64])

    dA = torch.randn_like(A[0])
    _, t = torch.func.jvp(dl.householder_product, (A[0],), (dA,))
    _, tr = torch.func.jvp(householder_product_reference, (A[0],), (dA,))
    torch.testing.assert_close(t, tr, **TOL[f64])

    X = torch.randn(4, 6, 2, dtype=f64)
    out = torch.func.vmap(lambda a, x: dl.householder_apply(a, None, x))(A, X)
    torch.testing.assert_close(out, dl.householder_apply(A, None, X), **TOL[f64])


@pytest.mark.parametrize("dtype", [torch.float32, f64])
@pytest.mark.parametrize("m,n", [(6, 3), (20, 5)])
def test_vmap_and_vmapped_grad_every_dtype(dtype, m, n):
    """vmap over the exact-tau forward (no batching rule for in-place or out= kernels) and
    per-sample gradients, in float32 as well as float64."""
    A = torch.randn(3, m, n, dtype=dtype)
    tol = TOL[dtype]
    for fn in (dl.householder_product, dl.householder_orgqr):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = torch.func.vmap(fn)(A)
            per_sample = torch.func.vmap(
                torch.func.grad(lambda a, fn=fn: (fn(a) ** 3).sum()))(A)
        # no kernel without a batching rule (functorch's per-sample fallback loop)
        assert not [w for w in caught if "batching rule" in str(w.message)]
        torch.testing.assert_close(out, fn(A), **tol)
        A_ = A.clone().requires_grad_()
        (fn(A_) ** 3).sum().backward()
        torch.testing.assert_close(per_sample, A_.grad, **tol)


# ----------------------------------------------------------- torch-householder drop-in
# The same checks as that package's CPU test cases (2-D and 3-D, with and without tau,
# float32 against a float64 reference of the same function), written for our own API.


def _hh_param(d, r, b=None):
    shape = (d, r) if b is None else (b, d, r)
    return torch.randn(*shape).tril(-1) + torch.eye(d, r)


def _hh_tau(param):
    return 2 / (param * param).sum(-2).clamp_min(1e-12)


def _check_orgqr_tau(param, eps_out=1e-5, eps_grad_param=1e-4, eps_grad_tau=5e-4):
    d, r = param.shape[-2:]
    p32 = param.clone().requires_grad_()
    t32 = _hh_tau(param).requires_grad_()
    p64 = param.double().requires_grad_()
    t64 = t32.detach().double().requires_grad_()
    eye = torch.eye(d, r).expand(param.shape)
    out_ref = householder_orgqr_reference(p64, t64)
    out_ref.sum().backward()
    out = dl.householder_orgqr(p32, t32, eye=eye)
    out.sum().backward()
    assert (out_ref.mT @ out_ref - torch.eye(r, dtype=f64)).abs().max() < eps_out
    assert (out.double() - out_ref).abs().max() < eps_out
    if param.dim() == 2:
        lapack = torch.linalg.householder_product(param, t32.detach())
        assert (lapack.double() - out_ref).abs().max() < eps_out
    assert (p32.grad.double() - p64.grad).abs().max() < eps_grad_param
    assert (t32.grad.double() - t64.grad).abs().max() < eps_grad_tau


def test_orgqr_2d_tau_small_shapes():
    for d in list(range(1, 12)) + [31, 64, 97]:
        for r in range(1, min(d, 10) + 1):
            _check_orgqr_tau(_hh_param(d, r))


def test_orgqr_3d_tau_batched_shapes():
    for b in (1, 11):
        for d in range(10, 100, 16):
            for r in (1, 4, 9):
                _check_orgqr_tau(_hh_param(d, r, b))


@pytest.mark.slow
def test_orgqr_2d_tau_all_shapes_of_torch_householder_suite():
    for d in range(1, 101):
        for r in range(1, min(d, 10) + 1):
            _check_orgqr_tau(_hh_param(d, r))


@pytest.mark.slow
def test_orgqr_3d_tau_all_shapes_of_torch_householder_suite():
    for b in (1, 2, 4, 8, 11, 16):
        for d in range(10, 100, 4):
            for r in range(1, 10):
                _check_orgqr_tau(_hh_param(d, r, b))


@pytest.mark.parametrize("b", [None, 2])
@pytest.mark.parametrize("d,r", [(64, 32), (257, 128)])
def test_orgqr_notau_equals_tau(b, d, r):
    base = _hh_param(d, r, b)
    p1 = base.clone().requires_grad_()
    out1 = dl.householder_orgqr(p1, _hh_tau(p1))
    out1.sum().backward()
    p2 = base.clone().requires_grad_()
    out2 = dl.householder_orgqr(p2)
    out2.sum().backward()
    assert (out1 - out2).abs().max() < 1e-5
    assert (p1.grad - p2.grad).abs().max() < 1e-4


def test_orgqr_whole_columns_and_general_tau_gradcheck():
    P = torch.randn(2, 6, 4, dtype=f64, requires_grad=True)
    tau = torch.rand(2, 4, dtype=f64, requires_grad=True)
    E = torch.randn(2, 6, 4, dtype=f64, requires_grad=True)
    torch.testing.assert_close(dl.householder_orgqr(P, tau, E),
                               householder_orgqr_reference(P, tau, E), **TOL[f64])
    assert gradcheck(dl.householder_orgqr, (P, tau, E), check_forward_ad=True)
    assert gradcheck(lambda P: dl.householder_orgqr(P), (P,), check_forward_ad=True)
    assert gradgradcheck(lambda P, t: dl.householder_orgqr(P, t), (P, tau))


def test_orgqr_recommended_input_equals_product():
    d, r = 9, 4
    param = torch.randn(d, r, dtype=f64).tril(-1) + torch.eye(d, r, dtype=f64)
    torch.testing.assert_close(dl.householder_orgqr(param), dl.householder_product(param),
                               **TOL[f64])


def test_orgqr_zero_column_is_identity_with_zero_gradient():
    P = torch.randn(5, 3, dtype=f64)
    P[:, 1] = 0
    P.requires_grad_()
    out = dl.householder_orgqr(P)
    # H_2 = I: the result is H_1 H_3 E
    keep = P.detach()[:, [0, 2]]
    tau = 2 / (keep * keep).sum(0)
    v = keep
    e = torch.eye(5, 3, dtype=f64)
    expected = e - tau[1] * v[:, 1:2] @ (v[:, 1:2].T @ e)
    expected = expected - tau[0] * v[:, 0:1] @ (v[:, 0:1].T @ expected)
    torch.testing.assert_close(out, expected, **TOL[f64])
    out.sum().backward()
    assert torch.isfinite(P.grad).all()
    assert torch.equal(P.grad[:, 1], torch.zeros(5, dtype=f64))


# -------------------------------------------------------------------------------- errors


def test_errors_name_op_and_argument():
    A = torch.randn(3, 5)
    with pytest.raises(ValueError, match=r"^householder_product: .*m >= n.*A.shape=\(3, 5\)"):
        dl.householder_product(A)
    A = torch.randn(6, 4)
    with pytest.raises(ValueError, match=r"^householder_product: .*tau.shape=\(5,\)"):
        dl.householder_product(A, torch.rand(5))
    with pytest.raises(ValueError, match=r"^householder_product: .*batch"):
        dl.householder_product(torch.randn(2, 6, 4), torch.rand(3, 4))
    with pytest.raises(TypeError, match=r"^householder_product: .*dtype=int64"):
        dl.householder_product(torch.ones(4, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"^householder_product: complex"):
        dl.householder_product(torch.randn(4, 3, dtype=torch.complex64))
    with pytest.raises(TypeError, match=r"^householder_product: .*same dtype"):
        dl.householder_product(torch.randn(4, 3), torch.rand(3, dtype=f64))
    with pytest.raises(TypeError, match=r"^householder_product: expected A to be a torch"):
        dl.householder_product([[1.0]])
    with pytest.raises(ValueError, match=r"^householder_product: .*at least 2 dim"):
        dl.householder_product(torch.randn(4))
    bad = torch.randn(5, 3)
    bad[2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"^householder_product: expected finite"):
        dl.householder_product(bad, check=True)
    with pytest.raises(ValueError, match=r"^householder_orgqr: .*d >= r"):
        dl.householder_orgqr(torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"^householder_orgqr: expected eye"):
        dl.householder_orgqr(torch.randn(4, 3), eye=torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"^householder_apply: .*X.shape\[-2\] == A.shape"):
        dl.householder_apply(torch.randn(5, 3), None, torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"^householder_apply: .*broadcastable"):
        dl.householder_apply(torch.randn(2, 5, 3), None, torch.randn(3, 5, 2))


def test_error_messages_do_not_print_values():
    A = torch.full((3, 5), 123.456)
    with pytest.raises(ValueError) as info:
        dl.householder_product(A)
    assert "123" not in str(info.value)


@pytest.mark.cuda
def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("CUDA device not available")
    A = torch.randn(3, 64, 16, dtype=f64, requires_grad=True)
    Ac = A.detach().cuda().requires_grad_()
    out, outc = dl.householder_product(A), dl.householder_product(Ac)
    torch.testing.assert_close(outc.cpu(), out, **TOL[f64])
    out.sum().backward()
    outc.sum().backward()
    torch.testing.assert_close(Ac.grad.cpu(), A.grad, **TOL[f64])


@pytest.mark.parametrize("m,n,k", [(300, 260, 200), (256, 256, 256), (400, 200, None)])
def test_large_k_gradients_match_torch(m, n, k):
    """Large k takes the triangular-aware products of the backward."""
    A = torch.randn(m, n, dtype=f64, requires_grad=True)
    if k is None:
        tau = None
    else:  # close to exact reflections, so that the product stays well scaled
        scale = torch.empty(k, dtype=f64).uniform_(0.9, 1.1)
        tau = (exact_tau(A.detach())[:k] * scale).requires_grad_()
    G = torch.randn(m, n, dtype=f64)
    ins = (A,) if tau is None else (A, tau)
    ours = torch.autograd.grad((dl.householder_product(A, tau) * G).sum(), ins)
    t = exact_tau(A) if tau is None else tau
    theirs = torch.autograd.grad((torch.linalg.householder_product(A, t) * G).sum(), ins)
    for x, y in zip(ours, theirs):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-9)


def test_no_reflectors_is_identity_even_for_nonfinite_input():
    A = torch.full((4, 3), float("nan"), dtype=f64, requires_grad=True)
    out = dl.householder_product(A, torch.zeros(0, dtype=f64))
    torch.testing.assert_close(out, torch.eye(4, 3, dtype=f64), rtol=0, atol=0)
    out.sum().backward()
    assert torch.equal(A.grad, torch.zeros_like(A))


# ----------------------------------------------------------------------------- low-memory backward
# The orgqr backward outside autograd (_orgqr_backward_lowmem) picks its block layout from
# the shape; small shapes are forced through every layout here so that gradcheck covers the
# multi-block code that real sizes (k >= 512) reach.
LOWMEM_LAYOUTS = [(False, None, 0), (True, None, 0), (True, 2, 0), (True, 3, 2)]


@pytest.fixture(params=LOWMEM_LAYOUTS, ids=["V-whole", "V-top", "nb2", "nb3-struct2"])
def lowmem_layout(request, monkeypatch):
    blocked, nb, snb = request.param
    monkeypatch.setattr(_householder, "_lowmem_block",
                        lambda m, k: (blocked, k if nb is None else nb))
    if snb:
        monkeypatch.setattr(_householder, "_structured_block",
                            lambda k, unit_lower: snb if unit_lower else 0)
    return request.param


@pytest.mark.parametrize("batch,m,n,k", [((), 7, 7, 7), ((2,), 8, 5, 5), ((), 9, 6, 4),
                                         ((2, 1), 6, 6, 5)])
@pytest.mark.parametrize("with_tau", [True, False])
def test_lowmem_backward_gradcheck_every_layout(batch, m, n, k, with_tau, lowmem_layout):
    A, tau = _inputs(batch, m, n, k, requires_grad=True)
    if with_tau:
        assert gradcheck(dl.householder_product, (A, tau))
        assert gradcheck(dl.householder_orgqr, (A[..., :k], tau))
    else:
        A = A[..., :k].detach().requires_grad_()
        assert gradcheck(dl.householder_product, (A,))
        assert gradcheck(dl.householder_orgqr, (A,))


@pytest.mark.parametrize("m,n,k", [(700, 600, 600), (600, 600, 520), (1100, 280, 280)])
@pytest.mark.parametrize("with_tau", [True, False])
def test_lowmem_backward_matches_general_path(m, n, k, with_tau, monkeypatch):
    """Real sizes (several V blocks, structured products) against the autograd-ready path."""
    A = torch.randn(m, n, dtype=f64, requires_grad=True)
    # close to exact reflections: a product of random-tau reflectors is huge at this k
    tau = (exact_tau(A.detach())[:k] * torch.empty(k, dtype=f64).uniform_(0.9, 1.1))
    inputs = (A, tau.requires_grad_()) if with_tau else (A,)
    G = torch.randn(m, n, dtype=f64)
    grads = []
    for lowmem in (True, False):
        if not lowmem:
            monkeypatch.setattr(_householder, "_use_lowmem_orgqr", lambda *a: False)
        grads.append(torch.autograd.grad((dl.householder_product(*inputs) * G).sum(), inputs))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


# Tall reflector blocks (m >= 4k) take the straight-line _orgqr_backward_whole.
@pytest.mark.parametrize("batch,m,n,k", [((), 12, 3, 3), ((3,), 16, 4, 4), ((), 13, 5, 3),
                                         ((2, 1), 8, 2, 2), ((2, 1, 2), 9, 2, 2)])
@pytest.mark.parametrize("with_tau", [True, False])
def test_tall_backward_gradcheck_and_matches_general_path(batch, m, n, k, with_tau,
                                                         monkeypatch):
    calls = []
    real = _householder._orgqr_backward_whole
    monkeypatch.setattr(_householder, "_orgqr_backward_whole",
                        lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(_householder, "SMALL_MAX_K", 0)  # not the small-input Function
    A, tau = _inputs(batch, m, n, k, requires_grad=True)
    if not with_tau:
        A = A[..., :k].detach().requires_grad_()
    inputs = (A, tau) if with_tau else (A,)
    assert gradcheck(dl.householder_product, inputs)
    assert calls, "the tall backward was not taken"
    G = torch.randn(A.shape[:-1] + (A.shape[-1],), dtype=f64)
    grads = []
    for general in (False, True):
        if general:
            monkeypatch.setattr(_householder, "_use_lowmem_orgqr", lambda *a: False)
        grads.append(torch.autograd.grad((dl.householder_product(*inputs) * G).sum(), inputs))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_lowmem_backward_is_taken_and_leaves_inputs_alone(monkeypatch):
    calls = []
    real = _householder._orgqr_backward_lowmem
    monkeypatch.setattr(_householder, "_orgqr_backward_lowmem",
                        lambda *a, **kw: calls.append(1) or real(*a, **kw))
    A = torch.randn(2, 6, 6, dtype=f64)
    tau = exact_tau(A)
    A0, tau0 = A.clone(), tau.clone()
    A.requires_grad_()
    tau.requires_grad_()
    G = torch.randn(2, 6, 6, dtype=f64)
    G0 = G.clone()
    dl.householder_product(A, tau).backward(G)
    assert calls == [1]
    assert torch.equal(A.detach(), A0) and torch.equal(tau.detach(), tau0)
    assert torch.equal(G, G0)


# Small inputs with tau=None (k <= 64, m >= 4k, at most 2^16 entries) take _SmallOrgqr:
# the engine's forward and a short backward that rebuilds M = striu(V^T V) + diag(V^T V) / 2
# by blocks.
def _grad_fn_name(out: torch.Tensor) -> str:
    """The node's name; through the reshape that wraps inputs with more than one batch dim."""
    node = out.grad_fn
    if type(node).__name__.startswith(("View", "Reshape")):
        node = node.next_functions[0][0]
    return type(node).__name__


@pytest.mark.parametrize("batch,m,k", [((), 12, 3), ((3,), 32, 8), ((2, 1, 2), 17, 4),
                                       ((), 4, 1), ((2,), 256, 64), ((1,), 40, 5)])
@pytest.mark.parametrize("unit_lower", [True, False])
def test_small_path_is_taken_and_matches_general_path(batch, m, k, unit_lower, monkeypatch):
    A = torch.randn(*batch, m, k, dtype=f64)
    if not unit_lower and m > 2 and k > 2:
        A[..., :, 1] = 0              # a zero column: H = I and a zero gradient
        A[..., :, 2] *= 1e-14         # a column below eps: clamped norm, no diagonal term
    A.requires_grad_()
    G = torch.randn(*batch, m, k, dtype=f64)
    fn = dl.householder_product if unit_lower else dl.householder_orgqr
    results = []
    for small in (True, False):
        if not small:
            monkeypatch.setattr(_householder, "SMALL_MAX_K", 0)
        out = fn(A)
        assert ("_SmallOrgqr" in _grad_fn_name(out)) == small, _grad_fn_name(out)
        results.append((out, *torch.autograd.grad((out * G).sum(), A)))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("m,k", [(8, 8), (64, 64), (9, 3), (255, 64)])
def test_squarish_small_inputs_take_the_engine(m, k):
    """Below m = 4k the small backward's k x k blocks would cost more memory than the
    blocked engine's: those shapes are routed to the engine."""
    A = torch.randn(2, m, k, dtype=f64, requires_grad=True)
    for fn in (dl.householder_product, dl.householder_orgqr):
        assert "_SmallOrgqr" not in _grad_fn_name(fn(A))


@pytest.mark.parametrize("unit_lower", [True, False])
def test_small_path_gradcheck_gradgradcheck_jvp(unit_lower):
    A = torch.randn(2, 17, 4, dtype=f64, requires_grad=True)
    fn = dl.householder_product if unit_lower else dl.householder_orgqr
    assert "_SmallOrgqr" in _grad_fn_name(fn(A))
    assert gradcheck(fn, (A,), check_forward_ad=True, check_batched_grad=True)
    assert gradgradcheck(fn, (A,))  # the double backward hands over to the general engine


@pytest.mark.parametrize("scale", [1e-3, 1e-2, 1.0, 1e2])
@pytest.mark.parametrize("m,n", [(256, 16), (1024, 64)])
def test_small_path_float32_orthogonality_and_gradient_match_lapack(scale, m, n):
    A = scale * torch.randn(m, n)
    out = dl.householder_product(A.requires_grad_())
    assert "_SmallOrgqr" in _grad_fn_name(out)
    # the forward is LAPACK's, with the same float64 tau: the same orthogonality
    lapack = torch.linalg.householder_product(A.detach(), exact_tau(A.detach()))
    assert orthogonality_error(out.detach()) <= 1.01 * orthogonality_error(lapack) + 1e-9
    G = torch.randn(m, n, dtype=f64)
    (grad32,) = torch.autograd.grad((out * G.float()).sum(), A)
    A64 = A.detach().double().requires_grad_()
    (ref,) = torch.autograd.grad((dl.householder_product(A64) * G).sum(), A64)
    A_t = A.detach().clone().requires_grad_()
    (theirs,) = torch.autograd.grad(
        (torch.linalg.householder_product(A_t, exact_tau(A_t)) * G.float()).sum(), A_t)
    err = (grad32.double() - ref).norm() / ref.norm()
    err_torch = (theirs.double() - ref).norm() / ref.norm()
    assert err <= 2.0 * err_torch + 1e-6, (err.item(), err_torch.item())


def test_small_path_leaves_inputs_and_gradient_alone():
    A = torch.randn(2, 20, 5, dtype=f64)
    P = torch.randn(2, 20, 5, dtype=f64)
    G = torch.randn(2, 20, 5, dtype=f64)
    copies = [t.clone() for t in (A, P, G)]
    A.requires_grad_()
    P.requires_grad_()
    (dl.householder_product(A) * G).sum().backward()
    dl.householder_orgqr(P).backward(G)
    for t, c in zip((A, P, G), copies):
        assert torch.equal(t.detach(), c)
