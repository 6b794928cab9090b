"""Products with triangular (trapezoidal) factors that skip the zero blocks (private).

torch has no trmm/syrk, so a product with a triangular factor costs a full GEMM. Splitting
the triangular factor into ``nb``-wide blocks and multiplying only the non-zero part of each
block costs about half (``1/2 + 1/(2p)`` for ``p`` blocks) while every piece stays a large
GEMM. Used by the Householder backward when the number of reflectors is large.

Conventions: "lower trapezoidal" ``L`` (*, r, c) has ``L[i, j] = 0`` for ``i < j``; "upper
trapezoidal" ``U`` (*, r, c) has ``U[i, j] = 0`` for ``j < i``.
"""

from __future__ import annotations

import torch


def _starts(n: int, nb: int) -> list[int]:
    return list(range(0, n, nb))


def mm_lower_right(x: torch.Tensor, low: torch.Tensor, nb: int) -> torch.Tensor:
    """``x @ low`` for lower-trapezoidal ``low`` (*, n, k): column block J reads rows j0:."""
    n, k = low.shape[-2], low.shape[-1]
    cols = []
    for j0 in _starts(k, nb):
        j1 = min(j0 + nb, k)
        cols.append(x[..., :, j0:n] @ low[..., j0:n, j0:j1])
    return torch.cat(cols, dim=-1)


def mm_upper_left(up: torch.Tensor, y: torch.Tensor, nb: int) -> torch.Tensor:
    """``up @ y`` for upper-trapezoidal ``up`` (*, k, m): row block I reads columns i0:."""
    k = up.shape[-2]
    rows = []
    for i0 in _starts(k, nb):
        i1 = min(i0 + nb, k)
        rows.append(up[..., i0:i1, i0:] @ y[..., i0:, :])
    return torch.cat(rows, dim=-2)


def mm_lower_left(low: torch.Tensor, w: torch.Tensor, nb: int) -> torch.Tensor:
    """``low @ w`` for lower-trapezoidal ``low`` (*, m, k): row block I reads columns :i1."""
    m, k = low.shape[-2], low.shape[-1]
    rows = []
    for i0 in _starts(min(m, k), nb):
        i1 = min(i0 + nb, k)
        rows.append(low[..., i0:i1, :i1] @ w[..., :i1, :])
    if m > k:
        rows.append(low[..., k:, :] @ w)
    return torch.cat(rows, dim=-2)


def gram_strict_upper(v: torch.Tensor, nb: int) -> torch.Tensor:
    """``striu(v^T v)`` for lower-trapezoidal ``v`` (*, m, k).

    Column block J of the upper part is ``v[j0:, :j1]^T v[j0:, J]`` (rows above j0 of
    ``v[:, J]`` are zero): about ``m k^2`` flops instead of ``2 m k^2``.
    """
    k = v.shape[-1]
    if plain_tensor(v):  # write the blocks into one tensor: no padded copies, no cat
        out = v.new_zeros(*v.shape[:-2], k, k)
        for j0 in _starts(k, nb):
            j1 = min(j0 + nb, k)
            out[..., :j1, j0:j1] = v[..., j0:, :j1].mT @ v[..., j0:, j0:j1]
        return out.triu_(1)
    cols = []
    for j0 in _starts(k, nb):
        j1 = min(j0 + nb, k)
        blk = v[..., j0:, :j1].mT @ v[..., j0:, j0:j1]
        if j1 < k:
            blk = torch.nn.functional.pad(blk, (0, 0, 0, k - j1))
        cols.append(blk)
    return torch.cat(cols, dim=-1).triu(1)


def plain_tensor(t: torch.Tensor) -> bool:
    """True unless ``t`` is wrapped by a torch.func transform (vmap, grad, jvp).

    The ``*_into`` helpers below write blocks into a preallocated tensor, which a functorch
    wrapper would not see as batched; callers use the allocating versions for those.
    """
    try:
        if torch._C._functorch.peek_interpreter_stack() is not None:
            return False  # inside a transform (e.g. the vmap of a batched gradient)
        fc = torch._C._functorch
        return not (fc.is_functorch_wrapped_tensor(t) or fc.is_legacy_batchedtensor(t))
    except AttributeError:  # pragma: no cover - older torch
        return True


def addmm_lower_left_(out: torch.Tensor, low: torch.Tensor, w: torch.Tensor, nb: int) -> None:
    """``out += low @ w`` in place for lower-trapezoidal ``low`` (*, m, k), block by block."""
    m, k = low.shape[-2], low.shape[-1]
    for i0 in _starts(min(m, k), nb):
        i1 = min(i0 + nb, k)
        out.narrow(-2, i0, i1 - i0).add_(low[..., i0:i1, :i1] @ w[..., :i1, :])
    if m > k:
        step = max(nb, 1) * 4
        for r0 in range(k, m, step):
            r1 = min(r0 + step, m)
            out.narrow(-2, r0, r1 - r0).add_(low[..., r0:r1, :] @ w)


def addmm_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """out += a @ b in place, also when out is a slice of a larger tensor (no temporary)."""
    if out.dim() == 2:
        out.addmm_(a, b)
        return
    if out.dim() == a.dim() == b.dim() == 3 and out.shape[0] == a.shape[0] == b.shape[0]:
        out.baddbmm_(a, b)
        return
    batch = out.shape[:-2]
    flat = out.view(-1, *out.shape[-2:])
    flat.baddbmm_(a.expand(batch + a.shape[-2:]).reshape(-1, *a.shape[-2:]),
                  b.expand(batch + b.shape[-2:]).reshape(-1, *b.shape[-2:]))


def mm_lower_right_into(x: torch.Tensor, low: torch.Tensor, nb: int,
                        out: torch.Tensor | None = None) -> torch.Tensor:
    """``out (+)= x @ low`` for lower-trapezoidal ``low`` (*, n, k); nb = 0: plain product.

    The in-place twin of :func:`mm_lower_right`: column block J reads rows j0: of ``low``
    and is accumulated into its slice of ``out`` (no temporaries, no cat; plain tensors only).
    """
    if not nb:
        if out is None:
            return x @ low
        addmm_into(out, x, low)
        return out
    n, k = low.shape[-2], low.shape[-1]
    if out is None:
        batch = torch.broadcast_shapes(x.shape[:-2], low.shape[:-2])
        out = x.new_zeros(*batch, x.shape[-2], k)
    for j0 in _starts(k, nb):
        j1 = min(j0 + nb, k)
        addmm_into(out[..., :, j0:j1], x[..., :, j0:n], low[..., j0:n, j0:j1])
    return out
