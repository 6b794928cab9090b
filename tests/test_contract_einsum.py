"""contract / contract_expression / explain against torch.einsum and numpy.einsum."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import difflinalg as dl
from difflinalg import _einsum
from difflinalg.contract import contract, contract_expression, explain

f64 = torch.float64


def _nc(shape):
    """A non-contiguous tensor of ``shape`` (every other column of a wider one)."""
    full = torch.randn(*shape[:-1], 2 * shape[-1], dtype=f64)
    return full[..., ::2]


def _t(shape):
    """A transposed view of ``shape`` (last two dims swapped in memory)."""
    return torch.randn(*shape[:-2], shape[-1], shape[-2], dtype=f64).mT


def _expanded(shape):
    """A stride-0 expanded view along the first dim."""
    return torch.randn(1, *shape[1:], dtype=f64).expand(*shape)


# (equation, shapes) or (equation, makers): a maker is a shape or a callable returning a tensor.
# Names of the groups are in the comments; the index is the test id.
CORPUS = [
    # GEMM-like
    ("ij,jk->ik", [(3, 4), (4, 5)]),
    ("ij,kj->ik", [(3, 4), (5, 4)]),
    ("ji,jk->ik", [(4, 3), (4, 5)]),
    ("ji,kj->ik", [(4, 3), (5, 4)]),
    ("ij,jk", [(3, 4), (4, 5)]),
    ("ij,jk->ki", [(3, 4), (4, 5)]),
    ("i,i->", [(7,), (7,)]),
    ("i,i", [(7,), (7,)]),
    ("ij,j->i", [(3, 4), (4,)]),
    ("j,ij->i", [(4,), (3, 4)]),
    ("ij,i->j", [(3, 4), (3,)]),
    ("ijk,kl->ijl", [(2, 3, 4), (4, 5)]),
    ("ijk,jkl->il", [(2, 3, 4), (3, 4, 5)]),
    ("abcijk,ijkd->abcd", [(2, 3, 2, 3, 2, 2), (3, 2, 2, 4)]),
    ("aibjck,ijkd->abcd", [(2, 3, 3, 2, 2, 2), (3, 2, 2, 4)]),
    ("abcd,dcbe->ae", [(2, 3, 4, 2), (2, 4, 3, 5)]),
    ("ijk,lk->ijl", [(2, 3, 4), (5, 4)]),
    ("Ab,bC->AC", [(3, 4), (4, 2)]),
    ("ij,jk->ik", [_t((3, 4)), _t((4, 5))]),
    ("ij,jk->ik", [_nc((3, 4)), _nc((4, 5))]),
    ("ij,jk->ik", [_expanded((3, 4)), (4, 5)]),
    # batched
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    ("bij,bkj->bik", [(2, 3, 4), (2, 5, 4)]),
    ("ibj,bjk->bik", [(3, 2, 4), (2, 4, 5)]),
    ("bij,jk->bik", [(2, 3, 4), (4, 5)]),
    ("bhqd,bhkd->bhqk", [(2, 3, 4, 5), (2, 3, 6, 5)]),
    ("bhqk,bhkd->bhqd", [(2, 3, 4, 6), (2, 3, 6, 5)]),
    ("bqhd,bkhd->bhqk", [(2, 4, 3, 5), (2, 6, 3, 5)]),
    (" b i j , b j k -> b i k ", [(2, 3, 4), (2, 4, 5)]),
    ("bn,anm,bm->ba", [(2, 3), (4, 3, 5), (2, 5)]),
    ("bi,bi->b", [(3, 4), (3, 4)]),
    ("bij,bij->b", [(2, 3, 4), (2, 3, 4)]),
    ("bij,jbk->bik", [(2, 3, 4), (4, 2, 5)]),
    ("ikj,jki->i", [(3, 4, 2), (2, 4, 3)]),
    ("ijk,jik->k", [(2, 3, 4), (3, 2, 4)]),
    ("bij,bjk->bik", [_t((2, 3, 4)), _nc((2, 4, 5))]),
    # Hadamard
    ("ij,ij->ij", [(3, 4), (3, 4)]),
    ("ij,ji->ij", [(3, 4), (4, 3)]),
    ("i,i->i", [(5,), (5,)]),
    ("ijk,ijk->ijk", [(2, 3, 4), (2, 3, 4)]),
    ("ij,ij", [(3, 4), (3, 4)]),
    ("ijk,jk->ijk", [(2, 3, 4), (3, 4)]),
    ("aB,aB->B", [(3, 4), (3, 4)]),
    # outer
    ("i,j->ij", [(3,), (4,)]),
    ("i,j", [(3,), (4,)]),
    ("ij,k->ijk", [(2, 3), (4,)]),
    ("i,j,k->ijk", [(2,), (3,), (4,)]),
    ("ab,cd->abcd", [(2, 3), (4, 5)]),
    ("ab,cd->cbda", [(2, 3), (4, 5)]),
    ("i,->i", [(3,), ()]),
    (",->", [(), ()]),
    # traces and diagonals
    ("ii", [(4, 4)]),
    ("ii->i", [(4, 4)]),
    ("ii->", [(4, 4)]),
    ("iij->j", [(3, 3, 2)]),
    ("iji->j", [(3, 2, 3)]),
    ("bii->b", [(2, 3, 3)]),
    ("bii->bi", [(2, 3, 3)]),
    ("ijji->", [(2, 3, 3, 2)]),
    ("iij,jk->ik", [(3, 3, 2), (2, 4)]),
    ("ij,ii->j", [(3, 4), (3, 3)]),
    ("iii->i", [(3, 3, 3)]),
    # reductions and transposes
    ("ij->", [(3, 4)]),
    ("ij->i", [(3, 4)]),
    ("ij->j", [(3, 4)]),
    ("ij->ji", [(3, 4)]),
    ("ijk->kji", [(2, 3, 4)]),
    ("ijk->j", [(2, 3, 4)]),
    ("i->i", [(3,)]),
    ("ij", [(3, 4)]),
    ("ba", [(3, 4)]),
    ("ij,jk->k", [(3, 4), (4, 5)]),
    ("ijk,k->", [(2, 3, 4), (4,)]),
    # ellipsis
    ("...ij,...jk->...ik", [(2, 3, 4), (2, 4, 5)]),
    ("...ij,...jk", [(2, 3, 4), (4, 5)]),
    ("i...,i...->...", [(3, 2, 5), (3, 1, 5)]),
    ("...,...->...", [(3,), (2, 1)]),
    ("...i,...i->...", [(2, 3, 4), (3, 4)]),
    ("b...i,b...i->b...", [(2, 3, 4, 5), (2, 1, 4, 5)]),
    ("...ii->...i", [(2, 3, 3)]),
    ("ij...,jk...->ik...", [(2, 3, 4), (3, 5, 4)]),
    ("...->...", [(2, 3)]),
    ("...ij->...ji", [(2, 3, 4)]),
    ("i...->...", [(3, 2, 4)]),
    ("ij...->", [(3, 3, 2)]),
    ("...ij,...jk->...ik", [(5, 1, 2, 3), (4, 3, 6)]),
    # broadcasting size-1 dims of a named index
    ("ij,ij->ij", [(1, 3), (2, 3)]),
    ("ij,jk->ik", [(2, 1), (3, 4)]),
    ("bij,bjk->bik", [(1, 3, 4), (2, 4, 5)]),
    # chains of three and more
    ("ij,jk,kl->il", [(3, 40), (40, 40), (40, 2)]),
    ("ij,jk,kl,lm->im", [(30, 3), (3, 30), (30, 3), (3, 30)]),
    ("ab,bc,cd,de,ef->af", [(2, 3), (3, 4), (4, 5), (5, 6), (6, 2)]),
    ("i,ij,j->", [(5,), (5, 6), (6,)]),
    ("ij,jk,ki->", [(3, 4), (4, 5), (5, 3)]),
    ("ijk,jl,km->ilm", [(2, 3, 4), (3, 5), (4, 6)]),
    ("abc,bd,ce,a->de", [(2, 3, 4), (3, 5), (4, 6), (2,)]),
    ("ea,fb,abcd,gc,hd->efgh", [(3, 2), (3, 2), (2, 2, 2, 2), (3, 2), (3, 2)]),
    ("bdik,acaj,ikab,ajac,ikbd->", [(2, 3, 2, 2), (2, 3, 2, 2), (2, 2, 2, 2), (2, 2, 2, 3),
                                      (2, 2, 2, 3)]),
    # empty dims
    ("ij,jk->ik", [(0, 3), (3, 4)]),
    ("ij,jk->ik", [(2, 0), (0, 4)]),
    ("bij,bjk->bik", [(0, 3, 4), (0, 4, 5)]),
    ("ij->", [(0, 3)]),
]


# torch sums "..." dims missing from the output; numpy refuses such equations
NUMPY_REFUSES = {"ij...->"}


def _make(makers):
    return [m if isinstance(m, torch.Tensor) else torch.randn(m, dtype=f64) for m in makers]


def test_corpus_has_at_least_80_equations():
    assert len(CORPUS) >= 80
    assert len({eq for eq, _ in CORPUS}) >= 80


@pytest.mark.parametrize("idx", range(len(CORPUS)))
def test_matches_torch_and_numpy_einsum(idx):
    eq, makers = CORPUS[idx]
    ops = _make(makers)
    ours = contract(eq, *ops)
    ref = torch.einsum(eq, *ops)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    if eq in NUMPY_REFUSES:
        return
    np_ref = np.einsum(eq.replace(" ", ""), *[x.numpy() for x in ops])
    np.testing.assert_allclose(ours.numpy(), np_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("idx", range(len(CORPUS)))
def test_gradients_match_torch_einsum(idx):
    eq, makers = CORPUS[idx]
    base = _make(makers)
    grads = []
    for fn in (contract, torch.einsum):
        # the same strides as the corpus's operands: a fresh leaf viewed the same way
        leaves = [x.detach().clone().requires_grad_() for x in base]
        out = fn(eq, *leaves)
        g = torch.randn(out.shape, dtype=f64, generator=torch.Generator().manual_seed(idx))
        grads.append(torch.autograd.grad((out * g).sum(), leaves, allow_unused=True))
    for ours, ref in zip(*grads):
        ref = torch.zeros(()) if ref is None else ref
        ours = torch.zeros(()) if ours is None else ours
        torch.testing.assert_close(ours, ref.expand_as(ours) if ref.dim() == 0 else ref,
                                   rtol=1e-12, atol=1e-12)


def test_gradients_on_strided_views_of_the_caller():
    """Non-contiguous operands with a graph behind them (views of a leaf)."""
    base = torch.randn(6, 8, dtype=f64, requires_grad=True)
    y = torch.randn(4, 5, dtype=f64, requires_grad=True)
    for fn in (contract, torch.einsum):
        x = base[::2, ::2]            # (3, 4), strides (16, 2)
        (fn("ij,jk->ik", x, y) ** 2).sum().backward()
    gb, gy = base.grad.clone(), y.grad.clone()
    base.grad = y.grad = None
    (torch.einsum("ij,jk->ik", base[::2, ::2], y) ** 2).sum().backward()
    torch.testing.assert_close(gb, 2 * base.grad)
    torch.testing.assert_close(gy, 2 * y.grad)


@pytest.mark.parametrize("eq, shapes", [
    ("ij,jk->ik", [(3, 4), (4, 5)]),
    ("aibj,ijd->abd", [(2, 3, 2, 2), (3, 2, 3)]),
    ("bij,bjk,bkl->bil", [(2, 3, 2), (2, 2, 3), (2, 3, 2)]),
    ("ii,ij->j", [(3, 3), (3, 2)]),
    ("i,j->ij", [(3,), (2,)]),
])
def test_gradcheck_and_gradgradcheck(eq, shapes):
    ops = [torch.randn(*s, dtype=f64, requires_grad=True) for s in shapes]
    assert gradcheck(lambda *x: contract(eq, *x), ops)
    assert gradgradcheck(lambda *x: contract(eq, *x), ops)


@pytest.mark.parametrize("eq, shapes", [
    ("aibj,ijd->abd", [(2, 3, 2, 2), (3, 2, 3)]),
    ("bij,bjk,bkl->bil", [(2, 3, 2), (2, 2, 3), (2, 3, 2)]),
    ("i,j->ij", [(3,), (2,)]),
])
def test_forward_mode_matches_torch_einsum(eq, shapes):
    import torch.autograd.forward_ad as fwAD
    ops = [torch.randn(*s, dtype=f64) for s in shapes]
    tangents = [torch.randn(*s, dtype=f64) for s in shapes]
    outs = []
    for fn in (contract, torch.einsum):
        with fwAD.dual_level():
            duals = [fwAD.make_dual(x, t) for x, t in zip(ops, tangents)]
            outs.append(fwAD.unpack_dual(fn(eq, *duals)).tangent)
    torch.testing.assert_close(outs[0], outs[1])


def test_torch_func_transforms():
    x, y = torch.randn(5, 3, 4, dtype=f64), torch.randn(4, 6, dtype=f64)
    torch.testing.assert_close(torch.func.vmap(lambda a: contract("ij,jk->ik", a, y))(x), x @ y)
    g = torch.func.grad(lambda a: contract("ij,jk->ik", a, y).sum())(x[0])
    torch.testing.assert_close(g, torch.ones(3, 6, dtype=f64) @ y.T)
    jac = torch.func.jacrev(lambda a: contract("ij,jk->ik", a, y))(x[0])
    torch.testing.assert_close(jac, torch.func.jacrev(lambda a: a @ y)(x[0]))
    _, t = torch.func.jvp(lambda a: contract("ij,jk->ik", a, y), (x[0],), (x[1],))
    torch.testing.assert_close(t, x[1] @ y)


def test_float32_against_float64():
    x, f = torch.randn(4, 6, 5, 8, dtype=f64), torch.randn(6, 8, 7, dtype=f64)
    ref = torch.einsum("aibj,ijd->abd", x, f)
    ours = contract("aibj,ijd->abd", x.float(), f.float())
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-5)


def test_list_and_sublist_forms():
    x, y = torch.randn(3, 4, dtype=f64), torch.randn(4, 5, dtype=f64)
    torch.testing.assert_close(contract("ij,jk->ik", [x, y]), x @ y)
    torch.testing.assert_close(contract(x, [0, 1], y, [1, 2], [0, 2]), x @ y)
    torch.testing.assert_close(contract(x, [0, 1], y, [1, 2]), x @ y)
    z = torch.randn(2, 3, 4, dtype=f64)
    torch.testing.assert_close(contract(z, [..., 0, 1], y, [1, 2], [..., 0, 2]), z @ y)


@pytest.mark.parametrize("optimize", ["auto", "greedy", "optimal", [(0, 1), (0, 1)]])
def test_optimize_options_agree(optimize):
    ops = [torch.randn(s, dtype=f64) for s in [(3, 40), (40, 40), (40, 2)]]
    torch.testing.assert_close(contract("ij,jk,kl->il", *ops, optimize=optimize),
                               ops[0] @ ops[1] @ ops[2])


def test_opt_einsum_path_option():
    pytest.importorskip("opt_einsum")
    ops = [torch.randn(s, dtype=f64) for s in [(3, 40), (40, 40), (40, 2)]]
    torch.testing.assert_close(contract("ij,jk,kl->il", *ops, optimize="opt_einsum"),
                               ops[0] @ ops[1] @ ops[2])


def test_optimal_path_picks_the_cheap_association():
    # (A B) C costs 1000*1000*1000 + 1000*1000*10; A (B C) costs 1000*1000*10 * 2
    expr = contract_expression("ij,jk,kl->il", (1000, 1000), (1000, 1000), (1000, 10))
    assert expr.path == [(1, 2), (0, 1)]
    assert contract_expression("ij,jk,kl->il", (1000, 1000), (1000, 1000), (1000, 10),
                               optimize="greedy").path == [(1, 2), (0, 1)]


def test_contract_expression_reuses_the_path():
    expr = contract_expression("bij,bjk->bik", (2, 3, 4), (2, 4, 5))
    x, y = torch.randn(2, 3, 4, dtype=f64), torch.randn(2, 4, 5, dtype=f64)
    torch.testing.assert_close(expr(x, y), x @ y)
    torch.testing.assert_close(expr(x.mT.contiguous().mT, y), x @ y)  # other strides
    with pytest.raises(ValueError, match=r"^contract_expression\('bij,bjk->bik'\): expected"):
        expr(x, torch.randn(2, 4, 6, dtype=f64))
    assert "path" in repr(expr)


# ----------------------------------------------------------------------------- copies


def _copies_during(fn):
    """Names of the copying kernels that ran inside ``fn`` (aten::copy_, clone, ...)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names = [e.name for e in prof.events()]
    return [n for n in names if n == "aten::copy_"]  # clone, contiguous, ... end here


