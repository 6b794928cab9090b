r"""Symmetric eigendecomposition and spectral matrix functions with exact, finite gradients.

* :func:`eigh` / :func:`eigvalsh` - drop-ins for :func:`torch.linalg.eigh` /
  :func:`torch.linalg.eigvalsh` whose backward is vectorised, finite at repeated eigenvalues,
  and costs ``O(n^2 k)`` for the top (or bottom) ``k`` pairs.
* :func:`matrix_function` - ``F(A) = V f(L) V^T`` for any elementwise ``f``, differentiated by
  the Daleckii-Krein (Loewner) formula, which is exact at repeated eigenvalues too.
* :func:`sqrtm_psd`, :func:`inv_sqrtm_psd`, :func:`powm_psd`, :func:`logm_spd`,
  :func:`expm_sym` - the common cases with closed-form, cancellation-free divided differences.

Every op symmetrises its input as ``(A + A^T) / 2`` first (only the symmetric part of ``A``
matters, and the gradient returned is symmetric), takes any batch dims ``(*, n, n)``, float32
and float64 on any device, and supports reverse mode, forward mode (``torch.func.jvp``),
``torch.func.vmap`` and double backward. ``compute_dtype=torch.float64`` runs the eigensolver
and the Loewner matrix in double precision for a float32 input. See
``docs/derivations/spectral.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from . import _spectral as sp
from ._autograd import apply_fastest, classic_twin
from ._checks import check_finite, check_square
from ._errors import DTypeError, ShapeError, describe
from ._triangular import addmm_into

__all__ = ["EighResult", "eigh", "eigvalsh", "matrix_function", "sqrtm_psd", "inv_sqrtm_psd",
           "powm_psd", "logm_spd", "expm_sym"]


class EighResult(NamedTuple):
    """``(eigenvalues, eigenvectors)``, eigenvalues ascending, like ``torch.linalg.eigh``."""

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor


def _default_rtol(n: int, dtype: torch.dtype) -> float:
    # eigh's eigenvalues are accurate to about n eps ||A||; closer pairs are equal to
    # working precision and their 1/(l_i - l_j) is noise
    return max(n, 10) * torch.finfo(dtype).eps


def _check_square(op: str, A: torch.Tensor, compute_dtype: torch.dtype | None,
                  check: bool) -> None:
    check_square(op, "A", A)
    if compute_dtype is not None and compute_dtype not in (torch.float32, torch.float64):
        raise DTypeError(f"{op}: expected compute_dtype to be None, torch.float32 or "
                         f"torch.float64, but got {compute_dtype!r}")
    if check:
        check_finite(op, "A", A)


def _eigh_sym(A: torch.Tensor, compute_dtype: torch.dtype | None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    a = A if compute_dtype is None else A.to(compute_dtype)
    return torch.linalg.eigh(sp.symmetrize(a))


# ----------------------------------------------------------------------------- eigh


def _select(lam: torch.Tensor, v: torch.Tensor, k: int | None, largest: bool
            ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The pairs returned: all, the k largest or the k smallest (ascending); and the offset."""
    n = lam.shape[-1]
    if k is None:
        return lam, v, 0
    start = n - k if largest else 0
    return lam[..., start:start + k], v[..., start:start + k], start


