"""Tests of difflinalg.sparse.distributed: row-partitioned lsqr/lsmr over gloo processes."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from difflinalg.sparse.distributed import RowPartitionedOperator, row_range
from difflinalg.sparse.lsq import lsmr, lsqr

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo not available")

f64 = torch.float64
KW = {"atol": 1e-12, "btol": 1e-12}


def _problem(m=240, n=40, k=2):
    """Sparse tall A (full column rank), an inconsistent b; the same on every process."""
    g = torch.Generator().manual_seed(7)
    dense = torch.randn(m, n, generator=g, dtype=f64)
    dense = dense * (torch.rand(m, n, generator=g) < 0.1) + torch.eye(m, n, dtype=f64)
    return dense.to_sparse_csr(), torch.randn(m, k, generator=g, dtype=f64)


def _worker(rank: int, world: int, init: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        A, b = _problem()
        start, stop = row_range(A.shape[0])
        A_p = A.to_dense()[start:stop].to_sparse_csr()
        op = RowPartitionedOperator(A_p)
        assert op.shape == tuple(A.shape) and op.range_size == stop - start
        for solver in (lsqr, lsmr):
            for damp in (0.0, 0.5):
                ref = solver(A, b, damp=damp, **KW)
                res = solver(op, b[start:stop], damp=damp, **KW)
                torch.testing.assert_close(res.x, ref.x, rtol=1e-10, atol=1e-10)
                assert torch.equal(res.info.istop, ref.info.istop)
                assert torch.equal(res.info.iterations, ref.info.iterations)
                torch.testing.assert_close(res.info.residual_norm, ref.info.residual_norm)
        # implicit gradient: the local blocks of the single-process gradients
        A_p = A_p.requires_grad_()
        b_p = b[start:stop].clone().requires_grad_()
        upstream = torch.linspace(-1, 1, A.shape[1] * b.shape[1], dtype=f64).view(-1, 2)
        (lsqr(RowPartitionedOperator(A_p), b_p, **KW).x * upstream).sum().backward()
        A_full = A.clone().requires_grad_()
        b_full = b.clone().requires_grad_()
        (lsqr(A_full, b_full, **KW).x * upstream).sum().backward()
        torch.testing.assert_close(b_p.grad, b_full.grad[start:stop], rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(A_p.grad.to_dense(), A_full.grad.to_dense()[start:stop],
                                   rtol=1e-8, atol=1e-10)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 4])
def test_distributed_matches_single_process(world, tmp_path):
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_worker, args=(world, init), nprocs=world, join=True)


def test_row_range_covers_rows():
    blocks = [row_range(10, r, 4) for r in range(4)]
    assert blocks == [(0, 3), (3, 6), (6, 8), (8, 10)]


def test_needs_initialised_group():
    if dist.is_initialized():
        pytest.skip("a process group is already initialised")
    with pytest.raises(ValueError, match=r"^RowPartitionedOperator: expected an initialised"):
        RowPartitionedOperator(torch.eye(3, dtype=f64))