def test_inner_index_case_makes_no_copy():
    """'abcijk,ijkd->abcd': trailing indices of x against leading ones of f, one GEMM on
    views: no copy in the plan, and none executed (the profiler sees no copy kernel)."""
    x = torch.randn(4, 3, 5, 2, 3, 4)
    f = torch.randn(2, 3, 4, 6)
    plan = explain("abcijk,ijkd->abcd", x, f)
    assert plan.copy_bytes == 0 and plan.gemms == 1
    assert plan.steps[0]["views"] == [True, True]
    contract("abcijk,ijkd->abcd", x, f)  # plan cached
    assert _copies_during(lambda: contract("abcijk,ijkd->abcd", x, f)) == []
    # the GEMM inputs are views of the operands' storage
    r = _einsum.get_plan(_einsum.parse("abcijk,ijkd->abcd", (6, 4)), [x, f], "auto").steps[0]
    ops = (x, f)
    for k, view, right in r.calls:  # exactly what run_pair hands to mm
        m = _einsum._gemm_operand(ops[k], k, view, right, r)
        assert m.data_ptr() == ops[k].data_ptr() and m.untyped_storage().data_ptr() == \
            ops[k].untyped_storage().data_ptr()
    torch.testing.assert_close(contract("abcijk,ijkd->abcd", x, f),
                               torch.einsum("abcijk,ijkd->abcd", x, f))


