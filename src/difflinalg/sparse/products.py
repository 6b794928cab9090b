r"""Sparse products whose gradients keep the sparsity pattern.

* :func:`spspmm` - ``A @ B`` for sparse ``A`` and ``B``, a sparse result;
* :func:`spmm` - ``A @ X`` for sparse ``A`` and dense ``X``;
* :func:`sddmm` - ``X @ Y`` sampled at the pattern of a sparse ``mask``.

Gradients with respect to a sparse operand are gradients with respect to its *stored values*:
a sparse tensor of the same layout and pattern, computed only at the stored entries (never a
dense ``m x n`` gradient masked afterwards). For ``C = A B``,

.. math::
    \frac{\partial L}{\partial A_{ij}} = \sum_l G_{il} B_{jl}, \qquad
    \frac{\partial L}{\partial B_{jl}} = \sum_i A_{ij} G_{il}, \qquad G = \partial L/\partial C,

for stored ``(i, j)`` of ``A`` and ``(j, l)`` of ``B``. Every term pairs a stored ``A_ij``
with a stored ``B_jl``: exactly the products the forward formed, so the backward does the
forward's multiply count, no more. It walks the rows of ``A`` in blocks; each block's rows of
``G`` are scattered into a dense ``rows x n`` buffer (its stale entries are never read: every
pair lands on an entry of ``C``'s pattern), the pairs are enumerated with
``repeat_interleave``; dL/dA is a segment sum over the pairs, dL/dB a scatter-add. torch's own
COO ``@`` COO backward instead forms the whole product ``G B^T`` and masks it.

On the CPU both directions share their row blocks of ``A`` among threads (as many as
``torch.get_num_threads()``) once a product forms 2^21 multiplies or more: scipy's
sparsetools and torch's index kernels (mostly one core each) release the GIL. The forward's
blocks are balanced by multiplies; each one's sorting pass writes into its own slice of the
result, allocated once (see :func:`_scipy_sorted_product`), so the threaded product equals
the one-thread product bit for bit. The backward's
threads keep their own dense buffer and dL/dB accumulator (added at the end).

Layouts: ``torch.sparse_coo`` (coalesced first; duplicates are summed) and
``torch.sparse_csr``; 2-D. Values float32 or float64.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any

import torch

from .._errors import DTypeError, ShapeError, describe
from .._system import available_memory_bytes

__all__ = ["spspmm", "spmm", "sddmm", "product_nnz_estimate"]

_LAYOUTS = (torch.sparse_coo, torch.sparse_csr)
_PAIR_BLOCK = 1 << 20     # pairs per block of the backward (8 MB per index temporary)
_DENSE_BLOCK = 1 << 21    # entries of the dense row buffer of G (8 MB in float32: the
                          # buffers of two workers stay in a 32 MB L3 cache; 5% faster)
_PARALLEL_MIN_WORK = 1 << 21  # multiplies from which spspmm shares its work among threads
_MAX_WORKERS = 8
_FORWARD_BLOCKS_PER_WORKER = 2  # row blocks of the threaded product per worker (measured at
# 20000^2: each block pays two passes over all of B, more blocks sort in cache; 1-2 best)
_WORK_AS_NNZ_BOUND = 1.5  # nnz bound / estimated nnz up to which the forward skips SMMP's
# symbolic pass (its unsorted parts then take at most 1.5x the estimated result's memory)
_OMP_SET_NUM_THREADS: Any = None  # omp_set_num_threads, found on first use


# ----------------------------------------------------------------------------- checks


def _check_sparse(op: str, name: str, x: Any, batched: bool = False) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise DTypeError(f"{op}: expected {name} to be a sparse torch.Tensor, but got "
                         f"{type(x).__name__}")
    if x.layout not in _LAYOUTS:
        raise DTypeError(f"{op}: expected {name} in layout torch.sparse_coo or "
                         f"torch.sparse_csr, but got layout {x.layout} with {describe(name, x)}")
    if x.dim() not in ((2, 3) if batched else (2,)) or x.dense_dim() != 0:
        what = "a 2-D sparse matrix or a 3-D batch of them" if batched else "a 2-D sparse matrix"
        raise ShapeError(f"{op}: expected {name} to be {what} with scalar values, "
                         f"but got {describe(name, x)} (sparse dims {x.sparse_dim()}, dense "
                         f"dims {x.dense_dim()})")
    if x.dtype not in (torch.float32, torch.float64):
        raise DTypeError(f"{op}: expected {name} of dtype float32 or float64, but got "
                         f"{describe(name, x)}")
    return x


def _check_dense(op: str, name: str, x: Any, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.layout != torch.strided:
        got = type(x).__name__ if not isinstance(x, torch.Tensor) else f"layout {x.layout}"
        raise DTypeError(f"{op}: expected {name} to be a dense (strided) torch.Tensor, but "
                         f"got {got}")
    if x.dim() != 2:
        raise ShapeError(f"{op}: expected {name} to be a matrix, but got {describe(name, x)}")
    if x.dtype != like.dtype or x.device != like.device:
        raise DTypeError(f"{op}: expected {name} on the dtype and device of the sparse "
                         f"operand, but got {describe(name, x)} and {describe('A', like)}")
    return x


def _check_finite(op: str, name: str, x: torch.Tensor) -> None:
    vals = x.values() if x.layout != torch.strided else x
    if not bool(torch.isfinite(vals).all()):
        raise ValueError(f"{op}: expected finite values in {name} (check=True), but got "
                         f"non-finite entries in {describe(name, x)}")


# ----------------------------------------------------------------------------- CSR parts


def _csr(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(crow, col, values) of a 2-D sparse matrix, duplicates summed (int64 indices, or a
    CSR tensor's own int32 ones); a 3-D batch (b, m, k) gives its block-diagonal
    (b m, b k) matrix, stored entries in order."""
    if x.dim() == 3:
        return _block_diagonal_csr(x)
    if x.layout == torch.sparse_csr:
        # the caller's index tensors as they are (int32 ones stay: no copy, and scipy and
        # torch's index kernels take them); every use below widens where it must
        return x.crow_indices(), x.col_indices(), x.values()
    if not x.is_coalesced():
        x = x.coalesce()
    idx = x.indices()
    counts = torch.bincount(idx[0], minlength=x.shape[0])
    crow = torch.zeros(x.shape[0] + 1, dtype=torch.int64, device=x.device)
    torch.cumsum(counts, 0, out=crow[1:])
    return crow, idx[1], x.values()


