r"""Square root and inverse square root of SPD matrices: eigen engine or matmul iterations.

:func:`sqrtm` and :func:`inv_sqrtm` compute :math:`A^{1/2}` and :math:`A^{-1/2}` of a batch of
symmetric positive definite matrices ``(*, n, n)`` by one of

* ``"eigh"``: the eigen engine (:func:`difflinalg.sqrtm_psd`), exact Loewner backward;
* ``"newton_schulz"``, ``"denman_beavers"``, ``"pade"``: coupled matmul-only iterations
  with per-matrix spectral scaling, a per-matrix convergence test and a Lyapunov backward
  that does not differentiate through the loop (memory independent of the iteration
  count), see :mod:`difflinalg._sqrtm`;
* ``"auto"``: from a cheap condition estimate: Newton-Schulz for well-conditioned batches
  (estimate below 10 on CPU, 100 elsewhere); on CPU the eigen engine up to 100 and
  Denman-Beavers beyond (more accurate than a float32 eigensolver there); Pade on other
  devices; any matrix whose iteration does not converge is recomputed by the eigen engine.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch

from . import _sqrtm as engine
from ._checks import check_choice, check_finite, check_min_dim, check_real_floating, check_tensor
from ._errors import ShapeError, describe
from .spectral import inv_sqrtm_psd, sqrtm_psd

__all__ = ["sqrtm", "inv_sqrtm", "SqrtmResult", "SqrtmInfo", "METHODS"]

METHODS = ("auto", "eigh", *engine.ITERATIVE)
BACKWARDS = ("auto", "iterative", "eigh")


class SqrtmInfo(NamedTuple):
    """Per-matrix convergence report of an iterative method, each of shape ``(*,)``.

    ``iterations`` used, ``converged`` flag, final ``residual`` ``||I - Z Y||_F / sqrt(n)``
    (``Y, Z`` the two roots of the scaled matrix), and ``method``: the method that produced
    each matrix's result (``"eigh"`` where ``auto`` fell back to the eigen engine).
    """

    iterations: torch.Tensor
    converged: torch.Tensor
    residual: torch.Tensor
    method: str


class SqrtmResult(NamedTuple):
    """``sqrt`` = :math:`A^{1/2}`, ``inv_sqrt`` = :math:`A^{-1/2}` (or None), ``info``."""

    sqrt: torch.Tensor | None
    inv_sqrt: torch.Tensor | None
    info: SqrtmInfo | None


def _check(op: str, A: torch.Tensor, method: str, backward: str, max_iter: int | None,
           tol: float | None, check: bool) -> None:
    check_tensor(op, "A", A)
    check_real_floating(op, "A", A)
    check_min_dim(op, "A", A, 2, "(*, n, n)")
    if A.shape[-1] != A.shape[-2]:
        raise ShapeError(f"{op}: expected square matrices A of shape (*, n, n), but got "
                         f"{describe('A', A)}")
    check_choice(op, "method", method, METHODS)
    check_choice(op, "backward", backward, BACKWARDS)
    if max_iter is not None and (isinstance(max_iter, bool) or not isinstance(max_iter, int)
                                 or max_iter < 1):
        raise ShapeError(f"{op}: expected max_iter to be an integer >= 1, but got "
                         f"max_iter={max_iter!r}")
    if tol is not None and not (isinstance(tol, (int, float)) and tol > 0):
        raise ShapeError(f"{op}: expected tol > 0, but got tol={tol!r}")
    if check and A.numel():
        check_finite(op, "A", A)
        a = A.detach()
        _, info = torch.linalg.cholesky_ex((a + a.mT) * 0.5)
        if bool((info != 0).any()):
            raise ShapeError(f"{op}: expected symmetric positive definite matrices A, but got "
                             f"{describe('A', A)} on which Cholesky fails")


# "auto": Newton-Schulz while the condition estimate is below this (its iteration count grows
# like log(cond)/log(2.25)); beyond it the eigen engine on CPU, Pade (cubic) elsewhere
# (of condition_estimate, which underestimates: 10 ~ true cond 10-20, 100 ~ true cond 1e3+)
_NS_MAX_COND = {"cpu": 10.0, "other": 100.0}
_EIGH_MAX_COND = 100.0  # CPU: the eigen engine up to here, Denman-Beavers beyond


def _auto_method(a: torch.Tensor) -> tuple[str, torch.Tensor | None]:
    """Pick the engine from device, size and a cheap conditioning estimate.

    Measured on CPU (2 threads, float32, batch 128 x 64 x 64, Lin & Maji's covariances,
    cond ~ 2): Newton-Schulz with the sign-iteration backward 36 ms f+b against 43 ms for
    the eigen route; at larger condition numbers the iteration count (forward and backward)
    grows and LAPACK's eigensolver wins, so the CPU switches early (estimate > 10). On GPUs
    GEMMs are cheap and batched eigensolvers slow: Newton-Schulz up to an estimate of 100,
    then Pade (not measured here: no GPU).
    """
    n = a.shape[-1]
    flat = a.detach().reshape(-1, n, n)
    if flat.shape[0] == 0 or n > 2048:
        return "eigh", None
    scale = engine.spectral_scale(flat)
    cond = float(engine.condition_estimate(flat, scale).max())
    if not math.isfinite(cond):
        return "eigh", scale  # singular or indefinite as far as the estimate can tell
    device = "cpu" if a.device.type == "cpu" else "other"
    if cond <= _NS_MAX_COND[device]:
        return "newton_schulz", scale
    if device == "cpu" and cond <= _EIGH_MAX_COND:
        return "eigh", scale
    # ill-conditioned: a float32 eigensolver resolves small eigenvalues only to
    # eps * lambda_max (root error 1e-4 at cond 1e6); the scaled Denman-Beavers iteration
    # stays at ~1e-5 (see the sqrtm benchmark's error-versus-condition table)
    return ("denman_beavers" if device == "cpu" else "pade"), scale


def _run(op: str, A: torch.Tensor, method: str, max_iter: int | None, tol: float | None,
         backward: str, want_sqrt: bool, want_inv: bool, check: bool) -> SqrtmResult:
    _check(op, A, method, backward, max_iter, tol, check)
    n = A.shape[-1]
    batch = A.shape[:-2]
    a = (A + A.mT) * 0.5
    if A.numel() == 0:
        chosen, scale = "eigh", None
    else:
        chosen, scale = _auto_method(a) if method == "auto" else (method, None)
    if chosen == "eigh":
        # the root is continuous at 0: clamp eigenvalues at eps^2 * lambda_max only (the
        # default n * eps of sqrtm_psd would cost 1e-3 of accuracy at cond 1e6 in float32)
        s = sqrtm_psd(a, eps=torch.finfo(A.dtype).eps ** 2) if want_sqrt else None
        r = inv_sqrtm_psd(a) if want_inv else None
        ones = torch.ones(batch, dtype=torch.bool, device=A.device)
        info = SqrtmInfo(torch.zeros(batch, dtype=torch.long, device=A.device), ones,
                         torch.zeros(batch, dtype=A.dtype, device=A.device), "eigh")
        return SqrtmResult(s, r, info)
    tol_ = float(tol) if tol is not None else engine.default_tol(n, A.dtype)
    iters = max_iter if max_iter is not None else engine.default_max_iter(chosen)
    bwd = "eigh" if backward == "eigh" else "iterative"
    flat = a.reshape(-1, n, n)
    s, r, used, conv, res = engine.SqrtmIter.apply(flat, chosen, iters, tol_, bwd,
                                                   max(iters, 60), scale)
    label = chosen
    if not bool(conv.all()):
        bad = (~conv).nonzero().squeeze(-1)
        if method == "auto":
            # recompute the matrices that did not converge with the eigen engine
            s, r = s.clone(), r.clone()
            sub = flat[bad]
            s[bad] = sqrtm_psd(sub)
            r[bad] = inv_sqrtm_psd(sub)
            label = f"{chosen}+eigh"
        else:
            warnings.warn(
                f"{op}: method={chosen!r} did not converge for {bad.numel()} of "
                f"{conv.numel()} matrices within max_iter={iters} (largest residual "
                f"{float(res.max()):.3g}, tol={tol_:.3g}); the result is the last iterate. "
                "Raise max_iter, use method='eigh', or pass check=True to reject "
                "non-SPD input", RuntimeWarning, stacklevel=3)
    info = SqrtmInfo(used.reshape(batch), conv.reshape(batch), res.reshape(batch), label)
    return SqrtmResult(s.reshape(A.shape) if want_sqrt else None,
                       r.reshape(A.shape) if want_inv else None, info)


_COMMON = r"""
    Args:
        A: ``(*, n, n)`` symmetric positive definite matrices, float32 or float64, any
            device. Only the symmetric part ``(A + A^T)/2`` is used (and differentiated).
        method: ``"auto"`` (default), ``"eigh"``, ``"newton_schulz"``, ``"denman_beavers"``
            or ``"pade"`` (see the module docstring).
        max_iter: iteration limit of the matmul methods (default 60 / 30 / 25 for
            Newton-Schulz / Denman-Beavers / Pade: enough for cond 1e12).
        tol: target residual ``||I - Z Y||_F / sqrt(n)`` per matrix (default ``n * eps``).
            An iteration that reaches the rounding floor of the dtype before ``tol``
            (residual no longer halving) stops there and counts as converged if within
            ``100 * tol``.
        backward: ``"iterative"`` solves the backward's Lyapunov equation by the matmul sign
            iteration, ``"eigh"`` by one eigendecomposition of the root; ``"auto"``
            (default): iterative for the iterative methods.
        return_info: also return a :class:`SqrtmInfo` (iterations, converged, residual).
        check: raise on non-finite or non-SPD input (a Cholesky per matrix; a device sync).

    Non-convergence: ``method="auto"`` recomputes those matrices with the eigen engine; an
    explicit iterative method returns the last iterate with a ``RuntimeWarning`` (inspect
    ``info.converged``). Singular (PSD) input never converges for the iterations; the
    eigen engine clamps eigenvalues below ``n * eps * lambda_max`` (see
    :func:`difflinalg.sqrtm_psd`).

    Differentiable once (reverse mode) w.r.t. ``A``; each matrix's result and gradient
    depend on that matrix only. The iterative methods save the two roots and a scale per
    matrix for the backward, never the iterates.

    Raises:
        ShapeError (ValueError): non-square ``A``, unknown ``method``/``backward``,
            ``max_iter < 1``, ``tol <= 0``, non-SPD or non-finite input with ``check=True``.
        DTypeError (TypeError): not a float32/float64 tensor.

    References:
        N. J. Higham, *Functions of Matrices: Theory and Computation*, SIAM 2008, ch. 5-6.
        T.-Y. Lin, S. Maji, "Improved bilinear pooling with CNNs", BMVC 2017.
        J. D. Roberts, "Linear model reduction and solution of the algebraic Riccati equation
        by use of the sign function", Int. J. Control 32(4), 1980.
