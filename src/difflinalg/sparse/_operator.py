r"""A small linear-operator layer for the Krylov least-squares solvers.

:func:`as_operator` wraps a dense tensor, a sparse COO or CSR tensor, or a pair of callables
``(matvec, rmatvec)`` with a shape into one :class:`LinearOperator` with ``.matvec(x)`` and
``.rmatvec(y)``; ``x`` is ``(n,)`` or ``(n, k)`` (``k`` right-hand sides as columns).

Besides the two products, an operator owns the inner products of its two spaces:
``range_sqnorm(u)`` for vectors of length ``m`` (``b``, ``u``, residuals) and
``domain_sqnorm(v)`` for vectors of length ``n`` (``x``, ``v``). The solvers never take a
norm themselves, so an operator whose range vectors are split over processes
(:class:`~difflinalg.sparse.distributed.RowPartitionedOperator`) only has to sum the local
squares with an ``all_reduce``. Transposing (:attr:`LinearOperator.T`) swaps the two spaces
and their norms, which is what the implicit gradient's adjoint solves use.

Sparse kernel, chosen on measurements
-------------------------------------
A random ``1e6 x 1e5`` matrix of density ``1e-4`` (9,999,518 stored entries), 2 threads,
torch 2.13 (MKL, OpenMP) against scipy 1.17, medians of 7-15 interleaved repeats on a
shared, noisy machine (min in parentheses), milliseconds:

=============================================  ==============  ==============  ===========
product                                        float64, k=1    float32, k=1    float64, k=3
=============================================  ==============  ==============  ===========
scipy CSR ``A @ x``                            34 (17)         29 (24)         91 (63)
torch CSR, int64 indices, ``A @ x``            98-125 (65)     127 (94)        151 (83)
**torch CSR, int32 indices**, ``A @ x``        33-44 (22)      45 (30)         81 (42)
torch COO ``torch.sparse.mm(A, x)``            710 (354)       -               -
``index_add_`` over rows                       339-402 (195)   276 (215)       -
``torch.segment_reduce`` over CSR rows         322-423 (232)   282 (211)       -
scipy ``A.T @ y`` (CSC kernel)                 35-38 (21)      32 (24)         82 (59)
scipy precomputed CSR of ``A^T``               62-100 (27)     41 (22)         284 (179)
torch CSR of ``A^T``, int64 indices            122-156 (67)    137 (92)        279 (169)
**torch CSR of A^T, int32 indices**            64-70 (24)      34 (24)         202 (121)
torch ``A_csr.mT @ y`` (CSC layout)            3606 (2875)     -               -
torch COO ``A.t()``                            976 (925)       -               -
``index_add_`` over columns                    334-373 (276)   258 (192)       -
=============================================  ==============  ==============  ===========

In a quiet minute (load < 1.3), float64, k=1, medians of 11: scipy ``A @ x`` 16.2, torch
CSR int64 26.6, **int32 9.9**; scipy ``A.T @ y`` 17.6, scipy CSR of ``A^T`` 21.5, torch CSR
of ``A^T`` int64 27.7, **int32 9.8**. Under contention the torch kernels (2 OpenMP threads
on 2 shared cores) lose more than scipy's single-threaded ones.

So a sparse matrix is kept as two CSR tensors with **int32** indices (int64 indices are 3x
slower: MKL's sparse BLAS takes 32-bit indices, and torch converts int64 ones on every
call), ``A`` for ``matvec`` and a precomputed ``A^T`` for ``rmatvec`` (torch has no fast
CSC or transposed-CSR product). The transpose is one stable sort of the column indices
(rows are already in order within CSR), about 1.3 s once at this size against 2-4 s for
``to_sparse_csc`` and 8 s for a COO transpose and coalesce; build the operator once with
:func:`as_operator` and pass it to repeated solves to pay it once. Memory: two copies of
the values plus 4-byte indices. int64 indices are kept only when a dimension or the number
of stored entries does not fit in int32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .._checks import check_real_floating
from .._errors import DTypeError, ShapeError, describe

__all__ = ["LinearOperator", "MatrixOperator", "as_operator"]

_INT32_MAX = 2**31 - 1
_LAYOUTS = ("torch.strided", "torch.sparse_coo", "torch.sparse_csr")


def _sqnorm(t: torch.Tensor) -> torch.Tensor:
    """Squared 2-norms of the columns of ``t`` (len, k) in float64, shape (k,)."""
    return torch.linalg.vector_norm(t, dim=0, dtype=torch.float64).square()


class LinearOperator:
    """A linear map ``R^n -> R^m`` given by its products with vectors.

    Args:
        matvec: ``x (n, k) -> A x (m, k)``.
        rmatvec: ``y (m, k) -> A^T y (n, k)``.
        shape: ``(m, n)``.
        dtype, device: of the vectors the operator takes and returns.

    ``matvec``/``rmatvec`` of the object also accept 1-D vectors. Subclasses may override
    :meth:`range_sqnorm` / :meth:`domain_sqnorm` (distributed vectors) and
    ``range_size`` (the local length of range vectors when they are split over processes).
    """

    tensor: torch.Tensor | None = None  # the matrix when the operator wraps one
    #: products return new tensors that the caller may overwrite (not so for arbitrary
    #: callables, which may return views of their input or of state)
    fresh_products: bool = False

    def __init__(self, matvec: Callable[[torch.Tensor], torch.Tensor],
                 rmatvec: Callable[[torch.Tensor], torch.Tensor], shape: Sequence[int], *,
                 dtype: torch.dtype, device: torch.device | str) -> None:
        self._mv, self._rmv = matvec, rmatvec
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype, self.device = dtype, torch.device(device)

    @property
    def range_size(self) -> int:
        """Length of the (local part of) range vectors ``u``, ``b``."""
        return self.shape[0]

    @property
    def domain_size(self) -> int:
        """Length of the (local part of) domain vectors ``x``, ``v``."""
        return self.shape[1]

    def _apply(self, fn: Callable, x: torch.Tensor, size_in: int, size_out: int,
               what: str) -> torch.Tensor:
        one = x.dim() == 1
        out = fn(x.unsqueeze(-1) if one else x)
        if out.dim() == 1:
            out = out.unsqueeze(-1)
        if out.shape != (size_out, x.shape[-1] if not one else 1):
            raise ShapeError(f"LinearOperator: expected {what} to return shape "
                             f"({size_out}, k) for an input of shape {tuple(x.shape)}, but got "
                             f"{describe('out', out)}")
        return out.squeeze(-1) if one else out

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        return self._apply(self._mv, x, self.domain_size, self.range_size, "matvec")

    def rmatvec(self, y: torch.Tensor) -> torch.Tensor:
        return self._apply(self._rmv, y, self.range_size, self.domain_size, "rmatvec")

    def range_sqnorm(self, u: torch.Tensor) -> torch.Tensor:
        """Squared norms (float64, shape (k,)) of the columns of a range vector (len, k)."""
        return _sqnorm(u)

    def domain_sqnorm(self, v: torch.Tensor) -> torch.Tensor:
        """Squared norms (float64, shape (k,)) of the columns of a domain vector (len, k)."""
        return _sqnorm(v)

    @property
    def T(self) -> LinearOperator:  # noqa: N802 - the usual name
        return _Transposed(self)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(shape={self.shape}, "
                f"dtype={str(self.dtype).replace('torch.', '')}, device={self.device})")


class _Transposed(LinearOperator):
    """``A^T``: products and the norms of the two spaces swapped."""

    def __init__(self, op: LinearOperator) -> None:
        self.op = op
        super().__init__(op._rmv, op._mv, op.shape[::-1], dtype=op.dtype, device=op.device)

    range_size = property(lambda self: self.op.domain_size)
    domain_size = property(lambda self: self.op.range_size)
    fresh_products = property(lambda self: self.op.fresh_products)

    def range_sqnorm(self, u: torch.Tensor) -> torch.Tensor:
        return self.op.domain_sqnorm(u)

    def domain_sqnorm(self, v: torch.Tensor) -> torch.Tensor:
        return self.op.range_sqnorm(v)

    @property
    def T(self) -> LinearOperator:  # noqa: N802
        return self.op


class DampedStack(LinearOperator):
    """``[A; d I]`` ((m + n) x n): range vectors are ``A``'s range vectors with a replicated
    length-n block appended. Used by the implicit gradient of a damped problem."""

    def __init__(self, op: LinearOperator, damp: float) -> None:
        self.op, self.damp = op, float(damp)
        r = op.range_size
        super().__init__(lambda x: torch.cat([op._mv(x), self.damp * x]),
                         lambda y: op._rmv(y[:r]) + self.damp * y[r:],
                         (op.shape[0] + op.shape[1], op.shape[1]), dtype=op.dtype,
                         device=op.device)

    range_size = property(lambda self: self.op.range_size + self.op.domain_size)
    domain_size = property(lambda self: self.op.domain_size)
    fresh_products = True  # cat and sum

    def range_sqnorm(self, u: torch.Tensor) -> torch.Tensor:
        r = self.op.range_size
        return self.op.range_sqnorm(u[:r]) + self.op.domain_sqnorm(u[r:])

    def domain_sqnorm(self, v: torch.Tensor) -> torch.Tensor:
        return self.op.domain_sqnorm(v)


def _index_dtype(m: int, n: int, nnz: int) -> torch.dtype:
    return torch.int32 if max(m, n, nnz) <= _INT32_MAX else torch.int64


def _csr_transpose(crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor, shape: tuple
                   ) -> torch.Tensor:
    """CSR of ``A^T`` from CSR of ``A``: a stable sort by column keeps rows ordered."""
    m, n = shape
    order = torch.sort(col, stable=True).indices
    rows = torch.repeat_interleave(torch.arange(m, device=col.device, dtype=col.dtype),
                                   crow.diff())
    counts = torch.bincount(col, minlength=n)
    tcrow = torch.cat([counts.new_zeros(1), counts.cumsum(0)]).to(col.dtype)
    return torch.sparse_csr_tensor(tcrow, rows[order], val[order], (n, m))


def _product(mat: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``mat @ x`` for x (n, k); one column goes through the matrix-vector kernel (about 20%
    faster than the (n, 1) matrix product for sparse CSR)."""

    def product(x: torch.Tensor) -> torch.Tensor:
        return (mat @ x[:, 0]).unsqueeze(-1) if x.shape[-1] == 1 else mat @ x

    return product


