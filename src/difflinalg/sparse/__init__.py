"""Sparse matrices under autograd: products that keep sparsity, and large least squares.

* :func:`spspmm`, :func:`spmm`, :func:`sddmm` (:mod:`difflinalg.sparse.products`): sparse x
  sparse, sparse x dense and sampled dense x dense products whose gradients with respect to
  a sparse operand are computed at its stored entries only.
* :func:`sgd_lstsq` (:mod:`difflinalg.sparse.stochastic`): least squares from row
  minibatches, sparse gradients, AdaGrad per-column steps.
"""

from __future__ import annotations

from .products import product_nnz_estimate, sddmm, spmm, spspmm
from .stochastic import SGDResult, sgd_lstsq

__all__ = ["spspmm", "spmm", "sddmm", "product_nnz_estimate", "sgd_lstsq", "SGDResult"]
