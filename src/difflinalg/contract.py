r"""Tensor contraction mapped onto GEMMs, and lazy reductions of matrix products.

**Contraction.** :func:`contract` has :func:`torch.einsum`'s semantics. Each pairwise step
of its path is one ``mm``/``bmm`` on strided views of the two operands whenever their
strides allow it, and at most one copy of an operand otherwise; the backward of each step
is two more planned contractions that read the operands as they came (never a permuted copy
kept alive from the forward). Plans are cached per equation, shapes, strides, dtype and
device; :func:`contract_expression` fixes the path for given shapes, :func:`explain` prints
the plan (GEMMs, copies in bytes, multiply-adds). The planner lives in
:mod:`difflinalg._einsum`; the derivation is in ``docs/derivations/contract.md``.

**Lazy reductions.** ``torch.trace(A @ B)`` forms the ``m x m`` product (``2 m n m`` flops)
to read ``m`` numbers of it; the same numbers are sums of elementwise products of the
operands:

.. math::
    \operatorname{tr}(AB) = \sum_{ij} A_{ij} B_{ji}, \qquad
    \operatorname{diag}(AB)_i = \sum_j A_{ij} B_{ji}, \qquad
    \langle A, B \rangle_F = \sum_{ij} A_{ij} B_{ij},

``O(mn)`` work and memory; from ``m = 512`` on the CPU the diagonal of the product comes
from its ``16 x 16`` diagonal blocks, one ``bmm`` on strided views of ``A`` and ``B``
(n = 4096: 15 ms, 51x ``torch.trace(A @ B)``). :func:`trace_chain` extends this to
``tr(A_1 A_2 ... A_k)``: it splits the cyclic chain into two products, each ordered by the
classic matrix-chain dynamic programme, and joins them with an ``O(mn)`` inner product,
choosing the rotation and split with the fewest flops. All ops take batch dims
``(*, m, n)``, broadcast them, and are differentiable (autograd through elementwise
products, ``bmm`` and ``matmul``: the backward of the reductions is ``O(mn)`` too).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from . import _einsum as es
from ._checks import check_min_dim, check_real_floating, check_same_device_dtype, check_tensor
from ._errors import DTypeError, ShapeError, describe

__all__ = ["contract", "contract_expression", "explain", "ContractExpression", "ContractPlan",
           "trace_product", "diag_product", "frobenius_inner", "trace_chain", "chain_plan"]


def _check_pair(op: str, A: torch.Tensor, B: torch.Tensor, transpose: bool) -> None:
    for name, x in (("A", A), ("B", B)):
        check_tensor(op, name, x)
        check_real_floating(op, name, x)
        check_min_dim(op, name, x, 2, "(*, m, n)")
    check_same_device_dtype(op, "A", A, "B", B)
    want = (A.shape[-1], A.shape[-2]) if transpose else tuple(A.shape[-2:])
    if tuple(B.shape[-2:]) != want:
        layout = "(*, n, m) for A of shape (*, m, n)" if transpose else "the same (m, n) as A"
        raise ShapeError(f"{op}: expected B of shape {layout}, but got {describe('A', A)} and "
                         f"{describe('B', B)}")
    try:
        torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
    except RuntimeError:
        raise ShapeError(f"{op}: expected broadcastable batch dims, but got {describe('A', A)} "
                         f"and {describe('B', B)}") from None


# Diagonal blocks of the product, t x t each, by one bmm on strided views (below).
_DIAG_BLOCK = 16      # fastest of 8..128 on 2 cores (MKL takes a slow path below 12)
_DIAG_MIN_ROWS = 512  # below, the elementwise form is as fast (per-call costs dominate)


def _diag_of_product(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """``diag(A @ B)`` (*, m) without forming the product.

    Small, batched-with-broadcasting or off-CPU inputs: ``sum_j A_ij B_ji`` elementwise
    (``O(mn)`` flops, but the read of ``B^T`` is strided: at n = 4096 it costs 96 ms, cache
    misses, not flops). Otherwise the ``i``-th ``t x t`` diagonal block of ``A @ B`` is
    ``A[it:(i+1)t, :] @ B[:, it:(i+1)t]``; all of them are one ``bmm`` over two strided views
    (``A`` as ``(m/t, t, n)``, ``B`` as ``(m/t, n, t)``), which BLAS reads in place and whose
    packing absorbs the transposed access: ``2 t m n`` flops (``t = 16``: 15 ms at n = 4096,
    51x ``torch.trace(A @ B)``), a ``(m/t, t, t)`` temporary, and the same GEMM kernel, so
    the same rounding, as the product route. Rows past the last whole block use the
    elementwise form. Autograd differentiates the bmm (as fast as a hand-written rule here).
    """
    m = A.shape[-2]
    t = _DIAG_BLOCK
    if (m < _DIAG_MIN_ROWS or not A.is_cpu or A.shape[:-2] != B.shape[:-2]
            or torch._C._are_functorch_transforms_active()):
        return torch.linalg.vecdot(A, B.mT, dim=-1)
    nb = m // t
    k = nb * t
    a = A[..., :k, :].unflatten(-2, (nb, t))                     # (*, nb, t, n) view
    b = B[..., :, :k].unflatten(-1, (nb, t)).transpose(-3, -2)   # (*, nb, n, t) view
    if A.dim() == 2:
        blocks = torch.bmm(a, b)
    else:  # one copy-free bmm per matrix (matmul on 4-D views would copy B)
        batch = A.shape[:-2]
        a = a.reshape(-1, *a.shape[-3:])
        b = b.reshape(-1, *b.shape[-3:])
        blocks = torch.stack([torch.bmm(x, y) for x, y in zip(a.unbind(0), b.unbind(0))])
        blocks = blocks.reshape(*batch, nb, t, t)
    d = blocks.diagonal(dim1=-2, dim2=-1).flatten(-2)
    if k < m:
        d = torch.cat([d, torch.linalg.vecdot(A[..., k:, :], B[..., :, k:].mT, dim=-1)], -1)
    return d


def trace_product(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    r"""``trace(A @ B)`` for ``A`` ``(*, m, n)``, ``B`` ``(*, n, m)`` without forming ``A @ B``.

    ``O(mn)`` work (with ``m >= 512`` on the CPU: ``2 \cdot 16\, m n`` flops in one GEMM on
    views of ``A`` and ``B``, see :func:`diag_product`) instead of ``2 m^2 n``. Returns ``(*)``.

    Example:
        >>> A, B = torch.randn(3, 5, 4), torch.randn(3, 4, 5)
        >>> torch.allclose(trace_product(A, B), (A @ B).diagonal(dim1=-2, dim2=-1).sum(-1))
        True
    """
    _check_pair("trace_product", A, B, transpose=True)
    return _diag_of_product(A, B).sum(-1)


def diag_product(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    r"""``diagonal(A @ B)`` for ``A`` ``(*, m, n)``, ``B`` ``(*, n, m)``: ``(*, m)``.

    Row ``i`` of ``A`` against column ``i`` of ``B``. From ``m = 512`` on the CPU, the
    ``16 x 16`` diagonal blocks of the product come from one ``bmm`` on strided views (no
    copy): the GEMM's packing absorbs the transposed read of ``B`` that makes the
    elementwise form slow (n = 4096, float32, 2 threads: 15 ms against 96 ms elementwise and
    0.80 s for ``torch.diagonal(A @ B)``).
    """
    _check_pair("diag_product", A, B, transpose=True)
    return _diag_of_product(A, B)


def frobenius_inner(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    r"""``<A, B>_F = trace(A^T B) = sum(A * B)`` over the last two dims: ``(*)``."""
    _check_pair("frobenius_inner", A, B, transpose=False)
    return torch.linalg.vecdot(A, B, dim=-1).sum(-1)


def _chain_order(dims: list[int]) -> tuple[int, list[list[int]]]:
    """Matrix-chain DP over ``dims`` (matrix i is dims[i] x dims[i+1]): (flops, split table)."""
    k = len(dims) - 1
    cost = [[0] * k for _ in range(k)]
    split = [[0] * k for _ in range(k)]
    for length in range(2, k + 1):
        for i in range(k - length + 1):
            j = i + length - 1
            cost[i][j] = math.inf
            for s in range(i, j):
                c = cost[i][s] + cost[s + 1][j] + dims[i] * dims[s + 1] * dims[j + 1]
                if c < cost[i][j]:
                    cost[i][j], split[i][j] = c, s
    return (cost[0][k - 1] if k else 0), split


def chain_plan(shapes: list[tuple[int, int]]) -> tuple[int, int, int]:
    """``(rotation, split, flops)`` minimising the multiply-adds of ``tr(A_1 ... A_k)``.

    The chain is rotated by ``rotation`` (the trace is cyclic), split after ``split``
    matrices into ``L = A_r ... A_{r+s-1}`` and ``R`` (the rest), each multiplied in its
    optimal order, and ``tr(L R)`` taken by :func:`trace_product`.
    """
    k = len(shapes)
    best = (0, 1, math.inf)
    for r in range(k):
        rot = shapes[r:] + shapes[:r]
        dims = [rot[0][0]] + [s[1] for s in rot]
        for s in range(1, k):
            left, _ = _chain_order(dims[:s + 1])
            right, _ = _chain_order(dims[s:])
            total = left + right + dims[0] * dims[s]
            if total < best[2]:
                best = (r, s, total)
    return best


def _multiply(mats: list[torch.Tensor]) -> torch.Tensor:
    dims = [mats[0].shape[-2]] + [m.shape[-1] for m in mats]
    _, split = _chain_order(dims)

    def go(i: int, j: int) -> torch.Tensor:
        if i == j:
            return mats[i]
        s = split[i][j]
        return go(i, s) @ go(s + 1, j)

    return go(0, len(mats) - 1)


def trace_chain(*mats: torch.Tensor) -> torch.Tensor:
    r"""``trace(A_1 @ A_2 @ ... @ A_k)`` in the cheapest association (see :func:`chain_plan`).

    For example ``tr(u v^T M)`` with ``u, v`` ``n x 1`` costs ``O(n^2)`` (``v^T M u``), never
    the ``n x n`` products. Batch dims broadcast. Returns ``(*)``.

    Example:
        >>> u, v, M = torch.randn(100, 1), torch.randn(1, 100), torch.randn(100, 100)
        >>> torch.allclose(trace_chain(u, v, M), torch.trace(u @ v @ M), rtol=1e-4)
        True
    """
    op = "trace_chain"
    if len(mats) == 0:
        raise ShapeError(f"{op}: expected at least one matrix, but got none")
    for i, x in enumerate(mats):
        check_tensor(op, f"A{i + 1}", x)
        check_real_floating(op, f"A{i + 1}", x)
        check_min_dim(op, f"A{i + 1}", x, 2, "(*, m, n)")
        if i:
            check_same_device_dtype(op, "A1", mats[0], f"A{i + 1}", x)
    k = len(mats)
    for i in range(k):
        a, b = mats[i], mats[(i + 1) % k]
        if a.shape[-1] != b.shape[-2]:
            raise ShapeError(f"{op}: expected A{i + 1} columns to match A{(i + 1) % k + 1} rows "
                             f"(the chain closes into a square product), but got "
                             f"{describe(f'A{i + 1}', a)} and {describe(f'A{(i + 1) % k + 1}', b)}")
    if k == 1:
        return mats[0].diagonal(dim1=-2, dim2=-1).sum(-1)
    r, s, _ = chain_plan([tuple(m.shape[-2:]) for m in mats])
    rot = list(mats[r:] + mats[:r])
    return trace_product(_multiply(rot[:s]), _multiply(rot[s:]))


# ----------------------------------------------------------------------------- contract


def _sublists_to_equation(args: Sequence[Any]) -> tuple[str, list[torch.Tensor]]:
    """torch.einsum's sublist form ``(op1, [0, 1], op2, [1, 2], [0, 2])`` as an equation."""
    def term(sub: Any) -> str:
        out = []
        for x in sub:
            if x is Ellipsis:
                out.append("...")
            elif isinstance(x, int) and 0 <= x < len(es.LETTERS):
                out.append(es.LETTERS[x])
            else:
                raise ShapeError(f"contract: expected sublist entries to be integers in "
                                 f"[0, 52) or Ellipsis, but got {x!r}")
        return "".join(out)

    tail = args[-1] if len(args) % 2 else None
    body = args[:-1] if tail is not None else args
    ops, subs = list(body[0::2]), list(body[1::2])
    if tail is not None and isinstance(tail, torch.Tensor):
        raise ShapeError("contract: expected a sublist after every operand in the sublist "
                         "form")
    eq = ",".join(term(sub) for sub in subs)
    if tail is not None:
        eq += "->" + term(tail)
    return eq, ops


