"""Tests of eigh, eigvalsh, matrix_function and the named spectral functions."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck, gradgradcheck

import difflinalg as dl
from difflinalg.testing import block_frechet, symmetric_with_spectrum

f64, f32 = torch.float64, torch.float32


def _scipy(fun):
    """A scipy matrix function as a batched torch function (float64, via numpy)."""
    def run(x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().cpu().numpy()
        out = np.stack([np.real(fun(m)) for m in arr.reshape(-1, *arr.shape[-2:])])
        return torch.from_numpy(out.reshape(arr.shape)).to(x.dtype)
    return run


# name -> (our op, scipy matrix function of the 2n x 2n block, needs PSD input)
FUNCTIONS = {
    "sqrtm_psd": (dl.sqrtm_psd, _scipy(scipy.linalg.sqrtm), True),
    "inv_sqrtm_psd": (dl.inv_sqrtm_psd,
                      _scipy(lambda m: scipy.linalg.fractional_matrix_power(m, -0.5)), True),
    "powm_psd": (lambda a, **kw: dl.powm_psd(a, 0.3, **kw),
                 _scipy(lambda m: scipy.linalg.fractional_matrix_power(m, 0.3)), True),
    "powm_psd_int": (lambda a, **kw: dl.powm_psd(a, 3, **kw),
                     lambda m: torch.linalg.matrix_power(m, 3), True),
    "logm_spd": (dl.logm_spd, _scipy(scipy.linalg.logm), True),
    "expm_sym": (dl.expm_sym, torch.matrix_exp, False),
    "tanh": (lambda a, **kw: dl.matrix_function(a, torch.tanh, **kw),
             _scipy(scipy.linalg.tanhm), False),
    "sin_with_df": (lambda a, **kw: dl.matrix_function(a, torch.sin, torch.cos, **kw),
                    _scipy(scipy.linalg.sinm), False),
}

# spectra where torch's eigh backward is NaN or the eigenvector derivative does not exist
HARD_SPECTRA = {
    "identity": [1.0, 1.0, 1.0, 1.0, 1.0],
    "2I": [2.0, 2.0, 2.0, 2.0, 2.0],
    "doubled": [0.5, 1.5, 1.5, 2.0, 3.0],
    "tripled": [0.7, 2.5, 2.5, 2.5, 4.0],
    "near-doubled": [0.5, 1.5, 1.5 + 1e-9, 2.0, 3.0],
    "distinct": [0.3, 0.9, 1.7, 2.6, 3.1],
}


def _spd(batch=(), n=5, dtype=f64, low=0.3, high=3.0):
    lam = torch.empty(*batch, n, dtype=f64).uniform_(low, high)
    return symmetric_with_spectrum(lam).to(dtype)


def _sym(batch=(), n=5, dtype=f64):
    a = torch.randn(*batch, n, n, dtype=f64)
    return ((a + a.mT) / 2).to(dtype)


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("batch", [(), (3,), (2, 1), (0,)])
def test_eigh_and_eigvalsh_match_torch(batch):
    A = torch.randn(*batch, 6, 6, dtype=f64)
    L, V = dl.eigh(A)
    L0, V0 = torch.linalg.eigh((A + A.mT) / 2)
    torch.testing.assert_close(L, L0)
    torch.testing.assert_close((V * L.unsqueeze(-2)) @ V.mT, (A + A.mT) / 2)
    torch.testing.assert_close(dl.eigvalsh(A), L0)


@pytest.mark.parametrize("largest", [True, False])
def test_eigh_top_k_values(largest):
    A = _sym((2,), 7)
    L, V = dl.eigh(A, k=3, largest=largest)
    L0, V0 = torch.linalg.eigh(A)
    sl = slice(4, 7) if largest else slice(0, 3)
    torch.testing.assert_close(L, L0[..., sl])
    torch.testing.assert_close(V.abs(), V0[..., sl].abs())
    assert V.shape == (2, 7, 3)


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_values_match_scipy(name):
    op, ref, _ = FUNCTIONS[name]
    A = _spd((2,))
    torch.testing.assert_close(op(A), ref(A), rtol=1e-9, atol=1e-10)


def test_only_the_symmetric_part_is_used():
    A = _spd()
    skew = torch.randn(5, 5, dtype=f64)
    torch.testing.assert_close(dl.sqrtm_psd(A + skew - skew.mT), dl.sqrtm_psd(A))


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", list(FUNCTIONS))
@pytest.mark.parametrize("batch", [(), (2,), (2, 1)])
def test_named_gradcheck_gradgradcheck_forward_ad(name, batch):
    op = FUNCTIONS[name][0]
    A = _spd(batch, 4).requires_grad_()
    assert gradcheck(op, (A,), check_forward_ad=True, check_batched_grad=True)
    assert gradgradcheck(op, (A,))


def _gauge_fixed(L, V):
    return L, V * torch.sign(V[..., :1, :])  # first row positive: removes the sign freedom


@pytest.mark.parametrize("k,largest", [(None, True), (2, True), (3, False)])
def test_eigh_gradcheck(k, largest):
    A = symmetric_with_spectrum(torch.tensor([[0.1, 0.8, 1.9, 3.0, 4.2],
                                              [-1.0, 0.5, 1.0, 2.2, 3.0]], dtype=f64))
    A.requires_grad_()

    def fn(a):
        return _gauge_fixed(*dl.eigh(a, k=k, largest=largest))

    assert gradcheck(fn, (A,), check_forward_ad=True)
    if k is None:
        assert gradgradcheck(fn, (A,))


def test_eigvalsh_gradcheck():
    A = _sym((2,), 5).requires_grad_()
    assert gradcheck(dl.eigvalsh, (A,), check_forward_ad=True)
    assert gradgradcheck(dl.eigvalsh, (A,))


@pytest.mark.parametrize("name", list(FUNCTIONS))
@pytest.mark.parametrize("spectrum", list(HARD_SPECTRA))
def test_gradient_equals_block_oracle_at_repeated_eigenvalues(name, spectrum):
    """<dL/dA, E> = <G, Df(A)[E]>, Df(A)[E] read off f of the 2n x 2n block matrix."""
    op, ref, _ = FUNCTIONS[name]
    A = symmetric_with_spectrum(torch.tensor(HARD_SPECTRA[spectrum], dtype=f64))
    E = _sym((), 5)
    G = torch.randn(5, 5, dtype=f64)
    expected = block_frechet(ref, A, E)
    Ag = A.clone().requires_grad_()
    (grad,) = torch.autograd.grad((op(Ag) * G).sum(), Ag)
    scale = expected.abs().max() * G.abs().max() * 25
    assert abs(float((grad * E).sum() - (G * expected).sum())) <= 1e-9 * float(scale)
    # forward mode gives the whole derivative
    _, tangent = torch.func.jvp(op, (A,), (E,))
    tol = 1e-9 * float(expected.abs().max())
    torch.testing.assert_close(tangent, expected, rtol=1e-8, atol=tol)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("name", ["sqrtm_psd", "inv_sqrtm_psd", "logm_spd", "tanh", "expm_sym"])
@pytest.mark.parametrize("spectrum", ["distinct", "identity", "doubled"])
def test_float32_gradient_matches_float64_reference(name, spectrum):
    op = FUNCTIONS[name][0]
    lam = torch.empty(4, 16, dtype=f64).uniform_(0.3, 3.0)
    if spectrum == "identity":
        lam.fill_(1.0)
    elif spectrum == "doubled":
        lam[:, 1] = lam[:, 0]
    A = symmetric_with_spectrum(lam)
    G = torch.randn(4, 16, 16, dtype=f64)
    grads = []
    for dtype in (f32, f64):
        a = A.to(dtype).requires_grad_()
        (g,) = torch.autograd.grad((op(a) * G.to(dtype)).sum(), a)
        grads.append(g.double())
    rel = (grads[0] - grads[1]).norm() / grads[1].norm()
    assert rel < 5e-6, float(rel)  # ~1e-6 measured, input rounding included


def test_compute_dtype_float64_improves_float32_accuracy():
    A = symmetric_with_spectrum(torch.logspace(-5, 0, 32, dtype=f64))
    ref = dl.logm_spd(A.float().double())  # the float32 input, exactly
    plain = dl.logm_spd(A.float()).double()
    precise = dl.logm_spd(A.float(), compute_dtype=f64)
    assert precise.dtype == f32
    err_plain = (plain - ref).norm() / ref.norm()
    err_precise = (precise.double() - ref).norm() / ref.norm()
    assert err_precise < err_plain / 10 and err_precise < 1e-6


# ------------------------------------------------------------------ eigh backward at repeats


def test_eigh_gradient_finite_where_torch_is_nan():
    A = torch.eye(4, dtype=f64).repeat(2, 1, 1).requires_grad_()
    G = torch.randn(2, 4, 4, dtype=f64)

    def loss(fn):
        L, V = fn(A)
        return (V @ torch.diag_embed(L) @ V.mT * G).sum()  # = <A, G>

    (ours,) = torch.autograd.grad(loss(dl.eigh), A)
    (theirs,) = torch.autograd.grad(loss(torch.linalg.eigh), A)
    assert torch.isfinite(ours).all()
    assert torch.isnan(theirs).any()
    # documented: exact for eigenvalue and eigenspace-projector losses only; this one is a
    # function of A, and matrix_function is exact for it
    (exact,) = torch.autograd.grad((dl.matrix_function(A, lambda x: x) * G).sum(), A)
    torch.testing.assert_close(exact, (G + G.mT) / 2)
    (trace_grad,) = torch.autograd.grad(dl.eigh(A).eigenvalues.sum(), A)
    torch.testing.assert_close(trace_grad, torch.eye(4, dtype=f64).expand(2, 4, 4))


@pytest.mark.parametrize("symmetric", [True, False])
def test_eigh_fast_path_equals_masked_rule(symmetric):
    """Unclustered CPU spectra take torch's own eigh node; same values and gradients as the
    masked rule (compute_dtype=float64 on a float64 input forces the latter), also for a
    non-symmetric input, whose gradient is symmetric."""
    A0 = torch.randn(3, 6, 6, dtype=f64)
    if symmetric:
        A0 = A0 + A0.mT
    GL, GV = torch.randn(3, 6, dtype=f64), torch.randn(3, 6, 6, dtype=f64)
    grads, outs = [], []
    for kw in ({}, {"compute_dtype": f64}):
        A = A0.clone().requires_grad_()
        L, V = dl.eigh(A, **kw)
        outs.append((L.detach(), V.detach()))
        grads.append(torch.autograd.grad((L * GL).sum() + (V * GV).sum(), A)[0])
        assert ("LinalgEigh" in type(L.grad_fn).__name__) == (not kw)
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads[0], grads[0].mT)
    assert torch.equal(A0, A0.clone())  # the caller's tensor is untouched


def test_eigh_clustered_spectrum_leaves_the_fast_path():
    A = symmetric_with_spectrum(torch.tensor([1.0, 2.0, 2.0, 3.0], dtype=f64)).requires_grad_()
    L, V = dl.eigh(A)
    assert "LinalgEigh" not in type(L.grad_fn).__name__
    (g,) = torch.autograd.grad((V * torch.randn(4, 4, dtype=f64)).sum(), A)
    assert torch.isfinite(g).all()


def test_eigh_exact_for_projector_of_separated_top_block():
    """Top-3 eigenspace of a spectrum with a tripled top eigenvalue (and a repeated bottom)."""
    A = symmetric_with_spectrum(torch.tensor([0.5, 1.0, 1.0, 4.0, 4.0, 4.0], dtype=f64))
    G = torch.randn(6, 6, dtype=f64)

    def projector_loss(a, fn):
        _, V = fn(a)
        return ((V @ V.mT) * G).sum()

    Ag = A.clone().requires_grad_()
    (grad,) = torch.autograd.grad(projector_loss(Ag, lambda a: dl.eigh(a, k=3)), Ag)
    # central differences along symmetric directions (the projector is smooth here)
    h = 1e-6
    for _ in range(3):
        E = _sym((), 6)
        def top3(a):
            return None, torch.linalg.eigh(a)[1][..., 3:]
        fd = (projector_loss(A + h * E, top3) - projector_loss(A - h * E, top3)) / (2 * h)
        assert abs(float((grad * E).sum()) - float(fd)) < 1e-6 * max(1.0, abs(float(fd)))


def test_eigh_top_k_gradient_equals_full_gradient():
    A = _sym((2,), 8).requires_grad_()
    GL = torch.randn(2, 3, dtype=f64)
    GV = torch.randn(2, 8, 3, dtype=f64)
    L, V = dl.eigh(A, k=3)
    (gk,) = torch.autograd.grad((L * GL).sum() + (V * GV).sum(), A)
    L, V = dl.eigh(A)
    (gf,) = torch.autograd.grad((L[..., 5:] * GL).sum() + (V[..., 5:] * GV).sum(), A)
    torch.testing.assert_close(gk, gf)


def test_gap_tolerance_is_relative():
    """Scaling A by 1e6 or 1e-6 scales the gradient and masks the same pairs."""
    A = symmetric_with_spectrum(torch.tensor([1.0, 1.0 + 1e-15, 2.0, 3.0], dtype=f64))
    G = torch.randn(4, 4, dtype=f64)
    grads = []
    for s in (1e-6, 1.0, 1e6):
        a = (s * A).requires_grad_()
        _, V = dl.eigh(a)
        (g,) = torch.autograd.grad((V[..., 2:] * G[..., 2:]).sum(), a)
        grads.append(g * s)
    torch.testing.assert_close(grads[0], grads[1])
    torch.testing.assert_close(grads[2], grads[1])


# ----------------------------------------------------------------------------- PSD policy


def test_singular_psd_is_finite_with_consistent_gradient():
    A = symmetric_with_spectrum(torch.tensor([0.0, 0.0, 1.0, 2.0], dtype=f64)).requires_grad_()
    for op in (dl.sqrtm_psd, dl.inv_sqrtm_psd, dl.logm_spd, lambda a: dl.powm_psd(a, -0.5)):
        out = op(A)
        (g,) = torch.autograd.grad(out.sum(), A)
        assert torch.isfinite(out).all() and torch.isfinite(g).all()
    # the gradient is that of the clamped function: gradcheck away from the kink
    B = symmetric_with_spectrum(torch.tensor([-1e-3, 1e-9, 1.0, 2.0], dtype=f64))
    assert gradcheck(lambda a: dl.sqrtm_psd(a, eps=1e-4), (B.requires_grad_(),))


def test_vmap_and_jacrev():
    A = _spd((3,), 4)
    out = torch.func.vmap(dl.sqrtm_psd)(A)
    torch.testing.assert_close(out, dl.sqrtm_psd(A))
    jac = torch.func.jacrev(dl.sqrtm_psd)(A[0])
    assert jac.shape == (4, 4, 4, 4) and torch.isfinite(jac).all()
    lv = torch.func.vmap(lambda a: dl.eigh(a, k=2)[0])(A)
    torch.testing.assert_close(lv, torch.linalg.eigvalsh(A)[..., 2:])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_vmapped_per_sample_gradients_match_a_loop(dtype):
    """vmap(grad(...)) of the spectral functions equals the per-matrix gradients, the PSD
    clamp's branch included (the second matrix is singular: rank 2 of 4)."""
    lam = torch.tensor([[0.5, 1.0, 2.0, 4.0], [0.0, 0.0, 1.0, 3.0], [1.0, 1.0, 1.0, 2.0]],
                       dtype=torch.float64)
    A = symmetric_with_spectrum(lam, generator=torch.Generator().manual_seed(3)).to(dtype)
    G = torch.randn(4, 4, dtype=dtype)
    ops = {"sqrtm_psd": dl.sqrtm_psd, "inv_sqrtm_psd": dl.inv_sqrtm_psd,
           "logm_spd": dl.logm_spd, "expm_sym": dl.expm_sym,
           "powm_psd": lambda a: dl.powm_psd(a, 0.3)}
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {}
    for name, op in ops.items():
        batch = A if name not in ("inv_sqrtm_psd", "logm_spd") else A[[0, 2]]
        def loss(a, op=op):
            return (op(a) * G).sum()

        per_sample = torch.func.vmap(torch.func.grad(loss))(batch)
        loop = torch.stack([torch.func.grad(loss)(a) for a in batch])
        torch.testing.assert_close(per_sample, loop, **tol, msg=name)