def _block_diagonal_csr(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CSR parts of diag(x[0], ..., x[b-1]) for a batch x (b, m, k) of sparse matrices; the
    stored entries keep their order (batch by batch, rows, columns)."""
    b, m, k = x.shape
    dev = x.device
    if x.layout == torch.sparse_csr:  # torch's batched CSR: one nnz for every matrix
        crow, col, val = x.crow_indices().long(), x.col_indices().long(), x.values()
        per = col.shape[-1]
        shift = torch.arange(b, device=dev).unsqueeze(-1)
        crow2 = torch.cat([(crow[:, :-1] + shift * per).reshape(-1),
                           torch.full((1,), b * per, dtype=torch.int64, device=dev)])
        return crow2, (col + shift * k).reshape(-1), val.reshape(-1)
    if not x.is_coalesced():
        x = x.coalesce()
    idx = x.indices()
    rows = idx[0] * m + idx[1]
    counts = torch.bincount(rows, minlength=b * m)
    crow = torch.zeros(b * m + 1, dtype=torch.int64, device=dev)
    torch.cumsum(counts, 0, out=crow[1:])
    return crow, idx[0] * k + idx[2], x.values()


def _block_coords(crow: torch.Tensor, col: torch.Tensor, m: int, n: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(batch, row, column) of each stored entry of a block-diagonal matrix whose blocks are
    m x n, from its CSR parts (int64)."""
    rows = _rows(crow.long())
    batch = torch.div(rows, m, rounding_mode="floor")
    return batch, rows - batch * m, col.long() - batch * n


def _from_block_diagonal(crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor,
                         shape: tuple[int, int, int], layout: torch.layout) -> torch.Tensor:
    """The batch (b, m, n) of the block-diagonal CSR parts of a (b m, b n) matrix."""
    b, m, n = shape
    batch, row, local_col = _block_coords(crow, col, m, n)
    if layout == torch.sparse_coo:
        idx = torch.stack([batch, row, local_col])
        return torch.sparse_coo_tensor(idx, val, shape, is_coalesced=True)
    starts = crow.long()[::m]                       # b + 1 offsets: where each matrix starts
    per = starts.diff()
    if b and not bool((per == per[0]).all()):
        raise ValueError(
            f"spspmm: torch's batched CSR tensors hold one number of entries for every "
            f"matrix, but the products of this batch have {per.min().item()} to "
            f"{per.max().item()}; pass the batch in COO layout (A.to_sparse_coo()) for a "
            f"batched COO result")
    nnz = int(per[0]) if b else 0
    crow3 = crow.long()[:-1].view(b, m) - starts[:-1].unsqueeze(-1)
    crow3 = torch.cat([crow3, torch.full((b, 1), nnz, dtype=torch.int64,
                                         device=crow.device)], 1)
    return torch.sparse_csr_tensor(crow3.to(crow.dtype), local_col.view(b, nnz).to(col.dtype),
                                   val.view(b, nnz), shape)


def _rows(crow: torch.Tensor) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(crow.numel() - 1, device=crow.device),
                                   crow.diff())


def _like(pattern: torch.Tensor, crow: torch.Tensor, col: torch.Tensor,
          values: torch.Tensor) -> torch.Tensor:
    """A sparse tensor of ``pattern``'s layout and shape with these CSR parts (for a batch
    ``pattern``: the parts of its block-diagonal matrix)."""
    if pattern.dim() == 3:
        if pattern.layout == torch.sparse_csr:
            return torch.sparse_csr_tensor(pattern.crow_indices(), pattern.col_indices(),
                                           values.view(pattern.values().shape), pattern.shape)
        idx = torch.stack(_block_coords(crow, col, *pattern.shape[1:]))
        return torch.sparse_coo_tensor(idx, values, pattern.shape, is_coalesced=True)
    if pattern.layout == torch.sparse_csr:
        return torch.sparse_csr_tensor(crow.to(pattern.crow_indices().dtype),
                                       col.to(pattern.col_indices().dtype), values,
                                       pattern.shape)
    idx = torch.stack([_rows(crow), col])
    return torch.sparse_coo_tensor(idx, values, pattern.shape, is_coalesced=True)


# ----------------------------------------------------------------------------- spspmm


def product_nnz_estimate(A: torch.Tensor, B: torch.Tensor) -> dict[str, float]:
    """Multiplies, an upper bound and an estimate of ``nnz(A @ B)``, and the bytes the result
    would take, from the patterns alone (``O(nnz(A))``).

    ``multiplies`` is exact: every stored ``A_ij`` meets every stored ``B_jl``. The bound is
    ``min(multiplies, m n)``; the estimate assumes the products land uniformly at random
    in the ``m x n`` result, ``m n (1 - exp(-multiplies / (m n))) ``, which is what random
    patterns do (the 200k x 100k matrix of density 0.002 times its transpose: about 1.3e10
    entries, 150 GiB).
    """
    op = "product_nnz_estimate"
    _check_sparse(op, "A", A)
    _check_sparse(op, "B", B)
    with torch.no_grad():
        crow_a, col_a, val_a = _csr(A)
        crow_b, _, _ = _csr(B)
        mults = float(_row_multiplies(crow_a, col_a, crow_b).sum()) if col_a.numel() else 0.0
    return _estimate(mults, A.shape[0], B.shape[1], val_a.element_size())


