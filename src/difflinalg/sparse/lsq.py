r"""Sparse least squares by Golub-Kahan bidiagonalisation: :func:`lsqr` and :func:`lsmr`.

Both solve

.. math::
    \min_x \|A x - b\|_2^2 + d^2 \|x\|_2^2

for a dense, sparse (COO or CSR) or matrix-free ``A`` of shape ``(m, n)`` with only products
``A v`` and ``A^T u``, ``b`` of shape ``(m,)`` or ``(m, k)``. LSQR (Paige & Saunders 1982)
is CG on the normal equations done stably; LSMR (Fong & Saunders 2011) is MINRES on them,
so ``||A^T r||`` decreases monotonically and it can stop earlier on least-squares problems.
The stopping rules, the defaults and the stop reasons ``istop`` 0-7 are those of
``scipy.sparse.linalg.lsqr``/``lsmr``; each of the ``k`` columns runs its own test, and a
column that has stopped is dropped from the iteration (it no longer changes, nor costs).

The solution is differentiable in ``b`` and in ``A``'s values by implicit differentiation
(no unrolling: two more solves of the same kind in the backward); see the comment above
``_LSQSolve.backward`` and ``docs/derivations/lsq.md``.

References:
    C. C. Paige, M. A. Saunders, "LSQR: An algorithm for sparse linear equations and sparse
    least squares", ACM TOMS 8(1), 43-71, 1982.
    D. C.-L. Fong, M. A. Saunders, "LSMR: An iterative algorithm for sparse least-squares
    problems", SIAM J. Sci. Comput. 33(5), 2950-2971, 2011.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch.autograd.function import once_differentiable

from .._checks import check_finite, check_real_floating, check_same_device_dtype, check_tensor
from .._errors import DTypeError, ShapeError, describe
from ._operator import DampedStack, LinearOperator, as_operator

__all__ = ["lsqr", "lsmr", "LSQResult", "LSQInfo", "STOP_REASONS"]

STOP_REASONS = (
    "the exact solution is x = 0 (b = 0, or A^T b = 0, or x = x0 when A^T (b - A x0) = 0)",
    "A x - b is small enough, given atol and btol",
    "the least-squares solution is good enough, given atol",
    "the estimate of cond(A) has exceeded conlim",
    "A x - b is small enough for this machine",
    "the least-squares solution is good enough for this machine",
    "cond(A) seems to be too large for this machine",
    "the iteration limit has been reached",
)
_F64 = torch.float64


class LSQInfo(NamedTuple):
    """Convergence report; every tensor has shape ``()`` for ``b`` of shape ``(m,)`` and
    ``(k,)`` for ``(m, k)``, the norms in ``b``'s dtype (recurrence estimates, as scipy's)."""

    istop: torch.Tensor  #: int64 stop reason 0-7, see :data:`STOP_REASONS`
    iterations: torch.Tensor  #: int64
    residual_norm: torch.Tensor  #: ||b - A x||
    normal_residual_norm: torch.Tensor  #: ||A^T (b - A x) - d^2 x||
    anorm: torch.Tensor  #: estimate of the Frobenius norm of [A; d I]
    acond: torch.Tensor  #: estimate of cond([A; d I])
    xnorm: torch.Tensor  #: ||x||
    stop_reason: Any  #: str (b 1-D) or tuple of k str


class LSQResult(NamedTuple):
    x: torch.Tensor  #: (n,) or (n, k)
    info: LSQInfo


class _Options(NamedTuple):
    damp: float
    atol: float
    btol: float
    conlim: float
    max_iter: int | None


# ----------------------------------------------------------------------------- kernels


def _safe(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t > 0, t, torch.ones_like(t))


def _sym_ortho(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Stable Givens rotation (c, s, r) with [c s; -s c] [a; b] = [r; 0], r = hypot(a, b)
    (Choi 2006); a = b = 0 gives c = s = r = 0."""
    r = torch.hypot(a, b)
    rs = _safe(r)
    return a / rs, b / rs, r