def test_inputs_not_mutated():
    A = _spd((2,), 4)
    A0 = A.clone()
    a = A.requires_grad_()
    for op in (dl.sqrtm_psd, dl.expm_sym, lambda x: dl.eigh(x)[1], dl.eigvalsh):
        op(a).sum().backward()
    assert torch.equal(A.detach(), A0)


# ----------------------------------------------------------------------------- errors


def test_errors_name_op_and_argument():
    with pytest.raises(ValueError, match=r"eigh: expected a square matrix A .*shape=\(3, 4\)"):
        dl.eigh(torch.randn(3, 4))
    with pytest.raises(TypeError, match="sqrtm_psd: expected a real floating dtype"):
        dl.sqrtm_psd(torch.ones(3, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="complex"):
        dl.eigvalsh(torch.randn(3, 3, dtype=torch.complex64))
    for k in (0, 5, True, 2.0):
        with pytest.raises(ValueError, match="eigh: expected k to be an integer"):
            dl.eigh(torch.randn(4, 4), k=k)
    bad = torch.eye(3)
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="expm_sym: expected finite values in A"):
        dl.expm_sym(bad, check=True)
    neg = symmetric_with_spectrum(torch.tensor([-1.0, 1.0, 2.0], dtype=f64))
    with pytest.raises(ValueError, match="logm_spd: expected a positive semidefinite"):
        dl.logm_spd(neg, check=True)
    with pytest.raises(TypeError, match="powm_psd: expected p to be a real number"):
        dl.powm_psd(torch.eye(3), "2")
    with pytest.raises(ValueError, match="expected eps > 0"):
        dl.sqrtm_psd(torch.eye(3), eps=0.0)
    with pytest.raises(TypeError, match="matrix_function: expected f"):
        dl.matrix_function(torch.eye(3), 2.0)
    with pytest.raises(TypeError, match="compute_dtype"):
        dl.eigh(torch.eye(3), compute_dtype=torch.int32)


