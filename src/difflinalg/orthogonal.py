r"""Orthogonal matrices and Stiefel frames from Householder reflectors.

Three public functions share one compact-WY engine (:mod:`difflinalg._householder`):

* :func:`householder_product` - drop-in for :func:`torch.linalg.householder_product`
  (``torch.orgqr``): the first ``n`` columns of :math:`Q = H_1 \cdots H_k`.
* :func:`householder_orgqr` - drop-in for ``torch_householder.torch_householder_orgqr``.
* :func:`householder_apply` - :math:`Q X`, :math:`Q^T X`, :math:`X Q` or :math:`X Q^T` without
  forming ``Q`` (``ormqr``).

All are differentiable in every tensor argument (first and second order, reverse and
forward mode, ``torch.func.vmap``), batched over any leading dimensions, pure torch.
"""

from __future__ import annotations

import torch

from . import _householder
from ._checks import (
    check_finite,
    check_min_dim,
    check_real_floating,
    check_same_device_dtype,
    check_tensor,
)
from ._errors import ShapeError, describe

__all__ = ["householder_product", "householder_orgqr", "householder_apply"]


def _graph_zero(*tensors: torch.Tensor | None) -> torch.Tensor | float:
    """A zero that depends on the inputs in the autograd graph without reading their values.

    Empty-slice sums keep degenerate results (k = 0, zero size) differentiable with zero
    gradients, and unlike ``0 * x.sum()`` they stay zero when an input holds inf or NaN.
    """
    zero: torch.Tensor | float = 0.0
    for t in tensors:
        if t is not None:
            zero = zero + t.reshape(-1)[:0].sum()
    return zero


def _check_tau(op: str, a: torch.Tensor, tau: torch.Tensor, k_max: int, what: str) -> None:
    check_tensor(op, "tau", tau)
    check_same_device_dtype(op, "A", a, "tau", tau)
    if tau.dim() != a.dim() - 1:
        raise ShapeError(f"{op}: expected tau of shape (*, k) with the batch dimensions of A "
                         f"({describe('A', a)}), but got {describe('tau', tau)}")
    if tau.shape[:-1] != a.shape[:-2]:
        raise ShapeError(f"{op}: expected tau's batch shape to equal A's batch shape "
                         f"{tuple(a.shape[:-2])}, but got {describe('tau', tau)}")
    if tau.shape[-1] > k_max:
        raise ShapeError(f"{op}: expected tau.shape[-1] <= {what} = {k_max}, "
                         f"but got {describe('tau', tau)} with {describe('A', a)}")


def householder_product(A: torch.Tensor, tau: torch.Tensor | None = None, *,
                        check: bool = False) -> torch.Tensor:
    r"""First ``n`` columns of a product of ``k`` Householder reflectors (LAPACK ``orgqr``).

    .. math::
        Q = H_1 H_2 \cdots H_k,\qquad H_j = I_m - \tau_j v_j v_j^T,

    where :math:`v_j` has zeros above row ``j``, a one in row ``j`` and ``A[..., j+1:, j]``
    below it: only the part of ``A`` strictly below the diagonal is read, exactly as in
    :func:`torch.linalg.householder_product`, which this function replaces (same result,
    same shapes). Returns ``Q[..., :, :n]``.

    With ``tau=None`` every column is an exact reflection,
    :math:`\tau_j = 2 / \|v_j\|^2 = 2 / (1 + \|a_j\|^2)`, so the result is orthogonal for any
    ``A`` (the usual way to parametrise an orthogonal ``m x n`` frame by ``mn - n(n+1)/2``
    free numbers); the gradient then flows through ``tau`` into ``A``.

    Computed in compact-WY form :math:`Q = I - V T V^T` (one triangular solve and large
    matrix products; on CPU LAPACK's blocked ``orgqr`` is used for the forward where it is
    faster). The backward recomputes ``T`` from ``A`` instead of storing per-reflector
    intermediates: its extra memory is a few times the size of ``A``, independent of ``k``,
    and its cost a small multiple of the forward's. See ``docs/derivations/householder.md``.

    Args:
        A: ``(*, m, n)`` reflectors, ``m >= n``. float32 or float64, any device.
        tau: ``(*, k)`` scales, ``k <= n``, same batch shape, dtype and device as ``A``; or
            ``None`` for exact reflections over all ``n`` columns. Any value is allowed
            (``tau_j = 0`` makes :math:`H_j = I`); the result is orthogonal only when
            :math:`\tau_j \in \{0, 2/\|v_j\|^2\}`.
        check: if True, raise on non-finite ``A`` or ``tau`` (a device sync on GPU).

    Returns:
        ``(*, m, n)`` tensor.

    Raises:
        ShapeError (ValueError): ``m < n``, ``k > n``, mismatched batch shapes.
        DTypeError (TypeError): not a float32/float64 tensor, or ``A`` and ``tau`` disagree on
            dtype or device. Complex inputs are not supported yet.

    Differentiable w.r.t. ``A`` (strictly lower part) and ``tau``: reverse mode, double
    backward and forward mode (``torch.func.jvp``); ``torch.func.vmap`` works.

    References:
        R. Schreiber, C. Van Loan, "A storage-efficient WY representation for products of
        Householder transformations", SIAM J. Sci. Stat. Comput. 10(1), 1989.
        T. Joffrain, T. M. Low, E. S. Quintana-Orti, R. van de Geijn, F. G. Van Zee,
        "Accumulating Householder transformations, revisited", ACM TOMS 32(2), 2006.

    Example:
        >>> A = torch.randn(5, 3, dtype=torch.float64)
        >>> Q = householder_product(A)
        >>> torch.allclose(Q.mT @ Q, torch.eye(3, dtype=torch.float64))
        True
    """
    op = "householder_product"
    check_tensor(op, "A", A)
    check_real_floating(op, "A", A)
    check_min_dim(op, "A", A, 2, "(*, m, n)")
    m, n = A.shape[-2], A.shape[-1]
    if m < n:
        raise ShapeError(f"{op}: expected A of shape (*, m, n) with m >= n, "
                         f"but got {describe('A', A)}")
    if tau is not None:
        _check_tau(op, A, tau, n, "A.shape[-1]")
        k = tau.shape[-1]
    else:
        k = n
    if check:
        check_finite(op, "A", A)
        if tau is not None:
            check_finite(op, "tau", tau)
    if k == 0 or A.numel() == 0:
        out = torch.eye(m, n, dtype=A.dtype, device=A.device).expand(A.shape).clone()
        # keep the graph connected so that .backward() gives zero gradients, not an error
        return out + _graph_zero(A, tau)
    return _householder.apply(A, tau, None, n, True, False, 0.0, k)