def _stop_code(itn_over: bool, test1, test2, test3, t1, rtol, atol, ctol, half_eps
               ) -> torch.Tensor:
    """istop per column in scipy's precedence (a later rule wins): ``1 + t <= 1`` in the
    working precision is ``t <= eps / 2``."""
    code = torch.full(test1.shape, 7 if itn_over else 0, dtype=torch.int64,
                      device=test1.device)
    for value, hit in ((6, test3 <= half_eps), (5, test2 <= half_eps), (4, t1 <= half_eps),
                       (3, test3 <= ctol), (2, test2 <= atol), (1, test1 <= rtol)):
        code = torch.where(hit, value, code)
    return code


class _Columns:
    """The k columns' results, filled in as columns stop; the running state keeps only the
    columns still iterating (vectors (len, k_active), scalars (k_active,))."""

    def __init__(self, n: int, k: int, ref: torch.Tensor) -> None:
        self.x = ref.new_zeros(n, k)
        self.stats = {name: torch.zeros(k, dtype=_F64, device=ref.device)
                      for name in ("rnorm", "arnorm", "anorm", "acond", "xnorm")}
        self.istop = torch.zeros(k, dtype=torch.int64, device=ref.device)
        self.itn = torch.zeros(k, dtype=torch.int64, device=ref.device)
        self.cols = torch.arange(k, device=ref.device)

    def retire(self, mask: torch.Tensor, x: torch.Tensor, istop: torch.Tensor | int, itn: int,
               **stats: torch.Tensor) -> torch.Tensor:
        """Store the columns in ``mask``; return the complement (the columns to keep)."""
        idx = self.cols[mask]
        self.x[:, idx] = x[:, mask]
        self.istop[idx] = istop[mask] if isinstance(istop, torch.Tensor) else istop
        self.itn[idx] = itn
        for name, value in stats.items():
            self.stats[name][idx] = value.expand(mask.shape)[mask]
        keep = ~mask
        self.cols = self.cols[keep]
        return keep


def _compact(state: dict[str, torch.Tensor], keep: torch.Tensor) -> None:
    for name, t in state.items():
        state[name] = t[..., keep]


def _start(op: LinearOperator, b: torch.Tensor, x0: torch.Tensor | None):
    """x, u = b - A x, beta = ||u||, v = A^T u / beta, alpha = ||v||, ||b||, normalised."""
    bnorm = op.range_sqnorm(b).sqrt()
    if x0 is None:
        x, u, beta = b.new_zeros(op.domain_size, b.shape[1]), b, bnorm
    else:
        x = x0.clone()
        u = b - op.matvec(x)
        beta = op.range_sqnorm(u).sqrt()
    u = u / _safe(beta).to(b.dtype)
    v = op.rmatvec(u)
    alpha = op.domain_sqnorm(v).sqrt()
    return x, u, v / _safe(alpha).to(b.dtype), beta, alpha, bnorm


def _bidiag_step(op: LinearOperator, state: dict[str, torch.Tensor]) -> torch.Tensor:
    """One Golub-Kahan step: beta u <- A v - alpha u, alpha v <- A^T u - beta v. Returns
    beta; a column with beta = 0 keeps v and alpha (its iteration is over).

    In place where the operator's products are fresh tensors: every elementwise pass over a
    length-m vector costs as much as a fifth of the sparse product itself.
    """
    dt = state["u"].dtype
    fresh = op.fresh_products
    u = op.matvec(state["v"])
    alpha = state["alpha"].to(dt)
    u = u.addcmul_(state["u"], alpha, value=-1) if fresh else u - alpha * state["u"]
    beta = op.range_sqnorm(u).sqrt()
    u.mul_(_safe(beta).reciprocal().to(dt))
    v = op.rmatvec(u)
    beta_dt = beta.to(dt)
    v = v.addcmul_(state["v"], beta_dt, value=-1) if fresh else v - beta_dt * state["v"]
    alpha = op.domain_sqnorm(v).sqrt()
    v.mul_(_safe(alpha).reciprocal().to(dt))
    pos = beta > 0
    state["u"] = u
    state["v"] = torch.where(pos, v, state["v"])
    state["alpha"] = torch.where(pos, alpha, state["alpha"])
    return beta


