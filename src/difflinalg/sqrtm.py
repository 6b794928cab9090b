r"""Square root and inverse square root of SPD matrices: eigen engine or matmul iterations.

:func:`sqrtm` and :func:`inv_sqrtm` compute :math:`A^{1/2}` and :math:`A^{-1/2}` of a batch of
symmetric positive definite matrices ``(*, n, n)`` by one of

* ``"eigh"``: the eigen engine (:func:`difflinalg.sqrtm_psd`), exact Loewner backward (one
  eigendecomposition per requested root);
* ``"newton_schulz"``, ``"denman_beavers"``, ``"pade"``: coupled matmul-only iterations
  with per-matrix spectral scaling, a per-matrix convergence test and a Lyapunov backward
  that does not differentiate through the loop (memory independent of the iteration
  count), see :mod:`difflinalg._sqrtm`;
* ``"auto"``: on CPU the eigen engine for n > 32 (the fastest there; Newton-Schulz for
  smaller well-conditioned matrices), with the matrices whose computed condition number
  exceeds ``1e-3 / eps`` (8e3 in float32) recomputed by Denman-Beavers, which is more
  accurate there; on other devices a matrix-vector-only condition estimate picks
  Newton-Schulz (well-conditioned) or Pade, and any matrix whose iteration does not
  converge is recomputed by the eigen engine. Inside ``torch.func`` transforms (``vmap``,
  per-sample gradients) these per-matrix choices are data-dependent branches, so
  ``"auto"`` takes the eigen engine as it is; the iterative methods' convergence control
  needs concrete values and is not vmappable.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch

from . import _spectral as sp
from . import _sqrtm as engine
from ._autograd import apply_fastest
from ._checks import check_choice, check_finite, check_square
from ._errors import DTypeError, ShapeError, describe
from .spectral import _MatrixFunction, _MatrixFunctionClassic

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
    check_square(op, "A", A)
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


# "auto" off CPU: Newton-Schulz while condition_estimate (an underestimate: 100 ~ true cond
# 1e3+) is below this, Pade (cubic) beyond
_NS_MAX_COND = 100.0
# on CPU, Newton-Schulz only for small, well-conditioned matrices (128 x 32 x 32: 0.55x the
# eigen route's time; at n = 64 the two trade places from run to run, at 128 it is 1.35x)
_CPU_NS_MAX_N = 32
_CPU_NS_MAX_COND = 10.0


def _auto_method(a: torch.Tensor, device_type: str | None = None
                 ) -> tuple[str, torch.Tensor | None]:
    """Pick the engine from device, size and a cheap conditioning estimate.

    CPU: the eigen engine from n = 33 on. Measured (2 threads, float32, batches of Lin &
    Maji's covariances, forward+backward, interleaved): Newton-Schulz with the sign-iteration
    backward is 0.55x the eigen route's time at 128 x 32 x 32, between 0.8x and 1.1x of it
    at 128 x 64 x 64 from run to run, 1.35x at 32 x 128 x 128. Small well-conditioned
    batches (estimate <= 10) iterate; the eigen route's accuracy is checked afterwards from
    the eigenvalues it computed, at no cost (see :func:`_run`).
    Other devices: GEMMs are cheap there and batched eigensolvers slow, so Newton-Schulz for
    well-conditioned batches and Pade beyond, picked by a matrix-vector-only estimate
    (not measured here: no GPU on our machines).
    """
    n = a.shape[-1]
    cpu = (device_type or a.device.type) == "cpu"
    if (cpu and n > _CPU_NS_MAX_N) or n > 2048:
        return "eigh", None
    flat = a.detach().reshape(-1, n, n)
    flat = (flat + flat.mT) * 0.5
    scale = engine.spectral_scale(flat)
    cond = float(engine.condition_estimate(flat, scale).max())
    if not math.isfinite(cond):
        return "eigh", None  # singular or indefinite as far as the estimate can tell
    if cpu:
        return ("newton_schulz" if cond <= _CPU_NS_MAX_COND else "eigh"), scale
    return ("newton_schulz" if cond <= _NS_MAX_COND else "pade"), scale


def _eigen_engine(a: torch.Tensor, want_sqrt: bool, want_inv: bool
                  ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """Roots by the Loewner-differentiated eigen engine, and the eigenvalues it used.

    The root is continuous at 0, so its clamp is ``eps^2 * lambda_max`` (``sqrtm_psd``'s
    default ``n * eps`` costs 1e-3 of accuracy at cond 1e6 in float32); the inverse root
    keeps ``sqrtm_psd``'s policy (see :func:`difflinalg.inv_sqrtm_psd`).
    """
    s = r = lam = None
    if a.numel() == 0:
        empty = a * 0.0  # keeps the graph (zero gradients) for empty batches or n = 0
        return (empty if want_sqrt else None), (empty if want_inv else None), a.sum(-1)
    eps = torch.finfo(a.dtype).eps
    if want_sqrt:
        s, lam, _ = apply_fastest(_MatrixFunction, _MatrixFunctionClassic, a,
                                  sp.named("sqrt", eps=eps * eps), None)
    if want_inv:
        r, lam, _ = apply_fastest(_MatrixFunction, _MatrixFunctionClassic, a,
                                  sp.named("inv_sqrt", eps=max(a.shape[-1], 1) * eps), None)
    return s, r, lam


def _replace(x: torch.Tensor | None, idx: torch.Tensor, value: torch.Tensor | None
             ) -> torch.Tensor | None:
    """x with x[idx] = value, differentiably (x untouched)."""
    if x is None or value is None:
        return x
    x = x.clone()
    x[idx] = value
    return x


def _run(op: str, A: torch.Tensor, method: str, max_iter: int | None, tol: float | None,
         backward: str, want_sqrt: bool, want_inv: bool, check: bool,
         compute_dtype: torch.dtype | None) -> SqrtmResult:
    _check(op, A, method, backward, max_iter, tol, check)
    if compute_dtype is not None and compute_dtype != A.dtype:
        if compute_dtype not in (torch.float32, torch.float64):
            raise DTypeError(f"{op}: expected compute_dtype to be None, torch.float32 or "
                             f"torch.float64, but got {compute_dtype!r}")
        out = _run(op, A.to(compute_dtype), method, max_iter, tol, backward, want_sqrt,
                   want_inv, False, None)
        info = out.info._replace(residual=out.info.residual.to(A.dtype))
        return SqrtmResult(*(None if x is None else x.to(A.dtype)
                             for x in (out.sqrt, out.inv_sqrt)), info)
    n = A.shape[-1]
    batch = A.shape[:-2]
    bsz = math.prod(batch)
    # symmetrised under autograd for the iterations; the eigen engine symmetrises inside
    # its Function (cheaper: no autograd node, no second pass)
    flat = A.reshape(bsz, n, n)
    # inside torch.func transforms (vmap) "auto" takes the eigen route as it is: the choice
    # by conditioning and the per-matrix refinement below are data-dependent branches
    transformed = torch._C._are_functorch_transforms_active()
    if A.numel() == 0 or (method == "auto" and transformed):
        chosen, scale = "eigh", None
    else:
        chosen, scale = _auto_method(flat) if method == "auto" else (method, None)
    if chosen == "eigh":
        s, r, lam = _eigen_engine(flat, want_sqrt, want_inv)
        used = torch.zeros(bsz, dtype=torch.long, device=A.device)
        conv = torch.ones(bsz, dtype=torch.bool, device=A.device)
        res = torch.zeros(bsz, dtype=A.dtype, device=A.device)
        label = "eigh"
        if method == "auto" and bsz and n > 1 and not transformed:
            # the eigensolver resolves eigenvalues to ~eps * lambda_max: beyond cond
            # 1e-3 / eps (8e3 in float32) the root loses more than ~1e-5; those matrices are
            # recomputed by Denman-Beavers, which keeps ~1e-5 up to cond 1e6
            cond = lam[..., -1] / lam[..., 0].clamp_min(torch.finfo(lam.dtype).tiny)
            hard = (cond > 1e-3 / torch.finfo(A.dtype).eps) & (lam[..., 0] > 0)
            if bool(hard.any()):
                idx = hard.nonzero().squeeze(-1)
                hard_in = flat[idx]
                sub = _iterative((hard_in + hard_in.mT) * 0.5, "denman_beavers", max_iter,
                                 tol, backward, want_sqrt, want_inv, None)
                ok = sub[3]
                idx, keep = idx[ok], ok.nonzero().squeeze(-1)
                s = _replace(s, idx, None if sub[0] is None else sub[0][keep])
                r = _replace(r, idx, None if sub[1] is None else sub[1][keep])
                used, res = used.clone(), res.clone()
                used[idx], res[idx] = sub[2][keep], sub[4][keep]
                label = "eigh+denman_beavers"
    else:
        s, r, used, conv, res = _iterative((flat + flat.mT) * 0.5, chosen, max_iter, tol,
                                           backward, want_sqrt, want_inv, scale)
        label = chosen
        if not bool(conv.all()):
            bad = (~conv).nonzero().squeeze(-1)
            if method == "auto":
                # recompute the matrices that did not converge with the eigen engine
                es, er, _ = _eigen_engine(flat[bad], want_sqrt, want_inv)
                s, r = _replace(s, bad, es), _replace(r, bad, er)
                label = f"{chosen}+eigh"
            else:
                iters = max_iter if max_iter is not None else engine.default_max_iter(chosen)
                tol_ = float(tol) if tol is not None else engine.default_tol(n, A.dtype)
                warnings.warn(
                    f"{op}: method={chosen!r} did not converge for {bad.numel()} of "
                    f"{conv.numel()} matrices within max_iter={iters} (largest residual "
                    f"{float(res.max()):.3g}, tol={tol_:.3g}); the result is the last "
                    "iterate. Raise max_iter, use method='eigh', or pass check=True to "
                    "reject non-SPD input", RuntimeWarning, stacklevel=3)
    info = SqrtmInfo(used.reshape(batch), conv.reshape(batch), res.reshape(batch), label)
    return SqrtmResult(None if s is None else s.reshape(A.shape),
                       None if r is None else r.reshape(A.shape), info)


def _iterative(flat: torch.Tensor, method: str, max_iter: int | None, tol: float | None,
               backward: str, want_sqrt: bool, want_inv: bool, scale: torch.Tensor | None
               ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor,
                          torch.Tensor]:
    n = flat.shape[-1]
    tol_ = float(tol) if tol is not None else engine.default_tol(n, flat.dtype)
    iters = max_iter if max_iter is not None else engine.default_max_iter(method)
    bwd = "eigh" if backward == "eigh" else "iterative"
    save = "both" if (want_sqrt and want_inv) else ("sqrt" if want_sqrt else "inv")
    s, r, used, conv, res = engine.SqrtmIter.apply(flat, method, iters, tol_, bwd,
                                                   max(iters, 60), scale, save)
    return (s if want_sqrt else None), (r if want_inv else None), used, conv, res


_COMMON = r"""
    Args:
        A: ``(*, n, n)`` symmetric positive definite matrices, float32 or float64, any
            device. Only the symmetric part ``(A + A^T)/2`` is used (and differentiated).
        method: ``"auto"`` (default), ``"eigh"``, ``"newton_schulz"``, ``"denman_beavers"``
            or ``"pade"`` (see the module docstring).
        max_iter: iteration limit of the matmul methods (default 60 / 30 / 25 for
            Newton-Schulz / Denman-Beavers / Pade: enough for cond 1e12).
        tol: target residual ``||I - Z Y||_F / sqrt(n)`` per matrix (default
            ``sqrt(n) * eps``).
            An iteration that reaches the rounding floor of the dtype before ``tol``
            (residual no longer halving) stops there and counts as converged if within
            ``100 * tol``.
        backward: ``"iterative"`` solves the backward's Lyapunov equation by the matmul sign
            iteration, ``"eigh"`` by one eigendecomposition of the root; ``"auto"``
            (default): iterative for the iterative methods.
        return_info: also return a :class:`SqrtmInfo` (iterations, converged, residual).
        compute_dtype: run the whole computation (and its backward) in this dtype, e.g.
            ``torch.float64`` for float32 input on ill-conditioned matrices: in float32 no
            method can give ``A^(-1/2)`` to better than ~1e-3 at cond 1e6 (a backward error
            of ``eps * ||A||`` moves the smallest eigenvalue by ~10%), nor the root to better
            than ~1e-5; in float64 every method gives both to float32 rounding.
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
          return_info: bool = False, compute_dtype: torch.dtype | None = None,
          check: bool = False) -> torch.Tensor | SqrtmResult:
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
    out = _run("sqrtm", A, method, max_iter, tol, backward, True, return_inv, check,
               compute_dtype)
    if not (return_inv or return_info):
        return out.sqrt
    return SqrtmResult(out.sqrt, out.inv_sqrt, out.info if return_info else None)


def inv_sqrtm(A: torch.Tensor, *, method: str = "auto", max_iter: int | None = None,
              tol: float | None = None, backward: str = "auto", return_info: bool = False,
              compute_dtype: torch.dtype | None = None, check: bool = False
              ) -> torch.Tensor | SqrtmResult:
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
    out = _run("inv_sqrtm", A, method, max_iter, tol, backward, False, True, check,
               compute_dtype)
    if not return_info:
        return out.inv_sqrt
    return SqrtmResult(None, out.inv_sqrt, out.info)


sqrtm.__doc__ = (sqrtm.__doc__ or "") + _COMMON
inv_sqrtm.__doc__ = (inv_sqrtm.__doc__ or "") + _COMMON