"""


def sqrtm(A: torch.Tensor, *, method: str = "auto", max_iter: int | None = None,
          tol: float | None = None, backward: str = "auto", return_inv: bool = False,
          return_info: bool = False, check: bool = False
          ) -> torch.Tensor | SqrtmResult:
    r"""Principal square root :math:`A^{1/2}` of SPD matrices.

    Returns the ``(*, n, n)`` root, or a :class:`SqrtmResult` ``(sqrt, inv_sqrt, info)``
    when ``return_inv`` or ``return_info`` is set (``inv_sqrt`` = :math:`A^{-1/2}`, free
    with the iterative methods, which compute both).

    Example:
        >>> X = torch.randn(4, 100, 8, dtype=torch.float64)
        >>> A = X.mT @ X / 100 + 0.1 * torch.eye(8, dtype=torch.float64)
        >>> S = sqrtm(A, method="newton_schulz")
        >>> torch.allclose(S @ S, A)
        True
    """
    out = _run("sqrtm", A, method, max_iter, tol, backward, True, return_inv, check)
    if not (return_inv or return_info):
        return out.sqrt
    return SqrtmResult(out.sqrt, out.inv_sqrt, out.info if return_info else None)


def inv_sqrtm(A: torch.Tensor, *, method: str = "auto", max_iter: int | None = None,
              tol: float | None = None, backward: str = "auto", return_info: bool = False,
              check: bool = False) -> torch.Tensor | SqrtmResult:
    r"""Inverse principal square root :math:`A^{-1/2}` of SPD matrices (whitening).

    Returns the ``(*, n, n)`` inverse root, or ``SqrtmResult(None, inv_sqrt, info)`` with
    ``return_info=True``.

    Example:
        >>> X = torch.randn(4, 100, 8, dtype=torch.float64)
        >>> A = X.mT @ X / 100 + 0.1 * torch.eye(8, dtype=torch.float64)
        >>> R = inv_sqrtm(A, method="pade")
        >>> torch.allclose(R @ A @ R, torch.eye(8, dtype=torch.float64))
        True
    """
    out = _run("inv_sqrtm", A, method, max_iter, tol, backward, False, True, check)
    if not return_info:
        return out.inv_sqrt
    return SqrtmResult(None, out.inv_sqrt, out.info)


sqrtm.__doc__ = (sqrtm.__doc__ or "") + _COMMON
inv_sqrtm.__doc__ = (inv_sqrtm.__doc__ or "") + _COMMON