def _lsqr_kernel(op: LinearOperator, b: torch.Tensor, x0: torch.Tensor | None,
                 o: _Options) -> _Columns:
    """Paige & Saunders (1982), sec. 4-6 (the recurrences of their LSQR, column-wise)."""
    n, k = op.domain_size, b.shape[1]
    dt, eps = b.dtype, torch.finfo(b.dtype).eps
    max_iter = 2 * op.shape[1] if o.max_iter is None else o.max_iter
    ctol = 1.0 / o.conlim if o.conlim > 0 else 0.0
    dampsq = o.damp**2
    out = _Columns(n, k, b)
    x, u, v, beta, alpha, bnorm = _start(op, b, x0)
    z0 = torch.zeros_like(beta)
    s = {"x": x, "u": u, "v": v, "w": v.clone(), "alpha": alpha, "bnorm": bnorm,
         "rhobar": alpha, "phibar": beta, "anorm": z0, "ddnorm": z0, "res2": z0, "xxnorm": z0,
         "z": z0, "cs2": z0 - 1, "sn2": z0}
    # columns that are solved before the first step (istop 0): x = x0, or x = 0 when b = 0
    first = (alpha * beta == 0) | (bnorm == 0)
    s["x"] = torch.where(bnorm == 0, torch.zeros_like(x), x)
    if bool(first.any()):
        _compact(s, out.retire(first, s["x"], 0, 0, rnorm=beta, arnorm=alpha * beta,
                               xnorm=z0))
    itn = 0
    while out.cols.numel() and itn < max_iter:
        itn += 1
        alpha_old = s["alpha"]
        beta = _bidiag_step(op, s)
        alpha = s["alpha"]
        anorm = torch.where(beta > 0, (s["anorm"]**2 + alpha_old**2 + beta**2 + dampsq).sqrt(),
                            s["anorm"])
        rhobar, phibar = s["rhobar"], s["phibar"]
        if o.damp > 0:  # eliminate the damping row with a first rotation
            rhobar1 = (rhobar**2 + dampsq).sqrt()
            psi = (o.damp / rhobar1) * phibar
            phibar = (rhobar / rhobar1) * phibar
        else:
            rhobar1, psi = rhobar, torch.zeros_like(rhobar)
        cs, sn, rho = _sym_ortho(rhobar1, beta)
        theta, rhobar = sn * alpha, -cs * alpha
        phi, phibar = cs * phibar, sn * phibar
        tau = sn * phi
        w = s["w"]
        ddnorm = s["ddnorm"] + op.domain_sqnorm(w) / rho**2
        s["x"] = s["x"].addcmul_(w, (phi / rho).to(dt))  # x and w are the kernel's own
        s["w"] = w.mul_((-theta / rho).to(dt)).add_(s["v"])
        # ||x|| from the lower-bidiagonal factorisation (Paige & Saunders 1982, sec. 5.2)
        delta, gambar = s["sn2"] * rho, -s["cs2"] * rho
        rhs = phi - delta * s["z"]
        xnorm = (s["xxnorm"] + (rhs / gambar)**2).sqrt()
        gamma = (gambar**2 + theta**2).sqrt()
        s["cs2"], s["sn2"], s["z"] = gambar / gamma, theta / gamma, rhs / gamma
        s["xxnorm"] = s["xxnorm"] + s["z"]**2
        acond = anorm * ddnorm.sqrt()
        s["res2"] = s["res2"] + psi**2
        rnorm = (phibar**2 + s["res2"]).sqrt()
        arnorm = alpha * tau.abs()
        r1norm = (rnorm**2 - dampsq * s["xxnorm"]).abs().sqrt() if o.damp > 0 else rnorm
        s.update(anorm=anorm, ddnorm=ddnorm, rhobar=rhobar, phibar=phibar)
        bnorm = s["bnorm"]
        test1 = rnorm / bnorm
        test2 = arnorm / (anorm * rnorm + eps)
        test3 = 1.0 / (acond + eps)
        t1 = test1 / (1 + anorm * xnorm / bnorm)
        rtol = o.btol + o.atol * anorm * xnorm / bnorm
        code = _stop_code(itn >= max_iter, test1, test2, test3, t1, rtol, o.atol, ctol,
                          eps / 2)
        stopped = code != 0
        if bool(stopped.any()):
            keep = out.retire(stopped, s["x"], code, itn, rnorm=r1norm, arnorm=arnorm,
                              anorm=anorm, acond=acond, xnorm=xnorm)
            _compact(s, keep)
    if out.cols.numel():  # max_iter = 0
        out.retire(torch.ones_like(s["bnorm"], dtype=torch.bool), s["x"], 0, itn,
                   rnorm=s["phibar"], arnorm=s["alpha"] * s["phibar"],
                   xnorm=op.domain_sqnorm(s["x"]).sqrt())
    return out