class MatrixOperator(LinearOperator):
    """A dense (strided), sparse COO or sparse CSR matrix as an operator.

    The matrix is kept, detached, in the fastest layout for its products (see the module
    docstring); ``tensor`` is the matrix as given, for autograd.
    """

    fresh_products = True

    def __init__(self, A: torch.Tensor, op: str = "as_operator") -> None:
        self.tensor = A
        m, n = A.shape
        A = A.detach()
        if A.layout == torch.strided:
            mat, mat_t = A, A.mT
        else:
            if A.layout == torch.sparse_coo:
                A = A.coalesce()
                rows, col = A.indices()
                val = A.values()
                counts = torch.bincount(rows, minlength=m)
                crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
            else:
                crow, col, val = A.crow_indices(), A.col_indices(), A.values()
            idx = _index_dtype(m, n, val.numel())
            crow, col = crow.to(idx), col.to(idx)
            mat = torch.sparse_csr_tensor(crow, col, val, (m, n))
            mat_t = _csr_transpose(crow, col, val, (m, n))
        self.matrix, self.matrix_t = mat, mat_t
        super().__init__(_product(mat), _product(mat_t), (m, n), dtype=A.dtype,
                         device=A.device)

    def outer_grad(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """``sum_c left[:, c] right[:, c]^T`` (left (m, k), right (n, k)) in the layout of
        ``tensor``: for a sparse matrix only at its stored entries (same indices, never a
        dense m x n intermediate)."""
        A = self.tensor
        assert A is not None
        if A.layout == torch.strided:
            return left @ right.mT
        if A.layout == torch.sparse_coo:
            rows, cols = A._indices()
        else:
            crow, cols = A.crow_indices(), A.col_indices()
            rows = torch.repeat_interleave(torch.arange(A.shape[0], device=A.device,
                                                        dtype=crow.dtype), crow.diff())
        vals = (left[rows] * right[cols]).sum(-1)
        if A.layout == torch.sparse_coo:
            return torch.sparse_coo_tensor(A._indices(), vals, A.shape,
                                           is_coalesced=A.is_coalesced())
        return torch.sparse_csr_tensor(crow, cols, vals, A.shape)


def _check_matrix(op: str, name: str, A: torch.Tensor) -> None:
    if A.layout not in (torch.strided, torch.sparse_coo, torch.sparse_csr):
        raise ShapeError(f"{op}: expected {name} with layout one of {', '.join(_LAYOUTS)}, "
                         f"but got layout={A.layout} for {describe(name, A)}")
    check_real_floating(op, name, A)
    if A.dim() != 2:
        raise ShapeError(f"{op}: expected {name} to be a matrix of shape (m, n) (batched and "
                         f"hybrid sparse tensors are not supported), but got "
                         f"{describe(name, A)}")
    if A.layout != torch.strided and A.dense_dim() != 0:
        raise ShapeError(f"{op}: expected {name} without dense dimensions (hybrid sparse "
                         f"tensors are not supported), but got {describe(name, A)} with "
                         f"dense_dim={A.dense_dim()}")


def as_operator(A: Any, *, op: str = "as_operator", dtype: torch.dtype | None = None,
                device: torch.device | str | None = None) -> LinearOperator:
    """Wrap ``A`` as a :class:`LinearOperator`.

    Args:
        A: a :class:`LinearOperator` (returned as is); a real floating 2-D tensor, dense,
            ``torch.sparse_coo`` or ``torch.sparse_csr``; or a tuple
            ``(matvec, rmatvec, shape)`` of callables taking and returning ``(n, k)`` /
            ``(m, k)`` tensors.
        op: the name of the calling function, for error messages.
        dtype, device: of the vectors, for the callable form (default float64, cpu).

    Returns:
        The operator. Building one from a sparse tensor converts and transposes it (a sort
        over the stored entries); reuse the result across solves.

    Raises:
        ShapeError: a matrix that is not 2-D, a hybrid sparse tensor, an unsupported layout,
            or a malformed ``(matvec, rmatvec, shape)`` tuple.
        DTypeError: a non-floating or complex matrix.

    Example:
        >>> import torch
        >>> A = torch.eye(3).to_sparse_csr()
        >>> as_operator(A).matvec(torch.ones(3))
        tensor([1., 1., 1.])
    """
    if isinstance(A, LinearOperator):
        return A
    if isinstance(A, torch.Tensor):
        _check_matrix(op, "A", A)
        return MatrixOperator(A, op)
    if isinstance(A, tuple) and len(A) == 3 and callable(A[0]) and callable(A[1]):
        shape = A[2]
        if not (isinstance(shape, Sequence) and len(shape) == 2
                and all(isinstance(s, int) and s >= 0 for s in shape)):
            raise ShapeError(f"{op}: expected A's shape to be a pair of non-negative ints "
                             f"(m, n), but got {shape!r}")
        return LinearOperator(A[0], A[1], shape, dtype=dtype or torch.float64,
                              device=device or "cpu")
    raise DTypeError(f"{op}: expected A to be a torch.Tensor (dense, sparse_coo or "
                     f"sparse_csr), a LinearOperator or a tuple (matvec, rmatvec, shape), but "
                     f"got {type(A).__name__}")
