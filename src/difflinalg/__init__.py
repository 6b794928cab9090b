"""difflinalg: fast, memory-light, numerically robust differentiable linear algebra."""

from __future__ import annotations

from . import nn, testing
from ._errors import DiffLinalgError, DTypeError, ShapeError
from .orthogonal import householder_apply, householder_orgqr, householder_product

__version__ = "0.1.0"

__all__ = [
    "householder_product",
    "householder_orgqr",
    "householder_apply",
    "DiffLinalgError",
    "ShapeError",
    "DTypeError",
    "nn",
    "testing",
]