def _lsmr_kernel(op: LinearOperator, b: torch.Tensor, x0: torch.Tensor | None,
                 o: _Options) -> _Columns:
    """Fong & Saunders (2011), algorithm 1 with the norm estimates of their sec. 4 (column-wise)."""
    n, k = op.domain_size, b.shape[1]
    dt, eps = b.dtype, torch.finfo(b.dtype).eps
    max_iter = min(op.shape) if o.max_iter is None else o.max_iter
    ctol = 1.0 / o.conlim if o.conlim > 0 else 0.0
    damp = o.damp
    out = _Columns(n, k, b)
    x, u, v, beta, alpha, bnorm = _start(op, b, x0)
    z0, one = torch.zeros_like(beta), torch.ones_like(beta)
    s = {"x": x, "u": u, "v": v, "h": v.clone(), "hbar": torch.zeros_like(v), "alpha": alpha,
         "bnorm": bnorm, "zetabar": alpha * beta, "alphabar": alpha, "rho": one,
         "rhobar": one, "cbar": one, "sbar": z0, "betadd": beta, "betad": z0, "rhodold": one,
         "tautildeold": z0, "thetatilde": z0, "zeta": z0, "d": z0, "normA2": alpha**2,
         "maxrbar": z0, "minrbar": z0 + 1e100}
    first = (alpha * beta == 0) | (bnorm == 0)
    s["x"] = torch.where(bnorm == 0, torch.zeros_like(x), x)
    if bool(first.any()):
        _compact(s, out.retire(first, s["x"], 0, 0, rnorm=beta, arnorm=alpha * beta,
                               anorm=alpha, acond=one, xnorm=z0))
    itn = 0
    while out.cols.numel() and itn < max_iter:
        itn += 1
        beta = _bidiag_step(op, s)
        alpha = s["alpha"]
        # rotations P_k (damping), Q_k (the bidiagonal) and Qbar_k (the second QR)
        chat, shat, alphahat = _sym_ortho(s["alphabar"], torch.full_like(alpha, damp))
        rhoold = s["rho"]
        c, sk, rho = _sym_ortho(alphahat, beta)
        thetanew = sk * alpha
        s["alphabar"] = c * alpha
        rhobarold, zetaold = s["rhobar"], s["zeta"]
        thetabar = s["sbar"] * rho
        rhotemp = s["cbar"] * rho
        cbar, sbar, rhobar = _sym_ortho(s["cbar"] * rho, thetanew)
        zeta = cbar * s["zetabar"]
        zetabar = -sbar * s["zetabar"]
        # h, hbar and x
        hbar = s["hbar"].mul_((-thetabar * rho / (rhoold * rhobarold)).to(dt)).add_(s["h"])
        s["x"] = s["x"].addcmul_(hbar, (zeta / (rho * rhobar)).to(dt))
        s["h"] = s["h"].mul_((-thetanew / rho).to(dt)).add_(s["v"])
        # ||r||: rotations applied to (beta_1 e_1), Fong & Saunders (2011) sec. 4.1
        betaacute = chat * s["betadd"]
        betacheck = -shat * s["betadd"]
        betahat = c * betaacute
        betadd = -sk * betaacute
        thetatildeold = s["thetatilde"]
        ctildeold, stildeold, rhotildeold = _sym_ortho(s["rhodold"], thetabar)
        thetatilde = stildeold * rhobar
        rhodold = ctildeold * rhobar
        betad = -stildeold * s["betad"] + ctildeold * betahat
        tautildeold = (zetaold - thetatildeold * s["tautildeold"]) / rhotildeold
        taud = (zeta - thetatilde * tautildeold) / rhodold
        d = s["d"] + betacheck**2
        normr = (d + (betad - taud)**2 + betadd**2).sqrt()
        # ||A|| and cond(A), sec. 4.2-4.3
        anorm = (s["normA2"] + beta**2).sqrt()
        normA2 = anorm**2 + alpha**2
        maxrbar = torch.maximum(s["maxrbar"], rhobarold)
        minrbar = torch.minimum(s["minrbar"], rhobarold) if itn > 1 else s["minrbar"]
        acond = torch.maximum(maxrbar, rhotemp) / torch.minimum(minrbar, rhotemp)
        normar = zetabar.abs()
        xnorm = op.domain_sqnorm(s["x"]).sqrt()
        s.update(hbar=hbar, rho=rho, rhobar=rhobar, cbar=cbar, sbar=sbar, zeta=zeta,
                 zetabar=zetabar, betadd=betadd, thetatilde=thetatilde, rhodold=rhodold,
                 betad=betad, tautildeold=tautildeold, d=d, normA2=normA2, maxrbar=maxrbar,
                 minrbar=minrbar)
        bnorm = s["bnorm"]
        test1 = normr / bnorm
        prod = anorm * normr
        test2 = torch.where(prod > 0, normar / _safe(prod), math.inf)
        test3 = 1.0 / acond
        t1 = test1 / (1 + anorm * xnorm / bnorm)
        rtol = o.btol + o.atol * anorm * xnorm / bnorm
        code = _stop_code(itn >= max_iter, test1, test2, test3, t1, rtol, o.atol, ctol,
                          eps / 2)
        stopped = code != 0
        if bool(stopped.any()):
            # normr includes the damping rows: ||b - A x||^2 = normr^2 - d^2 ||x||^2
            rnorm = (normr**2 - damp**2 * xnorm**2).clamp_min(0).sqrt() if damp else normr
            _compact(s, out.retire(stopped, s["x"], code, itn, rnorm=rnorm, arnorm=normar,
                                   anorm=anorm, acond=acond, xnorm=xnorm))
    if out.cols.numel():  # max_iter = 0
        out.retire(torch.ones_like(s["bnorm"], dtype=torch.bool), s["x"], 0, itn,
                   rnorm=s["betadd"], arnorm=s["zetabar"], anorm=s["normA2"].sqrt(),
                   acond=torch.ones_like(s["bnorm"]), xnorm=op.domain_sqnorm(s["x"]).sqrt())
    return out


