r"""The compact-WY engine behind every Householder op (private).

One ``torch.autograd.Function`` computes ``Y = Q X`` or ``Y = Q^T X`` for a product of
reflectors ``Q = H_1 H_2 ... H_k``, ``H_j = I - tau_j v_j v_j^T``, in the compact-WY form

.. math::
    Q = I - V T V^T,\qquad T = (I + D\,S)^{-1} D,\quad D = \mathrm{diag}(\tau),\quad
    S = \mathrm{striu}(V^T V),

(Schreiber & Van Loan 1989; the "T-CWY" inverse form of Joffrain, Low, Quintana-Orti,
van de Geijn & Van Zee 2006, written here so that ``tau_j = 0`` needs no special case:
``N = I + D S`` is unit upper triangular for every ``tau``). ``X = None`` stands for the
``m x n`` identity, the ``orgqr`` case, which is never materialised.

The public functions live in :mod:`difflinalg.orthogonal`; the derivation of the backward
and of the forward-mode rule is in ``docs/derivations/householder.md`` and summarised next
to the code.
"""

from __future__ import annotations

import math
import types
from typing import Any

import torch

from . import _triangular as tri
from ._autograd import apply_fastest, classic_twin, no_tf32

# Forward backend for the orgqr case on CPU: "auto" picks LAPACK's orgqr where it is the
# faster one (see _use_lapack_forward), "cwy" always uses the compact-WY product here.
FORWARD_BACKEND = "auto"