def householder_orgqr(param: torch.Tensor, tau: torch.Tensor | None = None,
                      eye: torch.Tensor | None = None, eps: float = 1e-12) -> torch.Tensor:
    r"""Drop-in for ``torch_householder.torch_householder_orgqr``.

    Same semantics as that package: the *whole* column ``j`` of ``param`` (all ``d``
    entries) is the reflector vector :math:`v_j`, and the result is

    .. math::
        M = H_1 H_2 \cdots H_r\, E,\qquad H_j = I - \tau_j v_j v_j^T,

    with ``E = eye`` if given, else the ``d x r`` identity. Without ``tau`` the reflectors are
    exact, :math:`\tau_j = 2/\max(\|v_j\|, \mathrm{eps})^2` (the package's normalisation of
    ``v_j`` by its norm clamped at ``eps``). A zero column with ``tau=None`` gives
    :math:`H_j = I` and a zero gradient (the reflection of a zero vector is undefined; this is
    the limit the clamp picks). With the package's recommended input
    ``param.tril(-1) + eye(d, r)`` the result equals :func:`householder_product`.

    Unlike the package: any leading batch dims, gradients correct for any ``tau`` (not only
    ``2/||v||^2``), gradients w.r.t. ``eye`` too, no compiled extension.

    Args:
        param: ``(*, d, r)``, ``d >= r``, float32 or float64.
        tau: ``(*, r)`` or None.
        eye: ``(*, d, r)`` matrix the reflectors are applied to, or None for the identity.
        eps: floor of the reflector norm when ``tau`` is None.

    Returns:
        ``(*, d, r)`` tensor.

    Raises:
        ShapeError (ValueError), DTypeError (TypeError) as :func:`householder_product`.
    """
    op = "householder_orgqr"
    check_tensor(op, "param", param)
    check_real_floating(op, "param", param)
    check_min_dim(op, "param", param, 2, "(*, d, r)")
    d, r = param.shape[-2], param.shape[-1]
    if d < r:
        raise ShapeError(f"{op}: expected param of shape (*, d, r) with d >= r, "
                         f"but got {describe('param', param)}")
    if tau is not None:
        check_tensor(op, "tau", tau)
        check_same_device_dtype(op, "param", param, "tau", tau)
        if tau.shape != param.shape[:-2] + (r,):
            raise ShapeError(f"{op}: expected tau of shape {tuple(param.shape[:-2]) + (r,)} "
                             f"(batch of param, r), but got {describe('tau', tau)}")
    if eye is not None:
        check_tensor(op, "eye", eye)
        check_same_device_dtype(op, "param", param, "eye", eye)
        if eye.shape != param.shape:
            raise ShapeError(f"{op}: expected eye of the same shape as param "
                             f"{tuple(param.shape)}, but got {describe('eye', eye)}")
    if not eps > 0:
        raise ShapeError(f"{op}: expected eps > 0, but got eps={eps!r}")
    if r == 0 or param.numel() == 0:
        base = eye if eye is not None else torch.eye(d, r, dtype=param.dtype,
                                                      device=param.device).expand(param.shape)
        return base + _graph_zero(param, tau)
    return _householder.apply(param, tau, eye, r, False, False, float(eps), r)