_KERNELS = {"lsqr": _lsqr_kernel, "lsmr": _lsmr_kernel}


def _solve(method: str, op: LinearOperator, b: torch.Tensor, x0: torch.Tensor | None,
           o: _Options) -> _Columns:
    with torch.no_grad():
        return _KERNELS[method](op, b, x0, o)


# ----------------------------------------------------------------------------- autograd


class _LSQSolve(torch.autograd.Function):
    """x(A, b) for b (m, k); the stop statistics ride along as non-differentiable outputs.

    No ``generate_vmap_rule``: the iteration's length is data-dependent (a host decision
    per step), which vmap cannot batch; k columns of ``b`` are the batching that works.
    """

    @staticmethod
    def forward(A: torch.Tensor | None, b: torch.Tensor, x0: torch.Tensor | None,
                op: LinearOperator, method: str, o: _Options) -> tuple[torch.Tensor, ...]:
        res = _solve(method, op, b, x0, o)
        st = res.stats
        return (res.x, res.istop, res.itn, st["rnorm"], st["arnorm"], st["anorm"],
                st["acond"], st["xnorm"])

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        _, b, _, op, method, o = inputs
        ctx.mark_non_differentiable(*output[1:])
        ctx.save_for_backward(output[0], b)
        ctx.op, ctx.method, ctx.options = op, method, o

    # Implicit gradient. The minimiser of ||A x - b||^2 + d^2 ||x||^2 solves the normal
    # equations M x = A^T b with M = A^T A + d^2 I (invertible when d > 0 or A has full
    # column rank). Differentiating, with r = b - A x:
    #     M dx = dA^T b - dA^T A x - A^T dA x + A^T db = dA^T r - A^T dA x + A^T db,
    # so for an upstream gradient g = dL/dx and w = M^{-1} g (M symmetric),
    #     dL = <w, dx M> = <r w^T - (A w) x^T, dA> + <A w, db>:
    #     grad_b = A w,        grad_A = r w^T - (A w) x^T   (summed over the k columns),
    # the latter evaluated only at A's stored entries for a sparse A (the gradient of its
    # values; entries outside the pattern are not variables).
    # Getting w without forming M (which squares cond(A)): with Ab = [A; d I] ((m+n) x n,
    # just A when d = 0) M = Ab^T Ab, and
    #  1. f = the minimum-norm solution of the consistent system Ab^T f = g, one LSQR/LSMR
    #     solve with Ab^T. The minimum-norm solution lies in range(Ab): f = Ab M^{-1} g =
    #     [A w; d w]. So grad_b = f[:m] with no further work.
    #  2. w = argmin ||Ab w - f||, a second solve with Ab (consistent: f = Ab w), needed only
    #     for grad_A. (w = f[m:] / d would skip it for d > 0, but loses relative accuracy
    #     as d -> 0, where d w is a small part of f.)
    # Both solves use the forward's method and tolerances; gradcheck needs them tight.
    # Rank-deficient A with d = 0: LSQR/LSMR give the minimum-norm (pseudo-inverse)
    # solutions, so grad_b = (A^+)^T g is still right; grad_A then misses the terms of the
    # pseudo-inverse's derivative that move the null space (Golub & Pereyra 1973).
    # First order only (once_differentiable): differentiating the solves again would need
    # the derivative of the stopping rules.
    @staticmethod
    @once_differentiable
    def backward(ctx: Any, gx: torch.Tensor | None, *_: Any) -> tuple[torch.Tensor | None, ...]:
        need_a, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if gx is None or not (need_a or need_b):
            return None, None, None, None, None, None
        x, b = ctx.saved_tensors
        op, o = ctx.op, ctx.options
        o = o._replace(damp=0.0)  # the damping lives in the stacked operator
        stacked = DampedStack(op, ctx.options.damp) if ctx.options.damp > 0 else op
        f = _solve(ctx.method, stacked.T, gx, None, o).x
        aw = f[:op.range_size]
        grad_a = None
        if need_a:
            w = _solve(ctx.method, stacked, f, None, o).x
            r = b - op.matvec(x)
            grad_a = op.outer_grad(torch.cat([r, -aw], 1), torch.cat([w, x], 1))
        return grad_a, aw if need_b else None, None, None, None, None


