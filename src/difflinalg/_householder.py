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

from typing import Any

import torch

from ._autograd import no_tf32

# Forward backend for the orgqr case on CPU: "auto" picks LAPACK's orgqr where it is the
# faster one (see _use_lapack_forward), "cwy" always uses the compact-WY product here.
FORWARD_BACKEND = "auto"


def _build_v(v_in: torch.Tensor, k: int, unit_lower: bool) -> torch.Tensor:
    """The reflector matrix V (*, m, k) from the caller's tensor (never mutated)."""
    v = v_in[..., :k]
    if unit_lower:
        m = v.shape[-2]
        eye = torch.eye(m, k, dtype=v.dtype, device=v.device)
        v = v.tril(-1) + eye
    return v


def _exact_tau(v: torch.Tensor, eps: float, unit_lower: bool
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """tau = 2 / ||v||^2 with the norm clamped below by ``eps``; returns (tau, active).

    For unit-lower reflectors ``||v||^2 = 1 + ||a||^2`` is summed as written (small terms
    first), and float32 sums are accumulated in float64 (O(mk) work): the orthogonality of a
    float32 product near the identity is limited by how exactly tau * ||v||^2 = 2 holds.
    """
    acc = torch.float64 if v.dtype == torch.float32 else v.dtype
    if unit_lower:
        a = v.tril(-1).to(acc)
        sq = 1.0 + (a * a).sum(-2)
    else:
        w = v.to(acc)
        sq = (w * w).sum(-2)
    floor = eps * eps
    active = sq > floor
    tau = (2.0 / sq.clamp_min(floor)).to(v.dtype)
    return tau, active


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


def _solve_n(n: torch.Tensor, b: torch.Tensor, *, transpose: bool) -> torch.Tensor:
    """N^{-1} b (transpose=False) or N^{-T} b (transpose=True)."""
    if transpose:
        return torch.linalg.solve_triangular(n.mT, b, upper=False, unitriangular=True)
    return torch.linalg.solve_triangular(n, b, upper=True, unitriangular=True)


def _vt_x(v: torch.Tensor, x: torch.Tensor | None, n_cols: int) -> torch.Tensor:
    """V^T X; for X = identity (m x n) this is the slice V[:n]^T, no flops."""
    if x is None:
        return v[..., :n_cols, :].mT
    return v.mT @ x


def _t_apply(n: torch.Tensor, tau: torch.Tensor, b: torch.Tensor, *, transpose: bool,
             adjoint: bool) -> torch.Tensor:
    """T' b where T' = T (transpose=False) or T^T, and its adjoint T'^T b if adjoint.

    T = N^{-1} D, so T b = N^{-1}(tau * b) and T^T b = tau * N^{-T} b.
    """
    use_t = transpose != adjoint  # the matrix applied is T^T
    if use_t:
        return tau.unsqueeze(-1) * _solve_n(n, b, transpose=True)
    return _solve_n(n, tau.unsqueeze(-1) * b, transpose=False)


def _use_lapack_forward(v_in: torch.Tensor, x: torch.Tensor | None, unit_lower: bool,
                        transpose: bool) -> bool:
    if FORWARD_BACKEND != "auto" or x is not None or not unit_lower or transpose:
        return False
    if v_in.device.type != "cpu":
        return False
    m, n = v_in.shape[-2], v_in.shape[-1]
    batch = v_in.numel() // max(m * n, 1)
    # LAPACK's blocked orgqr does the optimal 2mn^2 - 2n^3/3 flops but loops over the batch in
    # C++; the CWY product runs the batch as one bmm. Measured on 2 cores (bench suite):
    # orgqr wins for single, large, square-ish matrices.
    return batch == 1 and n >= 256 and m <= 4 * n


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
    if x is None:
        y = torch.zeros_like(v[..., :1]).expand(*v.shape[:-1], n_cols).clone()
        y.diagonal(dim1=-2, dim2=-1).add_(1.0)
    else:
        y = x.clone(memory_format=torch.contiguous_format)
    starts = list(range(0, k, nb))
    for j0 in (starts if transpose else reversed(starts)):
        j1 = min(j0 + nb, k)
        r0 = j0 if unit_lower else 0
        c0 = j0 if (x is None and not transpose) else 0
        vb = v[..., r0:, j0:j1]
        tb = tau[..., j0:j1]
        nmat = _n_matrix(_s_matrix(vb), tb)
        ysub = y[..., r0:, c0:]
        w = _t_apply(nmat, tb, vb.mT @ ysub, transpose=transpose, adjoint=False)
        ysub.sub_(vb @ w)
    return y


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
        with no_tf32(v_in):
            if _use_lapack_forward(v_in, x, unit_lower, transpose):
                if tau is None:
                    tau, _ = _exact_tau(_build_v(v_in, k, unit_lower), eps, unit_lower)
                return torch.linalg.householder_product(v_in, tau)
            v = _build_v(v_in, k, unit_lower)
            if tau is None:
                tau, _ = _exact_tau(v, eps, unit_lower)
            return blocked_apply(v, tau, x, n_cols, transpose, unit_lower,
                                 block_size(v.shape[-2], k))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        v_in, tau, x, n_cols, unit_lower, transpose, eps, k = inputs
        ctx.n_cols, ctx.unit_lower, ctx.transpose, ctx.eps, ctx.k = (
            n_cols, unit_lower, transpose, eps, k)
        ctx.has_tau, ctx.has_x = tau is not None, x is not None
        ctx.save_for_backward(v_in, tau, x)
        ctx.save_for_forward(v_in, tau, x)

    # Backward. With A = V^T X, C = T' A (T' = T or T^T), Y = X - V C and G = dL/dY,
    # B = V^T G, Z = T'^T B:
    #   dL/dX  = G - V Z                              (= Q'^T G)
    #   dL/dV  = -(G C^T + X Z^T)  +  V-through-T term
    #   dL/dT' = -B A^T   (dL/dT = its transpose when T' = T^T)
    # T depends on (V, tau) through T^{-1} = D^{-1} + striu(V^T V) (tau != 0). With
    # dT = -T d(T^{-1}) T and T = N^{-1} D = D N'^{-1} (N = I + D S, N' = I + S D), the
    # adjoint K = T^T gT T^T = D M D with M = N^{-T} gT N'^{-T} gives
    #   dL/dtau_j = M_jj                               (the D^{-2} of d(T^{-1}) cancels)
    #   dL/dV    += -V (P + P^T),  P = striu(D M D)
    # which has no 1/tau and is continuous at tau = 0. For tau=None (exact reflections)
    # tau = 2 / ||v||^2 adds dL/dv_j += -tau_j^2 (dL/dtau_j) v_j. Nothing per reflector is
    # stored: V is rebuilt from the caller's tensor, N = I + D striu(V^T V) is recomputed
    # (2 m k^2 flops), A and C (k x n) are recomputed. Under create_graph the same lines run
    # under autograd, which gives the double backward.
    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor | None):
        v_in, tau_in, x = ctx.saved_tensors
        k, n_cols, transpose = ctx.k, ctx.n_cols, ctx.transpose
        if grad_y is None:
            return (None,) * 8
        need_v, need_tau, need_x = ctx.needs_input_grad[0], ctx.needs_input_grad[1], \
            ctx.needs_input_grad[2]
        with no_tf32(v_in):
            v = _build_v(v_in, k, ctx.unit_lower)
            if tau_in is None:
                tau, active = _exact_tau(v, ctx.eps, ctx.unit_lower)
            else:
                tau, active = tau_in, None
            s = _s_matrix(v)
            n = _n_matrix(s, tau)
            g = grad_y
            b = v.mT @ g
            grad_x = grad_v_in = grad_tau = None
            z = _t_apply(n, tau, b, transpose=transpose, adjoint=True)
            if need_x and x is not None:
                grad_x = g - v @ z
            if need_v or need_tau:
                a = _vt_x(v, x, n_cols)
                c = _t_apply(n, tau, a, transpose=transpose, adjoint=False)
                g_t = -(b @ a.mT)
                if transpose:
                    g_t = g_t.mT
                # M = N^{-T} gT N'^{-T}, N' = I + striu(V^T V) D.
                n_right = _n_matrix(s, tau, right=True)
                m_mat = _solve_n(n_right, _solve_n(n, g_t, transpose=True).mT,
                                 transpose=False).mT
                g_tau = m_mat.diagonal(dim1=-2, dim2=-1)
                p = (tau.unsqueeze(-1) * m_mat * tau.unsqueeze(-2)).triu(1)
                if need_v or tau_in is None:
                    gv = -(g @ c.mT) - v @ (p + p.mT)
                    if x is None:
                        # X Z^T with X = E (m x n): Z^T in the first n rows
                        gv = gv - torch.nn.functional.pad(z.mT, (0, 0, 0, gv.shape[-2] - n_cols))
                    else:
                        gv = gv - x @ z.mT
                    if tau_in is None:
                        coef = -(tau * tau) * g_tau * active.to(tau.dtype)
                        gv = gv + v * coef.unsqueeze(-2)
                    grad_v_in = _scatter_v_grad(gv, v_in, ctx.unit_lower)
                if need_tau and tau_in is not None:
                    grad_tau = g_tau
        return grad_v_in, grad_tau, grad_x, None, None, None, None, None

    # Forward mode. dY = dX - dV C - V dC, dC = dT' A + T' dA, dA = dV^T X + V^T dX, and with
    # T = Tt D, Tt = N^{-1}, N = I + D S, S = striu(V^T V):
    #   dT = Tt dD - Tt (dD S + D dS) T,   dS = striu(dV^T V + V^T dV).
    @staticmethod
    def jvp(ctx: Any, dv_in, dtau_in, dx, *_unused):
        v_in, tau_in, x = ctx.saved_tensors
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


def _scatter_v_grad(gv: torch.Tensor, v_in: torch.Tensor, unit_lower: bool) -> torch.Tensor:
    """Map dL/dV (*, m, k) back onto the caller's (*, m, K) tensor."""
    if unit_lower:
        gv = gv.tril(-1)
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
