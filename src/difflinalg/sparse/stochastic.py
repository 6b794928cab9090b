r"""Least squares by stochastic gradient over row minibatches, sparse end to end.

For systems whose every pass over ``A`` is expensive (streamed from disk, or too large for
the dozens of passes a Krylov method makes), :func:`sgd_lstsq` minimises
``||A x - b||^2`` (plus ``damp^2 ||x||^2``) from minibatches of rows:

* a minibatch ``A_B`` is a sparse block of rows; its gradient ``A_B^T (A_B x - b_B)`` is
  formed at the stored entries only (values ``a_ij r_i``, summed per column) and kept as a
  sparse vector whose support is the set of columns the batch touches, so neither ``A`` nor
  the gradient is ever densified; ``x`` is dense (a least-squares solution generally is);
* each step updates ``x`` only on that support, with a per-column step
  ``lr / sqrt(sum of the column's squared past gradients)`` (AdaGrad: Duchi, Hazan & Singer,
  "Adaptive subgradient methods for online learning and stochastic optimization", JMLR 2011).
  The step is invariant to a constant factor on the loss, so a ``"mean"`` loss and a
  ``"sum"`` loss take the same steps (plain SGD with one learning rate does not: with a
  mean loss over many rows its steps are ``1/|B|`` as large and it stalls, with a sum loss
  it diverges unless the rate is retuned). Columns seen rarely keep large steps, columns
  seen often get small ones, which is what a sparse, badly scaled ``A`` needs.

Convergence is sublinear (``O(1/sqrt(t))`` in general): when a Krylov solver's passes are
affordable, :func:`difflinalg.sparse.lsqr` is far faster; the benchmark compares the two.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch

from .._errors import DTypeError, ShapeError, describe

__all__ = ["sgd_lstsq", "SGDResult", "sparse_gradient"]


class SGDResult(NamedTuple):
    """``x`` and the residual norm ``||A x - b||`` after each epoch (when computable)."""

    x: torch.Tensor
    residual_norms: list[float]
    steps: int


def sparse_gradient(A_rows: torch.Tensor, r: torch.Tensor, n: int) -> torch.Tensor:
    """``A_rows^T r`` as a sparse COO vector of length ``n`` supported on the columns that
    ``A_rows`` (sparse, rows of ``A``) touches: values ``a_ij r_i`` summed per column."""
    if A_rows.layout == torch.sparse_csr:
        crow, col, val = A_rows.crow_indices(), A_rows.col_indices(), A_rows.values()
        rows = torch.repeat_interleave(torch.arange(crow.numel() - 1, device=crow.device),
                                       crow.diff())
    else:
        A_rows = A_rows.coalesce()
        rows, col = A_rows.indices()
        val = A_rows.values()
    g = torch.sparse_coo_tensor(col.long().unsqueeze(0), val * r[rows], (n,))
    return g.coalesce()


def _row_batches(A: torch.Tensor, b: torch.Tensor, batch_size: int, shuffle: bool,
                 generator: torch.Generator | None) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Row blocks of a CSR matrix (rows permuted once per epoch when ``shuffle``)."""
    m = A.shape[0]
    crow, col, val = A.crow_indices(), A.col_indices(), A.values()
    order = (torch.randperm(m, generator=generator, device="cpu").to(A.device) if shuffle
             else None)
    for r0 in range(0, m, batch_size):
        if order is None:
            r1 = min(r0 + batch_size, m)
            e0, e1 = int(crow[r0]), int(crow[r1])
            block = torch.sparse_csr_tensor(crow[r0:r1 + 1] - e0, col[e0:e1], val[e0:e1],
                                            (r1 - r0, A.shape[1]))
            yield block, b[r0:r1]
        else:
            rows = order[r0:r0 + batch_size]
            lens = crow[rows + 1] - crow[rows]
            starts = torch.repeat_interleave(crow[rows] - (torch.cumsum(lens, 0) - lens), lens)
            idx = starts + torch.arange(int(lens.sum()), device=A.device)
            new_crow = torch.zeros(rows.numel() + 1, dtype=crow.dtype, device=A.device)
            torch.cumsum(lens, 0, out=new_crow[1:])
            yield (torch.sparse_csr_tensor(new_crow, col[idx], val[idx],
                                           (rows.numel(), A.shape[1])), b[rows])