class _Eigh(torch.autograd.Function):
    """(L_K, V_K) of sym(A), K = all or a contiguous range of k indices.

    Two more outputs, not differentiable, carry the whole decomposition (in the compute
    dtype) to the backward when it differs from the returned pairs; otherwise they are empty
    views. Saved for backward: L and V only.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(A: torch.Tensor, k: int | None, largest: bool, rtol: float,
                compute_dtype: torch.dtype | None,
                pre: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, ...]:
        # pre: the decomposition already computed by eigh's fast path (see _eigh_torch_node)
        lam, v = _eigh_sym(A, compute_dtype) if pre is None else pre
        if k is None and lam.dtype == A.dtype:
            return lam, v, lam[..., :0], v[..., :0]
        lk, vk, _ = _select(lam, v, k, largest)
        return lk.to(A.dtype, copy=True), vk.to(A.dtype, copy=True), lam, v

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        A, k, largest, rtol, compute_dtype = inputs[:5]
        ctx.k, ctx.largest, ctx.rtol, ctx.dtype = k, largest, rtol, A.dtype
        ctx.mark_non_differentiable(output[2], output[3])
        ctx.direct = output[2].shape[-1] == 0
        ctx.clustered = sp.has_clusters(output[0] if ctx.direct else output[2], rtol)
        # saved outputs: under create_graph the direct case differentiates through this node
        ctx.save_for_backward(*(output[:2] if ctx.direct else output[2:]))
        # jvp reads them through save_for_forward: an output kept as a ctx attribute would
        # form a reference cycle (output -> node -> ctx -> output) and outlive its use
        ctx.save_for_forward(*(output[:2] if ctx.direct else output[2:]))

    @staticmethod
    def backward(ctx: Any, g_l: torch.Tensor | None, g_v: torch.Tensor | None, *_unused):
        lam, v = ctx.saved_tensors
        n = lam.shape[-1]
        k = n if ctx.k is None else ctx.k
        start = 0 if ctx.k is None else (n - k if ctx.largest else 0)
        vk = v[..., start:start + k]
        wd = v.dtype
        # M (n x k) = F[:, K] o (V^T dV) + diag block of dL, F = 1/D: dA = sym(V M V_K^T)
        if g_v is not None and ctx.k is None and sp.inplace_ok(lam, v, g_v):
            # all pairs, no graph: sym(V (F o X) V^T) = V ((X - X^T) / 2D) V^T as F = 1/D is
            # antisymmetric: the result needs no symmetrising (three n x n passes in all)
            if g_v.dtype != wd:
                g_v = g_v.to(wd)
            x = torch.matmul(v.mT, g_v)
            d = sp.eigvec_gaps(lam, ctx.rtol, scale=2.0, clustered=ctx.clustered)
            m = torch.sub(x, x.mT).div_(d)
            if g_l is not None:
                m.diagonal(dim1=-2, dim2=-1).add_(g_l if g_l.dtype == wd else g_l.to(wd))
            ga = torch.matmul(torch.matmul(v, m), v.mT)
            return (ga if ga.dtype == ctx.dtype else ga.to(ctx.dtype)), None, None, None, None, None
        if g_v is not None:
            m = (v.mT @ g_v.to(wd)) / sp.eigvec_gaps(lam, ctx.rtol, cols=(start, start + k),
                                                     clustered=ctx.clustered)
        else:
            m = torch.zeros(*lam.shape, k, dtype=wd, device=lam.device)
        if g_l is not None:
            block = m[..., start:start + k, :].diagonal(dim1=-2, dim2=-1)
            if not sp.inplace_ok(m, g_l):
                m = m + torch.nn.functional.pad(torch.diag_embed(g_l.to(wd)),
                                                (0, 0, start, n - k - start))
            else:
                block.add_(g_l.to(wd))
        # sym(X V_K^T) with X = V M (n x k): (X V_K^T + V_K X^T) / 2, two n^2 k products
        x = v @ (m * 0.5)
        if sp.inplace_ok(x, vk):
            ga = x @ vk.mT
            addmm_into(ga, vk, x.mT)
        else:
            ga = x @ vk.mT + vk @ x.mT
        return ga.to(ctx.dtype), None, None, None, None, None

    @staticmethod
    def jvp(ctx: Any, dA: torch.Tensor, *_unused):
        lam, v = ctx.saved_tensors
        k = ctx.k
        n = lam.shape[-1]
        start = 0 if k is None else (n - k if ctx.largest else 0)
        kk = n if k is None else k
        vks = v[..., start:start + kk]
        e = v.mT @ sp.symmetrize(dA.to(v.dtype)) @ vks          # (n x k): V^T dA V_K
        dl = e[..., start:start + kk, :].diagonal(dim1=-2, dim2=-1)
        dv = v @ (e / sp.eigvec_gaps(lam, ctx.rtol, cols=(start, start + kk),
                                     clustered=ctx.clustered))
        return dl.to(ctx.dtype), dv.to(ctx.dtype), None, None


_EighClassic = classic_twin(_Eigh)


def eigh(A: torch.Tensor, *, k: int | None = None, largest: bool = True,
         gap_rtol: float | None = None, compute_dtype: torch.dtype | None = None,
         check: bool = False) -> EighResult:
    r"""Eigenvalues (ascending) and eigenvectors of ``sym(A) = (A + A^T)/2``, differentiably.

    Same results as :func:`torch.linalg.eigh` on ``sym(A)``; with ``k`` only the ``k``
    largest (``largest=True``) or smallest pairs, still in ascending order.

    Backward (vectorised, no loop over eigenvalues)::

        dL/dA = sym(V (diag(dL/dl) + F o (V^T dL/dV)) V_K^T),  F_ij = 1 / (l_j - l_i)

    where ``F`` is taken over all ``n`` eigenvectors but only the ``k`` returned columns, so the
    top-k backward costs ``O(n^2 k)``. Pairs with ``|l_i - l_j| <= gap_rtol * max|lam|`` (equal
    to working precision; default ``max(n, 10) * eps(dtype)``, relative, not an absolute
    1e-9) get ``F_ij = 0``. What that buys:

    * the gradient is always finite (torch's is NaN at the identity or any repeated eigenvalue);
    * it is exact for losses that depend on the eigenvectors only through projectors onto
      whole eigenspaces (``V_K V_K^T`` of a top-k block separated from the rest by a gap, or
      the eigenvalues themselves): the masked terms cancel exactly for those;
    * it is *not* exact in general, even for a loss that is invariant to the basis chosen
      inside a repeated eigenspace, such as ``tr(V diag(lam^2) V^T G) = tr(A^2 G)``: the true
      gradient there is a 0/0 limit that ``dL/dV`` alone cannot resolve. Such losses are
      functions of the matrix; use :func:`matrix_function` (or the named functions), which is
      exact for every ``f``. For losses that depend on the arbitrary basis or signs of the
      eigenvectors inside a repeated eigenspace, no gradient exists; the masked one is then
      the one of the basis returned by the solver, held fixed.

    Args:
        A: ``(*, n, n)``, float32 or float64.
        k: number of pairs to return, ``1 <= k <= n``; None for all.
        largest: with ``k``, the largest (True) or the smallest (False) eigenvalues.
        gap_rtol: relative gap below which two eigenvalues are treated as equal in the
            backward.
        compute_dtype: dtype of the eigensolve (e.g. ``torch.float64`` for a float32 input).
        check: raise on non-finite input (a device sync on GPU).

    Returns:
        ``EighResult(eigenvalues (*, k), eigenvectors (*, n, k))``.

    Saved for backward: ``L`` and ``V`` only (the whole decomposition, in the compute dtype,
    also when ``k`` pairs are returned). Where the rule above has nothing to mask (all pairs,
    no ``compute_dtype``, no two eigenvalues within the tolerance) it is term for term the
    formula of torch's eigh backward, so on the CPU that node itself records the gradient
    (it runs without the per-call Python cost of a custom backward). Double backward is
    exact where the eigenvalues are distinct when all pairs are returned; with ``k`` or a
    different ``compute_dtype`` the saved decomposition is held constant in the second
    derivative.

    References:
        J. R. Magnus, "On differentiating eigenvalues and eigenvectors", Econometric Theory
        1(2), 1985. M. B. Giles, "An extended collection of matrix derivative results for
        forward and reverse mode AD", 2008.
    """
    op = "eigh"
    _check_square(op, A, compute_dtype, check)
    n = A.shape[-1]
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
            raise ShapeError(f"{op}: expected k to be an integer with 1 <= k <= n = {n}, "
                             f"but got k={k!r} with {describe('A', A)}")
        if k == n:
            k = None
    rtol = _default_rtol(n, compute_dtype or A.dtype) if gap_rtol is None else float(gap_rtol)
    if not rtol >= 0:
        raise ShapeError(f"{op}: expected gap_rtol >= 0, but got {gap_rtol!r}")
    pre = None
    if k is None and compute_dtype is None:
        fast = _eigh_torch_node(A, rtol)
        if isinstance(fast, EighResult):
            return fast
        pre = fast
    lam, v, _, _ = apply_fastest(_Eigh, _EighClassic, A, k, largest, rtol, compute_dtype, pre)
    return EighResult(lam, v)


def _eigh_torch_node(A: torch.Tensor, rtol: float
                     ) -> EighResult | tuple[torch.Tensor, torch.Tensor] | None:
    """Fast path of :func:`eigh` for all pairs: torch's own eigh node where it is exact.

    Where no two eigenvalues are within the gap tolerance, the masked backward above is term
    for term the formula of torch's eigh backward, whose node runs without our Python-level
    backward (about 60 us per call on 2 CPU threads, a quarter of the whole backward at
    32 x 32 x 32). So on the CPU, with a graph to record and outside torch.func transforms,
    the eigensolve runs under autograd and its result is returned when the spectrum has no
    cluster; with a cluster the decomposition is handed to the masked rule (returned as a
    plain pair, not an EighResult). None: not applicable.

    The input enters as ``A - A.detach() + sym(A)``: the value of ``sym(A)`` exactly and an
    identity node for the gradient, which is right because torch's eigh gradient is already
    symmetric (it differentiates along symmetric perturbations). An input that is already
    exactly symmetric enters as it is.
    """
    if (not A.is_cpu or not A.requires_grad or not torch.is_grad_enabled()
            or torch._C._are_functorch_transforms_active()):
        return None
    with torch.no_grad():
        exact = torch.equal(A, A.mT)  # then sym(A) == A bit for bit: no node at all
        s = None if exact else sp.symmetrize(A)
    lam, v = torch.linalg.eigh(A if exact else A.sub(A.detach()).add_(s))
    if sp.has_clusters(lam.detach(), rtol):
        return lam.detach(), v.detach()
    return EighResult(lam, v)


class _Eigvalsh(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(A: torch.Tensor, compute_dtype: torch.dtype | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        lam, v = _eigh_sym(A, compute_dtype)
        return lam.to(A.dtype), v.to(A.dtype)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(inputs[0], output[1])
        ctx.save_for_forward(output[1])

    @staticmethod
    def backward(ctx: Any, g_l: torch.Tensor | None, _g_v: Any):
        A, v = ctx.saved_tensors
        if g_l is None:
            return None, None
        if torch.is_grad_enabled():  # create_graph: V as a differentiable function of A
            v = eigh(A).eigenvectors
        return (v * g_l.unsqueeze(-2)) @ v.mT, None

    @staticmethod
    def jvp(ctx: Any, dA: torch.Tensor, _unused: Any):
        (v,) = ctx.saved_tensors
        dl = ((v.mT @ sp.symmetrize(dA)) * v.mT).sum(-1)
        return dl, None


_EigvalshClassic = classic_twin(_Eigvalsh)


def eigvalsh(A: torch.Tensor, *, compute_dtype: torch.dtype | None = None,
             check: bool = False) -> torch.Tensor:
    r"""Eigenvalues (ascending) of ``sym(A)``; backward ``V diag(dL/dl) V^T`` (always exact).

    Eigenvalues are Lipschitz in ``A``; their gradient exists wherever they are simple and
    this formula gives a valid (sub)gradient where they repeat. Saves ``V`` only.
    """
    op = "eigvalsh"
    _check_square(op, A, compute_dtype, check)
    lam, _ = apply_fastest(_Eigvalsh, _EigvalshClassic, A, compute_dtype)
    return lam


# ----------------------------------------------------------------------------- F(A)


class _MatrixFunction(torch.autograd.Function):
    """F(A) = V f(L) V^T with the Loewner backward; L and V ride along as non-differentiable
    outputs so that the backward reuses them (saved: L and V, and the caller's A)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(A: torch.Tensor, fn: sp.SpectralFn, compute_dtype: torch.dtype | None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lam, v = _eigh_sym(A, compute_dtype)
        return ((v * fn.value(lam).unsqueeze(-2)) @ v.mT).to(A.dtype), lam, v

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        A, fn, compute_dtype = inputs
        ctx.fn, ctx.compute_dtype, ctx.dtype = fn, compute_dtype, A.dtype
        ctx.mark_non_differentiable(output[1], output[2])
        ctx.save_for_backward(A, output[1], output[2])
        ctx.save_for_forward(output[1], output[2])  # for jvp (no ctx attribute: no cycle)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor, *_unused):
        A, lam, v = ctx.saved_tensors
        if torch.is_grad_enabled():
            # create_graph: the decomposition through eigh's differentiable node, so that
            # autograd sees how V and L move with A (double backward)
            a = A if ctx.compute_dtype is None else A.to(ctx.compute_dtype)
            lam, v = eigh(a)
        ga, inner = sp.derivative_map(ctx.fn, lam, v, sp.symmetrize(g.to(v.dtype)))
        extra = sp.floor_terms(ctx.fn, lam, v, inner, adjoint=True)
        if extra is not None:
            ga = ga + extra
        return ga.to(ctx.dtype), None, None

    @staticmethod
    def jvp(ctx: Any, dA: torch.Tensor, *_unused):
        lam, v = ctx.saved_tensors
        df, inner = sp.derivative_map(ctx.fn, lam, v, sp.symmetrize(dA.to(v.dtype)))
        extra = sp.floor_terms(ctx.fn, lam, v, inner, adjoint=False)
        if extra is not None:
            df = df + extra
        return df.to(ctx.dtype), None, None


_MatrixFunctionClassic = classic_twin(_MatrixFunction)


def _apply_fn(op: str, A: torch.Tensor, fn: sp.SpectralFn, compute_dtype: torch.dtype | None,
              check: bool) -> torch.Tensor:
    _check_square(op, A, compute_dtype, check)
    if A.numel() == 0:
        return A * 0.0
    return apply_fastest(_MatrixFunction, _MatrixFunctionClassic, A, fn, compute_dtype)[0]


def matrix_function(A: torch.Tensor, f: Callable[[torch.Tensor], torch.Tensor],
                    df: Callable[[torch.Tensor], torch.Tensor] | None = None, *,
                    compute_dtype: torch.dtype | None = None,
                    check: bool = False) -> torch.Tensor:
    r"""``F(A) = V f(L) V^T`` for symmetric ``A``, with the exact Daleckii-Krein backward.

    .. math::
        \frac{\partial \mathcal L}{\partial A} = V\bigl(\Delta\circ(V^T\,\mathrm{sym}(G)\,V)
        \bigr)V^T,\qquad \Delta_{ij} = \frac{f(l_i) - f(l_j)}{l_i - l_j},\ \Delta_{ii} = f'(l_i).

    This is exact at repeated eigenvalues, for every ``f``: it needs the divided differences,
    never the eigenvector derivative. Generic divided differences switch from the difference
    quotient to the mean of the derivatives below a relative gap of ``eps^(1/3)`` (to avoid
    cancellation); the named functions (:func:`sqrtm_psd` etc.) use closed forms.

    Args:
        A: ``(*, n, n)``, float32 or float64; only ``sym(A)`` is used.
        f: elementwise function of a tensor of eigenvalues (e.g. ``torch.tanh``), made of
            torch ops.
        df: its derivative, elementwise; by default computed by forward-mode AD of ``f``.
        compute_dtype: dtype of the eigensolve and of the Loewner matrix.
        check: raise on non-finite input.

    Saves for backward ``L`` and ``V`` only (and the caller's ``A``, no copy, which double
    backward differentiates through :func:`eigh`).
    """
    if not callable(f) or (df is not None and not callable(df)):
        raise DTypeError("matrix_function: expected f (and df, if given) to be callables "
                         "acting elementwise on a tensor of eigenvalues")
    return _apply_fn("matrix_function", A, sp.generic(f, df), compute_dtype, check)


def _psd_checked(op: str, A: torch.Tensor, eps: float | None, check: bool,
                 compute_dtype: torch.dtype | None) -> float:
    _check_square(op, A, compute_dtype, check)
    dtype = compute_dtype or A.dtype
    e = float(max(A.shape[-1], 1) * torch.finfo(dtype).eps) if eps is None else float(eps)
    if not e > 0:
        raise ShapeError(f"{op}: expected eps > 0, but got eps={eps!r}")
    if check and A.numel():
        a = A.detach() if compute_dtype is None else A.detach().to(compute_dtype)
        lam = torch.linalg.eigvalsh(sp.symmetrize(a))
        scale = lam.abs().amax(-1).clamp_min(torch.finfo(dtype).tiny)
        if bool((lam[..., 0] < -e * scale).any()):
            raise ShapeError(f"{op}: expected a positive semidefinite matrix A, but got "
                             f"{describe('A', A)} with a negative eigenvalue beyond "
                             f"eps * max|lam| (eps={e:.3g})")
    return e


_PSD_DOC = """
    Eigenvalues below ``c = eps * l_max`` (per matrix; default ``eps = n * eps(dtype)``) are
    raised to ``c`` before ``f`` is applied, so the result is finite for singular and slightly
    indefinite input, and the gradient is the exact gradient of that clamped function
    (divided differences of ``x -> f(max(x, c))``; eigenvalue directions below ``c`` get zero
    gradient). ``check=True`` raises instead when an eigenvalue is below ``-c`` (a matrix
    that is not PSD beyond rounding) or the input is not finite.
"""


def sqrtm_psd(A: torch.Tensor, *, eps: float | None = None,
              compute_dtype: torch.dtype | None = None, check: bool = False) -> torch.Tensor:
    """Principal square root of a symmetric PSD matrix; ``Delta_ij = 1/(sqrt l_i + sqrt l_j)``.
    """
    e = _psd_checked("sqrtm_psd", A, eps, check, compute_dtype)
    return _apply_fn("sqrtm_psd", A, sp.named("sqrt", eps=e), compute_dtype, False)


def inv_sqrtm_psd(A: torch.Tensor, *, eps: float | None = None,
                  compute_dtype: torch.dtype | None = None, check: bool = False
                  ) -> torch.Tensor:
    """``A^(-1/2)`` of a symmetric PSD matrix (whitening);
    ``Delta_ij = -1 / (sqrt(l_i l_j) (sqrt l_i + sqrt l_j))``."""
    e = _psd_checked("inv_sqrtm_psd", A, eps, check, compute_dtype)
    return _apply_fn("inv_sqrtm_psd", A, sp.named("inv_sqrt", eps=e), compute_dtype, False)


def powm_psd(A: torch.Tensor, p: float, *, eps: float | None = None,
             compute_dtype: torch.dtype | None = None, check: bool = False) -> torch.Tensor:
    """``A^p`` of a symmetric PSD matrix for real ``p``; divided differences
    ``l_j^(p-1) expm1(p r) / expm1(r)``, ``r = log(l_i / l_j)`` (no cancellation)."""
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise DTypeError(f"powm_psd: expected p to be a real number, but got {type(p).__name__}")
    e = _psd_checked("powm_psd", A, eps, check, compute_dtype)
    return _apply_fn("powm_psd", A, sp.named("pow", eps=e, p=float(p)), compute_dtype, False)


def logm_spd(A: torch.Tensor, *, eps: float | None = None,
             compute_dtype: torch.dtype | None = None, check: bool = False) -> torch.Tensor:
    """Principal logarithm of a symmetric positive definite matrix; divided differences
    ``r / (l_j expm1(r))``, ``r = log(l_i / l_j)``."""
    e = _psd_checked("logm_spd", A, eps, check, compute_dtype)
    return _apply_fn("logm_spd", A, sp.named("log", eps=e), compute_dtype, False)


for _f in (sqrtm_psd, inv_sqrtm_psd, powm_psd, logm_spd):
    _f.__doc__ = (_f.__doc__ or "") + _PSD_DOC


def expm_sym(A: torch.Tensor, *, compute_dtype: torch.dtype | None = None,
             check: bool = False) -> torch.Tensor:
    """``exp(A)`` of a symmetric matrix; divided differences ``e^max (1 - e^-d) / d``."""
    return _apply_fn("expm_sym", A, sp.named("exp"), compute_dtype, check)
