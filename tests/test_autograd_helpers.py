"""Shared helpers of the hand-written autograd rules."""

import torch

from difflinalg._autograd import no_tf32


def test_no_tf32_is_a_no_op_off_cuda_and_nests():
    a = torch.randn(3, 3)
    before = torch.backends.cuda.matmul.allow_tf32
    with no_tf32(a):
        with no_tf32(a):  # the shared no-op context may be entered again inside itself
            assert torch.backends.cuda.matmul.allow_tf32 == before
    assert torch.backends.cuda.matmul.allow_tf32 == before


def test_no_tf32_turns_tf32_off_on_cuda_and_back():
    """The flag is only a setting: a stand-in CUDA tensor checks the switch without a GPU."""
    class FakeCuda:
        is_cuda = True

    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32
    matmul.allow_tf32 = True
    try:
        with no_tf32(FakeCuda()):
            assert matmul.allow_tf32 is False
        assert matmul.allow_tf32 is True
        try:
            with no_tf32(FakeCuda()):
                raise RuntimeError("inside")
        except RuntimeError:
            pass
        assert matmul.allow_tf32 is True
    finally:
        matmul.allow_tf32 = before
