"""Shared helpers for the hand-written autograd rules."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["no_tf32"]


@contextlib.contextmanager
def no_tf32(ref: torch.Tensor) -> Iterator[None]:
    """Disable TF32 matmuls for the duration of a linalg kernel on CUDA.

    TF32 keeps 10 mantissa bits: enough for a network layer, not for the orthogonality of a
    product of reflectors or for a gradient compared against float64. On other devices this
    is a no-op.
    """
    if ref.device.type != "cuda" or not torch.backends.cuda.matmul.allow_tf32:
        yield
        return
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = True
