"""Thin ``torch.nn`` modules and parametrizations built on difflinalg's functions."""

from __future__ import annotations

from .orthogonal import HouseholderOrthogonal, orthogonal
from .pooling import CovariancePooling

__all__ = ["orthogonal", "HouseholderOrthogonal", "CovariancePooling"]
