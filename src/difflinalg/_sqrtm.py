r"""Matmul-only square roots of SPD matrices and the Lyapunov backward (engine of ``sqrtm``).

All iterations run on a flat batch ``(B, n, n)`` of symmetric positive definite matrices and
are *coupled*: they carry ``Y_k -> A^(1/2)`` and ``Z_k -> A^(-1/2)`` together, so both roots
come out of one run. Every matrix is scaled by its own spectral-norm estimate (never a norm
of the whole batch, never the Frobenius norm or the trace, which shrink the spectrum by up
to ``sqrt(n)`` and cost iterations), and is iterated until its own residual
``||I - Z_k Y_k||_F / sqrt(n)`` is below ``tol``: matrices that converge leave the active
set, so one hard matrix does not make its batch-mates iterate (or change their result).

Iterations (N. J. Higham, *Functions of Matrices*, SIAM 2008, ch. 6 and 5):

* Newton-Schulz (coupled, eq. 6.35): ``T = (3I - Z Y)/2, Y <- Y T, Z <- T Z``. Three GEMMs,
  quadratic; converges for a spectrum of ``A/c`` inside (0, 3), here (0, ~1].
* Denman-Beavers with determinant scaling (eq. 6.15, 6.28):
  ``Y <- (mu Y + Z^-1/mu)/2, Z <- (mu Z + Y^-1/mu)/2``, ``mu = (det Y det Z)^(-1/(2n))``.
  Inverses by Cholesky (Y and Z stay SPD): never batched LU, which returns wrong pivots on
  CPU with 2 threads at n >= 200 (PyTorch issue 142815).
* Pade [1/1] (the Halley member of the Pade family, eq. 6.34 with l = m = 1):
  ``F = (I + 3X)^-1 (3I + X), X = Z Y, Y <- Y F, Z <- F Z``. Cubic and globally convergent
  on SPD input; the rational step is one QR solve.

The backward never differentiates through the loop. For ``S = A^(1/2)`` the adjoint solves
the Lyapunov equation ``S X + X S = sym(G)`` (with ``G = Sbar - R Rbar R`` when the inverse
root ``R`` is also used), either by the Newton-Schulz iteration for the matrix sign of
``[[S, C], [0, -S]]``, which is ``[[I, 2X], [0, -I]]`` (Roberts 1980; the block form used
by T.-Y. Lin and S. Maji, "Improved bilinear pooling with CNNs", BMVC 2017), with the same
scaling and convergence control, or by one ``eigh`` of ``S``:
``X = V ((V^T C V) / (s_i + s_j)) V^T``. See ``docs/derivations/sqrtm.md``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ._autograd import no_tf32

ITERATIVE = ("newton_schulz", "denman_beavers", "pade")

# Converged residual is reached when it drops below ``tol``; once it is below this level and
# has stopped shrinking by at least this factor per step, the iteration sits at the rounding
# floor of the dtype and stops (flagged converged if within ``_FLOOR_SLACK * tol``).
_ASYMPTOTIC = 1e-2
_STALL_FACTOR = 0.5
_FLOOR_SLACK = 100.0


def default_tol(n: int, dtype: torch.dtype) -> float:
    """``sqrt(n) * eps`` (float32, n = 64: 9.5e-7): below it the root is at the rounding
    floor (Lin & Maji's covariances: Newton-Schulz error 2.0e-7 against 1.9e-6 at
    ``n * eps``, for one more iteration). Iterations that stall above it stop by the
    rounding-floor rule of :func:`iterate`."""
    return math.sqrt(max(n, 1)) * torch.finfo(dtype).eps


def default_max_iter(method: str) -> int:
    """Enough for condition numbers up to ~1e12 with spectral scaling."""
    return {"newton_schulz": 60, "denman_beavers": 30, "pade": 25}[method]


def matvec(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``a @ x`` for a batch of vectors x (B, n): elementwise product and sum for n <= 256
    (4x faster than a batched GEMV on CPU at 128 x 64 x 64), a GEMV beyond."""
    if a.shape[-1] <= 256:
        return (a * x.unsqueeze(-2)).sum(-1)
    return (a @ x.unsqueeze(-1)).squeeze(-1)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)


