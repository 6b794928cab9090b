"""spspmm, spmm, sddmm against dense computations; gradients on the patterns only."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

from difflinalg.sparse.products import product_nnz_estimate, sddmm, spmm, spspmm

f64 = torch.float64
LAYOUTS = ["coo", "csr"]


def _dense(m, n, density, seed, empty_row=None, empty_col=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(m, n, dtype=f64, generator=g) + 0.5
    x = torch.where(torch.rand(m, n, generator=g) < density, x, torch.zeros((), dtype=f64))
    if empty_row is not None:
        x[empty_row] = 0
    if empty_col is not None:
        x[:, empty_col] = 0
    return x


def _sparse(d, layout):
    return d.to_sparse() if layout == "coo" else d.to_sparse_csr()


def _leaf(d, layout):
    return _sparse(d, layout).requires_grad_()


@pytest.mark.parametrize("la", LAYOUTS)
@pytest.mark.parametrize("lb", LAYOUTS)
@pytest.mark.parametrize("shape", [(7, 5, 6), (1, 9, 1), (12, 3, 15), (6, 6, 6)])
def test_spspmm_values_and_gradients_match_dense(la, lb, shape):
    m, k, n = shape
    Ad = _dense(m, k, 0.4, 1, empty_row=0, empty_col=k - 1)
    Bd = _dense(k, n, 0.4, 2, empty_row=1 % k)
    A, B = _leaf(Ad, la), _leaf(Bd, lb)
    C = spspmm(A, B)
    assert C.layout == A.layout
    torch.testing.assert_close(C.to_dense(), Ad @ Bd)
    G = torch.randn(m, n, dtype=f64)
    (C.to_dense() * G).sum().backward()
    # gradients: the dense gradient at the stored entries, in the operand's layout/pattern
    for X, Xd, ref in ((A, Ad, G @ Bd.T), (B, Bd, Ad.T @ G)):
        assert X.grad.layout == X.layout
        torch.testing.assert_close(X.grad.to_dense(), ref * (Xd != 0))
        if X.layout == torch.sparse_csr:
            assert torch.equal(X.grad.col_indices(), X.detach().col_indices())
        else:
            assert X.grad._nnz() == X.detach().coalesce()._nnz()


def test_spspmm_sparse_incoming_gradient_on_a_sub_pattern():
    """A loss reading only some entries of C: the incoming gradient is sparse."""
    Ad, Bd = _dense(8, 6, 0.5, 3), _dense(6, 7, 0.5, 4)
    A, B = _leaf(Ad, "csr"), _leaf(Bd, "csr")
    C = spspmm(A, B)
    vals = C.values()
    w = torch.zeros_like(vals)
    w[::3] = torch.randn(w[::3].shape, dtype=f64)
    (vals * w).sum().backward()
    Gd = torch.sparse_csr_tensor(C.crow_indices(), C.col_indices(), w, C.shape).to_dense()
    torch.testing.assert_close(A.grad.to_dense(), (Gd @ Bd.T) * (Ad != 0))
    torch.testing.assert_close(B.grad.to_dense(), (Ad.T @ Gd) * (Bd != 0))


def test_spspmm_coo_duplicates_are_summed():
    idx = torch.tensor([[0, 0, 1, 2, 0], [1, 1, 0, 2, 1]])
    val = torch.tensor([1.0, 2.0, 3.0, 4.0, 0.5], dtype=f64)
    A = torch.sparse_coo_tensor(idx, val, (3, 3))          # uncoalesced: (0, 1) three times
    B = _sparse(_dense(3, 4, 0.7, 5), "coo")
    torch.testing.assert_close(spspmm(A, B).to_dense(), A.to_dense() @ B.to_dense())


def _with_values(pattern, values):
    """A sparse tensor with ``pattern``'s layout and indices and these values (a function
    of ``values``, so gradcheck differentiates through the stored values)."""
    if pattern.layout == torch.sparse_csr:
        return torch.sparse_csr_tensor(pattern.crow_indices(), pattern.col_indices(), values,
                                       pattern.shape)
    p = pattern.coalesce()
    return torch.sparse_coo_tensor(p.indices(), values, p.shape, is_coalesced=True)


def _values(x):
    return x.values() if x.layout == torch.sparse_csr else x.coalesce().values()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_spspmm_gradcheck_on_the_stored_values(layout):
    A, B = _sparse(_dense(5, 4, 0.5, 6), layout), _sparse(_dense(4, 3, 0.6, 7), layout)

    def f(va, vb):
        return spspmm(_with_values(A, va), _with_values(B, vb)).to_dense()

    va = _values(A).clone().requires_grad_()
    vb = _values(B).clone().requires_grad_()
    assert gradcheck(f, (va, vb))


def test_spspmm_blocks_of_the_backward_agree(monkeypatch):
    """Many row blocks (tiny budgets) give the same gradients as one."""
    from difflinalg.sparse import products
    Ad, Bd = _dense(30, 20, 0.3, 8), _dense(20, 25, 0.3, 9)
    G = torch.randn(30, 25, dtype=f64)
    grads = []
    for budget in (1 << 22, 7):
        monkeypatch.setattr(products, "_PAIR_BLOCK", budget)
        monkeypatch.setattr(products, "_DENSE_BLOCK", max(budget, 25))
        A, B = _leaf(Ad, "csr"), _leaf(Bd, "csr")
        (spspmm(A, B).to_dense() * G).sum().backward()
        grads.append((A.grad.to_dense(), B.grad.to_dense()))
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("workers", [2, 3])
def test_spspmm_threaded_forward_and_backward_match_one_thread(layout, workers, monkeypatch):
    """Row blocks on worker threads (forced here at any size) give the same sorted pattern,
    values and gradients, also with empty rows and one heavy row (unequal blocks)."""
    from difflinalg.sparse import products
    Ad = _dense(40, 30, 0.15, 12, empty_row=3, empty_col=7)
    Ad[5] = torch.rand(30, dtype=f64) + 0.5            # a dense row: most of the work
    Ad[30:36] = 0                                      # a run of empty rows
    Bd = _dense(30, 35, 0.2, 13, empty_row=4)
    G = torch.randn(40, 35, dtype=f64)
    results = []
    for parallel in (False, True):
        monkeypatch.setattr(products, "_PARALLEL_MIN_WORK", 0 if parallel else 1 << 62)
        monkeypatch.setattr(products, "_MAX_WORKERS", workers)
        monkeypatch.setattr(torch, "get_num_threads", lambda: workers)
        monkeypatch.setattr(products, "_DENSE_BLOCK", 35 * 4)   # several backward blocks
        A, B = _leaf(Ad, layout), _leaf(Bd, layout)
        C = spspmm(A, B)
        (C.to_dense() * G).sum().backward()
        Cc = C.detach().to_sparse_csr() if layout == "coo" else C.detach()
        results.append((Cc.crow_indices().long(), Cc.col_indices().long(), Cc.values(),
                        A.grad.to_dense(), B.grad.to_dense()))
    for x, y in zip(results[0][:3], results[1][:3]):   # the product: bit for bit
        assert torch.equal(x, y)
    # dL/dB: per-worker partial sums, added at the end (another summation order)
    for x, y in zip(results[0][3:], results[1][3:]):
        torch.testing.assert_close(x, y, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(results[1][2], (Ad @ Bd).to_sparse_csr().values())


@pytest.mark.parametrize("dtype", [torch.float32, f64])
@pytest.mark.parametrize("parallel", [False, True])
def test_spspmm_backward_with_a_gradient_off_the_product_pattern(dtype, parallel, monkeypatch):
    """An incoming sparse G on another pattern than C's (entries C lacks, entries of C
    missing): its stale entries in the dense buffer must be cleared between row blocks.
    int32 CSR indices, float32 values gathered packed with B's columns; several blocks."""
    from difflinalg.sparse import products
    monkeypatch.setattr(products, "_PARALLEL_MIN_WORK", 0 if parallel else 1 << 62)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(products, "_DENSE_BLOCK", 23 * 3)      # 3 rows a block
    Ad = _dense(17, 11, 0.3, 21, empty_row=4)
    Bd = _dense(11, 23, 0.3, 22, empty_col=5)
    Gd = _dense(17, 23, 0.6, 23) - 1.0                          # off C's pattern in places
    Gd[Gd == -1.0] = 0

    def csr32(d):
        c = d.to(dtype).to_sparse_csr()
        return torch.sparse_csr_tensor(c.crow_indices().int(), c.col_indices().int(),
                                       c.values(), c.shape)

    A, B = csr32(Ad).requires_grad_(), csr32(Bd).requires_grad_()
    C = spspmm(A, B)
    pattern_c = (Ad != 0).double() @ (Bd != 0).double() > 0
    assert ((Gd != 0) & ~pattern_c).any() and (pattern_c & (Gd == 0)).any()
    for G in (csr32(Gd), csr32(Gd).to_sparse_coo()):
        ga, gb = torch.autograd.grad(C, (A, B), G, retain_graph=True)
        tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else {}
        torch.testing.assert_close(ga.to_dense().double(), (Gd @ Bd.T) * (Ad != 0), **tol)
        torch.testing.assert_close(gb.to_dense().double(), (Ad.T @ Gd) * (Bd != 0), **tol)