def _estimate(mults: float, m: int, n: int, itemsize: int) -> dict[str, float]:
    cells = float(m) * float(n)
    est = cells * -math.expm1(-mults / cells) if cells else 0.0
    per_entry = itemsize + 8  # value + column index (int64)
    return {"multiplies": mults, "nnz_bound": min(mults, cells), "nnz_estimate": est,
            "bytes_estimate": est * per_entry + 8 * (m + 1)}


def _row_multiplies(crow_a: torch.Tensor, col_a: torch.Tensor,
                    crow_b: torch.Tensor) -> torch.Tensor:
    """Products each row of A forms with B (int64, O(nnz(A)))."""
    per_entry = crow_b.diff().index_select(0, col_a).long()
    cum = torch.zeros(per_entry.numel() + 1, dtype=torch.int64, device=crow_a.device)
    torch.cumsum(per_entry, 0, out=cum[1:])
    return cum.index_select(0, crow_a[1:]) - cum.index_select(0, crow_a[:-1])


def _balanced_row_blocks(row_work: torch.Tensor, parts: int) -> list[tuple[int, int]]:
    """At most ``parts`` consecutive row ranges, about equal in total work, that tile
    ``[0, m)`` (ranges without rows are dropped)."""
    m = row_work.numel()
    cum = torch.cumsum(row_work, 0)
    total = int(cum[-1]) if m else 0
    cuts = [0] + [int(torch.searchsorted(cum, total * p // parts, right=True))
                  for p in range(1, parts)] + [m]
    return [(r0, r1) for r0, r1 in zip(cuts[:-1], cuts[1:]) if r1 > r0]


def _row_block(ssp, a, r0: int, r1: int):
    """Rows [r0, r1) of the scipy CSR matrix ``a`` as a CSR matrix (views of its arrays, the
    row pointers shifted)."""
    p = a.indptr
    return ssp.csr_matrix((a.data[p[r0]:p[r1]], a.indices[p[r0]:p[r1]], p[r0:r1 + 1] - p[r0]),
                          shape=(r1 - r0, a.shape[1]))


def _sparsetools() -> tuple | None:
    """scipy's private CSR kernels (csr_matmat_maxnnz, csr_matmat, csr_tocsc), or None
    where the private module moved."""
    try:
        from scipy.sparse._sparsetools import csr_matmat, csr_matmat_maxnnz, csr_tocsc
    except ImportError:  # pragma: no cover - private scipy API moved
        return None
    return csr_matmat_maxnnz, csr_matmat, csr_tocsc


def _scipy_sorted_product(ssp, a, b_t, m: int, n: int, work: torch.Tensor, workers: int,
                          width: int | None = None):
    """C = A B as sorted CSR numpy arrays from scipy CSR ``a`` (m x k) and ``b_t`` = B^T as
    CSR (n x k): per row block of A, C_blk^T = B^T A_blk^T by scipy's SMMP (unsorted CSR),
    whose CSR -> CSC conversion (a counting sort) is C_blk in sorted CSR.

    With several workers the blocks run on threads (sparsetools releases the GIL) in two
    rounds, around the allocation of the result (once, so each block's sort writes straight
    into its slice): first each block's nnz, then each block's sort. The nnz comes from
    the numeric pass itself where the multiplies bound it tightly (its unsorted part,
    sized by them, waits for the second round), else from SMMP's symbolic pass (the numeric
    pass then runs in the second round, just before the sort, so a worker holds one
    unsorted part at a time). ``width``: the columns a row of C can reach (n; a batch's
    block-diagonal product: the n of one product).
    """
    import numpy as np

    if workers <= 1:
        ct = (b_t @ a.T.tocsr()).tocsc()
        return ct.indptr, ct.indices, ct.data
    from concurrent.futures import ThreadPoolExecutor

    kernels = _sparsetools()
    blocks = _balanced_row_blocks(work, _FORWARD_BLOCKS_PER_WORKER * workers)
    idx = a.indices.dtype
    if kernels is None or b_t.indices.dtype != idx:  # see _sparsetools
        return _scipy_sorted_product_by_matmul(ssp, a, b_t, m, n, blocks, workers)
    maxnnz, matmat, tocsc = kernels
    # A row's nnz is at most min(its multiplies, width). Where that bound is within 1.5x of
    # the estimated nnz (few collisions, as for random patterns), it sizes each block's
    # unsorted part: the numeric pass then runs without SMMP's symbolic pass (a third of
    # scipy's product time), all blocks' parts held until the result is allocated (at most
    # 1.5x the estimated result, which spspmm has checked against the memory available).
    # Else the symbolic pass first, and a block's part is held only for its own sort.
    width = n if width is None else width
    cum = torch.cat([work.new_zeros(1), torch.cumsum(work.clamp(max=width), 0)])
    block_cap = (cum[[r1 for _, r1 in blocks]] - cum[[r0 for r0, _ in blocks]]).tolist()
    est = _estimate(float(work.sum()), m, width, 4)["nnz_estimate"]
    by_work = float(cum[-1]) <= _WORK_AS_NNZ_BOUND * est

    def numeric(block, blk_t, cap):
        r0, r1 = block
        cp = np.empty(n + 1, dtype=idx)
        cj = np.empty(cap, dtype=idx)
        cx = np.empty(cap, dtype=a.dtype)
        matmat(n, r1 - r0, b_t.indptr, b_t.indices, b_t.data, blk_t.indptr,
               blk_t.indices, blk_t.data, cp, cj, cx)           # C_blk^T, unsorted
        return cp, cj, cx

    def first_round(i):
        r0, r1 = blocks[i]
        blk_t = _row_block(ssp, a, r0, r1).T.tocsr()     # A_blk^T, CSR (k x rows)
        if blk_t.indices.dtype != idx:  # pragma: no cover - scipy chose wider indices
            blk_t = ssp.csr_matrix((blk_t.data, blk_t.indices.astype(idx),
                                    blk_t.indptr.astype(idx)), shape=blk_t.shape)
        if by_work and block_cap[i] <= np.iinfo(idx).max:
            part = numeric(blocks[i], blk_t, int(block_cap[i]))
            return blk_t, int(part[0][-1]), part
        return blk_t, int(maxnnz(n, r1 - r0, b_t.indptr, b_t.indices, blk_t.indptr,
                                 blk_t.indices)), None

    with ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(first_round, range(len(blocks))))
        offsets = np.concatenate([[0], np.cumsum([nnz for _, nnz, _ in parts])]
                                 ).astype(np.int64)
        if offsets[-1] > np.iinfo(idx).max:  # pragma: no cover - past int32: wider indices
            return _scipy_sorted_product_by_matmul(ssp, a, b_t, m, n, blocks, workers)
        indptr = np.empty(m + 1, dtype=idx)
        indptr[0] = 0
        indices = np.empty(offsets[-1], dtype=idx)
        data = np.empty(offsets[-1], dtype=a.dtype)

        def sort(i):
            (r0, r1), (blk_t, nnz, part), o0 = blocks[i], parts[i], offsets[i]
            parts[i] = None                              # freed after this block's sort
            cp, cj, cx = part if part is not None else numeric(blocks[i], blk_t, nnz)
            ptr = np.empty(r1 - r0 + 1, dtype=idx)
            tocsc(n, r1 - r0, cp, cj, cx, ptr, indices[o0:o0 + nnz], data[o0:o0 + nnz])
            indptr[r0 + 1:r1 + 1] = ptr[1:] + o0

        list(pool.map(sort, range(len(blocks))))  # the blocks tile rows 0..m-1
    return indptr, indices, data


def _scipy_sorted_product_by_matmul(ssp, a, b_t, m: int, n: int, blocks, workers: int):
    """:func:`_scipy_sorted_product` through scipy's public ``@`` and ``tocsc`` (one round of
    products, then one of sorts): where the private kernels are missing, or the result
    needs int64 indices while the operands have int32 ones."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    def product(block):
        return b_t @ _row_block(ssp, a, *block).T.tocsr()  # C_blk^T, CSR, unsorted columns

    with ThreadPoolExecutor(workers) as pool:
        parts = [ct.tocsc() for ct in pool.map(product, blocks)]
    nnz = [int(c.nnz) for c in parts]
    offsets = np.concatenate([[0], np.cumsum(nnz)]).astype(np.int64)
    wide = offsets[-1] > np.iinfo(np.int32).max or any(
        c.indices.dtype == np.int64 for c in parts)
    idx = np.int64 if wide else np.int32
    indptr = np.zeros(m + 1, dtype=idx)
    for (r0, r1), c, o0 in zip(blocks, parts, offsets):
        indptr[r0 + 1:r1 + 1] = c.indptr[1:] + o0
    return (indptr, np.concatenate([c.indices.astype(idx) for c in parts]),
            np.concatenate([c.data for c in parts]))


def _forward_csr(crow_a, col_a, val_a, crow_b, col_b, val_b, m, n, work, width=None):
    """C = A B as sorted CSR parts (int32 or int64 indices); ``work``: the multiplies per
    row of A (:func:`_row_multiplies`); ``width``: the columns a row of C can reach
    (:func:`_scipy_sorted_product`). Index tensors already of the dtype scipy gets (a CSR
    operand's own int32 ones, from :func:`_csr`) are handed over without a copy."""
    if val_a.device.type == "cpu":
        try:
            import scipy.sparse as ssp
        except ImportError:  # pragma: no cover - scipy is a dependency of the extras
            ssp = None
        if ssp is not None:
            # scipy's CSR product (SMMP), then one counting-sort pass for sorted columns
            # (torch's CSR invariant): C^T = B^T A^T as CSR, whose CSC form is C's sorted CSR
            k = crow_b.numel() - 1
            small = max(m, n, k, int(crow_a[-1]), int(crow_b[-1])) < 2 ** 31 - 1
            idx = torch.int32 if small else torch.int64

            def np_(t: torch.Tensor):
                return t.to(idx).numpy()  # no copy where the dtype is already idx

            a = ssp.csr_matrix((val_a.detach().numpy(), np_(col_a), np_(crow_a)), shape=(m, k))
            b = ssp.csr_matrix((val_b.detach().numpy(), np_(col_b), np_(crow_b)), shape=(k, n))
            workers = _workers(int(work.sum()), val_a.device)
            indptr, indices, data = _scipy_sorted_product(ssp, a, b.T.tocsr(), m, n, work,
                                                          workers, width)
            # scipy's int32 indices are kept (torch's CSR kernels are faster with them)
            return (torch.from_numpy(indptr), torch.from_numpy(indices),
                    torch.from_numpy(data))
    a = torch.sparse_csr_tensor(crow_a, col_a, val_a.detach(), (m, crow_b.numel() - 1))
    b = torch.sparse_csr_tensor(crow_b, col_b, val_b.detach(), (crow_b.numel() - 1, n))
    c = a @ b
    return c.crow_indices().long(), c.col_indices().long(), c.values()


def _pair_blocks(crow_a: torch.Tensor, row_nnz: torch.Tensor, n: int):
    """Row blocks [r0, r1) of A whose pairs and dense G rows fit the block budgets."""
    m = crow_a.numel() - 1
    max_rows = max(1, _DENSE_BLOCK // max(n, 1))
    cum = torch.cumsum(row_nnz, 0)
    r0 = 0
    while r0 < m:
        base = int(cum[r0 - 1]) if r0 else 0
        r1 = int(torch.searchsorted(cum, base + _PAIR_BLOCK, right=True))
        r1 = min(max(r1, r0 + 1), r0 + max_rows, m)
        yield r0, r1
        r0 = r1


def _workers(work: int, device: torch.device) -> int:
    """Python threads for a product or backward of ``work`` multiplies: the intra-op thread
    count on the CPU when there is enough work to share (scipy's sparsetools and most of
    torch's index kernels run on one core and release the GIL), else 1."""
    if device.type != "cpu" or work < _PARALLEL_MIN_WORK:
        return 1
    return max(1, min(torch.get_num_threads(), _MAX_WORKERS))


def _one_intra_op_thread() -> None:
    """Make the calling thread's torch CPU ops use one core (OpenMP's thread count is a
    per-thread setting: the caller's other threads and torch's global setting are left
    alone). For the worker threads the product and backward create: two workers whose ops
    each start an OpenMP team on a 2-core machine spin against each other (measured 1.14x
    slower). Does nothing where the OpenMP runtime's symbol is not found."""
    global _OMP_SET_NUM_THREADS
    if _OMP_SET_NUM_THREADS is None:
        try:
            _OMP_SET_NUM_THREADS = ctypes.CDLL(None).omp_set_num_threads
        except (OSError, AttributeError):  # pragma: no cover - no OpenMP in this build
            _OMP_SET_NUM_THREADS = False
    if _OMP_SET_NUM_THREADS:
        torch.get_num_threads()  # torch's per-thread lazy initialisation comes first
        _OMP_SET_NUM_THREADS(1)


def _spspmm_backward(crow_a, col_a, val_a, crow_b, col_b, val_b, g_crow, g_col, g_val,
                     g_dense, n, need_a, need_b, reset=True, row_pairs=None):
    """(dL/dA values, dL/dB values) by the pair enumeration of the module docstring.

    ``reset=False``: the sparse G is known to hold exactly C's pattern, which contains every
    pair's (i, l), so each block reads only entries it has just written and the buffer's
    stale entries need not be zeroed. ``row_pairs``: the multiplies per row of A, as the
    forward computed them (:func:`_row_multiplies`). The row blocks are shared among worker threads
    (:func:`_workers`), each with its own dense buffer and its own dL/dB accumulator
    (summed at the end); the dL/dA of a block is its own slice.
    """
    dev, dt = val_a.device, val_a.dtype
    ga = torch.zeros_like(val_a) if need_a else None
    # gathers through 1-D index_select and scatters through scatter_ / scatter_add_: on the
    # CPU they are 2-2.3x faster than index_copy_ / index_add_ and advanced indexing
    pairs_per_entry = crow_b.diff().index_select(0, col_a)  # B-row length of each A entry
    if row_pairs is None:
        row_pairs = _row_multiplies(crow_a, col_a, crow_b)
    m = crow_a.numel() - 1
    bounds = list(_pair_blocks(crow_a, row_pairs, n))
    cuts = torch.tensor([b[0] for b in bounds] + [m], dtype=torch.int64, device=crow_a.device)
    e_cut = crow_a.index_select(0, cuts).tolist()
    p_cut = torch.cat([row_pairs.new_zeros(1), torch.cumsum(row_pairs, 0)]).index_select(
        0, cuts).tolist()
    s_cut = g_crow.index_select(0, cuts).tolist() if g_dense is None else [0] * len(e_cut)
    # one block: (r0, r1, first and last A entry, its pairs, first and last G entry)
    blocks = [(r0, r1, e_cut[j], e_cut[j + 1], p_cut[j + 1] - p_cut[j], s_cut[j], s_cut[j + 1])
              for j, (r0, r1) in enumerate(bounds) if p_cut[j + 1] > p_cut[j]]
    workers = min(_workers(int(p_cut[-1]), dev), max(len(blocks), 1))
    buf_len = min(m, max(1, _DENSE_BLOCK // max(n, 1))) * n
    # B's column and value side by side (the value's bits as an integer of its width): the
    # pairs read both with one gather
    packed = val_b
    if packed.element_size() == 4 and n > torch.iinfo(torch.int32).max:  # pragma: no cover
        packed = packed.double()                # columns past int32: values widened
    bits = torch.int32 if packed.element_size() == 4 else torch.int64
    col_val_b = torch.stack([col_b.to(bits), packed.view(bits)], 1)
    # rows of two int32 gathered as one int64 each: a 1-D index_select is 3.5x faster than
    # the 2-D one on the (nnz, 2) tensor
    gather_cv = col_val_b.view(torch.int64).view(-1) if bits == torch.int32 else col_val_b
    most_pairs = max((blk[4] for blk in blocks), default=0)
    most_g = max((blk[6] - blk[5] for blk in blocks), default=0)

    grad_mode = torch.is_grad_enabled()  # threads start with grad mode on: pass it along

    def run(mine: list[tuple[int, ...]]) -> torch.Tensor | None:
        if workers > 1:  # a worker of ours: its ops on one core each (no oversubscription)
            _one_intra_op_thread()
        with torch.set_grad_enabled(grad_mode):
            return run_blocks(mine)

    def run_blocks(mine: list[tuple[int, ...]]) -> torch.Tensor | None:
        gb = torch.zeros_like(val_b) if need_b else None
        buf = None
        steps = torch.arange(most_pairs, device=dev)  # rank of a pair in its block
        for r0, r1, e0, e1, total, s0, s1 in mine:
            cnt = pairs_per_entry[e0:e1]
            rows = r1 - r0
            if g_dense is not None:
                w = g_dense[r0:r1]
                w = w.reshape(-1) if w.is_contiguous() else w.contiguous().view(-1)
            else:
                if buf is None:  # zero once; each block puts its zeros back after use
                    buf = torch.zeros(buf_len, dtype=dt, device=dev)
                    nothing = torch.zeros((), dtype=dt, device=dev).expand(most_g)
                written = torch.repeat_interleave(
                    torch.arange(0, rows * n, n, device=dev), g_crow[r0:r1 + 1].diff(),
                    output_size=s1 - s0)
                written += g_col[s0:s1]
                buf.scatter_(0, written, g_val[s0:s1])
                w = buf
            # pairs of this block, grouped by A entry: ``rep``, the entry of each pair; its B
            # position, the start of the B row plus the rank inside the run; G_il read from
            # the dense rows at (local row) n + l
            rep = torch.repeat_interleave(cnt, output_size=total)
            first = torch.cumsum(cnt, 0) - cnt
            pair_b = (crow_b.index_select(0, col_a[e0:e1]) - first).index_select(0, rep)
            pair_b += steps[:total]
            cv = gather_cv.index_select(0, pair_b)       # (l, B_kl) of every pair, one gather
            if cv.dim() == 1:
                cv = cv.view(bits).view(-1, 2)
            row_base = torch.repeat_interleave(
                torch.arange(0, rows * n, n, dtype=bits, device=dev),
                crow_a[r0:r1 + 1].diff(), output_size=e1 - e0)
            flat = row_base.index_select(0, rep)
            flat += cv[:, 0]
            gw = w.index_select(0, flat)                 # G_il of every pair
            del flat
            if need_a:  # runs of consecutive pairs belong to one A entry: a segment sum
                ga[e0:e1] = torch.segment_reduce(gw * cv[:, 1].view(packed.dtype), "sum",
                                                 lengths=cnt)
            del cv
            if need_b:
                gw *= val_a[e0:e1].index_select(0, rep)
                gb.scatter_add_(0, pair_b, gw)
            if g_dense is None and reset:
                buf.scatter_(0, written, nothing[:s1 - s0])
        return gb

    if workers <= 1:
        gb = run(blocks)
    else:
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(workers) as pool:
            parts = list(pool.map(run, [blocks[t::workers] for t in range(workers)]))
        gb = None
        if need_b:
            gb = parts[0]
            for part in parts[1:]:
                gb += part
    return ga, gb


class _SpSpMM(torch.autograd.Function):
    """C = A B for sparse A, B (see module docstring). Saved: A and B (their parts)."""

    @staticmethod
    def forward(ctx: Any, A: torch.Tensor, B: torch.Tensor, prepared=None) -> torch.Tensor:
        # a batch (b, m, k) @ (b, k, n) is the product of the block-diagonal matrices
        batch = A.dim() == 3
        m, n = ((A.shape[0] * A.shape[1], B.shape[0] * B.shape[2]) if batch
                else (A.shape[0], B.shape[1]))
        # prepared: (A's CSR parts, B's, multiplies per row of A) from spspmm's estimate
        pa, pb, work = prepared if prepared is not None else (_csr(A), _csr(B), None)
        if work is None:
            work = _row_multiplies(pa[0], pa[1], pb[0])
        crow, col, val = _forward_csr(*pa, *pb, m, n, work, width=B.shape[-1])
        ctx.save_for_backward(*pa, *pb, work)  # work: the backward's block sizes too
        ctx.layouts = (A, B)
        ctx.n = n
        # C's pattern (the index tensors the output holds: no copy), to recognise an incoming
        # gradient on exactly that pattern, for which the backward's buffer needs no reset
        ctx.c_pattern = (crow, col)
        ctx.batch_shape = (A.shape[0], A.shape[1], B.shape[2]) if batch else None
        if batch:
            return _from_block_diagonal(crow, col, val, ctx.batch_shape, A.layout)
        if A.layout == torch.sparse_coo:
            return torch.sparse_coo_tensor(torch.stack([_rows(crow.long()), col.long()]), val,
                                           (m, n), is_coalesced=True)
        return torch.sparse_csr_tensor(crow, col, val, (m, n))

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):
        crow_a, col_a, val_a, crow_b, col_b, val_b, work = ctx.saved_tensors
        A, B = ctx.layouts
        need_a, need_b = ctx.needs_input_grad[:2]
        if g is None:
            return None, None, None
        g_crow = g_col = g_val = g_dense = None
        covers = False
        if ctx.batch_shape is not None:
            if g.layout == torch.strided:  # read at C's pattern: a gradient on that pattern
                g_crow, g_col = ctx.c_pattern
                g_val = g[_block_coords(g_crow, g_col, *ctx.batch_shape[1:])]
                covers = True
            else:
                g_crow, g_col, g_val = _csr(g)
        elif g.layout == torch.strided:
            g_dense = g
        elif g.layout == torch.sparse_csr:
            g_crow, g_col, g_val = g.crow_indices(), g.col_indices(), g.values()
            c_crow, c_col = ctx.c_pattern
            covers = (g_col.shape == c_col.shape and g_crow.shape == c_crow.shape
                      and (g_col.data_ptr() == c_col.data_ptr() or
                           (torch.equal(g_crow.long(), c_crow.long())
                            and torch.equal(g_col.long(), c_col.long()))))
        else:
            g_crow, g_col, g_val = _csr(g)
        ga, gb = _spspmm_backward(crow_a, col_a, val_a, crow_b, col_b, val_b, g_crow, g_col,
                                  g_val, g_dense, ctx.n, need_a, need_b, reset=not covers,
                                  row_pairs=work)
        return (_like(A, crow_a, col_a, ga) if need_a else None,
                _like(B, crow_b, col_b, gb) if need_b else None, None)


def spspmm(A: torch.Tensor, B: torch.Tensor, *, max_bytes: float | None = None,
           check: bool = False) -> torch.Tensor:
    r"""Sparse times sparse, ``A @ B``, as a sparse matrix, with gradients on the patterns.

    Args:
        A: ``(m, k)`` sparse, layout COO or CSR, float32 or float64; or a batch
            ``(b, m, k)`` (COO with 3 sparse dims, or torch's batched CSR).
        B: ``(k, n)`` sparse (``(b, k, n)`` for a batch), same dtype and device (either
            layout).
        max_bytes: refuse (``MemoryError``) when the estimated result needs more; default:
            the memory available (``/proc/meminfo``), unchecked where unknown.
        check: raise on non-finite values.

    Returns:
        ``(m, n)`` (or ``(b, m, n)``) sparse in ``A``'s layout (COO coalesced, CSR with
        sorted columns). A batch is multiplied as one block-diagonal product; a batched CSR
        result needs the same number of entries in every product (torch's batched CSR
        format), else ValueError: pass COO then.

    Gradients: w.r.t. the stored values of ``A`` and ``B`` (sparse, same pattern and layout),
    ``O(multiplies)`` work, the forward's count; see the module docstring. On the CPU the
    forward is scipy's CSR product followed by one sorting pass; elsewhere torch's.

    Example:
        >>> A = torch.eye(4).to_sparse_csr()
        >>> spspmm(A, A).to_dense().equal(torch.eye(4))
        True
    """
    op = "spspmm"
    _check_sparse(op, "A", A, batched=True)
    _check_sparse(op, "B", B, batched=True)
    if A.dim() != B.dim() or A.shape[:-2] != B.shape[:-2] or A.shape[-1] != B.shape[-2]:
        raise ShapeError(f"{op}: expected A (*, m, k) and B (*, k, n) with one batch shape "
                         f"and A's columns matching B's rows, but got {describe('A', A)} and "
                         f"{describe('B', B)}")
    if A.dtype != B.dtype or A.device != B.device:
        raise DTypeError(f"{op}: expected A and B on one dtype and device, but got "
                         f"{describe('A', A)} and {describe('B', B)}")
    if check:
        _check_finite(op, "A", A)
        _check_finite(op, "B", B)
    limit = available_memory_bytes() if max_bytes is None else float(max_bytes)
    with torch.no_grad():  # the CSR parts once, for the estimate and the product
        pa = tuple(t.detach() for t in _csr(A))   # a CSR leaf's values() keeps requires_grad
        pb = tuple(t.detach() for t in _csr(B))
        work = _row_multiplies(pa[0], pa[1], pb[0])
    if limit is not None:
        # a batch's cells are b m n: the block-diagonal's b m rows times n columns each
        est = _estimate(float(work.sum()), pa[0].numel() - 1, B.shape[-1],
                        pa[2].element_size())
        if est["bytes_estimate"] > limit:
            gib = 2.0 ** 30
            raise MemoryError(
                f"{op}: the product of {describe('A', A)} and {describe('B', B)} needs about "
                f"{est['bytes_estimate'] / gib:.1f} GiB ({est['nnz_estimate']:.3g} stored "
                f"entries estimated, at most {est['nnz_bound']:.3g}; "
                f"{est['multiplies']:.3g} multiplies), but only {limit / gib:.1f} GiB "
                f"{'is available' if max_bytes is None else 'is allowed (max_bytes)'}; "
                f"compute it in row blocks of A, or pass max_bytes to override")
    return _SpSpMM.apply(A, B, (pa, pb, work))


# ----------------------------------------------------------------------------- spmm, sddmm


def _sampled_dots(rows: torch.Tensor, cols: torch.Tensor, X: torch.Tensor,
                  Yt: torch.Tensor) -> torch.Tensor:
    """``sum_k X[rows, k] Yt[cols, k]`` for each stored entry, in chunks of bounded memory."""
    out = torch.empty(rows.numel(), dtype=X.dtype, device=X.device)
    k = max(X.shape[1], 1)
    step = max(1, _DENSE_BLOCK // k)
    for s0 in range(0, rows.numel(), step):
        s1 = min(s0 + step, rows.numel())
        torch.sum(X[rows[s0:s1]] * Yt[cols[s0:s1]], dim=1, out=out[s0:s1])
    return out


def _transpose_csr(crow, col, val, shape) -> torch.Tensor:
    """``A^T`` as a CSR tensor (one conversion pass)."""
    a = torch.sparse_csr_tensor(crow, col, val, shape)
    csc = a.to_sparse_csc()
    return torch.sparse_csr_tensor(csc.ccol_indices(), csc.row_indices(), csc.values(),
                                   (shape[1], shape[0]))


class _SpMM(torch.autograd.Function):
    """Y = A X, A sparse; dL/dX = A^T G, dL/dA = G X^T at A's pattern."""

    @staticmethod
    def forward(ctx: Any, A: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        crow, col, val = _csr(A)
        a = torch.sparse_csr_tensor(crow, col, val.detach(), A.shape)
        ctx.save_for_backward(crow, col, val, X)
        ctx.A = A
        return a @ X.contiguous()  # MKL's sparse x dense wants a contiguous dense side

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):
        crow, col, val, X = ctx.saved_tensors
        A = ctx.A
        ga = gx = None
        if g is None:
            return None, None
        g = g.contiguous()
        if ctx.needs_input_grad[1]:
            gx = _transpose_csr(crow, col, val, A.shape) @ g
        if ctx.needs_input_grad[0]:
            ga = _like(A, crow, col, _sampled_dots(_rows(crow), col, g, X))
        return ga, gx


def spmm(A: torch.Tensor, X: torch.Tensor, *, check: bool = False) -> torch.Tensor:
    r"""Sparse times dense, ``A @ X`` (dense ``(m, n)``), differentiable in both.

    The gradient w.r.t. ``A`` is taken at its stored entries only (``(dL/dY X^T)_ij`` for
    stored ``(i, j)``, ``O(nnz n)``), a sparse tensor of ``A``'s layout and pattern; the
    gradient w.r.t. ``X`` is ``A^T dL/dY``, another sparse-times-dense product.

    Args:
        A: ``(m, k)`` sparse COO or CSR, float32 or float64.
        X: ``(k, n)`` dense, same dtype and device.
        check: raise on non-finite values.
    """
    op = "spmm"
    _check_sparse(op, "A", A)
    _check_dense(op, "X", X, A)
    if A.shape[1] != X.shape[0]:
        raise ShapeError(f"{op}: expected A's columns to match X's rows, but got "
                         f"{describe('A', A)} and {describe('X', X)}")
    if check:
        _check_finite(op, "A", A)
        _check_finite(op, "X", X)
    return _SpMM.apply(A, X)


def _on_pattern(crow, col, g_crow, g_col, g_val, n):
    """Values of a sparse gradient (CSR parts g_*) at the pattern (crow, col); entries of the
    gradient outside the pattern do not reach it, missing ones are zero."""
    keys = _rows(crow) * n + col
    g_keys = _rows(g_crow) * n + g_col
    pos = torch.searchsorted(keys, g_keys).clamp_max(max(keys.numel() - 1, 0))
    hit = keys[pos] == g_keys if keys.numel() else torch.zeros_like(g_keys, dtype=torch.bool)
    out = torch.zeros(keys.numel(), dtype=g_val.dtype, device=g_val.device)
    out.index_put_((pos[hit],), g_val[hit], accumulate=True)
    return out


class _SDDMM(torch.autograd.Function):
    """S = mask o (X Y) at mask's pattern; dL/dX = G_S Y^T, dL/dY = X^T G_S (G_S sparse)."""

    @staticmethod
    def forward(ctx: Any, mask: torch.Tensor, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        crow, col, _ = _csr(mask)
        vals = _sampled_dots(_rows(crow), col, X, Y.mT)
        ctx.save_for_backward(crow, col, X, Y)
        ctx.mask = mask
        return _like(mask, crow, col, vals)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):
        crow, col, X, Y = ctx.saved_tensors
        mask = ctx.mask
        if g is None:
            return None, None, None
        if g.layout == torch.strided:
            gv = g[_rows(crow), col]
        else:
            g_crow, g_col, gv = _csr(g)
            if not (torch.equal(g_crow, crow) and torch.equal(g_col, col)):
                gv = _on_pattern(crow, col, g_crow, g_col, gv, mask.shape[1])
        gv = gv.contiguous()
        gx = gy = None
        shape = mask.shape
        if ctx.needs_input_grad[1]:
            gx = torch.sparse_csr_tensor(crow, col, gv, shape) @ Y.mT.contiguous()
        if ctx.needs_input_grad[2]:
            gy = (_transpose_csr(crow, col, gv, shape) @ X.contiguous()).mT
        return None, gx, gy


def sddmm(mask: torch.Tensor, X: torch.Tensor, Y: torch.Tensor, *,
          check: bool = False) -> torch.Tensor:
    r"""``X @ Y`` sampled at the stored entries of ``mask`` (sampled dense-dense product).

    Returns a sparse tensor with ``mask``'s layout and pattern whose value at stored
    ``(i, j)`` is ``sum_k X_ik Y_kj`` (``mask``'s values are ignored), in ``O(nnz k)`` work
    and bounded temporary memory, never the dense product. Differentiable in ``X`` and
    ``Y``: ``dL/dX = S Y^T`` and ``dL/dY = X^T S`` with ``S`` the sparse incoming gradient,
    two sparse-times-dense products.

    Args:
        mask: ``(m, n)`` sparse COO or CSR (its pattern only).
        X: ``(m, k)`` dense; Y: ``(k, n)`` dense; same dtype and device as ``mask``.
    """
    op = "sddmm"
    _check_sparse(op, "mask", mask)
    _check_dense(op, "X", X, mask)
    _check_dense(op, "Y", Y, mask)
    if X.shape[0] != mask.shape[0] or Y.shape[1] != mask.shape[1] or X.shape[1] != Y.shape[0]:
        raise ShapeError(f"{op}: expected X (m, k) and Y (k, n) for mask (m, n), but got "
                         f"{describe('mask', mask)}, {describe('X', X)} and "
                         f"{describe('Y', Y)}")
    if check:
        _check_finite(op, "X", X)
        _check_finite(op, "Y", Y)
    return _SDDMM.apply(mask, X, Y)