def test_error_messages_do_not_print_values():
    A = torch.full((3, 4), 123.456)
    with pytest.raises(ValueError) as info:
        dl.eigh(A)
    assert "123" not in str(info.value)


@pytest.mark.parametrize("k", [None, 2])
def test_eigh_compute_dtype(k):
    A = _sym((2,), 6)
    a32 = A.float().requires_grad_()
    L, V = dl.eigh(a32, k=k, compute_dtype=f64)
    assert L.dtype == V.dtype == f32
    GV = torch.randn(V.shape, dtype=f64)
    (g32,) = torch.autograd.grad((V * torch.sign(V[..., :1, :]) * GV.float()).sum() + L.sum(),
                                 a32)
    a64 = A.float().double().requires_grad_()
    L, V = dl.eigh(a64, k=k)
    (g64,) = torch.autograd.grad((V * torch.sign(V[..., :1, :]) * GV).sum() + L.sum(), a64)
    assert g32.dtype == f32
    torch.testing.assert_close(g32.double(), g64, rtol=1e-5, atol=1e-5)


def test_outputs_are_freed_without_the_garbage_collector():
    """No reference cycle output -> autograd node -> ctx -> output."""
    import gc
    import weakref

    A = _spd((), 6).requires_grad_()
    ops = {"eigh": lambda a: dl.eigh(a).eigenvectors, "eigh_k": lambda a: dl.eigh(a, k=2)[1],
           "eigvalsh": dl.eigvalsh, "sqrtm": dl.sqrtm_psd,
           "householder": lambda a: dl.householder_product(a)}
    enabled = gc.isenabled()
    gc.disable()
    try:
        for name, op in ops.items():
            ref = weakref.ref(op(A))
            assert ref() is None, name
    finally:
        if enabled:
            gc.enable()


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from([-1.0, -0.3, 0.0, 0.5, 1.0, 2.0]), min_size=1, max_size=6),
       st.integers(0, 2**31 - 1))
def test_expm_gradient_property_repeated_spectra(eigenvalues, seed):
    """Any spectrum drawn from a few values (so repeats are common): the backward pairing
    <dL/dA, E> equals <G, Df(A)[E]> of the block oracle (torch.matrix_exp, float64)."""
    gen = torch.Generator().manual_seed(seed)
    lam = torch.tensor(eigenvalues, dtype=f64)
    n = lam.shape[0]
    A = symmetric_with_spectrum(lam, generator=gen)
    E = torch.randn(n, n, dtype=f64, generator=gen)
    E = (E + E.mT) / 2
    G = torch.randn(n, n, dtype=f64, generator=gen)
    Ag = A.clone().requires_grad_()
    (grad,) = torch.autograd.grad((dl.expm_sym(Ag) * G).sum(), Ag)
    expected = (G * block_frechet(torch.matrix_exp, A, E)).sum()
    tol = 1e-10 * n * float(G.abs().max() * E.abs().max()) * float(lam.abs().max().exp())
    assert abs(float((grad * E).sum() - expected)) <= tol