def sgd_lstsq(A: torch.Tensor | Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
              b: torch.Tensor | None = None, *, n: int | None = None, batch_size: int = 1024,
              epochs: int = 10, lr: float = 0.5, damp: float = 0.0, reduction: str = "mean",
              x0: torch.Tensor | None = None, shuffle: bool = True, eps: float = 1e-12,
              generator: torch.Generator | None = None) -> SGDResult:
    r"""Minimise ``||A x - b||^2 + damp^2 ||x||^2`` by AdaGrad steps on row minibatches.

    Args:
        A: ``(m, n)`` sparse (COO or CSR, float32/float64), with ``b`` ``(m,)``; or a
            callable returning an iterable of ``(A_rows, b_rows)`` minibatches for one epoch
            (a stream, e.g. read from disk), with ``n`` the number of columns.
        b: right-hand side (when ``A`` is a matrix).
        n: number of unknowns (when ``A`` is a stream).
        batch_size: rows per minibatch (matrix input).
        epochs: passes over the rows.
        lr: AdaGrad learning rate (the first step on a column moves it by about ``lr``).
        damp: Tikhonov damping, applied on each batch's support (lazily, as sparse
            regularisation is).
        reduction: ``"mean"`` or ``"sum"`` of the squared residuals of a batch; the steps do
            not depend on it (see the module docstring).
        x0: initial guess (default zeros).
        shuffle: permute the rows every epoch (matrix input).
        eps: floor of the AdaGrad accumulator, relative to the first squared gradient seen.
        generator: random generator for the shuffles.

    Returns:
        ``SGDResult(x, residual_norms, steps)``; ``residual_norms`` holds ``||A x - b||``
        after each epoch for matrix input (one sparse matvec), and is empty for streams.
    """
    op = "sgd_lstsq"
    if reduction not in ("mean", "sum"):
        raise ShapeError(f"{op}: expected reduction 'mean' or 'sum', but got {reduction!r}")
    stream = callable(A) and not isinstance(A, torch.Tensor)
    if stream:
        if n is None:
            raise ShapeError(f"{op}: expected n (the number of unknowns) with a stream of "
                             f"minibatches")
        batches_of: Callable[[], Iterable[Any]] = A  # type: ignore[assignment]
        dtype, device = torch.float64, torch.device("cpu")
    else:
        if not isinstance(A, torch.Tensor) or A.layout not in (torch.sparse_coo,
                                                                torch.sparse_csr):
            got = (f"{describe('A', A)} in layout {A.layout}" if isinstance(A, torch.Tensor)
                   else type(A).__name__)
            raise DTypeError(f"{op}: expected A to be a sparse COO or CSR tensor or a callable "
                             f"returning minibatches, but got {got}")
        if not isinstance(b, torch.Tensor) or b.shape != (A.shape[0],):
            raise ShapeError(f"{op}: expected b of shape ({A.shape[0]},) for "
                             f"{describe('A', A)}, but got "
                             f"{describe('b', b) if isinstance(b, torch.Tensor) else b!r}")
        if A.layout == torch.sparse_coo:
            A = A.coalesce().to_sparse_csr()
        n = A.shape[1]
        dtype, device = A.dtype, A.device
        csr = A

        def batches_of() -> Iterable[Any]:
            return _row_batches(csr, b, batch_size, shuffle, generator)
    x = (torch.zeros(n, dtype=dtype, device=device) if x0 is None
         else x0.detach().clone().to(dtype))
    acc = torch.zeros(n, dtype=dtype, device=device)
    floor = None
    norms: list[float] = []
    steps = 0
    for _ in range(epochs):
        for A_rows, b_rows in batches_of():
            if x.dtype != A_rows.dtype:
                x, acc = x.to(A_rows.dtype), acc.to(A_rows.dtype)
            r = A_rows @ x - b_rows
            g = sparse_gradient(A_rows, r, n)
            idx, gv = g.indices()[0], g.values()
            if damp:
                gv = gv + (damp * damp) * x[idx]
            if reduction == "mean":
                gv = gv / max(A_rows.shape[0], 1)
            sq = gv * gv
            if floor is None and sq.numel():
                floor = eps * float(sq.max()) + torch.finfo(sq.dtype).tiny
            acc.index_add_(0, idx, sq)
            x.index_add_(0, idx, -lr * gv / acc[idx].clamp_min(floor or 0.0).sqrt())
            steps += 1
        if not stream:
            norms.append(float(torch.linalg.vector_norm(csr @ x - b)))
    return SGDResult(x, norms, steps)
