"""Shared helpers for the hand-written autograd rules."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["no_tf32", "classic_twin", "apply_fastest"]


_NO_OP = contextlib.nullcontext()  # reusable: entering it does nothing


def no_tf32(ref: torch.Tensor) -> contextlib.AbstractContextManager[None]:
    """A context that disables TF32 matmuls for the duration of a linalg kernel on CUDA.

    TF32 keeps 10 mantissa bits: enough for a network layer, not for the orthogonality of a
    product of reflectors or for a gradient compared against float64. On other devices (or
    with TF32 already off) it is a shared no-op context: 0.2 us to enter, where a generator
    context costs 2 us, which small inputs' hand-written rules notice.
    """
    if not ref.is_cuda or not torch.backends.cuda.matmul.allow_tf32:
        return _NO_OP
    return _tf32_off()


@contextlib.contextmanager
def _tf32_off() -> Iterator[None]:
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = True


def classic_twin(cls: type[torch.autograd.Function]) -> type[torch.autograd.Function]:
    """The classic ``forward(ctx, ...)`` form of a ``setup_context``-form Function.

    Same forward, setup_context, backward and jvp. ``Function.apply`` of the setup_context
    form binds its arguments with ``inspect.signature`` on every call (tens of microseconds,
    as much as a small matrix op); that form is only required inside torch.func transforms.
    Use :func:`apply_fastest` to pick.
    """

    def forward(ctx, *inputs):
        output = cls.forward(*inputs)
        cls.setup_context(ctx, inputs, output)
        return output

    attrs = {"forward": staticmethod(forward), "backward": staticmethod(cls.backward),
             "__doc__": f"Classic-form twin of {cls.__name__} (see classic_twin)."}
    if "jvp" in cls.__dict__:
        attrs["jvp"] = staticmethod(cls.jvp)
    return type(cls.__name__ + "Classic", (torch.autograd.Function,), attrs)


def apply_fastest(cls: type[torch.autograd.Function], twin: type[torch.autograd.Function],
                  *args):
    """``cls.apply(*args)`` inside torch.func transforms, ``twin.apply(*args)`` elsewhere."""
    if torch._C._are_functorch_transforms_active():
        return cls.apply(*args)
    return twin.apply(*args)
