"""Slow, obvious reference implementations and input generators (public, for tests).

The Householder references apply one reflector at a time with plain differentiable torch
ops, so that autograd gives their gradients. The spectral references need no eigenvector
derivative at all: the Frechet derivative of a matrix function is read off the function of
a 2n x 2n block matrix. They are the oracles the fast ops are tested against.
"""

from __future__ import annotations

import torch

__all__ = [
    "householder_product_reference",
    "householder_orgqr_reference",
    "householder_apply_reference",
    "exact_tau",
    "random_reflectors",
    "orthogonality_error",
    "block_frechet",
    "symmetric_with_spectrum",
    "reduced_rank_regression_reference",
]


def _unit_lower(a: torch.Tensor, k: int) -> torch.Tensor:
    m = a.shape[-2]
    return a[..., :k].tril(-1) + torch.eye(m, k, dtype=a.dtype, device=a.device)


def exact_tau(A: torch.Tensor) -> torch.Tensor:
    """tau = 2 / (1 + ||a_j||^2) for the strictly-lower columns of A (exact reflections)."""
    return 2.0 / (1.0 + (A.tril(-1) ** 2).sum(-2))


def _apply_reflectors(v: torch.Tensor, tau: torch.Tensor, x: torch.Tensor,
                      adjoint: bool) -> torch.Tensor:
    """H_1 ... H_k x (adjoint=False) or H_k ... H_1 x, one reflector at a time."""
    k = v.shape[-1]
    order = range(k) if adjoint else reversed(range(k))
    for j in order:
        vj = v[..., :, j:j + 1]
        x = x - tau[..., j, None, None] * vj @ (vj.mT @ x)
    return x


def householder_product_reference(A: torch.Tensor, tau: torch.Tensor | None = None
                                  ) -> torch.Tensor:
    """Reference for :func:`difflinalg.householder_product`."""
    m, n = A.shape[-2], A.shape[-1]
    if tau is None:
        tau = exact_tau(A)
    v = _unit_lower(A, tau.shape[-1])
    e = torch.eye(m, n, dtype=A.dtype, device=A.device).expand(A.shape)
    return _apply_reflectors(v, tau, e, adjoint=False)


def householder_orgqr_reference(param: torch.Tensor, tau: torch.Tensor | None = None,
                                eye: torch.Tensor | None = None,
                                eps: float = 1e-12) -> torch.Tensor:
    """Reference for :func:`difflinalg.householder_orgqr` (whole columns are reflectors)."""
    d, r = param.shape[-2], param.shape[-1]
    if tau is None:
        nrm = torch.linalg.vector_norm(param, dim=-2).clamp_min(eps)
        tau = 2.0 / nrm**2
    if eye is None:
        eye = torch.eye(d, r, dtype=param.dtype, device=param.device).expand(param.shape)
    return _apply_reflectors(param, tau, eye, adjoint=False)


def householder_apply_reference(A: torch.Tensor, tau: torch.Tensor | None, X: torch.Tensor,
                                left: bool = True, adjoint: bool = False) -> torch.Tensor:
    """Reference for :func:`difflinalg.householder_apply`: forms Q, then multiplies."""
    m = A.shape[-2]
    k = min(A.shape[-2], A.shape[-1]) if tau is None else tau.shape[-1]
    if tau is None:
        tau = exact_tau(A[..., :k])
    v = _unit_lower(A, k)
    eye = torch.eye(m, dtype=A.dtype, device=A.device).expand(A.shape[:-2] + (m, m))
    q = _apply_reflectors(v, tau, eye, adjoint=False)
    if adjoint:
        q = q.mT
    return q @ X if left else X @ q


def random_reflectors(*shape: int, scale: float = 1.0, dtype: torch.dtype = torch.float64,
                      device: torch.device | str | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian reflector parameters of shape ``(*, m, n)`` with standard deviation ``scale``."""
    return scale * torch.randn(*shape, dtype=dtype, device=device, generator=generator)


def orthogonality_error(M: torch.Tensor) -> torch.Tensor:
    """``||M^T M - I||_F / sqrt(r)`` per matrix, computed in float64."""
    m64 = M.double()
    r = M.shape[-1]
    eye = torch.eye(r, dtype=torch.float64, device=M.device)
    return torch.linalg.matrix_norm(m64.mT @ m64 - eye) / max(r, 1) ** 0.5


def block_frechet(matfun, A: torch.Tensor, E: torch.Tensor) -> torch.Tensor:
    """Frechet derivative Df(A)[E] as the top-right block of f([[A, E], [0, A]]).

    Holds for any primary matrix function f (Higham, *Functions of Matrices*, 2008,
    Thm. 3.6 / Mathias 1996), at repeated eigenvalues too; ``matfun`` maps a (*, 2n, 2n)
    tensor to f of it (e.g. torch.matrix_exp, or a wrapped scipy.linalg function). Run it
    in float64.
    """
    n = A.shape[-1]
    top = torch.cat([A, E], dim=-1)
    bottom = torch.cat([torch.zeros_like(A), A], dim=-1)
    return matfun(torch.cat([top, bottom], dim=-2))[..., :n, n:]


def symmetric_with_spectrum(eigenvalues: torch.Tensor, *, generator=None) -> torch.Tensor:
    """Q diag(eigenvalues) Q^T for a random orthogonal Q (Haar, via QR with sign fix)."""
    n = eigenvalues.shape[-1]
    g = torch.randn(*eigenvalues.shape[:-1], n, n, dtype=eigenvalues.dtype,
                    generator=generator)
    q, r = torch.linalg.qr(g)
    q = q * torch.sign(r.diagonal(dim1=-2, dim2=-1)).unsqueeze(-2)
    a = (q * eigenvalues.unsqueeze(-2)) @ q.mT
    return (a + a.mT) / 2


def reduced_rank_regression_reference(X: torch.Tensor, Y: torch.Tensor, rank: int
                                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, b)`` minimising ``||Y - X B - 1 b^T||_F`` over ``rank(B) <= rank``, in float64.

    The textbook route, independent of difflinalg's whitening: ordinary least squares on the
    centred data, then projection of the fitted values onto their top ``rank`` principal
    directions (Izenman 1975): ``B = B_ols V_k V_k^T`` with ``V_k`` the top eigenvectors of
    ``Yhat^T Yhat``, ``Yhat = Xc B_ols``; ``b = ybar - xbar B``.
    """
    X, Y = X.double(), Y.double()
    xbar, ybar = X.mean(0), Y.mean(0)
    Xc, Yc = X - xbar, Y - ybar
    B_ols = torch.linalg.lstsq(Xc, Yc, driver="gelsd").solution
    fitted = Xc @ B_ols
    _, vecs = torch.linalg.eigh(fitted.mT @ fitted)
    vk = vecs[:, -rank:]
    B = B_ols @ vk @ vk.mT
    return B, ybar - xbar @ B
