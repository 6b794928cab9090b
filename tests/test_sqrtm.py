"""sqrtm / inv_sqrtm: every method against a float64 eigen reference, gradients, policy."""

from __future__ import annotations

import importlib
import warnings

import pytest
import torch
from torch.autograd import gradcheck

import difflinalg as dl
from difflinalg import _sqrtm
from difflinalg.testing import symmetric_with_spectrum

f32, f64 = torch.float32, torch.float64
sqrtm_module = importlib.import_module("difflinalg.sqrtm")  # the package exports the function
ITERATIVE = ["newton_schulz", "denman_beavers", "pade"]
ALL = [*ITERATIVE, "eigh", "auto"]


def _spd(batch, n, cond, dtype=f64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lam = torch.logspace(0, -torch.log10(torch.tensor(float(cond))).item(), n, dtype=f64)
    lam = lam[torch.randperm(n, generator=gen)]
    return symmetric_with_spectrum(lam.expand(*batch, n).clone(), generator=gen).to(dtype)


def _ref(A):
    lam, v = torch.linalg.eigh(A.double())
    return (v * lam.sqrt().unsqueeze(-2)) @ v.mT, (v * lam.rsqrt().unsqueeze(-2)) @ v.mT


def _rel(x, ref):
    return float((x.double() - ref).flatten(-2).norm(dim=-1).max()
                 / ref.flatten(-2).norm(dim=-1).min())


def _quiet(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        return fn(*args, **kw)


# ----------------------------------------------------------------------------- values

@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("cond", [1e1, 1e3, 1e6])
def test_float64_forward_error(method, cond):
    A = _spd((3,), 24, cond)
    out = _quiet(dl.sqrtm, A, method=method, return_inv=True, return_info=True)
    s_ref, r_ref = _ref(A)
    assert _rel(out.sqrt, s_ref) < 1e-12
    # the inverse root's own condition number grows like cond^(1/2) * cond
    assert _rel(out.inv_sqrt, r_ref) < 1e-15 * cond ** 1.0 + 1e-13
    assert bool(out.info.converged.all())


@pytest.mark.parametrize("method", ITERATIVE)
@pytest.mark.parametrize("cond,tol_s,tol_r", [(1e1, 1e-5, 1e-5), (1e3, 1e-5, 1e-5),
                                              (1e6, 3e-5, 1e-2)])
def test_float32_forward_error(method, cond, tol_s, tol_r):
    """float32 against float64 on the same (rounded) input. At cond 1e6 no float32 method
    can give A^(-1/2) to 1e-5: a backward error of eps * ||A|| moves the smallest eigenvalue
    by ~10%; the root itself stays within a few 1e-5."""
    A = _spd((4,), 64, cond, dtype=f32)
    out = _quiet(dl.sqrtm, A, method=method, return_inv=True, return_info=True)
    s_ref, r_ref = _ref(A)
    assert _rel(out.sqrt, s_ref) < tol_s
    assert _rel(out.inv_sqrt, r_ref) < tol_r
    assert bool(out.info.converged.all())


@pytest.mark.parametrize("method", ALL)
def test_compute_dtype_float64_reaches_float32_rounding_at_cond_1e6(method):
    A = _spd((3,), 32, 1e6, dtype=f32)
    x = A.clone().requires_grad_()
    out = dl.sqrtm(x, method=method, return_inv=True, return_info=True,
                   compute_dtype=torch.float64)
    assert out.sqrt.dtype == out.inv_sqrt.dtype == out.info.residual.dtype == f32
    s_ref, r_ref = _ref(A)
    assert _rel(out.sqrt, s_ref) < 1e-6 and _rel(out.inv_sqrt, r_ref) < 1e-6
    G = torch.randn(3, 32, 32, dtype=f64)
    (g,) = torch.autograd.grad((out.sqrt * G.float()).sum()
                               + 1e-3 * (out.inv_sqrt * G.mT.float()).sum(), x)
    assert g.dtype == f32
    a64 = A.double().requires_grad_()
    (g_ref,) = torch.autograd.grad((dl.sqrtm_psd(a64) * G).sum()
                                   + 1e-3 * (dl.inv_sqrtm_psd(a64) * G.mT).sum(), a64)
    assert _rel(g, g_ref) < 1e-6  # the gradient too, where float32 compute gives ~1e-3
    with pytest.raises(TypeError, match=r"^sqrtm: expected compute_dtype"):
        dl.sqrtm(A, compute_dtype=torch.float16)


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("batch", [(), (0,), (3,), (2, 1)])
def test_shapes_and_inv_sqrtm(method, batch):
    A = _spd(batch, 5, 10.0)
    S = dl.sqrtm(A, method=method)
    R = dl.inv_sqrtm(A, method=method)
    assert S.shape == R.shape == A.shape
    if A.numel():
        s_ref, r_ref = _ref(A)
        torch.testing.assert_close(S, s_ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(R, r_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n", [0, 1])
def test_tiny_sizes(n):
    A = 4.0 * torch.eye(n, dtype=f64).expand(2, n, n)
    for method in ALL:
        S = dl.sqrtm(A, method=method)
        torch.testing.assert_close(S, 2.0 * torch.eye(n, dtype=f64).expand(2, n, n))


@pytest.mark.parametrize("method", ITERATIVE)
def test_each_matrix_depends_on_itself_only(method):
    """A hard batch-mate (cond 1e6, many more iterations) changes neither the result nor
    the iteration count of an easy matrix; no batch-wide scaling."""
    easy = _spd((), 16, 10.0, seed=1)
    hard = 1e4 * _spd((), 16, 1e6, seed=2)
    alone = dl.sqrtm(easy[None], method=method, return_info=True)
    mixed = dl.sqrtm(torch.stack([easy, hard]), method=method, return_info=True)
    torch.testing.assert_close(mixed.sqrt[0], alone.sqrt[0], rtol=1e-14, atol=1e-14)
    assert int(mixed.info.iterations[0]) == int(alone.info.iterations[0])
    assert int(mixed.info.iterations[1]) > int(mixed.info.iterations[0])
    # and the gradient of the easy one does not see the hard one either
    x = torch.stack([easy, hard]).requires_grad_()
    g = torch.autograd.grad(dl.sqrtm(x, method=method)[0].sum(), x)[0]
    y = easy[None].clone().requires_grad_()
    g1 = torch.autograd.grad(dl.sqrtm(y, method=method).sum(), y)[0]
    torch.testing.assert_close(g[0], g1[0], rtol=1e-12, atol=1e-12)
    assert torch.equal(g[1], torch.zeros_like(g[1]))


def test_symmetrises_input_and_leaves_it_alone():
    A = _spd((2,), 6, 10.0)
    skew = torch.randn(2, 6, 6, dtype=f64)
    B = A + 1e-3 * (skew - skew.mT)
    B0 = B.clone()
    for method in ALL:
        torch.testing.assert_close(dl.sqrtm(B, method=method), dl.sqrtm(A, method=method))
    assert torch.equal(B, B0)


# ----------------------------------------------------------------------------- convergence

def test_nonconvergence_warns_and_reports():
    A = _spd((2,), 8, 1e6)
    with pytest.warns(RuntimeWarning, match=r"^sqrtm: method='newton_schulz' did not converge"):
        out = dl.sqrtm(A, method="newton_schulz", max_iter=3, return_info=True)
    assert not bool(out.info.converged.any())
    assert (out.info.iterations == 3).all()
    assert bool((out.info.residual > 1e-3).all())


def test_auto_falls_back_to_eigen_engine(monkeypatch):
    """Off CPU auto iterates; matrices that do not converge go to the eigen engine."""
    monkeypatch.setattr(sqrtm_module, "_auto_method", lambda a: ("newton_schulz", None))
    monkeypatch.setattr(_sqrtm, "default_max_iter", lambda method: 2)
    A = _spd((3,), 8, 5.0)
    out = _quiet(dl.sqrtm, A, return_inv=True, return_info=True)
    assert out.info.method == "newton_schulz+eigh"
    s_ref, r_ref = _ref(A)
    assert _rel(out.sqrt, s_ref) < 1e-12 and _rel(out.inv_sqrt, r_ref) < 1e-12
    x = A.clone().requires_grad_()
    assert gradcheck(lambda a: dl.sqrtm(a), (x,))


def test_auto_policy_off_cpu():
    easy = _spd((4,), 32, 3.0)
    hard = _spd((4,), 32, 1e6)
    assert sqrtm_module._auto_method(easy, "cuda")[0] == "newton_schulz"
    assert sqrtm_module._auto_method(hard, "cuda")[0] == "pade"
    X = torch.randn(4, 32, 8, dtype=f64)
    assert sqrtm_module._auto_method(X @ X.mT, "cuda")[0] != "newton_schulz"  # singular
    # CPU: small and well-conditioned iterates, anything else goes to the eigen engine
    assert sqrtm_module._auto_method(easy)[0] == "newton_schulz"
    assert sqrtm_module._auto_method(hard)[0] == "eigh"
    assert sqrtm_module._auto_method(_spd((4,), 64, 3.0))[0] == "eigh"


@pytest.mark.parametrize("cond,label", [(10.0, "eigh"), (1e6, "eigh+denman_beavers")])
def test_auto_on_cpu_refines_ill_conditioned_matrices(cond, label):
    """float32: eigh where it is accurate, Denman-Beavers for the matrices beyond
    cond 1e-3/eps; each to the float64 reference within a few 1e-5."""
    A = torch.cat([_spd((2,), 64, 10.0, dtype=f32), _spd((2,), 64, cond, dtype=f32, seed=3)])
    x = A.clone().requires_grad_()
    out = dl.sqrtm(x, return_info=True, return_inv=True)
    assert out.info.method == label
    s_ref, r_ref = _ref(A)
    assert _rel(out.sqrt, s_ref) < 3e-5
    assert _rel(out.inv_sqrt[:2], r_ref[:2]) < 1e-5
    (g,) = torch.autograd.grad(out.sqrt.sum() + out.inv_sqrt[:2].sum(), x)
    assert bool(torch.isfinite(g).all())


def test_rank_deficient_input_stays_finite_with_auto():
    X = torch.randn(3, 4, 10, dtype=f64)
    A = X.mT @ X  # rank 4 in 10 dimensions
    S = dl.sqrtm(A)
    assert bool(torch.isfinite(S).all())
    torch.testing.assert_close(S @ S, A, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, f64])
def test_vmap_takes_the_eigen_route_and_matches_a_loop(dtype):
    """Under vmap "auto" cannot branch on each matrix's conditioning: it takes the eigen
    engine as it is, values and per-sample gradients equal to the unbatched calls'."""
    A = _spd((3,), 5, 1e2, dtype=dtype)
    G = torch.randn(5, 5, dtype=dtype)
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {}
    for op in (dl.sqrtm, dl.inv_sqrtm):
        out = torch.func.vmap(lambda a, op=op: op(a)[0])(A)
        torch.testing.assert_close(out, torch.stack([op(a)[0] for a in A]), **tol)
        def loss(a, op=op):
            return (op(a)[0] * G).sum()

        per_sample = torch.func.vmap(torch.func.grad(loss))(A)
        loop = torch.stack([torch.func.grad(loss)(a) for a in A])
        torch.testing.assert_close(per_sample, loop, **tol)


def test_condition_estimate_orders_conditioning():
    est = [float(_sqrtm.condition_estimate(_spd((1,), 32, c)).item()) for c in (2, 1e2, 1e6)]
    assert 1.0 <= est[0] <= 2.0 + 1e-9
    assert est[0] < est[1] < est[2]
    X = torch.randn(10, 3, dtype=f64)
    assert _sqrtm.condition_estimate((X @ X.mT)[None]).item() > 100  # singular: above both cut-offs


# ----------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("backward", ["auto", "iterative", "eigh"])
def test_gradcheck(method, backward):
    A = _spd((2,), 4, 20.0).requires_grad_()
    assert gradcheck(lambda a: dl.sqrtm(a, method=method, backward=backward), (A,))
    assert gradcheck(lambda a: dl.inv_sqrtm(a, method=method, backward=backward), (A,))

    def both(a):
        out = dl.sqrtm(a, method=method, backward=backward, return_inv=True)
        return out.sqrt, out.inv_sqrt

    assert gradcheck(both, (A,))


@pytest.mark.parametrize("method", ITERATIVE)
@pytest.mark.parametrize("backward", ["iterative", "eigh"])
def test_float32_gradient_vs_float64(method, backward):
    X = torch.randn(8, 200, 32, dtype=f64)
    A64 = X.mT @ X / 200 + torch.eye(32, dtype=f64)
    G = torch.randn(8, 32, 32, dtype=f64)
    grads = []
    for dtype in (f32, f64):
        a = A64.to(dtype).requires_grad_()
        out = dl.sqrtm(a, method=method, backward=backward, return_inv=True)
        loss = (out.sqrt * G.to(dtype)).sum() + (out.inv_sqrt * G.mT.to(dtype)).sum()
        grads.append(torch.autograd.grad(loss, a)[0])
    ref = dl.sqrtm_psd  # independent reference: the Loewner backward in float64
    a = A64.clone().requires_grad_()
    loss = (ref(a) * G).sum() + (dl.inv_sqrtm_psd(a) * G.mT).sum()
    g_ref = torch.autograd.grad(loss, a)[0]
    assert _rel(grads[1], g_ref) < 1e-12
    assert _rel(grads[0], g_ref) < 1e-5


@pytest.mark.parametrize("which,roots", [("sqrt", 1), ("inv", 1), ("both", 2)])
def test_saved_memory_is_independent_of_iterations(which, roots):
    """One root per requested output and a scale per matrix are saved, whatever the
    iteration count (Lin & Maji's 128 x 64 x 64 float32: 2 MB for one root)."""
    saved = {}
    for cond in (2.0, 1e6):
        A = _spd((4,), 16, cond).requires_grad_()
        nbytes = []

        def pack(t, nbytes=nbytes):
            nbytes.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            if which == "inv":
                out = dl.inv_sqrtm(A, method="newton_schulz", return_info=True)
            else:
                out = dl.sqrtm(A, method="newton_schulz", return_info=True,
                               return_inv=which == "both")
        saved[cond] = (sum(nbytes), int(out.info.iterations.max()))
    assert saved[1e6][1] > 2 * saved[2.0][1]
    assert saved[1e6][0] == saved[2.0][0] == roots * 4 * 16 * 16 * 8 + 4 * 8


def test_double_backward_is_refused_for_iterative_methods():
    A = _spd((), 4, 5.0).requires_grad_()
    (g,) = torch.autograd.grad(dl.sqrtm(A, method="newton_schulz").sum(), A, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(g.sum(), A)


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("op", [dl.sqrtm, dl.inv_sqrtm])
def test_bad_input(op):
    name = op.__name__
    A = _spd((), 4, 5.0)
    with pytest.raises(ValueError, match=rf"^{name}: expected a square matrix A"):
        op(torch.randn(3, 4, dtype=f64))
    with pytest.raises(TypeError, match=rf"^{name}: "):
        op(torch.eye(3, dtype=torch.int64))
    with pytest.raises(ValueError, match=rf"^{name}: expected method to be one of"):
        op(A, method="svd")
    with pytest.raises(ValueError, match=rf"^{name}: expected backward to be one of"):
        op(A, backward="autograd")
    with pytest.raises(ValueError, match=rf"^{name}: expected max_iter"):
        op(A, max_iter=0)
    with pytest.raises(ValueError, match=rf"^{name}: expected tol > 0"):
        op(A, tol=0.0)
    with pytest.raises(ValueError, match=rf"^{name}: expected symmetric positive definite"):
        op(-A, check=True)
    bad = A.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match=rf"^{name}: expected finite"):
        op(bad, check=True)
