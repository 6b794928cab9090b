r"""Parser, path planner and GEMM mapper behind :func:`difflinalg.contract` (private).

An equation is parsed once into integer labels (letters; ``...`` dims get labels of their
own, right-aligned as broadcasting aligns them). Each operand is first reduced on its own:
repeated labels become a diagonal (a view), size-1 dims of a label that is larger elsewhere
are squeezed (the label then drops out of that operand, which is what broadcasting means),
and labels found in no other operand and not in the output are summed. The operands are then
contracted pairwise along a path (greedy, exhaustive dynamic programme, or one given by the
caller). Every pair maps onto one matrix product:

    labels of A and B kept later   -> batch      C[b, l, r] = sum_k A[b, l, k] B[b, k, r]
    labels of A and B not kept     -> contracted
    labels of A only / of B only   -> left / right

Each group of labels is merged into one dimension of a strided view. Inside a group any
order will do, so the order is read off the operand's strides (largest first): a group whose
dims are nested in memory merges with no copy, in whichever order they appear. Batch and
contracted groups must have the same order in both operands: the order of the operand that
would cost the larger copy wins. A GEMM operand also needs a unit stride in one of its two
matrix dims (BLAS); otherwise, or when a group does not merge, that operand is copied once
into ``(batch, rows, cols)`` order, and the plan says so. Pairs with nothing to contract are
broadcast products (Hadamard, outer).

Plans depend only on the equation and on the operands' shapes, strides, dtype and device;
they are computed once per such key and cached. Planning follows the strides through the
steps (views keep the operand's strides, sums and pairs produce contiguous tensors), so what
:func:`explain` prints is what the real call does.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ._autograd import apply_fastest, classic_twin
from ._errors import ShapeError

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_LABEL = {c: i for i, c in enumerate(LETTERS)}
_ELL = 100  # labels >= _ELL are the dims covered by "..."


def label_name(label: int) -> str:
    return LETTERS[label] if label < _ELL else f"...[{label - _ELL}]"


# ----------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Parsed:
    """An equation bound to operand ranks: labels per operand dim, output labels, text."""

    equation: str
    inputs: tuple[tuple[int, ...], ...]
    output: tuple[int, ...]
    terms: tuple[str, ...]        # the operand terms as written (for messages)
    starts: tuple[int, ...]       # where each term starts in the equation


def _error(equation: str, what: str, pos: Sequence[int] = ()) -> ShapeError:
    msg = f"contract: {what}\n    {equation}"
    if pos:
        marks = [" "] * (max(pos) + 1)
        for p in pos:
            marks[p] = "^"
        msg += "\n    " + "".join(marks)
    return ShapeError(msg)


def _split_term(equation: str, term: str, start: int) -> tuple[list[str], bool, int]:
    """Letters of a term around its ellipsis: (letters with '.' for the ellipsis slot,
    has ellipsis, position of the ellipsis)."""
    if term.count("...") > 1:
        raise _error(equation, "expected at most one '...' per term, but got "
                     f"{term!r}", [start + term.index("...")])
    has_ell = "..." in term
    body = term.replace("...", ".")
    for i, c in enumerate(term):
        if c != "." and c not in _LABEL:
            raise _error(equation, f"expected letters a-z, A-Z and '...' in a term, but got "
                         f"{c!r}", [start + i])
    if body.count(".") != int(has_ell):
        raise _error(equation, "expected '.' only as part of '...'",
                     [start + term.index(".")])
    return list(body), has_ell, body.find(".")


def parse(equation: str, ndims: tuple[int, ...]) -> Parsed:
    """Labels of ``equation`` for operands of ranks ``ndims`` (errors quote and point)."""
    raw = equation
    eq = equation.replace(" ", "")
    if eq.count("->") > 1:
        raise _error(raw, "expected at most one '->'")
    lhs, arrow, rhs = eq.partition("->")
    if not lhs:
        raise _error(raw, "expected at least one operand term before '->'")
    terms = lhs.split(",")
    if len(terms) != len(ndims):
        raise _error(raw, f"the equation has {len(terms)} operand term(s) but "
                     f"{len(ndims)} operand(s) were given")
    starts, pos = [], 0
    for t in terms:
        starts.append(pos)
        pos += len(t) + 1
    split = [_split_term(eq, t, s) for t, s in zip(terms, starts)]
    n_ell = 0
    for (body, has_ell, _), t, s, nd in zip(split, terms, starts, ndims):
        letters = len(body) - int(has_ell)
        if (not has_ell and letters != nd) or letters > nd:
            raise _error(eq, f"term {t!r} has {letters} index(es)"
                         f"{' and ...' if has_ell else ''} but its operand has {nd} dim(s)",
                         [s])
        if has_ell:
            n_ell = max(n_ell, nd - letters)
    inputs = []
    for (body, _, _), nd in zip(split, ndims):
        labels: list[int] = []
        for c in body:
            if c == ".":
                k = nd - (len(body) - 1)
                labels.extend(_ELL + n_ell - k + j for j in range(k))
            else:
                labels.append(_LABEL[c])
        inputs.append(tuple(labels))
    ell_out = tuple(range(_ELL, _ELL + n_ell))
    if arrow:
        out_body, out_ell, _ = _split_term(eq, rhs, len(lhs) + 2)
        seen: set[str] = set()
        output: list[int] = []
        all_letters = set(lhs)
        for i, c in enumerate(out_body):
            if c == ".":
                output.extend(ell_out)
                continue
            p = len(lhs) + 2 + i
            if c in seen:
                raise _error(eq, f"output index {c!r} appears more than once", [p])
            if c not in all_letters:
                raise _error(eq, f"output index {c!r} does not appear in any operand term",
                             [p])
            seen.add(c)
            output.append(_LABEL[c])
    else:
        counts: dict[str, int] = {}
        for c in lhs:
            if c in _LABEL:
                counts[c] = counts.get(c, 0) + 1
        output = list(ell_out) + [_LABEL[c] for c in sorted(counts) if counts[c] == 1]
    return Parsed(eq, tuple(inputs), tuple(output), tuple(terms), tuple(starts))


def label_sizes(parsed: Parsed, shapes: Sequence[Sequence[int]]) -> dict[int, int]:
    """Size of every label; a label of size 1 in some operands broadcasts (like einsum)."""
    sizes: dict[int, int] = {}
    where: dict[int, int] = {}
    for k, (labels, shape) in enumerate(zip(parsed.inputs, shapes)):
        own: dict[int, int] = {}
        for lab, size in zip(labels, shape):
            if lab in own and own[lab] != size:
                raise _error(parsed.equation, f"index {label_name(lab)!r} is repeated in "
                             f"operand {k} (shape {tuple(shape)}) with sizes {own[lab]} and "
                             f"{size}; a repeated index takes a diagonal and needs equal "
                             f"sizes", _positions(parsed, lab, [k]))
            own[lab] = size
            if lab not in sizes or sizes[lab] == 1:
                sizes[lab], where[lab] = size, k
            elif size not in (1, sizes[lab]):
                k0 = where[lab]
                raise _error(parsed.equation, f"index {label_name(lab)!r} has size "
                             f"{sizes[lab]} in operand {k0} (shape {tuple(shapes[k0])}) but "
                             f"size {size} in operand {k} (shape {tuple(shape)}); the sizes "
                             f"of an index must be equal (or 1, which broadcasts)",
                             _positions(parsed, lab, [k0, k]))
    for lab in parsed.output:
        sizes.setdefault(lab, 1)
    return sizes


def _positions(parsed: Parsed, lab: int, operands: list[int]) -> list[int]:
    if lab >= _ELL:
        return [parsed.starts[k] + parsed.terms[k].find("...") for k in operands
                if "..." in parsed.terms[k]]
    c = LETTERS[lab]
    return [parsed.starts[k] + i for k in operands for i, ch in enumerate(parsed.terms[k])
            if ch == c]


# ----------------------------------------------------------------------------- paths


def _size(labels: Sequence[int] | frozenset[int], sizes: dict[int, int]) -> int:
    return math.prod(sizes[lab] for lab in labels)


def _pair_labels(a: frozenset[int], b: frozenset[int], keep: frozenset[int]) -> frozenset[int]:
    return (a | b) & keep


def _flops(a: frozenset[int], b: frozenset[int], sizes: dict[int, int]) -> int:
    """Multiply-adds of contracting a with b: the product of every size involved."""
    return _size(a | b, sizes)


def _keep_after(sets: list[frozenset[int]], i: int, j: int,
                output: frozenset[int]) -> frozenset[int]:
    keep = set(output)
    for k, s in enumerate(sets):
        if k != i and k != j:
            keep |= s
    return frozenset(keep)


def greedy_path(sets: list[frozenset[int]], output: frozenset[int],
                sizes: dict[int, int]) -> list[tuple[int, int]]:
    """Pairwise order, opt_einsum convention (remove i < j, append the result).

    At each step the pair whose result is smallest relative to its inputs (result size
    minus input sizes; pairs that share an index before those that do not), ties by flops.
    """
    sets = list(sets)
    path = []
    while len(sets) > 1:
        best: tuple | None = None
        for i, j in itertools.combinations(range(len(sets)), 2):
            res = _pair_labels(sets[i], sets[j], _keep_after(sets, i, j, output))
            shares = bool(sets[i] & sets[j])
            score = (not shares,
                     _size(res, sizes) - _size(sets[i], sizes) - _size(sets[j], sizes),
                     _flops(sets[i], sets[j], sizes))
            if best is None or score < best[0]:
                best = (score, i, j, res)
        _, i, j, res = best
        path.append((i, j))
        sets = [s for k, s in enumerate(sets) if k not in (i, j)] + [res]
    return path


def optimal_path(sets: list[frozenset[int]], output: frozenset[int],
                 sizes: dict[int, int]) -> list[tuple[int, int]]:
    """Fewest total multiply-adds over all pairwise orders (dynamic programme over subsets,
    O(3^n): meant for up to ~10 operands)."""
    n = len(sets)
    full = (1 << n) - 1

    def labels_of(mask: int) -> frozenset[int]:
        inside, outside = set(), set(output)
        for k in range(n):
            (inside if mask >> k & 1 else outside).update(sets[k])
        return frozenset(inside & outside)

    lab = {1 << k: sets[k] for k in range(n)}
    cost: dict[int, tuple[int, int]] = {1 << k: (0, 0) for k in range(n)}
    for mask in range(1, full + 1):
        if mask in cost:
            continue
        lab[mask] = labels_of(mask)
        best = None
        sub = (mask - 1) & mask
        while sub:
            other = mask ^ sub
            if sub < other and sub in cost and other in cost:
                c = cost[sub][0] + cost[other][0] + _flops(lab[sub], lab[other], sizes)
                if best is None or c < best[0]:
                    best = (c, sub)
            sub = (sub - 1) & mask
        cost[mask] = best

    # unroll the tree into the remove-and-append convention
    path: list[tuple[int, int]] = []
    live: list[int] = [1 << k for k in range(n)]

    def build(mask: int) -> None:
        if mask & (mask - 1) == 0:
            return
        sub = cost[mask][1]
        build(sub)
        build(mask ^ sub)
        i, j = sorted((live.index(sub), live.index(mask ^ sub)))
        path.append((i, j))
        live[:] = [m for k, m in enumerate(live) if k not in (i, j)] + [mask]

    build(full)
    return path


def opt_einsum_path(sets: list[frozenset[int]], output: frozenset[int],
                    sizes: dict[int, int], strategy: str) -> list[tuple[int, int]]:
    try:
        import opt_einsum
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("contract: optimize='opt_einsum' needs the opt_einsum package "
                          "(pip install opt_einsum)") from None
    names = {lab: opt_einsum.get_symbol(k) for k, lab in enumerate(sorted(sizes))}
    inputs = ["".join(names[x] for x in sorted(s)) for s in sets]
    out = "".join(names[x] for x in sorted(output))
    shapes = [tuple(sizes[x] for x in sorted(s)) for s in sets]
    path, _ = opt_einsum.contract_path(f"{','.join(inputs)}->{out}", *shapes, shapes=True,
                                       optimize=strategy)
    flat: list[tuple[int, int]] = []
    for step in path:
        if len(step) == 2:
            flat.append(tuple(sorted(step)))
        elif len(step) > 2:  # pragma: no cover - opt_einsum paths here are pairwise
            raise ValueError("contract: expected a pairwise path from opt_einsum")
    return flat


# ----------------------------------------------------------------------------- pair recipes


def _group_order(labels: Sequence[int], group: Sequence[int], shape: Sequence[int],
                 stride: Sequence[int]) -> list[int]:
    """The labels of ``group`` ordered by the operand's strides, largest first (size-1
    dims, whose stride is meaningless, last)."""
    pos = {lab: d for d, lab in enumerate(labels)}
    return sorted(group, key=lambda lab: (shape[pos[lab]] == 1, -stride[pos[lab]]))


def _merged_stride(labels: Sequence[int], order: Sequence[int], shape: Sequence[int],
                   stride: Sequence[int]) -> int | None:
    """Stride of the group ``order`` merged into one dim; None if the dims do not nest."""
    pos = {lab: d for d, lab in enumerate(labels)}
    dims = [pos[lab] for lab in order if shape[pos[lab]] != 1]
    if not dims:
        return 1
    for outer, inner in zip(dims, dims[1:]):
        if stride[outer] != stride[inner] * shape[inner]:
            return None
    return stride[dims[-1]]


def _blas_ok(sizes3: Sequence[int], strides3: Sequence[int]) -> bool:
    """Whether the (rows, cols) matrices of a (batch, rows, cols) view go to BLAS as they
    are: one unit stride, the other at least the extent it leaps over."""
    r, c = sizes3[1], sizes3[2]
    sr, sc = strides3[1], strides3[2]
    if r <= 1 or c <= 1:
        return True
    return (sc == 1 and sr >= c) or (sr == 1 and sc >= r)


@dataclass(frozen=True)
class PairRecipe:
    """One pairwise step: C[out_labels] = sum A[la] B[lb].

    ``kind`` "mul": a broadcast product of A permuted and reshaped to ``shapes[0]`` and B to
    ``shapes[1]``. "mm"/"bmm": A as a (batch, rows, inner) and B as a (batch, cols, inner)
    matrix stack, each either a strided view of the operand (``views[i] = (size, stride)``)
    or one copy in that order (``views[i] = None``: permute by ``perms[i]``, then reshape);
    C = A3 @ B3^T, or C^T = B3 @ A3^T when ``swap`` (so that the result already has the
    label order the caller wants).
    """

    la: tuple[int, ...]
    lb: tuple[int, ...]
    out_labels: tuple[int, ...]
    out_shape: tuple[int, ...]
    kind: str
    perms: tuple[tuple[int, ...], tuple[int, ...]]
    shapes: tuple[tuple[int, ...], tuple[int, ...]]
    views: tuple[Any, Any] = (None, None)
    swap: bool = False
    # the two GEMM operands in the order they are multiplied: (operand index, (size,
    # stride) of the view as passed to mm/bmm, or None for a copy, transposed or not)
    calls: tuple[Any, Any] = ((0, None, False), (1, None, True))
    reshape_out: bool = True
    copies: tuple[int, int] = (0, 0)
    gemm: tuple[int, int, int, int] = (1, 1, 1, 1)   # (batch, rows, inner, cols) as run
    flops: int = 0                                   # multiply-adds


def plan_pair(la: tuple[int, ...], a_shape: Sequence[int], a_stride: Sequence[int],
              lb: tuple[int, ...], b_shape: Sequence[int], b_stride: Sequence[int],
              keep: frozenset[int], itemsize: int,
              prefer: tuple[int, ...] | None = None) -> PairRecipe:
    """Map ``C[keep] = sum A[la] B[lb]`` onto one GEMM (or a broadcast product).

    ``prefer``: a label order for C that the caller would like (the final output's); the
    GEMM is oriented to produce it when the group orders allow.
    """
    sa, sb = set(la), set(lb)
    size = {lab: a_shape[d] for d, lab in enumerate(la)}
    size.update({lab: b_shape[d] for d, lab in enumerate(lb)})
    batch = [x for x in la if x in sb and x in keep]
    contr = [x for x in la if x in sb and x not in keep]
    left = [x for x in la if x not in sb]
    right = [x for x in lb if x not in sa]
    if not contr:
        # broadcast product: A as (batch, left, 1...), B as (batch, 1..., right)
        bo = _group_order(la, batch, a_shape, a_stride)
        lo = _group_order(la, left, a_shape, a_stride)
        ro = _group_order(lb, right, b_shape, b_stride)
        out_labels = tuple(bo + lo + ro)
        out_shape = tuple(size[x] for x in out_labels)
        return PairRecipe(
            la, lb, out_labels, out_shape, "mul",
            perms=(tuple(la.index(x) for x in bo + lo), tuple(lb.index(x) for x in bo + ro)),
            shapes=(tuple(size[x] for x in bo + lo) + (1,) * len(ro),
                    tuple(size[x] for x in bo) + (1,) * len(lo) + tuple(size[x] for x in ro)),
            flops=math.prod(out_shape))

    def option(src: tuple) -> tuple[int, dict[str, Any]]:
        """Shared-group orders read from one operand's strides: (bytes copied, spec)."""
        bo = _group_order(src[0], batch, src[1], src[2])
        ko = _group_order(src[0], contr, src[1], src[2])
        spec: dict[str, Any] = {"bo": bo, "ko": ko}
        total = 0
        for name, labels, shape, stride, own in (("a", la, a_shape, a_stride, left),
                                                 ("b", lb, b_shape, b_stride, right)):
            oo = _group_order(labels, own, shape, stride)
            strides = [_merged_stride(labels, g, shape, stride) for g in (bo, oo, ko)]
            sizes3 = (_size(bo, size), _size(oo, size), _size(ko, size))
            view = None
            if (None not in strides and 0 not in sizes3
                    and _blas_ok(sizes3, strides)):
                view = (sizes3, tuple(strides))
            spec[name] = (oo, view, sizes3)
            if view is None:
                total += math.prod(sizes3) * itemsize
        return total, spec

    opt_a = option((la, a_shape, a_stride))
    opt_b = option((lb, b_shape, b_stride))
    _, spec = opt_b if opt_b[0] < opt_a[0] else opt_a
    bo, ko = spec["bo"], spec["ko"]
    (lo, view_a, s3a), (ro, view_b, s3b) = spec["a"], spec["b"]
    nb, nl, nk = s3a
    nr = s3b[1]
    out_labels = tuple(bo + lo + ro)
    if min(nl, nr) <= 16 and max(nl, nr) >= 8 * min(nl, nr):
        # a skinny product: MKL is up to 2.6x faster with the few rows than with the few
        # columns (measured: 64 x (256 x 256) @ (256 x 8) 2.85 ms, the transposed product
        # 1.1 ms; (1000 x 1000) @ (1000 x 10) 0.84 ms against 0.53), so the small group
        # becomes the rows, even if the result is then a permuted view
        swap = nr < nl
    elif prefer is not None:
        swap = out_labels != prefer and tuple(bo + ro + lo) == prefer
    else:
        # an intermediate: the larger operand's own labels first, in their memory order, so
        # that later pairs find them nested as they were (opt_einsum's GEMMs do the same)
        swap = nr > nl
    if swap:
        out_labels = tuple(bo + ro + lo)
    calls = []
    for pos, k in enumerate((1, 0) if swap else (0, 1)):
        view = (view_a, view_b)[k]
        right = pos == 1  # the right factor is read as (batch, inner, own)
        if view is not None:
            (n0, n1, n2), (t0, t1, t2) = view
            vsize, vstride = ((n0, n2, n1), (t0, t2, t1)) if right else view
            view = (vsize[1:], vstride[1:]) if nb == 1 else (vsize, vstride)
        calls.append((k, view, right))
    out_shape = tuple(size[x] for x in out_labels)
    return PairRecipe(
        la, lb, out_labels, out_shape, "mm" if nb == 1 else "bmm",
        perms=(tuple(la.index(x) for x in bo + lo + ko), tuple(lb.index(x) for x in bo + ro + ko)),
        shapes=(s3a, s3b), views=(view_a, view_b), swap=swap, calls=tuple(calls),
        reshape_out=out_shape != ((nr, nl) if swap else (nl, nr)) if nb == 1 else True,
        copies=(0 if view_a else nb * nl * nk * itemsize, 0 if view_b else nb * nr * nk * itemsize),
        gemm=(nb, nr, nk, nl) if swap else (nb, nl, nk, nr), flops=nb * nl * nk * nr)


def _gemm_operand(x: torch.Tensor, k: int, view: Any, right: bool, r: PairRecipe) -> torch.Tensor:
    if view is not None:
        return x.as_strided(view[0], view[1], x.storage_offset())
    shape3 = r.shapes[k]
    t = x.permute(r.perms[k]).reshape(shape3).contiguous()   # the one copy
    if r.kind == "mm":
        t = t.view(shape3[1:])
    return t.mT if right else t


def run_pair(a: torch.Tensor, b: torch.Tensor, r: PairRecipe) -> torch.Tensor:
    """Execute a recipe on plain tensors (autograd goes through :class:`PairContract`)."""
    if r.kind == "mul":
        out = torch.mul(a.permute(r.perms[0]).reshape(r.shapes[0]),
                        b.permute(r.perms[1]).reshape(r.shapes[1]))
        return out if out.is_contiguous() else out.contiguous()  # the layout planned
    (k1, v1, t1), (k2, v2, t2) = r.calls
    x1 = _gemm_operand(b if k1 else a, k1, v1, t1, r)
    x2 = _gemm_operand(b if k2 else a, k2, v2, t2, r)
    c = torch.mm(x1, x2) if r.kind == "mm" else torch.bmm(x1, x2)
    return c.view(r.out_shape) if r.reshape_out else c


# ----------------------------------------------------------------------------- autograd


class PairContract(torch.autograd.Function):
    """One pairwise contraction. Saved for backward: the two operands as they came (views of
    the caller's tensors or earlier results, never the permuted copy a GEMM may need).

    Backward: with C = sum_{labels not kept} A B, each gradient is itself a contraction,
    dL/dA[la] = sum gC[lc] B[lb] and dL/dB[lb] = sum A[la] gC[lc], planned (and cached)
    like any other pair, so it also maps onto one GEMM with the fewest copies, and runs
    through this Function again under ``create_graph`` (double backward).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(a: torch.Tensor, b: torch.Tensor, r: PairRecipe) -> torch.Tensor:
        return run_pair(a, b, r)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        a, b, r = inputs
        ctx.recipe = r
        ctx.save_for_backward(a, b)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):
        a, b = ctx.saved_tensors
        r = ctx.recipe
        ga = gb = None
        # the smaller operand's gradient first: a copy of the larger operand that it may
        # need is freed before the larger gradient (the larger operand's size) is allocated
        small_first = a.numel() >= b.numel()
        if small_first and ctx.needs_input_grad[1]:
            gb = contract_pair(a, r.la, g, r.out_labels, r.lb)
        if ctx.needs_input_grad[0]:
            ga = contract_pair(g, r.out_labels, b, r.lb, r.la)
        if not small_first and ctx.needs_input_grad[1]:
            gb = contract_pair(a, r.la, g, r.out_labels, r.lb)
        return ga, gb, None


_PAIR_CACHE: dict[tuple, PairRecipe] = {}
_CACHE_SIZE = 4096


def _remember(cache: dict, key: tuple, value: Any) -> Any:
    if len(cache) >= _CACHE_SIZE:
        cache.clear()
    cache[key] = value
    return value


_PairContractClassic = classic_twin(PairContract)


def apply_pair(a: torch.Tensor, b: torch.Tensor, r: PairRecipe) -> torch.Tensor:
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
        return apply_fastest(PairContract, _PairContractClassic, a, b, r)
    return run_pair(a, b, r)


def contract_pair(x: torch.Tensor, lx: tuple[int, ...], y: torch.Tensor, ly: tuple[int, ...],
                  lout: tuple[int, ...]) -> torch.Tensor:
    """``sum x[lx] y[ly]`` with labels ``lout`` in that order (the backward's contractions)."""
    key = (lx, x.shape, x.stride(), ly, y.shape, y.stride(), lout, x.dtype)
    r = _PAIR_CACHE.get(key)
    if r is None:
        r = _remember(_PAIR_CACHE, key, plan_pair(lx, x.shape, x.stride(), ly, y.shape,
                                                  y.stride(), frozenset(lout),
                                                  x.element_size(), prefer=lout))
    c = apply_pair(x, y, r)
    if r.out_labels != lout:
        c = c.permute([r.out_labels.index(lab) for lab in lout])
    return c


# ----------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class Plan:
    """A cached contraction: per-operand reductions, pairwise steps, the final order."""

    parsed: Parsed
    sizes: dict[int, int]
    prep: tuple[tuple[tuple[str, Any], ...], ...]
    prep_labels: tuple[tuple[int, ...], ...]
    prep_flops: tuple[int, ...]
    path: tuple[tuple[int, int], ...]
    steps: tuple[PairRecipe, ...]
    final_perm: tuple[int, ...] | None
    final_labels: tuple[int, ...]


def build_plan(parsed: Parsed, shapes: Sequence[Sequence[int]],
               strides: Sequence[Sequence[int]], dtype: torch.dtype,
               optimize: Any) -> Plan:
    """Plan a contraction for operands of these shapes and strides (see module docstring)."""
    sizes = label_sizes(parsed, shapes)
    # (shape, strides) of each operand as the steps transform it: diagonals and squeezes
    # are views, a sum and every pair produce a new contiguous tensor
    layouts = [(list(sh), list(st)) for sh, st in zip(shapes, strides)]
    # 1. per operand: diagonals, broadcast squeezes
    prep: list[list[tuple[str, Any]]] = []
    labels: list[list[int]] = []
    for k, lab_in in enumerate(parsed.inputs):
        lab = list(lab_in)
        shape, stride = layouts[k]
        todo: list[tuple[str, Any]] = []
        while len(set(lab)) != len(lab):
            x = next(x for x in lab if lab.count(x) > 1)
            i = lab.index(x)
            j = lab.index(x, i + 1)
            todo.append(("diag", (i, j)))
            keep_d = [d for d in range(len(lab)) if d not in (i, j)]
            lab = [lab[d] for d in keep_d] + [x]
            shape = [shape[d] for d in keep_d] + [shape[i]]
            stride = [stride[d] for d in keep_d] + [stride[i] + stride[j]]
        sq = tuple(d for d, x in enumerate(lab) if shape[d] == 1 and sizes[x] != 1)
        if sq:
            todo.append(("squeeze", sq))
            keep_d = [d for d in range(len(lab)) if d not in sq]
            lab = [lab[d] for d in keep_d]
            shape = [shape[d] for d in keep_d]
            stride = [stride[d] for d in keep_d]
        prep.append(todo)
        labels.append(lab)
        layouts[k] = (shape, stride)
    # 2. sums over labels in no other operand and not in the output
    out = set(parsed.output)
    flops = []
    for k, lab in enumerate(labels):
        others = set().union(*(set(x) for m, x in enumerate(labels) if m != k))
        dims = tuple(d for d, x in enumerate(lab) if x not in out and x not in others)
        f = 0
        if dims:
            f = _size(lab, sizes)
            prep[k].append(("sum", dims))
            labels[k] = [x for d, x in enumerate(lab) if d not in dims]
            shape = [sizes[x] for x in labels[k]]
            layouts[k] = (shape, _contiguous_strides(shape))
        flops.append(f)
    # 3. the path
    sets = [frozenset(x) for x in labels]
    n = len(sets)
    if n == 1:
        path: list[tuple[int, int]] = []
    elif isinstance(optimize, (list, tuple)):
        path = _check_path(parsed, optimize, n)
    elif optimize == "greedy" or (optimize == "auto" and n > 6):
        path = greedy_path(sets, frozenset(out), sizes)
    elif optimize in ("auto", "optimal"):
        path = optimal_path(sets, frozenset(out), sizes)
    elif optimize == "opt_einsum":
        path = opt_einsum_path(sets, frozenset(out), sizes, "auto")
    else:
        raise ShapeError(f"contract: expected optimize to be 'auto', 'greedy', 'optimal', "
                         f"'opt_einsum' or a path (a list of pairs of positions), but got "
                         f"{optimize!r}")
    # 4. each pair: the recipe, and the layout of its (contiguous) result
    live = [(layout, tuple(lab)) for layout, lab in zip(layouts, labels)]
    steps = []
    itemsize = torch.empty((), dtype=dtype).element_size()
    for i, j in path:
        ((sa, ta), la), ((sb, tb), lb) = live[i], live[j]
        rest = [x for m, x in enumerate(live) if m not in (i, j)]
        keep = frozenset(out.union(*(set(x[1]) for x in rest)))
        prefer = parsed.output if not rest else None
        r = plan_pair(la, sa, ta, lb, sb, tb, keep, itemsize, prefer=prefer)
        steps.append(r)
        live = rest + [((list(r.out_shape), _contiguous_strides(r.out_shape)), r.out_labels)]
    final = live[0][1]
    perm = tuple(final.index(x) for x in parsed.output)
    return Plan(parsed, sizes, tuple(tuple(p) for p in prep), tuple(tuple(x) for x in labels),
                tuple(flops), tuple(path), tuple(steps),
                None if perm == tuple(range(len(perm))) else perm, final)


def _check_path(parsed: Parsed, path: Any, n: int) -> list[tuple[int, int]]:
    out = []
    live = n
    for step in path:
        if (not isinstance(step, (list, tuple)) or len(step) != 2
                or not all(isinstance(i, int) for i in step)
                or not 0 <= min(step) < max(step) < live):
            raise _error(parsed.equation, f"expected the path to be pairs (i, j) of distinct "
                         f"positions among the live operands (the pair is removed and its "
                         f"result appended), but got {list(path)!r}")
        out.append(tuple(sorted(step)))
        live -= 1
    if live != 1:
        raise _error(parsed.equation, f"expected a path of {n - 1} pair(s) for {n} operands, "
                     f"but got {len(out)}")
    return out


def _apply_prep(t: torch.Tensor, ops: Sequence[tuple[str, Any]]) -> torch.Tensor:
    for op, arg in ops:
        if op == "diag":
            t = t.diagonal(0, arg[0], arg[1])
        elif op == "squeeze":
            t = t.squeeze(arg)
        else:
            t = t.sum(arg)
    return t


def _contiguous_strides(shape: Sequence[int]) -> list[int]:
    out, acc = [], 1
    for size in reversed(shape):
        out.append(acc)
        acc *= max(size, 1)
    return out[::-1]


_PLAN_CACHE: dict[tuple, Plan] = {}


def get_plan(parsed: Parsed, operands: Sequence[torch.Tensor], optimize: Any) -> Plan:
    opt_key = tuple(map(tuple, optimize)) if isinstance(optimize, (list, tuple)) else optimize
    t0 = operands[0]
    key = (parsed.equation, tuple((t.shape, t.stride()) for t in operands), t0.dtype,
           t0.device.type, opt_key)
    plan = _PLAN_CACHE.get(key)
    if plan is None:
        plan = _remember(_PLAN_CACHE, key, build_plan(
            parsed, [t.shape for t in operands], [t.stride() for t in operands], t0.dtype,
            optimize))
    return plan


def execute(plan: Plan, operands: Sequence[torch.Tensor]) -> torch.Tensor:
    if len(plan.steps) == 1 and not plan.prep[0] and not plan.prep[1]:  # the common case
        y = apply_pair(operands[0], operands[1], plan.steps[0])
    else:
        live = [_apply_prep(t, ops) if ops else t for t, ops in zip(operands, plan.prep)]
        for (i, j), r in zip(plan.path, plan.steps):
            b = live.pop(j)
            a = live.pop(i)
            live.append(apply_pair(a, b, r))
        y = live[0]
        if not plan.steps and not plan.prep[0] and plan.final_perm is None:
            return y.view(y.shape)  # a new tensor object, like torch.einsum's result
    if plan.final_perm is not None:
        return y.permute(plan.final_perm)
    return y