def _operands(equation: Any, operands: tuple) -> tuple[str, list[torch.Tensor]]:
    if isinstance(equation, torch.Tensor):
        equation, operands = _sublists_to_equation((equation,) + operands)
        operands = tuple(operands)
    elif not isinstance(equation, str):
        raise ShapeError(f"contract: expected an equation string first, but got "
                         f"{type(equation).__name__}")
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    ops = list(operands)
    if not ops:
        raise ShapeError(f"contract: expected at least one operand for {equation!r}, but "
                         f"got none")
    for k, x in enumerate(ops):
        if not isinstance(x, torch.Tensor):
            raise DTypeError(f"contract: expected operand {k} to be a torch.Tensor, but got "
                             f"{type(x).__name__}")
        if k and (x.dtype != ops[0].dtype or x.device != ops[0].device):
            raise DTypeError(f"contract: expected every operand on one dtype and device, "
                             f"but got {describe('operand 0', ops[0])} and "
                             f"{describe(f'operand {k}', x)} in {equation!r}")
    return equation, ops


def _with_shapes(err: ShapeError, ops: Sequence[torch.Tensor]) -> ShapeError:
    shapes = ", ".join(f"operand {k}: {tuple(x.shape)}" for k, x in enumerate(ops))
    return ShapeError(f"{err}\n    (shapes: {shapes})")