def spectral_scale(a: torch.Tensor, steps: int = 6) -> torch.Tensor:
    """Per-matrix estimate ``c ~ lambda_max`` of symmetric PSD ``a`` (B, n, n) -> (B,).

    A few power-iteration steps give a Rayleigh quotient ``<= lambda_max``, bracketed by
    ``||A||_inf / sqrt(n) <= lambda_max <= ||A||_inf``; the scaled spectrum then lies in
    (0, ~1], well inside every iteration's region of convergence. Zero matrices get 1.
    """
    n = a.shape[-1]
    inf_norm = a.abs().sum(-1).amax(-1)
    x = torch.linspace(1.0, 2.0, n, dtype=a.dtype, device=a.device).expand(a.shape[0], n)
    for _ in range(steps):
        x = _unit(matvec(a, x))
    rayleigh = (x * matvec(a, x)).sum(-1)
    c = torch.minimum(torch.maximum(rayleigh, inf_norm / math.sqrt(n)), inf_norm)
    return torch.where(c > 0, c, torch.ones_like(c))


def condition_estimate(a: torch.Tensor, scale: torch.Tensor | None = None,
                       steps: int = 8) -> torch.Tensor:
    """Cheap per-matrix estimate of ``cond(A)`` for SPD ``a`` (B, n, n) -> (B,).

    ``c ~ lambda_max`` from :func:`spectral_scale` (or ``scale``); ``lambda_min`` from power
    iteration on ``I - A/c``, whose largest eigenvalue is ``1 - lambda_min/c``: a few
    matrix-vector products, no factorisation (a batched Cholesky costs six GEMMs' time on
    CPU at 128 x 64 x 64). Rayleigh quotients make it an underestimate of the condition
    number, which is what a choice between methods needs: it separates cond ~ 10 from
    cond ~ 1000 reliably. Matrices with ``lambda_min <= 0`` as far as it can tell give inf.
    """
    c = spectral_scale(a) if scale is None else scale
    inv_c = (1.0 / c).unsqueeze(-1)
    x = torch.linspace(2.0, 1.0, a.shape[-1], dtype=a.dtype, device=a.device)
    x = x.expand(a.shape[0], -1)
    for _ in range(steps):
        x = _unit(x - matvec(a, x) * inv_c)
    rho = (x * (x - matvec(a, x) * inv_c)).sum(-1)
    low = c * (1.0 - rho)
    cond = c / low.clamp_min(torch.finfo(a.dtype).tiny)
    return torch.where(low > 0, cond, torch.full_like(cond, float("inf")))


def _eye_like(a: torch.Tensor) -> torch.Tensor:
    return torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)


def _residual(x: torch.Tensor, eye: torch.Tensor) -> torch.Tensor:
    """||I - X||_F / sqrt(n) per matrix."""
    return (eye - x).flatten(-2).norm(dim=-1) / math.sqrt(x.shape[-1])


def _sym_(x: torch.Tensor) -> torch.Tensor:
    return x.add_(x.mT.clone()).mul_(0.5)