def householder_apply(A: torch.Tensor, tau: torch.Tensor | None, X: torch.Tensor, *,
                      left: bool = True, adjoint: bool = False,
                      check: bool = False) -> torch.Tensor:
    r"""Apply :math:`Q = H_1 \cdots H_k` (LAPACK reflectors) to ``X`` without forming ``Q``.

    Computes ``Q X`` (``left=True``), ``X Q`` (``left=False``), or with ``adjoint=True``
    ``Q^T X`` / ``X Q^T``, like :func:`torch.ormqr` (``transpose`` there is ``adjoint`` here).
    ``Q`` is ``m x m`` with ``m = A.shape[-2]``; the reflectors are read from ``A`` as in
    :func:`householder_product`. Cost :math:`O(mkn)` for ``X`` of ``n`` columns (rows for
    ``left=False``), not the :math:`O(m^2 n)` of forming ``Q`` and multiplying.

    Args:
        A: ``(*, m, K)`` reflectors; the first ``k`` columns are used.
        tau: ``(*, k)``, ``k <= min(m, K)``; or None for exact reflections of all
            ``min(m, K)`` columns.
        X: ``(*, m, n)`` for ``left=True``, ``(*, n, m)`` for ``left=False``. Batch dims of
            ``A``/``tau`` and ``X`` broadcast.
        left: apply ``Q`` from the left (True) or the right.
        adjoint: apply ``Q^T`` instead of ``Q``.
        check: if True, raise on non-finite inputs (a device sync on GPU).

    Returns:
        Tensor of ``X``'s shape (with broadcast batch dims).

    Differentiable w.r.t. ``A``, ``tau`` and ``X`` (reverse, double backward, forward mode).

    Example:
        >>> A, X = torch.randn(6, 6), torch.randn(6, 2)
        >>> Q = householder_product(A)
        >>> torch.allclose(householder_apply(A, None, X), Q @ X, atol=1e-5)
        True
    """
    op = "householder_apply"
    check_tensor(op, "A", A)
    check_tensor(op, "X", X)
    check_real_floating(op, "A", A)
    check_min_dim(op, "A", A, 2, "(*, m, K)")
    check_min_dim(op, "X", X, 2, "(*, m, n)" if left else "(*, n, m)")
    check_same_device_dtype(op, "A", A, "X", X)
    m, kk = A.shape[-2], A.shape[-1]
    k_max = min(m, kk)
    if tau is not None:
        check_tensor(op, "tau", tau)
        check_same_device_dtype(op, "A", A, "tau", tau)
        if tau.dim() < 1 or tau.shape[-1] > k_max:
            raise ShapeError(f"{op}: expected tau of shape (*, k) with k <= min(A.shape[-2], "
                             f"A.shape[-1]) = {k_max}, but got {describe('tau', tau)}")
        k = tau.shape[-1]
    else:
        k = k_max
    x_rows = X.shape[-2] if left else X.shape[-1]
    if x_rows != m:
        side = "X.shape[-2]" if left else "X.shape[-1]"
        raise ShapeError(f"{op}: expected {side} == A.shape[-2] = {m} (left={left}), "
                         f"but got {describe('X', X)} with {describe('A', A)}")
    try:
        batch = torch.broadcast_shapes(A.shape[:-2], X.shape[:-2],
                                       *(() if tau is None else (tau.shape[:-1],)))
    except RuntimeError:
        raise ShapeError(f"{op}: expected broadcastable batch shapes, but got "
                         f"{describe('A', A)}, {describe('X', X)}"
                         + ("" if tau is None else f", {describe('tau', tau)}")) from None
    if check:
        check_finite(op, "A", A)
        check_finite(op, "X", X)
        if tau is not None:
            check_finite(op, "tau", tau)
    a_b = A.expand(batch + A.shape[-2:])
    tau_b = None if tau is None else tau.expand(batch + tau.shape[-1:])
    x_b = X.expand(batch + X.shape[-2:])
    if k == 0 or x_b.numel() == 0 or a_b.numel() == 0:
        out = x_b.clone()
        return out + _graph_zero(A, tau)
    if left:
        return _householder.apply(a_b, tau_b, x_b, x_b.shape[-1], True,
                                                   adjoint, 0.0, k)
    # X Q' = (Q'^T X^T)^T
    y_t = _householder.apply(a_b, tau_b, x_b.mT, x_b.shape[-2], True,
                                              not adjoint, 0.0, k)
    return y_t.mT