def _structured_block(k: int, unit_lower: bool) -> int:
    """Block width for the triangular-aware products of the backward; 0 = plain matmul.

    Worth it once k is large: the products with V, V^T and the triangular factors then
    cost about half (the square 1024 x 1024 backward goes from ~12 n^3 to ~7 n^3 flops).
    """
    if not unit_lower or k < 192:
        return 0
    return max(64, -(-k // 8))


def _build_v(v_in: torch.Tensor, k: int, unit_lower: bool) -> torch.Tensor:
    """The reflector matrix V (*, m, k) from the caller's tensor (never mutated)."""
    v = v_in[..., :k]
    if unit_lower:
        if torch.is_grad_enabled():
            return v.tril(-1) + torch.eye(v.shape[-2], k, dtype=v.dtype, device=v.device)
        v = v.tril(-1)  # a fresh tensor: set its diagonal in place (one pass, not two)
        v.diagonal(dim1=-2, dim2=-1).fill_(1.0)
    return v


def _exact_tau(v: torch.Tensor, eps: float, unit_lower: bool
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """tau = 2 / ||v||^2 with the norm clamped below by ``eps``; returns (tau, active).

    float32 norms are accumulated in float64 (O(mk) work): the orthogonality of a float32
    product near the identity is limited by how exactly tau * ||v||^2 = 2 holds, and
    ``1 + ||a||^2`` summed in float32 loses the small ||a||^2 (3-7x worse than LAPACK at
    parameter scale 1e-3 without this).
    """
    acc = torch.float64 if v.dtype == torch.float32 else v.dtype
    sq = v.square().sum(-2, dtype=acc)
    floor = eps * eps
    active = sq > floor
    tau = (2.0 / sq.clamp_min(floor)).to(v.dtype)
    return tau, active


_TWO64 = torch.full((), 2.0, dtype=torch.float64)  # a 0-d CPU tensor goes with any device


def _exact_tau_unit_lower(a: torch.Tensor) -> torch.Tensor:
    """tau = 2 / (1 + ||a_j||^2) from the strictly-lower part, without forming V.

    What must not happen in float32 is ``1 + ||a||^2``, which drops the low bits of a small
    ||a||^2 (3-7x LAPACK's orthogonality error at parameter scale 1e-3), so that step and
    the division run in float64. The squares are taken in place in the one m x k
    temporary (``vecdot`` would allocate a second).
    """
    if not tri.plain_tensor(a):  # under vmap: no batching rule for square_ or div.out
        sq = a.tril(-1).square().sum(-2)
        if a.dtype == torch.float32:
            return torch.div(_TWO64, sq.double() + 1.0).to(a.dtype)
        return torch.div(_TWO64, sq + 1.0)
    sq = a.tril(-1).square_().sum(-2)  # a float32 reduction: a few ulps of ||a||^2
    if a.dtype == torch.float32:  # the quotient is rounded once, into sq's storage
        return torch.div(_TWO64, sq.double().add_(1.0), out=sq)
    return torch.div(_TWO64, sq.add_(1.0))


def _s_matrix(v: torch.Tensor) -> torch.Tensor:
    """S = striu(V^T V) (*, k, k)."""
    return (v.mT @ v).triu(1)


def _n_matrix(s: torch.Tensor, tau: torch.Tensor, *, right: bool = False) -> torch.Tensor:
    """N = I + D S (right=False) or N' = I + S D (right=True), unit upper triangular.

    T = N^{-1} D = D N'^{-1}.
    """
    n = s * (tau.unsqueeze(-2) if right else tau.unsqueeze(-1))
    n.diagonal(dim1=-2, dim2=-1).add_(1.0)
    return n


def _solve_n(n: torch.Tensor, b: torch.Tensor, *, transpose: bool,
             overwrite: bool = False) -> torch.Tensor:
    """N^{-1} b (transpose=False) or N^{-T} b (transpose=True); ``overwrite`` reuses b.

    N^{-T} b is computed as (b^T N^{-1})^T, a right-sided solve with the stored upper
    triangle: on MKL that is about twice as fast as a left solve with the transposed view.
    """
    reuse = (overwrite and b.is_contiguous() and b.shape[:-2] == n.shape[:-2]
             and tri.plain_tensor(b) and tri.plain_tensor(n))
    if transpose:
        rhs = b.mT
        if reuse:
            torch.linalg.solve_triangular(n, rhs, upper=True, left=False, unitriangular=True,
                                          out=rhs)
            return b
        return torch.linalg.solve_triangular(n, rhs, upper=True, left=False,
                                             unitriangular=True).mT
    if reuse:
        return torch.linalg.solve_triangular(n, b, upper=True, unitriangular=True, out=b)
    return torch.linalg.solve_triangular(n, b, upper=True, unitriangular=True)


def _vt_x(v: torch.Tensor, x: torch.Tensor | None, n_cols: int) -> torch.Tensor:
    """V^T X; for X = identity (m x n) this is the slice V[:n]^T, no flops."""
    if x is None:
        return v[..., :n_cols, :].mT
    return v.mT @ x


def _t_apply(n: torch.Tensor, tau: torch.Tensor, b: torch.Tensor, *,
             transpose: bool) -> torch.Tensor:
    """T' b where T' = T (transpose=False) or T^T.

    T = N^{-1} D, so T b = N^{-1}(tau * b) and T^T b = tau * N^{-T} b.
    """
    if transpose:
        return tau.unsqueeze(-1) * _solve_n(n, b, transpose=True)
    return _solve_n(n, tau.unsqueeze(-1) * b, transpose=False)


def _block_t_apply(vb: torch.Tensor, tb: torch.Tensor, b: torch.Tensor, *,
                   transpose: bool) -> torch.Tensor:
    """T_b' b for the block of reflectors (vb, tb): builds N_b, then one triangular solve."""
    return _t_apply(_n_matrix(_s_matrix(vb), tb), tb, b, transpose=transpose)


def _identity_like(v: torch.Tensor, n_cols: int) -> torch.Tensor:
    """A fresh (*, m, n_cols) identity with v's batch shape, dtype and device (vmap-safe)."""
    y = torch.zeros_like(v[..., :1]).expand(*v.shape[:-1], n_cols).clone()
    y.diagonal(dim1=-2, dim2=-1).add_(1.0)
    return y


def _use_lapack_forward(v_in: torch.Tensor, x: torch.Tensor | None, unit_lower: bool,
                        transpose: bool) -> bool:
    if FORWARD_BACKEND != "auto" or x is not None or not unit_lower or transpose:
        return False
    if not v_in.is_cpu:
        return False
    # LAPACK's blocked orgqr does the optimal 2mn^2 - 2n^3/3 flops with one call per matrix;
    # measured on 2 cores it is at least as fast as the CWY sweep at every benchmarked shape,
    # batched ones included, so the CPU forward uses it (the backward is always ours).
    return True


def block_size(m: int, k: int) -> int:
    """Reflectors per compact-WY block of the forward pass.

    One block for few reflectors (a single T, fewest kernel launches); otherwise blocks of
    64 keep T small and well conditioned (float32 orthogonality stays at LAPACK's level for
    square Q) and let the sweep skip the rows and columns a block cannot touch, which brings
    the forward to the optimal 2mk^2 - 2k^3/3 flops.
    """
    return k if k <= 96 else 64


def blocked_apply(v: torch.Tensor, tau: torch.Tensor, x: torch.Tensor | None, n_cols: int,
                  transpose: bool, unit_lower: bool, nb: int) -> torch.Tensor:
    """Y = Q X (or Q^T X) by sweeping blocks W_b = I - V_b T_b V_b^T (forward only).

    Q X = W_1 (W_2 (... W_p X)): blocks are applied last to first (first to last for Q^T).
    With unit-lower reflectors block b touches only rows j0: ; in the orgqr case (X = E,
    Q not transposed) it also leaves columns < j0 untouched, since they are still e_c.
    """
    k = v.shape[-1]
    starts = list(range(0, k, nb))
    order = starts if transpose else starts[::-1]
    if x is None and not transpose:
        # orgqr: the first block applied (the last one) meets the identity, so V_b^T E is a
        # slice and Y starts as E - V_b C_b with no product against E.
        j0 = order.pop(0)
        vb, tb = v[..., j0:, j0:], tau[..., j0:]
        cb = _block_t_apply(vb, tb, vb[..., :n_cols - j0, :].mT, transpose=False)
        corner = torch.matmul(vb, cb).neg_()
        corner.diagonal(dim1=-2, dim2=-1).add_(1.0)
        if j0 == 0:
            return corner
        y = _identity_like(v, n_cols)
        y[..., j0:, j0:] = corner
    elif x is None:
        y = _identity_like(v, n_cols)
    else:
        y = x.clone(memory_format=torch.contiguous_format)
    for j0 in order:
        j1 = min(j0 + nb, k)
        r0 = j0 if unit_lower else 0
        c0 = j0 if (x is None and not transpose) else 0
        vb = v[..., r0:, j0:j1]
        tb = tau[..., j0:j1]
        ysub = y[..., r0:, c0:]
        w = _block_t_apply(vb, tb, vb.mT @ ysub, transpose=transpose)
        ysub.sub_(vb @ w)
    return y


def _orgqr_whole_one_block(v: torch.Tensor, tau: torch.Tensor | None,
                           eps: float) -> torch.Tensor:
    """Y = Q E for whole-column reflectors V (*, m, k), k <= 96, as one straight line.

    One compact-WY block: Y = E - V T V[:k]^T with T = N^{-1} D, N = I + D striu(V^T V).
    The exact tau comes from the diagonal of V^T V, which N needs anyway: the gram's float32
    diagonal is accurate to a few ulps of ||v||^2 (no ``1 + small`` sum here, unlike the
    unit-lower case), so tau ||v||^2 = 2 holds to working precision. About a dozen kernels:
    at d r of a few thousand the forward is bound by their launch cost, not by flops.
    """
    if v.dim() > 2 and v.shape[:-2].numel() == 1:  # one matrix: mm, not bmm (~1.3x here)
        lead = v.shape[:-2]
        y = _orgqr_whole_one_block(v.reshape(v.shape[-2:]),
                                   None if tau is None else tau.reshape(-1), eps)
        return y.reshape(lead + y.shape)
    k = v.shape[-1]
    s = v.mT @ v
    if tau is None:
        tau = s.diagonal(dim1=-2, dim2=-1).clamp_min(eps * eps).reciprocal_().mul_(2.0)
    d = tau.unsqueeze(-1)
    # N = I + D striu(S); the solve is unitriangular, so N's diagonal is never read
    n = (s.triu_(1) if tri.plain_tensor(s) else s.triu(1)).mul_(d)  # triu_: no vmap rule
    c = torch.linalg.solve_triangular(n, v[..., :k, :].mT * d, upper=True, unitriangular=True)
    y = torch.matmul(v, c).neg_()
    y.diagonal(dim1=-2, dim2=-1).add_(1.0)
    return y


def _forward(v_in: torch.Tensor, tau: torch.Tensor | None, x: torch.Tensor | None,
             n_cols: int, unit_lower: bool, transpose: bool, eps: float,
             k: int) -> torch.Tensor:
    if (x is None and not unit_lower and not transpose and k == v_in.shape[-1] == n_cols
            and k <= 96):
        with no_tf32(v_in):
            return _orgqr_whole_one_block(v_in, tau, eps)
    if _use_lapack_forward(v_in, x, unit_lower, transpose):
        if tau is None:
            tau = _exact_tau_unit_lower(v_in if k == v_in.shape[-1] else v_in[..., :k])
        return torch.linalg.householder_product(v_in, tau)
    with no_tf32(v_in):
        v = _build_v(v_in, k, unit_lower)
        if tau is None:
            tau, _ = _exact_tau(v, eps, unit_lower)
        return blocked_apply(v, tau, x, n_cols, transpose, unit_lower,
                             block_size(v.shape[-2], k))


def _setup_context(ctx: Any, inputs: tuple) -> None:
    v_in, tau, x, n_cols, unit_lower, transpose, eps, k = inputs
    ctx.n_cols, ctx.unit_lower, ctx.transpose, ctx.eps, ctx.k = (
        n_cols, unit_lower, transpose, eps, k)
    ctx.save_for_backward(v_in, tau, x)
    # jvp reads the inputs from here: ctx.save_for_forward costs ~35 us per call, and the
    # inputs are not modified between forward and jvp (both run inside the same
    # forward-mode call).
    ctx.fwd_inputs = (v_in, tau, x)


def apply(v_in: torch.Tensor, tau: torch.Tensor | None, x: torch.Tensor | None,
          n_cols: int, unit_lower: bool, transpose: bool, eps: float, k: int) -> torch.Tensor:
    """Run the engine through the cheaper of its two autograd.Function forms
    (:func:`~difflinalg._autograd.apply_fastest`), or through :class:`_SmallOrgqr` for a
    small orgqr with exact reflections."""
    if (tau is None and x is None and not transpose and k == n_cols == v_in.shape[-1]
            and k <= SMALL_MAX_K and v_in.numel() <= SMALL_MAX_NUMEL
            and SMALL_MIN_ROWS_PER_COL * k <= v_in.shape[-2]
            and not torch._C._are_functorch_transforms_active()):
        if v_in.dim() > 3:  # one batch dim inside the Function (mm/bmm), views outside
            shape = v_in.shape
            y = _SmallOrgqr.apply(v_in.reshape(-1, *shape[-2:]), unit_lower, eps)
            return y.reshape(shape)
        return _SmallOrgqr.apply(v_in, unit_lower, eps)
    return apply_fastest(HouseholderApply, _HouseholderApplyClassic,
                         v_in, tau, x, n_cols, unit_lower, transpose, eps, k)


# ----------------------------------------------------------------------------- small orgqr
# At d k of a few thousand a forward+backward is bound by the cost of each kernel launch
# and of each Python-level step (5-10 us apiece on a shared 2-core CPU), not by flops.
# For Y = Q E with exact reflections (tau = None) the forward is the engine's (LAPACK's
# orgqr on the CPU for unit-lower V, with the float64 tau that keeps its orthogonality),
# and the backward needs no tau at all: in the T-CWY form (Joffrain et al. 2006)
#   T^{-1} = M = striu(V^T V) + diag(V^T V) / 2,   C = T V[:k]^T   (Y = E - V C),
# and the engine's backward, with N^{-1} D = (D^{-1} N)^{-1} = M^{-1} = T, reads
#   Z^T = G^T V T,   w = Z C^T,   w_sym = triu(w) + striu(w)^T,
#   dL/dV = V w_sym - (G C^T + E Z^T)
# (the diagonal of w is the exact-tau term; it is dropped for whole columns whose norm was
# clamped at eps). T (k x k, k <= 64) is formed by one triangular solve against I_k, as
# LAPACK's larft forms it, so that the rule's two solves become small products; a single
# matrix goes through mm, not bmm. Only the input is saved: the forward stays LAPACK's call
# plus the tau (what the forward-only user pays), the backward rebuilds M and works with V
# by blocks (see _small_backward). The k x k constants are cached per k. Double backward
# and vmapped gradients hand over to the general engine.
SMALL_MAX_K = 64
SMALL_MAX_NUMEL = 1 << 16
# The small backward keeps a handful of k x k blocks live next to G and dL/dA: a quarter of
# the output each at m = 4k, but a whole one each for a square Q, where it would peak at
# ~6x the output against the blocked engine's ~4x (measured: 8 x 64 x 64, 5.8x vs 3.2x
# resident). Squarer shapes take the engine, still 3.7x torch-householder's speed at
# 64 x 64.
SMALL_MIN_ROWS_PER_COL = 4
_SMALL_CONSTS: dict[tuple, tuple[torch.Tensor, ...]] = {}
_SMALL_CONSTS_MAX = 64


def _small_consts(k: int, ref: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(M-mask (k, k): ones above the diagonal and 1/2 on it, upper-with-diagonal bool mask
    (k, k), I_k / 2, I_k) in ``ref``'s dtype and on its device; cached per (k, dtype,
    device) - at most 64 x 64 each - and never handed out."""
    # keyed without building ref.device where it can be helped (a torch.device object
    # costs more than the rest of the lookup): get_device() is -1 on the CPU, the index
    # elsewhere, and the device type tells other accelerators apart
    kind = ref.is_cuda if (ref.is_cpu or ref.is_cuda) else ref.device.type
    key = (k, ref.dtype, ref.get_device(), kind)
    out = _SMALL_CONSTS.get(key)
    if out is None:
        dtype, device = ref.dtype, ref.device
        if len(_SMALL_CONSTS) >= _SMALL_CONSTS_MAX:
            _SMALL_CONSTS.pop(next(iter(_SMALL_CONSTS)))
        m_mask = torch.ones(k, k, dtype=dtype, device=device).triu_()
        m_mask.diagonal().fill_(0.5)
        upper = torch.ones(k, k, dtype=torch.bool, device=device).triu_()
        eye = torch.eye(k, dtype=dtype, device=device)
        out = _SMALL_CONSTS[key] = (m_mask, upper, eye * 0.5, eye)
    return out


def _engine_ctx(a: torch.Tensor, unit_lower: bool, eps: float) -> Any:
    """A stand-in for HouseholderApply's ctx (orgqr, tau=None, gradient w.r.t. A only)."""
    k = a.shape[-1]
    return types.SimpleNamespace(
        saved_tensors=(a, None, None), fwd_inputs=(a, None, None),
        needs_input_grad=(True, False, False), k=k, n_cols=k, unit_lower=unit_lower,
        transpose=False, eps=eps)


def _small_backward(a: torch.Tensor, g: torch.Tensor, unit_lower: bool,
                    eps: float) -> torch.Tensor:
    """dL/dA of Y = Q E (tau = None) for a (*, m, k) with at most one batch dim.

    Peak: G and dL/dA, and at most four k x k blocks (each is dropped as soon as it has
    been used: at k = m / 8 a k x k block is an eighth of the output).
    """
    k = a.shape[-1]
    m_mask, upper, half_eye, eye = _small_consts(k, a)
    mm = torch.mm if a.dim() == 2 else torch.bmm
    if not unit_lower:
        return _small_backward_whole(a, g, eps, mm, m_mask, upper, eye)
    # V = E + L is never formed: below its top k x k block V is A itself (B = A[k:], a
    # view), so every product with V is one with B plus a k x k one with the top block
    # V1 = E1 + L1 (L1 = tril(A[:k], -1)). The backward's peak is then G and dL/dA: at
    # k = m / 8 a whole V would add a third to it. The diagonal of S = B^T B + L1^T V1 =
    # L^T L + L1^T is ||l_j||^2, a sum of like terms (the 1 of ||v_j||^2 comes in once,
    # with half_eye). _ReflectorMatrix splits V the same way for the engine, in row blocks
    # and for V^T V itself; here four straight-line products are all it takes. (narrow, not
    # split: split's tuple costs ~8% of this backward at 256 x 16.)
    rest = a.shape[-2] - k
    a1 = a.narrow(-2, 0, k)
    b = a.narrow(-2, k, rest)
    l1 = a1.tril(-1)
    v1 = l1 + eye
    addmm_ = torch.Tensor.addmm_ if a.dim() == 2 else torch.Tensor.baddbmm_
    s = mm(b.mT, b)
    addmm_(s, l1.mT, v1)
    s = torch.addcmul(half_eye, s, m_mask)
    t = torch.linalg.solve_triangular(s, eye, upper=True)  # T = M^{-1}
    del s, l1
    ct = mm(v1, t.mT)                                     # C^T = V1 T^T
    g1 = g.narrow(-2, 0, k)
    p = mm(g.narrow(-2, k, rest).mT, b)                   # G^T V = G2^T B + G1^T V1
    addmm_(p, g1.mT, v1)
    z_t = mm(p, t)                                        # Z^T = G^T V T
    del t, p
    gv = mm(g, ct)                                        # G C^T + E Z^T
    top = gv.narrow(-2, 0, k)
    top += z_t
    w = mm(z_t.mT, ct)
    del z_t, ct
    w = torch.where(upper, w, w.mT)                       # V w_sym - (...), by blocks
    addmm_(gv.narrow(-2, k, rest), b, w, beta=-1.0)
    addmm_(top, v1, w, beta=-1.0)
    top.tril_(-1)                                         # only the strict lower part is read
    return gv


def _small_backward_whole(a: torch.Tensor, g: torch.Tensor, eps: float, mm: Any,
                          m_mask: torch.Tensor, upper: torch.Tensor,
                          eye: torch.Tensor) -> torch.Tensor:
    """The whole-column case of :func:`_small_backward` (V = A)."""
    k = a.shape[-1]
    v = a
    s = mm(v.mT, v)
    diag = s.diagonal(dim1=-2, dim2=-1)
    active = diag > eps * eps
    diag.clamp_(min=eps * eps)
    s.mul_(m_mask)                                        # M = striu(S) + diag(S) / 2
    t = torch.linalg.solve_triangular(s, eye, upper=True)  # T = M^{-1}
    del s
    ct = mm(v.narrow(-2, 0, k), t.mT)                     # C^T = V[:k] T^T
    z_t = mm(mm(g.mT, v), t)                              # Z^T = G^T V T
    del t
    gv = mm(g, ct)                                        # G C^T + E Z^T
    gv.narrow(-2, 0, k).add_(z_t)
    w = mm(z_t.mT, ct)
    del z_t, ct
    w = torch.where(upper, w, w.mT)
    w.diagonal(dim1=-2, dim2=-1).mul_(active)
    if gv.dim() == 2:
        gv.addmm_(v, w, beta=-1.0)
    else:
        gv.baddbmm_(v, w, beta=-1.0)
    return gv


class _SmallOrgqr(torch.autograd.Function):
    """Y = Q E with exact reflections for small inputs (see the comment above); classic
    form only: inside torch.func transforms :func:`apply` takes the general engine."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, unit_lower: bool, eps: float) -> torch.Tensor:
        ctx.unit_lower, ctx.eps, ctx.fwd_a = unit_lower, eps, a
        ctx.save_for_backward(a)  # only A: the backward works with V by blocks of A
        if unit_lower and _use_lapack_forward(a, None, True, False):
            return torch.linalg.householder_product(a, _exact_tau_unit_lower(a))
        k = a.shape[-1]
        with no_tf32(a):
            return _forward(a, None, None, k, unit_lower, False, eps, k)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):
        (a,) = ctx.saved_tensors
        if torch.is_grad_enabled() or not tri.plain_tensor(g):
            # create_graph or a vmapped gradient: the general engine's rule, which handles both
            gv = HouseholderApply.backward(_engine_ctx(a, ctx.unit_lower, ctx.eps), g)[0]
            return gv, None, None
        with no_tf32(a):
            if a.dim() == 3 and a.shape[0] == 1:  # one matrix: mm, not bmm
                return _small_backward(a[0], g[0], ctx.unit_lower, ctx.eps)[None], None, None
            return _small_backward(a, g, ctx.unit_lower, ctx.eps), None, None

    @staticmethod
    def jvp(ctx: Any, da: torch.Tensor, *_unused):
        return HouseholderApply.jvp(_engine_ctx(ctx.fwd_a, ctx.unit_lower, ctx.eps), da,
                                    None, None)


class HouseholderApply(torch.autograd.Function):
    """Y = Q X or Q^T X for Q = H_1 ... H_k in compact-WY form (see module docstring).

    Inputs: ``v_in`` (*, m, K), K >= k, holding the reflectors (unit lower trapezoidal in the
    LAPACK convention when ``unit_lower``, else whole columns); ``tau`` (*, k) or None for
    exact reflections ``tau = 2 / max(||v||^2, eps^2)``; ``x`` (*, m, n) or None for the
    identity with ``n_cols`` columns.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(v_in: torch.Tensor, tau: torch.Tensor | None, x: torch.Tensor | None,
                n_cols: int, unit_lower: bool, transpose: bool, eps: float,
                k: int) -> torch.Tensor:
        return _forward(v_in, tau, x, n_cols, unit_lower, transpose, eps, k)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        _setup_context(ctx, inputs)

    # Backward. With A = V^T X, C = T' A (T' = T or T^T), Y = X - V C and G = dL/dY,
    # B = V^T G, Z = T'^T B:
    #   dL/dX  = G - V Z                              (= Q'^T G)
    #   dL/dV  = -(G C^T + X Z^T)  +  V-through-T term
    #   dL/dT' = -B A^T   (dL/dT = -A B^T when T' = T^T)
    # T depends on (V, tau) through T^{-1} = D^{-1} + S, S = striu(V^T V) (tau != 0). With
    # dT = -T d(T^{-1}) T and T = N^{-1} D = D N'^{-1} (N = I + D S, N' = I + S D), the
    # adjoint K = T^T gT T^T = D M D with M = N^{-T} gT N'^{-T} gives
    #   dL/dtau_j = M_jj                               (the D^{-2} of d(T^{-1}) cancels)
    #   dL/dV    += -V (P + P^T),  P = striu(D M D)
    # which has no 1/tau and is continuous at tau = 0. Two triangular solves serve all of
    # C, Z and M: for T' = T, R_b = N^{-T} B and R_a = N'^{-1} A give Z = D R_b, C = D R_a and
    # M = -R_b R_a^T; for T' = T^T, R_a = N^{-T} A, R_b = N'^{-1} B give C = D R_a,
    # Z = D R_b, M = -R_a R_b^T. For tau=None (exact reflections) tau = 2 / ||v||^2 adds
    # dL/dv_j += -tau_j^2 (dL/dtau_j) v_j. Nothing per reflector is stored: V is rebuilt
    # from the caller's tensor and S (2 m k^2 flops) is recomputed. Under create_graph the
    # same lines run under autograd, which gives the double backward.
    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor | None):
        v_in, tau_in, x = ctx.saved_tensors
        k, n_cols, transpose = ctx.k, ctx.n_cols, ctx.transpose
        if grad_y is None:
            return (None,) * 8
        need_v, need_tau, need_x = ctx.needs_input_grad[:3]
        grad_x = grad_v_in = grad_tau = None
        if _use_lowmem_orgqr(v_in, grad_y, x, transpose):
            with no_tf32(v_in):
                grad_v_in, grad_tau = _orgqr_backward_lowmem(
                    v_in, tau_in, grad_y, k, n_cols, ctx.unit_lower, ctx.eps, need_v,
                    need_tau)
            return grad_v_in, grad_tau, None, None, None, None, None, None
        with no_tf32(v_in):
            v = _build_v(v_in, k, ctx.unit_lower)
            nb = _structured_block(k, ctx.unit_lower)
            ip = not torch.is_grad_enabled()
            gram = None
            if tau_in is None and ctx.unit_lower and ip and not nb:
                # exact tau from the diagonal of V^T V, which S needs anyway (saves two
                # passes over V; the float64 sum matters for the forward's orthogonality,
                # not for the gradient)
                gram = v.mT @ v
                tau = 2.0 / gram.diagonal(dim1=-2, dim2=-1)
                active = None
            elif tau_in is None:
                tau, active = _exact_tau(v, ctx.eps, ctx.unit_lower)
            else:
                tau, active = tau_in, None
            # orgqr (X = E, Q not transposed): A = V[:n]^T and R_a are upper trapezoidal
            tri_a = bool(nb) and x is None and not transpose
            # In-place updates and early `del`s keep the k x k and m x k temporaries few;
            # under create_graph (double backward) everything stays out of place.
            g = grad_y
            d = tau.unsqueeze(-1)
            if gram is not None:
                s = gram.triu_(1)
                del gram
            else:
                s = tri.gram_strict_upper(v, nb) if nb else _s_matrix(v)
            b = tri.mm_upper_left(v.mT, g, nb) if nb else v.mT @ g
            r_b = _solve_n(_n_matrix(s, tau, right=transpose), b, transpose=not transpose,
                           overwrite=ip)
            del b
            need_vt = need_v or (need_tau and tau_in is not None)
            if need_vt:
                a = _vt_x(v, x, n_cols)
                r_a = _solve_n(_n_matrix(s, tau, right=not transpose), a, transpose=transpose)
                del a
                if transpose:
                    m_mat = r_a @ r_b.mT
                else:
                    m_mat = tri.mm_lower_right(r_b, r_a.mT, nb) if tri_a else r_b @ r_a.mT
                m_mat = m_mat.neg_() if ip else -m_mat
            del s
            z = r_b.mul_(d) if ip else d * r_b
            del r_b
            if need_x and x is not None:
                grad_x = g - v @ z
            if need_vt:
                c = r_a.mul_(d) if ip else d * r_a
                del r_a
                g_tau = m_mat.diagonal(dim1=-2, dim2=-1).clone()
                if need_v:
                    coef = None
                    if tau_in is None:
                        coef = (tau * tau) * g_tau
                        if active is not None:
                            coef = coef * active.to(tau.dtype)
                    if ip:
                        # dL/dV = -(G C^T + V (P + P^T + diag(coef)) + X Z^T): the sign is
                        # folded into the small factors and the tau-path term into the
                        # diagonal of the k x k factor, so V is read by one GEMM.
                        p = m_mat.mul_(d).mul_(tau.unsqueeze(-2)).triu_(1)
                        p_t = p.mT.clone()
                        p = p.add_(p_t).neg_()
                        del p_t
                        if coef is not None:
                            p.diagonal(dim1=-2, dim2=-1).sub_(coef)
                        del m_mat
                        c.neg_()
                        if tri_a:
                            gv = tri.mm_lower_right(g, c.mT, nb)
                        else:
                            gv = g @ c.mT
                        del c
                        _add_product(gv, v, p, nb)
                        del p
                        if x is None:
                            gv.narrow(-2, 0, n_cols).sub_(z.mT)
                        else:
                            _add_product(gv, x, z.mT.neg(), 0)
                    else:  # double backward: out of place, differentiable
                        p = (d * m_mat * tau.unsqueeze(-2)).triu(1)
                        p = p + p.mT
                        if coef is not None:
                            p = p + torch.diag_embed(coef)
                        gv = tri.mm_lower_right(g, c.mT, nb) if tri_a else g @ c.mT
                        gv = gv + (tri.mm_lower_left(v, p, nb) if nb else v @ p)
                        if x is None:
                            # X Z^T with X = E (m x n): Z^T in the first n rows
                            gv = gv + torch.nn.functional.pad(
                                z.mT, (0, 0, 0, gv.shape[-2] - n_cols))
                        else:
                            gv = gv + x @ z.mT
                        gv = -gv
                    del v
                    grad_v_in = _scatter_v_grad(gv, v_in, ctx.unit_lower)
                if need_tau and tau_in is not None:
                    grad_tau = g_tau
        return grad_v_in, grad_tau, grad_x, None, None, None, None, None

    # Forward mode. dY = dX - dV C - V dC, dC = dT' A + T' dA, dA = dV^T X + V^T dX, and with
    # T = Tt D, Tt = N^{-1}, N = I + D S, S = striu(V^T V):
    #   dT = Tt dD - Tt (dD S + D dS) T,   dS = striu(dV^T V + V^T dV).
    @staticmethod
    def jvp(ctx: Any, dv_in, dtau_in, dx, *_unused):
        v_in, tau_in, x = ctx.fwd_inputs
        k, n_cols, transpose = ctx.k, ctx.n_cols, ctx.transpose
        v = _build_v(v_in, k, ctx.unit_lower)
        dv = _build_dv(dv_in, v_in, k, ctx.unit_lower)
        if tau_in is None:
            tau, active = _exact_tau(v, ctx.eps, ctx.unit_lower)
            dtau = -(tau * tau) * (v * dv).sum(-2) * active.to(tau.dtype)
        else:
            tau = tau_in
            dtau = dtau_in if dtau_in is not None else torch.zeros_like(tau)
        s = _s_matrix(v)
        n = _n_matrix(s, tau)
        t = _solve_n(n, torch.diag_embed(tau), transpose=False)
        ds = (dv.mT @ v).triu(1) + (v.mT @ dv).triu(1)
        dn = dtau.unsqueeze(-1) * s + tau.unsqueeze(-1) * ds
        dt = _solve_n(n, torch.diag_embed(dtau) - dn @ t, transpose=False)
        if transpose:
            t, dt = t.mT, dt.mT
        a = _vt_x(v, x, n_cols)
        da = dv.mT @ x if x is not None else dv[..., :n_cols, :].mT
        if dx is not None:
            da = da + v.mT @ dx
        c = t @ a
        dc = dt @ a + t @ da
        dy = -(dv @ c) - v @ dc
        if dx is not None:
            dy = dy + dx
        return dy


def _add_product(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, nb: int) -> None:
    """out += a @ b in place (out is a fresh contiguous tensor of the backward)."""
    if nb:
        if tri.plain_tensor(out) and tri.plain_tensor(b):
            tri.addmm_lower_left_(out, a, b, nb)
        else:
            out += tri.mm_lower_left(a, b, nb)
        return
    batch = out.shape[:-2]
    if len(batch) == 0:
        out.addmm_(a, b)
        return
    shape_a = batch + a.shape[-2:]
    shape_b = batch + b.shape[-2:]
    out.view(-1, *out.shape[-2:]).baddbmm_(a.expand(shape_a).reshape(-1, *a.shape[-2:]),
                                           b.expand(shape_b).reshape(-1, *b.shape[-2:]))


def _scatter_v_grad(gv: torch.Tensor, v_in: torch.Tensor, unit_lower: bool) -> torch.Tensor:
    """Map dL/dV (*, m, k) back onto the caller's (*, m, K) tensor."""
    if unit_lower:
        if torch.is_grad_enabled():
            gv = gv.tril(-1)
        else:  # only the top k x k block has entries on or above the diagonal
            k = gv.shape[-1]
            gv.narrow(-2, 0, min(k, gv.shape[-2])).tril_(-1)
    extra = v_in.shape[-1] - gv.shape[-1]
    if extra:
        pad = gv.new_zeros(*gv.shape[:-1], extra)
        gv = torch.cat([gv, pad], dim=-1)
    return gv


def _build_dv(dv_in: torch.Tensor | None, v_in: torch.Tensor, k: int,
              unit_lower: bool) -> torch.Tensor:
    if dv_in is None:
        return torch.zeros(*v_in.shape[:-1], k, dtype=v_in.dtype, device=v_in.device)
    dv = dv_in[..., :k]
    return dv.tril(-1) if unit_lower else dv


_HouseholderApplyClassic = classic_twin(HouseholderApply)


# ----------------------------------------------------------------------------- orgqr backward
# The backward of the orgqr case (X = E, Q not transposed) outside autograd, ordered for
# memory. In units of the output (m x n) the general path above peaks at ~7 for a square Q:
# V, S, N, B, R_a, M and dL/dV coexist. Here V is never formed whole when it would cost a
# unit (m < 4k: its blocks are rebuilt from the caller's tensor, O(nb k) at a time), N is
# dropped as soon as both solves are done, R_b is kept transposed so that it can become
# dL/dV itself when m = n, and every product is written into its destination block by block
# (addmm_ into slices, no cat). The peak is G + 3 units for a square Q (G, R_a, R_b^T, M;
# then G, R_a, dL/dV, M), G + dL/dV + small for a tall one.


def _use_lowmem_orgqr(v_in: torch.Tensor, g: torch.Tensor, x: torch.Tensor | None,
                      transpose: bool) -> bool:
    return (x is None and not transpose and not torch.is_grad_enabled()
            and tri.plain_tensor(v_in) and tri.plain_tensor(g))


def _lowmem_block(m: int, k: int) -> tuple[bool, int]:
    """(blocked, nb) for the orgqr backward's products with V.

    A tall V (m >= 4k) costs at most a quarter of the output: it is formed whole, fewest
    calls. Otherwise V is never formed: its rows >= k are the caller's tensor and only its
    unit lower triangular top, in diagonal blocks of nb, is materialised, at moments when at
    most three units are live. Blocks of nb < k let the products skip part of the zero
    upper triangle; on 2 CPU cores fewer, larger GEMMs win up to k ~ 512 (measured at
    k = 256, 512, 1024: nb = 32 was 1.2-1.45x slower than nb >= k/4).
    """
    if 4 * k <= m:
        return False, k
    return True, (k if k < 512 else max(256, -(-k // 4)))


class _ReflectorMatrix:
    """Products with unit-lower V (*, m, k) without forming it, in row blocks of ``nb``.

    V = tril(A, -1) + I on its first k columns. Rows ``i0:i1`` of V restricted to columns
    ``:c1`` (c1 <= i1) are ``A[i0:i1, :c1]`` below the diagonal, ones on it and zeros above;
    rows ``>= k`` are ``A`` itself. Only such row blocks (at most nb x k) are materialised.
    """

    def __init__(self, v_in: torch.Tensor, k: int, nb: int) -> None:
        self.k, self.m, self.nb = k, v_in.shape[-2], nb
        self.a = v_in[..., :k] if v_in.shape[-1] != k else v_in

    def diag_block(self, j0: int, j1: int) -> torch.Tensor:
        """V[j0:j1, j0:j1] (unit lower triangular) as a fresh tensor; V[j0:j1, :j0] is A."""
        blk = self.a[..., j0:j1, j0:j1].tril(-1)
        blk.diagonal(dim1=-2, dim2=-1).fill_(1.0)
        return blk

    def starts(self) -> list[tuple[int, int]]:
        return [(j0, min(j0 + self.nb, self.k)) for j0 in range(0, self.k, self.nb)]

    def gram(self) -> torch.Tensor:
        """V^T V (*, k, k); blocked: column block J of the upper part is
        V[j0:, :j1]^T V[j0:, J], the lower part is copied from it."""
        a, k = self.a, self.k
        s = a.new_zeros(*a.shape[:-2], k, k)
        for j0, j1 in self.starts():
            vd = self.diag_block(j0, j1)
            if j0:
                tri.addmm_into(s[..., :j0, j0:j1], a[..., j0:j1, :j0].mT, vd)
            tri.addmm_into(s[..., j0:j1, j0:j1], vd.mT, vd)
            del vd
            if j1 < self.m:
                tri.addmm_into(s[..., :j1, j0:j1], a[..., j1:, :j1].mT, a[..., j1:, j0:j1])
            if j0:
                s[..., j0:j1, :j0].copy_(s[..., :j0, j0:j1].mT)
        return s

    def top_t(self, n: int) -> torch.Tensor:
        """A fresh copy of V[:n]^T (*, k, n)."""
        t = self.a[..., :n, :].mT.clone(memory_format=torch.contiguous_format).triu_(1)
        t.diagonal(dim1=-2, dim2=-1).fill_(1.0)
        return t

    def gt_v(self, g: torch.Tensor) -> torch.Tensor:
        """G^T V (*, n, k) for G (*, m, n); column block J reads rows j0: of G."""
        a = self.a
        out = g.new_zeros(*g.shape[:-2], g.shape[-1], self.k)
        for j0, j1 in self.starts():
            col = out[..., :, j0:j1]
            tri.addmm_into(col, g[..., j0:j1, :].mT, self.diag_block(j0, j1))
            if j1 < self.m:
                tri.addmm_into(col, g[..., j1:, :].mT, a[..., j1:, j0:j1])
        return out

    def add_v_times_(self, out: torch.Tensor, w: torch.Tensor) -> None:
        """out += V w for w (*, k, c), in place, row block by row block."""
        a, k, m = self.a, self.k, self.m
        for i0, i1 in self.starts():
            rows = out[..., i0:i1, :]
            if i0:
                tri.addmm_into(rows, a[..., i0:i1, :i0], w[..., :i0, :])
            tri.addmm_into(rows, self.diag_block(i0, i1), w[..., i0:i1, :])
        if m > k:
            tri.addmm_into(out[..., k:, :], a[..., k:, :], w)


def _orgqr_backward_whole(a: torch.Tensor, tau_in: torch.Tensor | None, g: torch.Tensor,
                          k: int, n: int, unit_lower: bool, eps: float, need_v: bool,
                          need_tau: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """:func:`_orgqr_backward_lowmem` with V formed whole (or read from the caller's tensor
    when its columns are the reflectors, ``unit_lower=False``).

    Taken for whole-column reflectors and for tall unit-lower ones (m >= 4k: every k x k
    temporary is at most a quarter of the output). Same formulas, written as one straight
    line of about twenty kernels with no per-block bookkeeping: at small sizes (d*r of a few
    thousand) the backward is bound by the cost of launching kernels, not by flops. Works on
    any batch shape through ``matmul`` broadcasting; more than one batch dim is flattened.
    """
    if a.dim() > 3 or (a.dim() == 3 and a.shape[0] == 1):
        # one batch dim at most, none for a single matrix (mm, not bmm: ~1.25x at 256 x 16)
        lead = (-1,) if a.shape[:-2].numel() > 1 else ()
        grad_v, grad_tau = _orgqr_backward_whole(
            a.reshape(lead + a.shape[-2:]),
            None if tau_in is None else tau_in.reshape(lead + tau_in.shape[-1:]),
            g.reshape(lead + g.shape[-2:]), k, n, unit_lower, eps, need_v, need_tau)
        return (None if grad_v is None else grad_v.reshape(a.shape),
                None if grad_tau is None else grad_tau.reshape(tau_in.shape))
    wide = a.shape[-1] != k
    v = a.narrow(-1, 0, k) if wide else a              # the caller's tensor: read only
    if unit_lower:
        v = v.tril(-1)
        v.diagonal(dim1=-2, dim2=-1).fill_(1.0)
    s = v.mT @ v
    # S = V^T V: its diagonal gives the exact tau = 2 / ||v_j||^2 (norms clamped below by
    # eps for whole columns, whose clamped entries get no diagonal term); D S (N - I) lies
    # in the strict upper triangle and (S D)^T (N'^T - I) in the strict lower one
    active = None
    if tau_in is not None:
        tau = tau_in
    elif unit_lower:
        tau = s.diagonal(dim1=-2, dim2=-1).reciprocal().mul_(2.0)
    else:
        sq = s.diagonal(dim1=-2, dim2=-1)
        active = sq > eps * eps
        tau = 2.0 / sq.clamp_min(eps * eps)
        del sq  # a view of S
    s.mul_(tau.unsqueeze(-1))
    r_bt = g.mT @ v                                   # R_b^T = G^T V N^{-1}
    torch.linalg.solve_triangular(s, r_bt, upper=True, left=False, unitriangular=True,
                                  out=r_bt)
    r_at = v.narrow(-2, 0, n).clone()                 # R_a^T = V[:n] N'^{-T}
    torch.linalg.solve_triangular(s, r_at, upper=False, left=False, unitriangular=True,
                                  out=r_at)
    del s  # every temporary is freed as soon as it is used: the peak is what the
    # memory target counts (G, V, dL/dV and a few k x k blocks)
    grad_tau = None
    if need_tau and tau_in is not None:
        grad_tau = (r_bt * r_at).sum(-2).neg_()      # -diag(R_b R_a^T)
    if not need_v:
        return None, grad_tau
    tau_row = tau.unsqueeze(-2)
    r_bt.mul_(tau_row)                                # Z^T
    r_at.mul_(tau_row)                                # C^T
    w = r_bt.mT @ r_at                                # Z C^T
    if g.shape[-2] == n and g.shape[:-2] == r_bt.shape[:-2]:
        tri.addmm_into(r_bt, g, r_at)                 # square: E Z^T fills dL/dV
        gv = r_bt
    else:
        gv = g @ r_at                                 # G C^T + E Z^T
        gv.narrow(-2, 0, n).add_(r_bt)
    del r_bt, r_at
    upper = w.triu(1)                                 # w_sym = striu(w) + striu(w)^T + diag(w)
    w.triu_().add_(upper.mT)
    del upper
    if tau_in is not None:
        w.diagonal(dim1=-2, dim2=-1).zero_()
    elif active is not None:
        w.diagonal(dim1=-2, dim2=-1).mul_(active.to(w.dtype))
    if gv.dim() == 2:
        gv.addmm_(v, w, beta=-1.0)                    # dL/dV = V w_sym - (G C^T + E Z^T)
    else:
        gv.baddbmm_(v, w, beta=-1.0)
    if unit_lower:
        gv.narrow(-2, 0, k).tril_(-1)                 # only the strictly lower part is read
    if wide:
        out = gv.new_zeros(a.shape)
        out.narrow(-1, 0, k).copy_(gv)
        gv = out
    return gv, grad_tau


def _orgqr_backward_lowmem(v_in: torch.Tensor, tau_in: torch.Tensor | None, g: torch.Tensor,
                           k: int, n: int, unit_lower: bool, eps: float, need_v: bool,
                           need_tau: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(dL/dv_in, dL/dtau) for Y = Q E; same formulas as HouseholderApply.backward.

    Whole-column reflectors and tall V go to :func:`_orgqr_backward_whole`; what remains
    here is the unit-lower case with V handled in row blocks, never formed whole.
    """
    if not unit_lower or not _lowmem_block(v_in.shape[-2], k)[0]:
        return _orgqr_backward_whole(v_in, tau_in, g, k, n, unit_lower, eps, need_v,
                                     need_tau)
    batch = v_in.shape[:-2]
    if len(batch) > 1 or (batch and batch[0] == 1):
        # one batch dim at most, none for a single matrix: fewer views per op, mm not bmm
        lead = (-1,) if math.prod(batch) > 1 else ()
        grads = _orgqr_backward_lowmem(
            v_in.reshape(lead + v_in.shape[-2:]),
            None if tau_in is None else tau_in.reshape(lead + tau_in.shape[-1:]),
            g.reshape(lead + g.shape[-2:]), k, n, unit_lower, eps, need_v, need_tau)
        grad_v, grad_tau = grads
        return (None if grad_v is None else grad_v.reshape(v_in.shape),
                None if grad_tau is None else grad_tau.reshape(tau_in.shape))
    m = v_in.shape[-2]
    _, nb = _lowmem_block(m, k)
    vm = _ReflectorMatrix(v_in, k, nb)
    # V^T V = S + S^T + diag(||v_j||^2); the diagonal gives the exact tau (float32 sums are
    # enough for the gradient; the forward's float64 care is about orthogonality)
    s = vm.gram()
    tau = tau_in if tau_in is not None else 2.0 / s.diagonal(dim1=-2, dim2=-1)
    # Scaling the rows by tau puts D S (N - I) in the strict upper triangle and (S D)^T
    # (N'^T - I) in the strict lower one: one k x k buffer serves both solves, since a unit
    # triangular solve reads one strict triangle only.
    tau_col, tau_row = tau.unsqueeze(-1), tau.unsqueeze(-2)
    s.mul_(tau_col)
    # R_b^T = G^T V N^{-1}
    r_bt = vm.gt_v(g)
    torch.linalg.solve_triangular(s, r_bt, upper=True, left=False, unitriangular=True,
                                  out=r_bt)
    # R_a = N'^{-1} V[:n]^T, as R_a^T = V[:n] N'^{-T} with N'^T the lower triangle
    r_a = vm.top_t(n)
    torch.linalg.solve_triangular(s, r_a.mT, upper=False, left=False, unitriangular=True,
                                  out=r_a.mT)
    del s
    # dL/dtau = diag(M) = -diag(R_b R_a^T)
    grad_tau = None
    if need_tau and tau_in is not None:
        grad_tau = (r_bt.mT * r_a).sum(-1).neg_()
    if not need_v:
        return None, grad_tau
    # With Z^T = R_b^T D and C = D R_a: D M D = -Z C^T; its strict upper part is P and its
    # diagonal the exact-tau term coef, so with w = Z C^T
    #   dL/dV = -(G C^T + E Z^T) + V w_sym,  w_sym = striu(w) + striu(w)^T + diag(w)
    # with the diagonal kept for tau=None only.
    r_bt.mul_(tau_row)                 # Z^T
    r_a.mul_(tau_col)                  # C (upper trapezoidal)
    snb = _structured_block(k, True)
    w = tri.mm_lower_right_into(r_bt.mT, r_a.mT, snb)   # Z C^T = -W
    if m == n and r_bt.is_contiguous():
        gv = r_bt                      # E Z^T fills the whole of dL/dV
        tri.mm_lower_right_into(g, r_a.mT, snb, out=gv)
    else:
        gv = tri.mm_lower_right_into(g, r_a.mT, snb)
        gv.narrow(-2, 0, n).add_(r_bt)
    del r_a, r_bt
    gv.neg_()
    upper = w.triu(1)  # w := striu(w) + striu(w)^T + diag(w), one k x k temporary
    w.triu_().add_(upper.mT)
    del upper
    if tau_in is not None:
        w.diagonal(dim1=-2, dim2=-1).zero_()
    vm.add_v_times_(gv, w)
    del w, vm
    return _scatter_v_grad(gv, v_in, True), grad_tau
