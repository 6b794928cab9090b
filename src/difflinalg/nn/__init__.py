"""Thin ``torch.nn`` modules and parametrizations built on difflinalg's functions."""

from __future__ import annotations

__all__: list[str] = []