# ----------------------------------------------------------------------------- public


def _check_vector(op_name: str, name: str, t: object, size: int, size_name: str,
                  ndim: int | None = None) -> torch.Tensor:
    t = check_tensor(op_name, name, t)
    check_real_floating(op_name, name, t)
    ok = t.layout == torch.strided and t.dim() in (1, 2) and t.shape[0] == size
    if not ok or (ndim is not None and t.dim() != ndim):
        want = {1: f"({size_name},)", 2: f"({size_name}, k)"}.get(ndim or 0,
                                                                  f"({size_name},) or "
                                                                  f"({size_name}, k)")
        raise ShapeError(f"{op_name}: expected a dense {name} of shape {want} with "
                         f"{size_name} = {size}, but got {describe(name, t)}"
                         + ("" if t.layout == torch.strided else f", layout={t.layout}"))
    return t


def _lsq(method: str, A: Any, b: Any, damp: float, atol: float, btol: float, conlim: float,
         max_iter: int | None, x0: Any, check: bool) -> LSQResult:
    b = check_tensor(method, "b", b)
    check_real_floating(method, "b", b)
    op = as_operator(A, op=method, dtype=b.dtype, device=b.device)
    m, n = op.shape
    b = _check_vector(method, "b", b, op.range_size, "m")
    ref = op.tensor if op.tensor is not None else None
    if ref is not None:
        check_same_device_dtype(method, "A", ref, "b", b)
    elif b.dtype != op.dtype or b.device != op.device:
        raise DTypeError(f"{method}: expected b with A's dtype {op.dtype} and device "
                         f"{op.device}, but got {describe('b', b)}")
    if x0 is not None:
        x0 = _check_vector(method, "x0", x0, op.domain_size, "n", b.dim())
        check_same_device_dtype(method, "b", b, "x0", x0)
        if x0.dim() == 2 and x0.shape[1] != b.shape[1]:
            raise ShapeError(f"{method}: expected x0 of shape (n, k) with k = b.shape[1] = "
                             f"{b.shape[1]}, but got {describe('x0', x0)}")
    for name, value in (("damp", damp), ("atol", atol), ("btol", btol), ("conlim", conlim)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ShapeError(f"{method}: expected {name} to be a finite float >= 0, but got "
                             f"{value!r}")
    if max_iter is not None and not (isinstance(max_iter, int) and max_iter >= 0):
        raise ShapeError(f"{method}: expected max_iter to be None or an int >= 0, but got "
                         f"{max_iter!r}")
    if check:
        if ref is not None:
            check_finite(method, "A", ref.values() if ref.layout != torch.strided else ref)
        check_finite(method, "b", b)
        if x0 is not None:
            check_finite(method, "x0", x0)
    o = _Options(float(damp), float(atol), float(btol), float(conlim), max_iter)
    one = b.dim() == 1
    b2 = b.unsqueeze(-1) if one else b
    x02 = None if x0 is None else (x0.unsqueeze(-1) if one else x0).detach()
    x, istop, itn, *norms = _LSQSolve.apply(ref, b2, x02, op, method, o)
    if one:
        x, istop, itn, norms = x.squeeze(-1), istop[0], itn[0], [t[0] for t in norms]
    reasons = [STOP_REASONS[i] for i in istop.reshape(-1).tolist()]
    info = LSQInfo(istop, itn, *(t.to(b.dtype) for t in norms),
                   stop_reason=reasons[0] if one else tuple(reasons))
    return LSQResult(x, info)


_DOC = r"""Least squares {what} for a sparse, dense or matrix-free ``A``.

    .. math::
        x = \arg\min_x \|A x - b\|_2^2 + \text{{damp}}^2 \|x\|_2^2

    {algo} The stopping rules and stop reasons are those of ``scipy.sparse.linalg.{name}``
    (``istop`` 0-7, :data:`STOP_REASONS`), applied to each column of ``b`` separately; a
    singular, rank-deficient or inconsistent system is reported there, never raised.

    Args:
        A: ``(m, n)``: a dense, ``torch.sparse_coo`` or ``torch.sparse_csr`` tensor, a
            :class:`~difflinalg.sparse._operator.LinearOperator` (build it once with
            ``as_operator(A)`` to reuse the sparse transpose across solves), or a tuple
            ``(matvec, rmatvec, (m, n))`` of callables on ``(n, k)`` / ``(m, k)`` tensors.
        b: ``(m,)`` or ``(m, k)``; ``k`` right-hand sides solved together, each with its own
            test, iteration count and stop reason.
        damp: damping ``d >= 0`` (Tikhonov).
        atol, btol: relative tolerances on ``||A^T r||`` and ``||r||`` (scipy's meaning).
        conlim: stop when the estimate of ``cond([A; d I])`` exceeds it (0: never).
        max_iter: iteration limit per column; default ``{default}``.
        x0: ``(n,)`` or ``(n, k)`` starting guess (not differentiated).
        check: raise on non-finite ``A``, ``b``, ``x0`` (a device sync).

    Returns:
        ``LSQResult(x, info)``: ``x`` of shape ``(n,)`` or ``(n, k)`` and an
        :class:`LSQInfo` (istop, iterations, residual_norm ``||b - A x||``,
        normal_residual_norm ``||A^T r - d^2 x||``, anorm, acond, xnorm, stop_reason).

    Differentiable (first order) in ``b`` and in ``A``'s values (dense, COO, CSR; the
    gradient of a sparse ``A`` is sparse with ``A``'s indices) by implicit
    differentiation: two more solves of the same kind per backward. Exact for ``damp > 0``
    or ``A`` of full column rank, to the accuracy of the solves (use tight ``atol``,
    ``btol`` when the gradient matters). float32 and float64, any device; each step makes
    one host sync (the stopping decision).

    Raises:
        ShapeError: mismatched shapes, unsupported layouts, invalid options, non-finite
            inputs with ``check=True``.
        DTypeError: non-floating or complex inputs, dtype or device mismatches.

    References:
        {ref}

    Example:
        >>> import torch
        >>> A = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]).to_sparse_csr()
        >>> res = {name}(A, torch.tensor([1.0, 2.0, 2.0]), atol=1e-8, btol=1e-8)
        >>> res.x, res.info.stop_reason
        (tensor([1., 1.]), 'A x - b is small enough, given atol and btol')
"""


def lsqr(A: Any, b: torch.Tensor, *, damp: float = 0.0, atol: float = 1e-6,
         btol: float = 1e-6, conlim: float = 1e8, max_iter: int | None = None,
         x0: torch.Tensor | None = None, check: bool = False) -> LSQResult:
    return _lsq("lsqr", A, b, damp, atol, btol, conlim, max_iter, x0, check)


def lsmr(A: Any, b: torch.Tensor, *, damp: float = 0.0, atol: float = 1e-6,
         btol: float = 1e-6, conlim: float = 1e8, max_iter: int | None = None,
         x0: torch.Tensor | None = None, check: bool = False) -> LSQResult:
    return _lsq("lsmr", A, b, damp, atol, btol, conlim, max_iter, x0, check)


lsqr.__doc__ = _DOC.format(
    what="by LSQR", name="lsqr", default="2 n",
    algo="LSQR (Paige & Saunders 1982): conjugate gradients on the normal equations, "
         "through the Golub-Kahan bidiagonalisation of ``A`` (never forming ``A^T A``).",
    ref="C. C. Paige, M. A. Saunders, \"LSQR: An algorithm for sparse linear equations "
        "and sparse least squares\", ACM TOMS 8(1), 43-71, 1982.")
lsmr.__doc__ = _DOC.format(
    what="by LSMR", name="lsmr", default="min(m, n)",
    algo="LSMR (Fong & Saunders 2011): MINRES on the normal equations through the same "
         "bidiagonalisation as LSQR; ``||A^T r||`` decreases monotonically, so it can "
         "stop earlier on inconsistent problems.",
    ref="D. C.-L. Fong, M. A. Saunders, \"LSMR: An iterative algorithm for sparse "
        "least-squares problems\", SIAM J. Sci. Comput. 33(5), 2950-2971, 2011.")
