"""Sparse matrices under autograd: products that keep sparsity, and large least squares.

(Being built: see the submodules.)
"""

from __future__ import annotations

__all__: list[str] = []
