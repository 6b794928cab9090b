"""Thin ``torch.nn`` modules and parametrizations built on difflinalg's functions."""

from __future__ import annotations

from .factorized import FactorizedConv2d, FactorizedLinear
from .orthogonal import HouseholderOrthogonal, orthogonal
from .pooling import CovariancePooling
from .surgery import FactorizeReport, LayerReport, factorize_model

__all__ = ["orthogonal", "HouseholderOrthogonal", "CovariancePooling", "FactorizedLinear",
           "FactorizedConv2d", "factorize_model", "FactorizeReport", "LayerReport"]
