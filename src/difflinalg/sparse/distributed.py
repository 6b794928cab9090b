r"""Row-partitioned least squares over ``torch.distributed``.

Each rank holds a block of rows ``A_p`` of ``A`` (and the matching block ``b_p`` of ``b``):

.. math::
    A = \begin{bmatrix} A_0 \\ \vdots \\ A_{P-1} \end{bmatrix}, \qquad
    A x = \begin{bmatrix} A_0 x \\ \vdots \end{bmatrix}, \qquad
    A^T y = \sum_p A_p^T y_p .

In the Golub-Kahan bidiagonalisation under :func:`~difflinalg.sparse.lsq.lsqr` and
:func:`~difflinalg.sparse.lsq.lsmr`, the vectors of length ``m`` (``b``, ``u``, the
residual) are then split like the rows, and the vectors of length ``n`` (``x``, ``v``,
``w``, ``h``) are replicated: ``A v`` is purely local, ``A^T u`` is a local product followed
by one ``all_reduce`` (sum) of ``n * k`` numbers, and the norm of a row-space vector is an
``all_reduce`` of ``k`` partial sums of squares (:meth:`RowPartitionedOperator.range_sqnorm`).
That is two collectives per iteration; every rank then holds bit-identical scalars and takes
the same stopping decisions, and every rank ends with the whole ``x``. The implicit gradient
works unchanged (its adjoint solve uses the transposed operator, whose distributed space is
then the other one): ``b_p.grad`` and ``A_p.grad`` are the local blocks.

Multi-node use: launch one process per block of rows, e.g.
``torchrun --nnodes 4 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint host:29500
solve.py``; in ``solve.py`` call ``torch.distributed.init_process_group("nccl")`` (tensors
on ``cuda:LOCAL_RANK``) or ``"gloo"`` (CPU), read rows :func:`row_range` of ``A`` and ``b``
for ``dist.get_rank()``, and call ``lsqr(RowPartitionedOperator(A_p), b_p)``. Only ``n``-
and ``k``-sized messages cross the network, so a tall ``A`` (``m >> n``) scales well.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .._errors import ShapeError, describe
from ._operator import MatrixOperator, _check_matrix, _sqnorm

__all__ = ["RowPartitionedOperator", "row_range"]


def row_range(m: int, rank: int | None = None, world_size: int | None = None,
              group: dist.ProcessGroup | None = None) -> tuple[int, int]:
    """``(start, stop)`` of the rows of an ``m``-row matrix that ``rank`` holds when the rows
    are split into ``world_size`` contiguous blocks of sizes differing by at most one
    (defaults: this process's rank and the group's size)."""
    rank = dist.get_rank(group) if rank is None else rank
    world_size = dist.get_world_size(group) if world_size is None else world_size
    base, extra = divmod(m, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


class RowPartitionedOperator(MatrixOperator):
    """The operator of a matrix whose rows are split over the ranks of a process group.

    Args:
        A_local: this rank's block of rows, ``(m_p, n)``: dense, ``torch.sparse_coo`` or
            ``torch.sparse_csr``, float32/float64, on the device the backend serves (CPU for
            gloo, CUDA for NCCL). May require grad.
        group: the process group (default: the world). Every rank of it must construct the
            operator (a collective) and join every solve.

    ``shape`` is the global ``(m, n)``; ``range_size`` is ``m_p``, the length of the local
    ``b`` to pass to the solvers.

    Raises:
        ShapeError: ``torch.distributed`` not initialised, ranks disagreeing on ``n``, or an
            invalid ``A_local`` (see :func:`~difflinalg.sparse._operator.as_operator`).

    Example:
        >>> # in each of P processes after dist.init_process_group("gloo"):
        >>> # start, stop = row_range(A.shape[0])
        >>> # x = lsqr(RowPartitionedOperator(A[start:stop]), b[start:stop]).x  # doctest: +SKIP
    """

    def __init__(self, A_local: torch.Tensor, *, group: dist.ProcessGroup | None = None
                 ) -> None:
        op = "RowPartitionedOperator"
        if not (dist.is_available() and dist.is_initialized()):
            raise ShapeError(f"{op}: expected an initialised torch.distributed process group "
                             "(call torch.distributed.init_process_group first), but got "
                             "none")
        if not isinstance(A_local, torch.Tensor):
            raise ShapeError(f"{op}: expected A_local to be a torch.Tensor, but got "
                             f"{type(A_local).__name__}")
        _check_matrix(op, "A_local", A_local)
        super().__init__(A_local, op)
        self.group = group
        m_p, n = A_local.shape
        sizes = torch.tensor([m_p, n, -n], dtype=torch.int64, device=A_local.device)
        dist.all_reduce(sizes, group=group)  # [m, P n, -P n]
        world = dist.get_world_size(group)
        if int(sizes[1]) != world * n:
            raise ShapeError(f"{op}: expected every rank's block to have the same number of "
                             f"columns, but got {describe('A_local', A_local)} on rank "
                             f"{dist.get_rank(group)} and a column total of {int(sizes[1])} "
                             f"over {world} ranks")
        self.shape = (int(sizes[0]), n)
        self._local_rows = m_p
        local_rmv = self._rmv

        def rmatvec(y: torch.Tensor) -> torch.Tensor:
            out = local_rmv(y).contiguous()
            dist.all_reduce(out, group=group)
            return out

        self._rmv = rmatvec

    @property
    def range_size(self) -> int:
        return self._local_rows

    def range_sqnorm(self, u: torch.Tensor) -> torch.Tensor:
        """Squared column norms of a row-split vector: local sums of squares, all-reduced."""
        sq = _sqnorm(u)
        dist.all_reduce(sq, group=self.group)
        return sq
