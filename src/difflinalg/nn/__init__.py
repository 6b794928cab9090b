"""Thin ``torch.nn`` modules and parametrizations built on difflinalg's functions."""

from __future__ import annotations

from .orthogonal import HouseholderOrthogonal, orthogonal

__all__ = ["orthogonal", "HouseholderOrthogonal"]