def _parse(equation: str, ops: Sequence[torch.Tensor]) -> es.Parsed:
    key = (equation, tuple(x.dim() for x in ops))
    parsed = _PARSED.get(key)
    if parsed is None:
        try:
            parsed = es.parse(equation, key[1])
        except ShapeError as err:
            raise _with_shapes(err, ops) from None
        parsed = es._remember(_PARSED, key, parsed)
    return parsed


def _plan(parsed: es.Parsed, ops: Sequence[torch.Tensor], optimize: Any) -> es.Plan:
    try:
        return es.get_plan(parsed, ops, optimize)
    except ShapeError as err:
        raise _with_shapes(err, ops) from None


_PARSED: dict[tuple, es.Parsed] = {}


def contract(equation: str, *operands: torch.Tensor, optimize: Any = "auto") -> torch.Tensor:
    r"""Einstein summation like :func:`torch.einsum`, mapped onto GEMMs with the fewest copies.

    Same equations as ``torch.einsum``: letters ``a-zA-Z``, ``...`` for broadcast dims,
    implicit output (``'ij,jk'``: the indices seen once, sorted, after the ``...`` dims),
    repeated indices in one operand (a diagonal), size-1 dims broadcasting against a larger
    size of the same index, operands given one by one or as a list, and the sublist form
    ``contract(x, [0, 1], y, [1, 2], [0, 2])``.

    How it runs (see ``docs/derivations/contract.md``): indices found in a single operand
    and not in the output are summed first; the operands are then contracted pairwise along
    a path chosen by ``optimize``; each pair is one ``mm``/``bmm`` on strided views of its
    operands when their strides allow it (trailing-against-leading indices, e.g. a
    convolution written as ``'abcijk,ijkd->abcd'``, needs no copy at all), and at most one
    copy of an operand otherwise (a pair with nothing to contract is a broadcast product).
    The plan depends on the equation and the operands' shapes, strides, dtype and device
    only, and is cached: later calls with the same key skip planning. :func:`explain` prints
    it.

    Autograd: each pair saves its two operands as they came (the caller's tensors or views
    of them, never the permuted copy a GEMM needed), and its backward is two more planned
    contractions (double backward works the same way).

    Args:
        equation: the einsum equation (or the first operand, in the sublist form).
        operands: tensors of one dtype and device.
        optimize: the pairwise order: ``"auto"`` (the fewest multiply-adds by exhaustive
            search up to 6 operands, greedy beyond), ``"greedy"``, ``"optimal"``,
            ``"opt_einsum"`` (that package's ``auto`` path; needs ``opt_einsum``), or an
            explicit path in opt_einsum's convention: pairs ``(i, j)`` of positions in the
            list of live operands, each pair removed and its result appended.

    Returns:
        The contraction, like ``torch.einsum(equation, *operands)`` (possibly a strided
        view of the last GEMM's result, as torch's can be).

    Raises:
        ShapeError (ValueError): malformed equation, wrong number of operands, a term whose
            length does not match its operand, mismatched index sizes; the message quotes
            the equation, points at the index and names each operand's shape.
        DTypeError (TypeError): operands of different dtypes or devices.

    Example:
        >>> x, f = torch.randn(4, 5, 6, 3, 3), torch.randn(3, 3, 8)
        >>> y = contract("abcij,ijd->abcd", x, f)      # one GEMM on views, no copy
        >>> torch.allclose(y, torch.einsum("abcij,ijd->abcd", x, f), atol=1e-5)
        True
    """
    # Fast path: a call seen before (same equation, option, and per operand shape, strides,
    # dtype and device) was validated and planned then; only the GEMMs remain.
    try:
        key = (equation, optimize, *[(t.shape, t.stride(), t.dtype, t.device) for t in operands])
        plan = _SEEN.get(key)
    except (AttributeError, TypeError):  # not tensors (list, sublist form), unhashable path
        key = plan = None
    if plan is not None:
        return es.execute(plan, operands)
    equation, ops = _operands(equation, operands)
    plan = _plan(_parse(equation, ops), ops, optimize)
    if key is not None:
        es._remember(_SEEN, key, plan)
    return es.execute(plan, ops)