def test_strided_case_makes_exactly_one_copy():
    x = torch.randn(4, 3, 5, 2, 3, 4)   # a i b j c k
    f = torch.randn(3, 2, 4, 6)         # i j k d
    plan = explain("aibjck,ijkd->abcd", x, f)
    assert plan.copy_bytes == x.numel() * x.element_size()
    assert plan.steps[0]["views"] == [False, True]
    contract("aibjck,ijkd->abcd", x, f)
    assert len(_copies_during(lambda: contract("aibjck,ijkd->abcd", x, f))) == 1


def test_transposed_operands_are_read_in_place():
    a, b = torch.randn(50, 40).mT, torch.randn(60, 50).mT   # column-major views
    assert explain("ij,jk->ik", a, b).copy_bytes == 0
    contract("ij,jk->ik", a, b)
    assert _copies_during(lambda: contract("ij,jk->ik", a, b)) == []
    torch.testing.assert_close(contract("ij,jk->ik", a, b), a @ b)


def test_backward_saves_the_callers_operands_not_the_copy():
    x = torch.randn(4, 3, 5, 2, 3, 4, requires_grad=True)
    f = torch.randn(3, 2, 4, 6, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        contract("aibjck,ijkd->abcd", x, f)
    ptrs = {t.data_ptr() for t in saved}
    assert ptrs == {x.data_ptr(), f.data_ptr()}
    assert sum(t.numel() for t in saved) == x.numel() + f.numel()


def test_explain_prints_the_plan():
    text = str(explain("ij,jk,kl->il", torch.randn(3, 40), torch.randn(40, 40),
                       torch.randn(40, 2)))
    assert text.startswith("contract('ij,jk,kl->il'): 2 step(s), 2 GEMM(s)")
    assert "view, no copy" in text
    text = str(explain("iij,jk->ik", torch.randn(3, 3, 2), torch.randn(2, 4)))
    assert "diagonal" in text


def test_plan_is_cached():
    x, y = torch.randn(3, 4), torch.randn(4, 5)
    contract("ij,jk->ik", x, y)
    n = len(_einsum._PLAN_CACHE)
    contract("ij,jk->ik", torch.randn(3, 4), torch.randn(4, 5))
    assert len(_einsum._PLAN_CACHE) == n
    contract("ij,jk->ik", x.mT.contiguous().mT, y)   # new strides, new plan
    assert len(_einsum._PLAN_CACHE) == n + 1


def test_caller_tensors_untouched():
    x, y = torch.randn(3, 4), torch.randn(4, 5)
    x0, y0 = x.clone(), y.clone()
    out = contract("ij,jk->ik", x, y)
    out.add_(1.0)
    assert torch.equal(x, x0) and torch.equal(y, y0)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("eq, shapes, match", [
    ("ij,jk->ik", [(3, 4), (5, 6)], r"index 'j' has size 4 in operand 0 \(shape \(3, 4\)\) "
                                    r"but size 5 in operand 1 \(shape \(5, 6\)\)"),
    ("ij,jk->ik", [(3, 4)], r"2 operand term\(s\) but 1 operand\(s\)"),
    ("ijk,jk->ik", [(3, 4), (4, 5)], r"term 'ijk' has 3 index\(es\) but its operand has 2"),
    ("ij,jk->iz", [(3, 4), (4, 5)], r"output index 'z' does not appear"),
    ("ij,jk->ii", [(3, 4), (4, 5)], r"output index 'i' appears more than once"),
    ("i1,jk->ik", [(3, 4), (4, 5)], r"expected letters"),
    ("ij,jk->ik->i", [(3, 4), (4, 5)], r"at most one '->'"),
    ("i..j,jk", [(3, 4), (4, 5)], r"'\.' only as part of '\.\.\.'"),
    ("ii->i", [(3, 4)], r"repeated in operand 0 \(shape \(3, 4\)\)"),
])
def test_errors_quote_the_equation_and_point_at_the_index(eq, shapes, match):
    ops = [torch.randn(*s) for s in shapes]
    with pytest.raises(ValueError, match=r"^contract: ") as info:
        contract(eq, *ops)
    msg = str(info.value)
    import re
    assert re.search(match, msg), msg
    assert eq.replace(" ", "") in msg or eq in msg
    assert "^" in msg or "operand term" in msg or "->" in match


def test_errors_name_shapes_and_dtypes():
    with pytest.raises(ValueError, match=r"shapes: operand 0: \(3, 4\), operand 1: \(5, 6\)"):
        contract("ij,jk->ik", torch.randn(3, 4), torch.randn(5, 6))
    with pytest.raises(TypeError, match=r"^contract: expected every operand on one dtype"):
        contract("ij,jk->ik", torch.randn(3, 4), torch.randn(4, 5, dtype=f64))
    with pytest.raises(TypeError, match=r"^contract: expected operand 1 to be a torch.Tensor"):
        contract("ij,jk->ik", torch.randn(3, 4), np.ones((4, 5)))
    with pytest.raises(ValueError, match=r"^contract: expected optimize to be"):
        contract("ij,jk->ik", torch.randn(3, 4), torch.randn(4, 5), optimize="fast")
    with pytest.raises(ValueError, match=r"^contract: expected the path"):
        contract("ij,jk->ik", torch.randn(3, 4), torch.randn(4, 5), optimize=[(0, 0)])
    with pytest.raises(ValueError, match=r"^contract: expected at least one operand"):
        contract("ij")


def test_exported_at_top_level():
    assert dl.contract is contract and dl.explain is explain
    assert dl.contract_expression is contract_expression
