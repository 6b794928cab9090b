"""difflinalg: fast, memory-light, numerically robust differentiable linear algebra."""

from __future__ import annotations

from . import nn, sparse, testing
from ._errors import DiffLinalgError, DTypeError, ShapeError
from .contract import (
    contract,
    contract_expression,
    diag_product,
    explain,
    frobenius_inner,
    trace_chain,
    trace_product,
)
from .factorize import LowRankSolution, factorize_conv2d, factorize_matrix
from .lyapunov import solve_lyapunov, solve_sylvester
from .orthogonal import householder_apply, householder_orgqr, householder_product
from .spectral import (
    EighResult,
    eigh,
    eigvalsh,
    expm_sym,
    inv_sqrtm_psd,
    logm_spd,
    matrix_function,
    powm_psd,
    sqrtm_psd,
)
from .sqrtm import SqrtmInfo, SqrtmResult, inv_sqrtm, sqrtm

__version__ = "0.1.0"

__all__ = [
    "householder_product",
    "householder_orgqr",
    "householder_apply",
    "eigh",
    "eigvalsh",
    "EighResult",
    "matrix_function",
    "sqrtm_psd",
    "inv_sqrtm_psd",
    "powm_psd",
    "logm_spd",
    "expm_sym",
    "sqrtm",
    "inv_sqrtm",
    "SqrtmResult",
    "SqrtmInfo",
    "solve_lyapunov",
    "solve_sylvester",
    "factorize_matrix",
    "factorize_conv2d",
    "LowRankSolution",
    "contract",
    "contract_expression",
    "explain",
    "trace_product",
    "diag_product",
    "frobenius_inner",
    "trace_chain",
    "DiffLinalgError",
    "ShapeError",
    "DTypeError",
    "nn",
    "sparse",
    "testing",
]