_SEEN: dict[tuple, es.Plan] = {}


class ContractExpression:
    """A contraction planned for fixed shapes (see :func:`contract_expression`)."""

    def __init__(self, equation: str, shapes: Sequence[Sequence[int]], optimize: Any) -> None:
        self.equation = equation
        self.shapes = tuple(tuple(int(n) for n in s) for s in shapes)
        try:
            self._parsed = es.parse(equation, tuple(len(s) for s in self.shapes))
            plan = es.build_plan(self._parsed, self.shapes,
                                 [es._contiguous_strides(s) for s in self.shapes],
                                 torch.float32, optimize)
        except ShapeError as err:
            got = ", ".join(f"operand {k}: {s}" for k, s in enumerate(self.shapes))
            raise ShapeError(f"{err}\n    (shapes: {got})") from None
        self.path = list(plan.path)  # fixed here; each call maps pairs for its strides
        self._plans: dict[tuple, es.Plan] = {}

    def __call__(self, *operands: torch.Tensor) -> torch.Tensor:
        try:
            key = tuple((t.shape, t.stride(), t.dtype, t.device) for t in operands)
            plan = self._plans.get(key)
        except AttributeError:
            key = plan = None
        if plan is not None:
            return es.execute(plan, operands)
        eq, ops = _operands(self.equation, operands)
        if tuple(tuple(x.shape) for x in ops) != self.shapes:
            got = ", ".join(str(tuple(x.shape)) for x in ops)
            raise ShapeError(f"contract_expression({self.equation!r}): expected operands of "
                             f"shapes {', '.join(map(str, self.shapes))}, but got {got}")
        plan = _plan(self._parsed, ops, self.path)
        if key is not None:
            es._remember(self._plans, key, plan)
        return es.execute(plan, ops)

    def __repr__(self) -> str:
        shapes = ", ".join(map(str, self.shapes))
        return f"ContractExpression({self.equation!r}, {shapes}, path={self.path})"


