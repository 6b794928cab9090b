"""Exception types and message helpers shared by every op.

Messages follow one template: ``"<op>: expected <requirement>, but got <what was given>"``,
naming the argument with its shape, dtype and device, never its contents.
"""

from __future__ import annotations

import torch

__all__ = ["DiffLinalgError", "ShapeError", "DTypeError", "describe"]


class DiffLinalgError(Exception):
    """Base class of the errors raised by difflinalg."""


class ShapeError(DiffLinalgError, ValueError):
    """An argument has the wrong shape, size or value."""


class DTypeError(DiffLinalgError, TypeError):
    """An argument has an unsupported dtype, or arguments disagree on dtype/device."""


def describe(name: str, t: torch.Tensor) -> str:
    """``name.shape=(3, 5), dtype=float32, device=cpu`` without printing values."""
    shape = tuple(t.shape)
    dtype = str(t.dtype).replace("torch.", "")
    return f"{name}.shape={shape}, dtype={dtype}, device={t.device}"