def _step(method: str, y: torch.Tensor, z: torch.Tensor, x: torch.Tensor, eye: torch.Tensor,
          res: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One update of (Y, Z) given X = Z Y and its residual."""
    if method == "newton_schulz":
        t = torch.add(1.5 * eye, x, alpha=-0.5)
        return y @ t, t @ z
    if method == "pade":
        # X = Z Y is not symmetric in floating point: symmetrising it (for a Cholesky solve)
        # or symmetrising Y and Z decouples the pair and the iteration drifts away after
        # converging; a QR solve of the unsymmetric I + 3X keeps it at the rounding floor
        # (and avoids batched LU, see the module docstring)
        qf, rf = torch.linalg.qr(torch.add(eye, x, alpha=3.0))
        f = torch.linalg.solve_triangular(rf, qf.mT @ torch.add(x, eye, alpha=3.0), upper=True)
        return y @ f, f @ z
    # Denman-Beavers, determinant scaling while far from convergence
    ly, _ = torch.linalg.cholesky_ex(y)
    lz, _ = torch.linalg.cholesky_ex(z)
    n = y.shape[-1]
    logdet = 2.0 * (ly.diagonal(dim1=-2, dim2=-1).log().sum(-1)
                    + lz.diagonal(dim1=-2, dim2=-1).log().sum(-1))
    mu = torch.exp(-logdet / (2.0 * n))
    mu = torch.where(res > _ASYMPTOTIC, mu, torch.ones_like(mu))[:, None, None]
    # cholesky_solve, not cholesky_inverse: a matrix that is not numerically SPD gives
    # non-finite iterates (reported as not converged) instead of an exception
    y_new = 0.5 * (mu * y + torch.cholesky_solve(eye.expand_as(z), lz) / mu)
    z_new = 0.5 * (mu * z + torch.cholesky_solve(eye.expand_as(y), ly) / mu)
    return _sym_(y_new), _sym_(z_new)


def iterate(a: torch.Tensor, method: str, max_iter: int, tol: float,
            scale: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """Coupled iteration on SPD ``a`` (B, n, n).

    Returns ``(sqrt, inv_sqrt, iterations, converged, residual, scale)``; matrices are
    iterated only while their own residual is above ``tol`` (active set).
    """
    bsz, n = a.shape[0], a.shape[-1]
    c = spectral_scale(a) if scale is None else scale
    eye = _eye_like(a)
    y_out = torch.empty_like(a)
    z_out = torch.empty_like(a)
    iters = torch.zeros(bsz, dtype=torch.long, device=a.device)
    res_out = torch.full((bsz,), float("inf"), dtype=a.dtype, device=a.device)
    converged = torch.zeros(bsz, dtype=torch.bool, device=a.device)
    active = torch.arange(bsz, device=a.device)
    y = a / c[:, None, None]
    z = eye.expand(bsz, n, n).clone()
    prev = torch.full((bsz,), float("inf"), dtype=a.dtype, device=a.device)
    for k in range(max_iter + 1):
        x = z @ y
        res = _residual(x, eye)
        done = res <= tol
        stalled = (res <= _ASYMPTOTIC) & (res > _STALL_FACTOR * prev)
        finish = done | stalled if k < max_iter else torch.ones_like(done)
        if bool(finish.any()):
            idx = active[finish]
            y_out[idx] = y[finish]
            z_out[idx] = z[finish]
            iters[idx] = k
            res_out[idx] = res[finish]
            converged[idx] = done[finish] | (stalled[finish] & (res[finish] <= _FLOOR_SLACK * tol))
            keep = ~finish
            active, y, z, x, res = active[keep], y[keep], z[keep], x[keep], res[keep]
            if active.numel() == 0:
                break
        prev = res
        y, z = _step(method, y, z, x, eye, res)
    root_c = c.sqrt()[:, None, None]
    return (_sym_(y_out).mul_(root_c), _sym_(z_out).div_(root_c), iters, converged, res_out, c)


# ----------------------------------------------------------------------------- Lyapunov

def lyapunov_sign(s: torch.Tensor, c: torch.Tensor, scale: torch.Tensor, max_iter: int,
                  tol: float) -> torch.Tensor:
    """X with ``S X + X S = C`` for SPD ``s`` and symmetric ``c`` (B, n, n), matmul only.

    Newton-Schulz for the sign of ``M = [[S, C], [0, -S]] / scale``, written on the blocks:
    with ``M_k = [[P, Q], [0, -P]]``, ``M_{k+1} = M_k (3I - M_k^2) / 2`` gives
    ``P <- P (3I - P^2)/2`` and ``Q <- (3Q - Q P^2 - P^2 Q + P Q P)/2``; ``P -> I`` and
    ``Q -> 2X``. P and Q stay symmetric, so ``P^2 Q = (Q P^2)^T``: four GEMMs per step.
    ``scale`` (B,) must bound the spectrum of S from above (the forward's ``sqrt(c)``).
    """
    bsz = s.shape[0]
    eye = _eye_like(s)
    inv = (1.0 / scale)[:, None, None]
    p = s * inv
    q = c * inv
    out = torch.empty_like(c)
    active = torch.arange(bsz, device=s.device)
    prev = torch.full((bsz,), float("inf"), dtype=s.dtype, device=s.device)
    for k in range(max_iter + 1):
        p2 = p @ p
        res = _residual(p2, eye)
        stalled = (res <= _ASYMPTOTIC) & (res > _STALL_FACTOR * prev)
        finish = (res <= tol) | stalled if k < max_iter else torch.ones_like(res, dtype=torch.bool)
        if bool(finish.any()):
            out[active[finish]] = q[finish]
            keep = ~finish
            active, p, q, p2, res = active[keep], p[keep], q[keep], p2[keep], res[keep]
            if active.numel() == 0:
                break
        prev = res
        qp2 = q @ p2
        pqp = (p @ q) @ p
        q = 0.5 * (3.0 * q - qp2 - qp2.mT + pqp)
        p = 0.5 * (3.0 * p - p @ p2)
    return _sym_(out.mul_(0.5))


def lyapunov_eigh(s: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """X with ``S X + X S = C`` by one eigh of SPD ``s``: ``V ((V^T C V)/(s_i + s_j)) V^T``."""
    lam, v = torch.linalg.eigh(s)
    lam = lam.clamp_min(0)
    den = lam.unsqueeze(-1) + lam.unsqueeze(-2)
    tiny = torch.finfo(s.dtype).tiny
    inner = (v.mT @ c @ v) / den.clamp_min(tiny)
    return v @ inner @ v.mT


# ----------------------------------------------------------------------------- Function

class SqrtmIter(torch.autograd.Function):
    """(A^(1/2), A^(-1/2), iterations, converged, residual) of SPD ``a`` (B, n, n).

    ``a`` must already be symmetric (the public function symmetrises it under autograd).
    Saves the two roots and the per-matrix scale; nothing per iteration.
    """

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, method: str, max_iter: int, tol: float,
                backward: str, bwd_max_iter: int, scale: torch.Tensor | None, save: str
                ) -> tuple[torch.Tensor, ...]:
        with no_tf32(a):
            y, z, iters, conv, res, c = iterate(a, method, max_iter, tol, scale)
        # save only the root(s) whose gradient can arrive: one n x n matrix per matrix for
        # sqrtm or inv_sqrtm alone (the backward works from either), two for both
        ctx.save_for_backward(y if save != "inv" else None, z if save != "sqrt" else None, c)
        ctx.tol, ctx.backward_method, ctx.bwd_max_iter = tol, backward, bwd_max_iter
        ctx.mark_non_differentiable(iters, conv, res)
        ctx.set_materialize_grads(False)  # an unused root's gradient stays None
        return y, z, iters, conv, res

    # Backward. dS S + S dS = dA for S = A^(1/2); with R = S^(-1), dR = -R dS R. For a loss
    # with gradients G_S and G_R, <G_S, dS> + <G_R, dR> = <G_S - R G_R R, dS> =: <C, dS>, and
    # the adjoint of dA -> dS (the inverse Lyapunov operator, self-adjoint for symmetric S)
    # gives Abar = X with S X + X S = sym(C). Only the symmetric part of C matters because
    # A is symmetric (the public function symmetrised it). No loop is differentiated.
    # With R alone saved (inv_sqrtm), multiply the equation by R on both sides:
    # R (S X + X S) R = X R + R X, so X solves R X + X R = R C R = -R^2 G_R R^2.
    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g_s: torch.Tensor | None, g_r: torch.Tensor | None, *_: Any):
        s, r, c = ctx.saved_tensors
        if g_s is None and g_r is None:
            return (None,) * 8
        with no_tf32(c):
            if s is not None:
                rhs = torch.zeros_like(s) if g_s is None else g_s.clone()
                if g_r is not None:
                    rhs -= r @ g_r @ r
                root, bound = s, c.sqrt()
            else:
                r2 = r @ r
                rhs = -(r2 @ g_r @ r2)
                root, bound = r, spectral_scale(r)
            rhs = _sym_(rhs)
            if ctx.backward_method == "eigh":
                x = lyapunov_eigh(root, rhs)
            else:
                x = lyapunov_sign(root, rhs, bound, ctx.bwd_max_iter, ctx.tol)
        return x, None, None, None, None, None, None, None