def contract_expression(equation: str, *shapes: Sequence[int],
                        optimize: Any = "auto") -> ContractExpression:
    """A reusable callable for ``contract(equation, *operands)`` with operands of ``shapes``.

    Like ``opt_einsum.contract_expression``: the pairwise path is chosen once, here; each
    call then only looks up the GEMM mapping for its operands' strides (cached too).

    Example:
        >>> expr = contract_expression("ij,jk,kl->il", (8, 100), (100, 100), (100, 2))
        >>> expr.path                      # (B C) first: 8*100*2 + 100*100*2 multiply-adds
        [(1, 2), (0, 1)]
    """
    return ContractExpression(equation, shapes, optimize)


@dataclass(frozen=True)
class ContractPlan:
    """What :func:`contract` does for given operands (``str()`` prints it)."""

    equation: str
    path: list[tuple[int, int]]
    steps: list[dict[str, Any]]
    flops: int
    copy_bytes: int
    gemms: int

    def __str__(self) -> str:
        lines = [f"contract({self.equation!r}): {len(self.steps)} step(s), "
                 f"{self.gemms} GEMM(s), {_fmt_flops(self.flops)} (multiply-adds), "
                 f"{_fmt_bytes(self.copy_bytes)} copied"]
        for k, st in enumerate(self.steps, 1):
            lines.append(f"  {k}. {st['equation']:<28} {st['what']}")
            for note in st["notes"]:
                lines.append(f"       {note}")
        return "\n".join(lines)


