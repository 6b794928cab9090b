"""Sparse matrices under autograd: products that keep sparsity, and large least squares.

* :func:`spspmm`, :func:`spmm`, :func:`sddmm` (:mod:`difflinalg.sparse.products`): sparse x
  sparse, sparse x dense and sampled dense x dense products whose gradients with respect to
  a sparse operand are computed at its stored entries only.
* :func:`lsqr`, :func:`lsmr` (:mod:`difflinalg.sparse.lsq`): least squares for any linear
  operator (sparse, dense, or a pair of callables), batched right-hand sides, scipy's
  stopping rules and stop reasons, an implicit (adjoint-solve) gradient in ``b`` and in
  ``A``'s values; :class:`RowPartitionedOperator` runs them over ``torch.distributed``.
* :func:`sgd_lstsq` (:mod:`difflinalg.sparse.stochastic`): least squares from row
  minibatches, sparse gradients, AdaGrad per-column steps.
"""

from __future__ import annotations

from ._operator import LinearOperator, as_operator
from .distributed import RowPartitionedOperator, row_range
from .lsq import STOP_REASONS, LSQInfo, LSQResult, lsmr, lsqr
from .products import product_nnz_estimate, sddmm, spmm, spspmm
from .stochastic import SGDResult, sgd_lstsq

__all__ = ["spspmm", "spmm", "sddmm", "product_nnz_estimate", "lsqr", "lsmr", "LSQResult",
           "LSQInfo", "STOP_REASONS", "LinearOperator", "as_operator",
           "RowPartitionedOperator", "row_range", "sgd_lstsq", "SGDResult"]