@pytest.mark.parametrize("kernels", ["nnz_by_work", "nnz_by_symbolic_pass", "public"])
def test_spspmm_threaded_product_through_each_scipy_route(kernels, monkeypatch):
    """The threaded forward through scipy's private kernels (the numeric pass sized by the
    multiplies, or the symbolic pass first) and through its public ``@`` (the fallback)
    give the one-thread product bit for bit."""
    from difflinalg.sparse import products
    Ad = _dense(50, 40, 0.15, 31, empty_row=6)
    Ad[:3] = 0                                          # leading empty rows
    Bd = _dense(40, 45, 0.15, 32, empty_col=2)
    A, B = Ad.float().to_sparse_csr(), Bd.float().to_sparse_csr()
    monkeypatch.setattr(products, "_PARALLEL_MIN_WORK", 1 << 62)
    one = spspmm(A, B)
    monkeypatch.setattr(products, "_PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    if kernels == "public":
        monkeypatch.setattr(products, "_sparsetools", lambda: None)
    monkeypatch.setattr(products, "_WORK_AS_NNZ_BOUND",
                        float("inf") if kernels == "nnz_by_work" else 0.0)
    many = spspmm(A, B)
    assert torch.equal(one.crow_indices().long(), many.crow_indices().long())
    assert torch.equal(one.col_indices().long(), many.col_indices().long())
    assert torch.equal(one.values(), many.values())
    torch.testing.assert_close(many.to_dense().double(), Ad @ Bd, rtol=1e-5, atol=1e-5)


def test_spspmm_threaded_product_sizes_by_multiplies_only_without_collisions(monkeypatch):
    """The numeric pass is sized by min(multiplies, width) per row, and only where that is
    within 1.5x of the estimated nnz: random sparse operands and a batch of dense products
    (the per-product width makes the bound exact) skip the symbolic pass; circulant
    operands whose rows form as many products as C has columns (bound m n, estimate
    (1 - 1/e) m n) take it."""
    from difflinalg.sparse import products
    monkeypatch.setattr(products, "_PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    real = products._sparsetools()
    symbolic = []

    def counting(*args):
        symbolic.append(1)
        return real[0](*args)

    monkeypatch.setattr(products, "_sparsetools", lambda: (counting, *real[1:]))

    def run(A, B, expected):
        symbolic.clear()
        torch.testing.assert_close(spspmm(A, B).to_dense(), expected)
        return bool(symbolic)

    dense = torch.rand(6, 12, 12, dtype=f64) + 0.5
    assert not run(dense.to_sparse(), dense.to_sparse(), dense @ dense)
    Ad, Bd = _dense(60, 50, 0.03, 41), _dense(50, 70, 0.03, 42)
    assert not run(Ad.to_sparse_csr(), Bd.to_sparse_csr(), Ad @ Bd)
    i = torch.arange(64)
    shift = (i[None, :] - i[:, None]) % 64
    Ad = (shift < 8).double() * (1 + torch.rand(64, 64, dtype=f64))        # 8 a row
    Bd = (shift % 8 == 0).double() * (1 + torch.rand(64, 64, dtype=f64))   # 8 a row
    assert run(Ad.to_sparse_csr(), Bd.to_sparse_csr(), Ad @ Bd)


def test_spspmm_threaded_workers_keep_grad_mode_off(monkeypatch):
    """Worker threads start with grad mode on; the backward's must not record a graph."""
    from difflinalg.sparse import products
    monkeypatch.setattr(products, "_PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    A, B = _leaf(_dense(12, 9, 0.4, 14), "csr"), _leaf(_dense(9, 10, 0.4, 15), "csr")
    C = spspmm(A, B)
    ga, gb = torch.autograd.grad(C, (A, B), C.detach())
    assert not ga.requires_grad and not gb.requires_grad


def test_spspmm_workers_leave_the_callers_thread_count_alone(monkeypatch):
    """The backward's workers run their ops on one core each; the caller's setting stays."""
    from difflinalg.sparse import products
    monkeypatch.setattr(products, "_PARALLEL_MIN_WORK", 0)
    threads = torch.get_num_threads()
    A, B = _leaf(_dense(12, 9, 0.4, 16), "csr"), _leaf(_dense(9, 10, 0.4, 17), "csr")
    C = spspmm(A, B)
    seen = []
    real = products._one_intra_op_thread
    monkeypatch.setattr(products, "_one_intra_op_thread",
                        lambda: (real(), seen.append(torch.get_num_threads())))
    monkeypatch.setattr(products, "_workers", lambda work, device: 2)
    monkeypatch.setattr(products, "_DENSE_BLOCK", 10 * 3)   # 3 rows a block: 4 blocks
    torch.autograd.grad(C, (A, B), C.detach())
    assert torch.get_num_threads() == threads
    assert len(seen) == 2 and (products._OMP_SET_NUM_THREADS is False or seen == [1, 1])


def test_spspmm_float32():
    Ad, Bd = _dense(40, 30, 0.2, 10), _dense(30, 20, 0.2, 11)
    C = spspmm(Ad.float().to_sparse_csr(), Bd.float().to_sparse_csr())
    assert C.dtype == torch.float32
    torch.testing.assert_close(C.to_dense().double(), Ad @ Bd, rtol=1e-5, atol=1e-5)


def test_nnz_estimate_and_memory_refusal():
    Ad, Bd = _dense(300, 200, 0.02, 12), _dense(200, 300, 0.02, 13)
    A, B = Ad.to_sparse_csr(), Bd.to_sparse_csr()
    est = product_nnz_estimate(A, B)
    true_nnz = int(((Ad != 0).double() @ (Bd != 0).double() > 0).sum())
    assert est["multiplies"] >= true_nnz and est["nnz_bound"] >= true_nnz
    assert abs(est["nnz_estimate"] - true_nnz) < 0.1 * true_nnz
    with pytest.raises(MemoryError, match=r"^spspmm: the product of A.shape=\(300, 200\)"):
        spspmm(A, B, max_bytes=1000)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_spmm_values_and_gradients(layout):
    Ad = _dense(9, 7, 0.3, 14, empty_row=2, empty_col=3)
    A = _leaf(Ad, layout)
    X = torch.randn(7, 4, dtype=f64, requires_grad=True)
    Y = spmm(A, X)
    assert Y.layout == torch.strided
    torch.testing.assert_close(Y, Ad @ X)
    G = torch.randn(9, 4, dtype=f64)
    (Y * G).sum().backward()
    assert A.grad.layout == A.layout
    torch.testing.assert_close(A.grad.to_dense(), (G @ X.T) * (Ad != 0))
    torch.testing.assert_close(X.grad, Ad.T @ G)
    A0 = _sparse(Ad, layout)
    va = _values(A0).clone().requires_grad_()
    X2 = X.detach().clone().requires_grad_()
    assert gradcheck(lambda v, x: spmm(_with_values(A0, v), x), (va, X2))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sddmm_values_and_gradients(layout):
    Md = _dense(6, 8, 0.3, 15)
    mask = _sparse(Md, layout)
    X = torch.randn(6, 5, dtype=f64, requires_grad=True)
    Y = torch.randn(5, 8, dtype=f64, requires_grad=True)
    S = sddmm(mask, X, Y)
    assert S.layout == mask.layout
    torch.testing.assert_close(S.to_dense(), (X @ Y) * (Md != 0))
    G = torch.randn(6, 8, dtype=f64)
    (S.to_dense() * G).sum().backward()
    Gm = G * (Md != 0)
    torch.testing.assert_close(X.grad, Gm @ Y.T)
    torch.testing.assert_close(Y.grad, X.T @ Gm)
    assert gradcheck(lambda x, y: sddmm(mask, x, y).to_dense(),
                     (X.detach().requires_grad_(), Y.detach().requires_grad_()))


def test_errors_name_op_and_argument():
    A = _sparse(_dense(3, 4, 0.5, 16), "csr")
    with pytest.raises(ValueError, match=r"^spspmm: expected A \(\*, m, k\) and B .*A's "
                                         r"columns matching"):
        spspmm(A, A)
    with pytest.raises(TypeError, match=r"^spspmm: expected B to be a sparse torch.Tensor"):
        spspmm(A, [1, 2])
    with pytest.raises(TypeError, match=r"^spspmm: expected B in layout torch.sparse_coo"):
        spspmm(A, torch.randn(4, 2, dtype=f64).to_sparse_csc())
    with pytest.raises(TypeError, match=r"^spspmm: expected A and B on one dtype"):
        spspmm(A, _sparse(_dense(4, 2, 0.5, 17), "csr").float())
    with pytest.raises(TypeError, match=r"^spmm: expected X to be a dense"):
        spmm(A, A)
    with pytest.raises(ValueError, match=r"^spmm: expected A's columns to match X's rows"):
        spmm(A, torch.randn(3, 2, dtype=f64))
    bad = torch.sparse_csr_tensor(A.crow_indices(), A.col_indices(),
                                  torch.full_like(A.values(), float("nan")), A.shape)
    with pytest.raises(ValueError, match=r"^spspmm: expected finite values in A"):
        spspmm(bad, _sparse(_dense(4, 2, 0.5, 18), "csr"), check=True)
    with pytest.raises(ValueError, match=r"^sddmm: expected X \(m, k\) and Y \(k, n\)"):
        sddmm(A, torch.randn(3, 2, dtype=f64), torch.randn(3, 4, dtype=f64))


def _batch(dense, layout):
    """A batch (b, m, k) as 3-D COO or torch's batched CSR (equal nnz: every matrix alike)."""
    return dense.to_sparse() if layout == "coo" else dense.to_sparse_csr()


@pytest.mark.parametrize("la", LAYOUTS)
@pytest.mark.parametrize("lb", LAYOUTS)
def test_spspmm_batched_values_and_gradients_match_dense(la, lb):
    # batched CSR needs one nnz per matrix: the CSR operands use one pattern for the batch
    b, m, k, n = 3, 6, 5, 7
    pat_a, pat_b = _dense(m, k, 0.4, 20, empty_row=2) != 0, _dense(k, n, 0.4, 21) != 0
    Ad = torch.randn(b, m, k, dtype=f64) * pat_a
    Bd = torch.randn(b, k, n, dtype=f64) * pat_b
    if la == "coo":
        Ad[1] = _dense(m, k, 0.3, 22)   # COO batches may differ in pattern
    A, B = _batch(Ad, la).requires_grad_(), _batch(Bd, lb).requires_grad_()
    C = spspmm(A, B)
    assert C.layout == A.layout and C.shape == (b, m, n)
    torch.testing.assert_close(C.to_dense(), Ad @ Bd)
    # an incoming gradient on C's pattern, in C's layout (torch cannot differentiate
    # to_dense of a batched CSR tensor, so the test does not go through it)
    Cd = C.detach()
    if Cd.layout == torch.sparse_csr:
        G = torch.sparse_csr_tensor(Cd.crow_indices(), Cd.col_indices(),
                                    torch.randn(Cd.values().shape, dtype=f64), Cd.shape)
    else:
        G = torch.sparse_coo_tensor(Cd.indices(), torch.randn(Cd._nnz(), dtype=f64),
                                    Cd.shape, is_coalesced=True)
    ga, gb = torch.autograd.grad(C, (A, B), G)
    Gd = G.to_dense()
    for X, Xd, grad, ref in ((A, Ad, ga, Gd @ Bd.mT), (B, Bd, gb, Ad.mT @ Gd)):
        assert grad.layout == X.layout and grad.shape == X.shape
        torch.testing.assert_close(grad.to_dense(), ref * (Xd != 0))


def test_spspmm_batched_gradcheck_and_dense_incoming_gradient():
    m, k, n = 4, 3, 5
    Ad, Bd = _dense(m, k, 0.6, 23), _dense(k, n, 0.6, 24)
    A0 = torch.stack([Ad, 2 * Ad]).to_sparse()
    B0 = torch.stack([Bd, Bd - 0.25 * (Bd != 0)]).to_sparse()

    def f(va, vb):
        A = torch.sparse_coo_tensor(A0.indices(), va, A0.shape, is_coalesced=True)
        B = torch.sparse_coo_tensor(B0.indices(), vb, B0.shape, is_coalesced=True)
        return spspmm(A, B).to_dense()   # the incoming gradient is dense (b, m, n)

    va = A0.values().clone().requires_grad_()
    vb = B0.values().clone().requires_grad_()
    assert gradcheck(f, (va, vb))


def test_spspmm_batched_csr_with_unequal_products_asks_for_coo():
    Ad = torch.zeros(2, 3, 3, dtype=f64)
    Ad[0, 0, 0] = Ad[1, 1, 1] = 1.0
    Bd = torch.zeros(2, 3, 3, dtype=f64)
    Bd[0, 0, :] = 1.0                    # first product: 3 entries
    Bd[1, 0, 0] = 1.0                    # second: none (row 1 of B[1] is empty)
    Bd[0, 2, 2] = Bd[1, 2, 1] = 1.0      # keep B's batched CSR at 4 entries each
    Bd[1, 2, 0] = Bd[1, 2, 2] = 1.0
    with pytest.raises(ValueError, match="spspmm: .*COO"):
        spspmm(Ad.to_sparse_csr(), Bd.to_sparse_csr())
    C = spspmm(Ad.to_sparse(), Bd.to_sparse())
    torch.testing.assert_close(C.to_dense(), Ad @ Bd)


def test_spspmm_batch_shape_errors():
    A = torch.eye(3, dtype=f64).expand(2, 3, 3).to_sparse()
    with pytest.raises(ValueError, match="spspmm: .*one batch shape"):
        spspmm(A, torch.eye(3, dtype=f64).to_sparse())
    with pytest.raises(ValueError, match="spspmm: .*one batch shape"):
        spspmm(A, torch.eye(3, dtype=f64).expand(3, 3, 3).to_sparse())


def _int32_csr(dense):
    x = dense.to_sparse_csr()
    return torch.sparse_csr_tensor(x.crow_indices().int(), x.col_indices().int(), x.values(),
                                   x.shape).requires_grad_()


def test_int32_index_csr_operands():
    """CSR tensors with int32 indices (what scipy and the benchmark use) are read as they
    are: values and gradients of all three products match the dense ones."""
    Ad, Bd = _dense(9, 7, 0.4, 30, empty_row=2), _dense(7, 8, 0.4, 31, empty_col=3)
    A, B = _int32_csr(Ad), _int32_csr(Bd)
    C = spspmm(A, B)
    torch.testing.assert_close(C.to_dense(), Ad @ Bd)
    G = torch.randn(9, 8, dtype=f64)
    (C.to_dense() * G).sum().backward()
    torch.testing.assert_close(A.grad.to_dense(), (G @ Bd.T) * (Ad != 0))
    torch.testing.assert_close(B.grad.to_dense(), (Ad.T @ G) * (Bd != 0))
    assert A.grad.col_indices().dtype == torch.int32
    A2 = _int32_csr(Ad)
    X = torch.randn(7, 3, dtype=f64, requires_grad=True)
    (spmm(A2, X) * torch.ones(9, 3, dtype=f64)).sum().backward()
    torch.testing.assert_close(A2.grad.to_dense(), (torch.ones(9, 3, dtype=f64) @ X.T)
                               * (Ad != 0))
    Xs = torch.randn(9, 4, dtype=f64, requires_grad=True)
    Ys = torch.randn(4, 7, dtype=f64, requires_grad=True)
    S = sddmm(_int32_csr(Ad).detach(), Xs, Ys)
    torch.testing.assert_close(S.to_dense(), (Xs @ Ys).detach() * (Ad != 0))
    S.to_dense().sum().backward()
    torch.testing.assert_close(Xs.grad, (Ad != 0).to(f64) @ Ys.detach().T)