def _fmt_flops(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n}"


def _fmt_bytes(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def _term(labels: Sequence[int]) -> str:
    return "".join(es.LETTERS[x] if x < es._ELL else "." for x in labels)


def explain(equation: str, *operands: torch.Tensor, optimize: Any = "auto") -> ContractPlan:
    """The plan :func:`contract` runs for these operands: reductions, pairwise steps, the
    GEMM of each (``batch x (rows x inner) @ (inner x cols)``), which operands are read as
    views and which are copied (bytes), and the multiply-adds.

    Example:
        >>> print(explain("aibj,ijd->abd", torch.randn(4, 3, 5, 2), torch.randn(3, 2, 7)))
        ... # doctest: +ELLIPSIS
        contract('aibj,ijd->abd'): 1 step(s), 1 GEMM(s), ... copied
        ...
    """
    equation, ops = _operands(equation, operands)
    parsed = _parse(equation, ops)
    plan = _plan(parsed, ops, optimize)
    steps: list[dict[str, Any]] = []
    for k, (ops_k, f) in enumerate(zip(plan.prep, plan.prep_flops)):
        notes = []
        for op, arg in ops_k:
            if op == "diag":
                notes.append(f"diagonal of dims {arg} (a view)")
            elif op == "squeeze":
                notes.append(f"size-1 dims {arg} broadcast (a view)")
            else:
                notes.append(f"sum over dims {arg}: {_fmt_flops(f)} adds, new tensor")
        if notes:
            steps.append({"equation": f"operand {k}: {parsed.terms[k]}",
                          "what": "reduced on its own", "notes": notes, "flops": f,
                          "copy_bytes": 0, "gemm": None})
    for r in plan.steps:
        eq = f"{_term(r.la)},{_term(r.lb)}->{_term(r.out_labels)}"
        if r.kind == "mul":
            what = f"broadcast product, {_fmt_flops(r.flops)} multiplies"
            notes = []
        else:
            nb, rows, inner, cols = r.gemm
            stack = f"{nb} x " if nb != 1 else ""
            what = (f"{r.kind} {stack}({rows} x {inner}) @ "
                    f"({inner} x {cols}), {_fmt_flops(r.flops)}")
            notes = [f"{_term(lab)}: " + ("view, no copy" if view is not None
                                          else f"copied once, {_fmt_bytes(nbytes)}")
                     for lab, view, nbytes in zip((r.la, r.lb), r.views, r.copies)]
        steps.append({"equation": eq, "what": what, "notes": notes, "flops": r.flops,
                      "copy_bytes": sum(r.copies), "gemm": r.gemm if r.kind != "mul" else None,
                      "views": [v is not None for v in r.views] if r.kind != "mul" else None})
    if plan.final_perm is not None:
        steps.append({"equation": f"->{_term(parsed.output)}", "what": "permuted view",
                      "notes": [], "flops": 0, "copy_bytes": 0, "gemm": None})
    return ContractPlan(parsed.equation, list(plan.path), steps,
                        sum(s["flops"] for s in steps), sum(s["copy_bytes"] for s in steps),
                        sum(1 for r in plan.steps if r.kind != "mul"))
