"""Validation helpers: raise early, name the op and the argument."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._errors import DTypeError, ShapeError, describe

__all__ = [
    "check_tensor",
    "check_real_floating",
    "check_min_dim",
    "check_square",
    "check_same_device_dtype",
    "check_finite",
    "check_choice",
]

_REAL_FLOATING = (torch.float32, torch.float64)


def check_tensor(op: str, name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise DTypeError(f"{op}: expected {name} to be a torch.Tensor, but got {type(x).__name__}")
    return x


def check_real_floating(op: str, name: str, x: torch.Tensor) -> None:
    if x.dtype in _REAL_FLOATING:
        return
    if x.is_complex():
        raise DTypeError(
            f"{op}: complex inputs are not supported yet; expected a real floating dtype "
            f"(float32 or float64), but got {describe(name, x)}"
        )
    raise DTypeError(
        f"{op}: expected a real floating dtype (float32 or float64), but got {describe(name, x)}"
    )


def check_min_dim(op: str, name: str, x: torch.Tensor, ndim: int, layout: str) -> None:
    if x.dim() < ndim:
        raise ShapeError(
            f"{op}: expected {name} of shape {layout} with at least {ndim} dimensions, "
            f"but got {describe(name, x)}"
        )


def check_square(op: str, name: str, x: object, layout: str = "(*, n, n)") -> torch.Tensor:
    """A real floating tensor of square matrices (at least 2-D, last two dims equal)."""
    x = check_tensor(op, name, x)
    check_real_floating(op, name, x)
    check_min_dim(op, name, x, 2, layout)
    if x.shape[-1] != x.shape[-2]:
        raise ShapeError(f"{op}: expected a square matrix {name} of shape {layout}, "
                         f"but got {describe(name, x)}")
    return x


def check_same_device_dtype(op: str, ref_name: str, ref: torch.Tensor, name: str,
                            x: torch.Tensor) -> None:
    if x.device != ref.device:
        raise DTypeError(
            f"{op}: expected {name} on the same device as {ref_name} ({ref.device}), "
            f"but got {describe(name, x)}"
        )
    if x.dtype != ref.dtype:
        raise DTypeError(
            f"{op}: expected {name} to have the same dtype as {ref_name} "
            f"({str(ref.dtype).replace('torch.', '')}), but got {describe(name, x)}"
        )


def check_finite(op: str, name: str, x: torch.Tensor) -> None:
    """Data-dependent (a device sync on GPU): only called when the user asks ``check=True``."""
    if not bool(torch.isfinite(x).all()):
        raise ShapeError(f"{op}: expected finite values in {name}, but got {describe(name, x)} "
                         "containing inf or NaN")


def check_choice(op: str, name: str, value: object, choices: Sequence[object]) -> None:
    if value not in choices:
        valid = ", ".join(repr(c) for c in choices)
        raise ShapeError(f"{op}: expected {name} to be one of {valid}, but got {value!r}")
