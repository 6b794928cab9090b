r"""Engine of the symmetric eigendecomposition and of spectral matrix functions (private).

For a symmetric ``A = V diag(lam) V^T`` and a scalar function ``f``, ``F(A) = V f(lam) V^T`` has
the Frechet derivative (Daleckii & Krein 1965; Bhatia, *Matrix Analysis*, V.3)

.. math::
    DF(A)[E] = V \bigl(\Delta \circ (V^T E V)\bigr) V^T,\qquad
    \Delta_{ij} = f[l_i, l_j] = \frac{f(l_i) - f(l_j)}{l_i - l_j},\quad \Delta_{ii} = f'(l_i),

the Loewner matrix of first divided differences. The map is self-adjoint, so the same
formula is the backward (with ``E = sym(dL/dF)``) and the forward-mode rule. It involves no
``1/(l_i - l_j)`` once the divided differences are formed without cancellation, which is
why it stays exact at repeated eigenvalues, where the eigenvector derivative does not exist.

This module holds the divided differences (generic and closed forms), the gap mask of the
eigenvector backward, and the clamp policy of the PSD functions. The autograd.Functions and
the public API are in :mod:`difflinalg.spectral`; the derivations in
``docs/derivations/spectral.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ._triangular import plain_tensor

__all__ = ["SpectralFn", "derivative_map", "divided_differences", "eigvec_gaps",
           "floor_terms", "has_clusters", "inplace_ok", "named", "symmetrize"]


def symmetrize(a: torch.Tensor) -> torch.Tensor:
    """(A + A^T) / 2 (one allocation)."""
    return (a + a.mT).mul_(0.5)


def _pairs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.unsqueeze(-1), x.unsqueeze(-2)


def _scale(lam: torch.Tensor) -> torch.Tensor:
    """Per-matrix spectral scale max |lam| (*, 1, 1), never zero."""
    tiny = torch.finfo(lam.dtype).tiny
    return lam.abs().amax(-1, keepdim=True).unsqueeze(-1).clamp_min(tiny)


def has_clusters(lam: torch.Tensor, rtol: float) -> bool | None:
    """Whether two neighbouring (sorted) eigenvalues are within ``rtol * max|l|``.

    None where it cannot be decided for free (inside torch.func transforms, or off the CPU,
    where it would cost a device sync). Computed once in the forward, where it is a
    rounding error next to the eigensolve, so that the backward can skip the n x n mask.
    """
    if not lam.is_cpu or not plain_tensor(lam):
        return None
    if lam.shape[-1] < 2 or lam.numel() == 0:
        return False
    with torch.no_grad():
        tol = lam.abs().amax(-1, keepdim=True).mul_(rtol)
        return bool((torch.diff(lam) <= tol).any())


def eigvec_gaps(lam: torch.Tensor, rtol: float, scale: float = 1.0,
                cols: tuple[int, int] | None = None,
                clustered: bool | None = None) -> torch.Tensor:
    """D_ij = scale * (l_j - l_i), set to inf where |l_j - l_i| <= rtol * max|l| (the
    diagonal too), so that X / D is the masked X_ij / (l_j - l_i) in one division; with
    ``cols = (start, stop)`` only those columns j (n x k, for the top-k pairs).

    The tolerance is relative to the matrix's spectral scale, so the mask means "equal to
    working precision", whatever the units of A (an absolute 1e-9 masks nothing for a
    matrix of scale 1e6 and everything for one of scale 1e-12). Dividing by inf gives exact
    zeros, and zero derivatives, without a select.
    """
    ls = lam * scale if scale != 1.0 else lam
    li, lj = _pairs(ls)
    d = lj - li if cols is None else lj[..., cols[0]:cols[1]] - li
    inplace = inplace_ok(d)
    if clustered is None and inplace:
        clustered = has_clusters(lam, rtol)
    if inplace and clustered is False:
        # sorted, no two neighbours within tol: only the diagonal is masked, no n^2 pass
        diag = d if cols is None else d[..., cols[0]:cols[1], :]
        diag.diagonal(dim1=-2, dim2=-1).fill_(float("inf"))
        return d
    # tolerance (*, 1, 1); an all-zero spectrum gets tol = 0, which still masks exact ties
    tol = ls.abs().amax(-1, keepdim=True).unsqueeze(-1).mul_(rtol)
    close = d.abs() <= tol
    if not inplace:
        return d.masked_fill(close, float("inf"))
    return d.masked_fill_(close, float("inf"))



def inplace_ok(*tensors: torch.Tensor) -> bool:
    """In-place updates are safe: no graph being recorded, no torch.func wrapper."""
    return not torch.is_grad_enabled() and all(plain_tensor(t) for t in tensors)


def _any(mask: torch.Tensor) -> bool:
    """mask.any() where that is free (a plain CPU tensor); True elsewhere: no device sync,
    and inside torch.func transforms (vmap) a data-dependent branch cannot be taken."""
    return not mask.is_cpu or not plain_tensor(mask) or bool(mask.any())


def derivative_map(fn: SpectralFn, lam: torch.Tensor, v: torch.Tensor,
                   e: torch.Tensor) -> torch.Tensor:
    """(Loewner term of DF(A)[E], V^T E V) for symmetric E; the Loewner term is self-adjoint,
    so it is the backward too. The PSD clamp adds :func:`floor_terms`."""
    inner = v.mT @ e @ v
    delta = fn.dd(lam)
    if not inplace_ok(delta, inner) or delta.shape != inner.shape:
        return v @ (delta * inner) @ v.mT, inner
    return v @ delta.mul_(inner) @ v.mT, inner


def floor_terms(fn: SpectralFn, lam: torch.Tensor, v: torch.Tensor, inner: torch.Tensor,
                *, adjoint: bool) -> torch.Tensor | None:
    """The clamp-level part of DF(A)[E] (adjoint=False) or of its adjoint (adjoint=True)."""
    if fn.floor_weight is None:
        return None
    w = fn.floor_weight(lam)
    if not _any(w != 0):
        return None
    top = v[..., :, -1:]
    if adjoint:
        s = (w * inner.diagonal(dim1=-2, dim2=-1)).sum(-1)
        return s[..., None, None] * (top @ top.mT)
    dc = inner[..., -1:, -1:]
    return (v * w.unsqueeze(-2)) @ v.mT * dc


# ----------------------------------------------------------------------------- functions


@dataclass(frozen=True)
class SpectralFn:
    """A scalar function applied to eigenvalues, with its Loewner divided differences.

    ``value(lam)`` and ``dd(lam)`` act on the eigenvalues ``lam`` (*, n); ``dd`` returns the
    (*, n, n) matrix of first divided differences of the function actually applied (the
    clamped one for the PSD functions). ``name`` is used in error messages.
    """

    name: str
    value: Callable[[torch.Tensor], torch.Tensor]
    dd: Callable[[torch.Tensor], torch.Tensor]
    psd: bool = False
    # PSD functions: lam -> (*, n) weights w with dF = V diag(w) V^T * (v_n^T dA v_n) the part
    # of the derivative that moves the clamp level c = eps * l_max (v_n: top eigenvector)
    floor_weight: Callable[[torch.Tensor], torch.Tensor] | None = None


def divided_differences(lam: torch.Tensor, fl: torch.Tensor, dfl: torch.Tensor) -> torch.Tensor:
    """Generic f[l_i, l_j] from values f(lam) and derivatives f'(lam).

    The difference quotient loses about eps * |f| / |l_i - l_j| to cancellation; the mean of
    the derivatives errs by O(|l_i - l_j|^2 |f'''|). The switch at a relative gap of
    eps^(1/3) balances the two (Higham, *Functions of Matrices*, 2008, sec. 4.6/11.2).
    """
    li, lj = _pairs(lam)
    fi, fj = _pairs(fl)
    di, dj = _pairs(dfl)
    d = li - lj
    close = d.abs() <= torch.finfo(lam.dtype).eps ** (1.0 / 3.0) * _scale(lam)
    quotient = (fi - fj) / torch.where(close, torch.ones_like(d), d)
    return torch.where(close, 0.5 * (di + dj), quotient)


def _derivative(f: Callable[[torch.Tensor], torch.Tensor], lam: torch.Tensor) -> torch.Tensor:
    """f'(lam) for an elementwise f: torch.func.grad of f on each scalar, vmapped.

    (Forward mode would be one call, but it cannot nest inside a forward-mode pass, which is
    where the jvp rule of matrix_function runs.)
    """
    flat = lam.reshape(-1)
    return torch.func.vmap(torch.func.grad(f))(flat).reshape(lam.shape)


def generic(f: Callable[[torch.Tensor], torch.Tensor],
            df: Callable[[torch.Tensor], torch.Tensor] | None) -> SpectralFn:
    def dd(lam: torch.Tensor) -> torch.Tensor:
        dfl = df(lam) if df is not None else _derivative(f, lam)
        return divided_differences(lam, f(lam), dfl)

    return SpectralFn(getattr(f, "__name__", "f"), f, dd)


def _floor(lam: torch.Tensor, eps: float) -> torch.Tensor:
    """Clamp level c = eps * max(l_max, tiny) per matrix (*, 1)."""
    tiny = torch.finfo(lam.dtype).tiny
    return eps * lam.amax(-1, keepdim=True).clamp_min(tiny)


def _clamp_dd(lam: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(max(lam, c), divided differences of x -> max(x, c)).

    Divided differences of a composition factor exactly: (f o g)[x, y] = f[g(x), g(y)] g[x, y].
    g[x, y] is 1 when both are above c, 0 when both are below, and (g(x) - g(y)) / (x - y)
    (no cancellation: x and y lie on both sides of c) otherwise.
    """
    lt = torch.maximum(lam, c)
    above = lam >= c
    if not _any(~above):  # nothing clamped: g = 1
        return lt, torch.ones((), dtype=lam.dtype, device=lam.device)
    ai, aj = _pairs(above)
    li, lj = _pairs(lam)
    ti, tj = _pairs(lt)
    mixed = ai != aj
    d = torch.where(mixed, li - lj, torch.ones_like(li - lj))
    g = torch.where(mixed, (ti - tj) / d, (ai & aj).to(lam.dtype))
    return lt, g


def _log_ratio(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    xi, xj = _pairs(x)
    return torch.log(xi) - torch.log(xj), xi, xj


def _pow_dd(x: torch.Tensor, p: float) -> torch.Tensor:
    """(x_i^p - x_j^p) / (x_i - x_j) = x_j^(p-1) expm1(p r) / expm1(r), r = log(x_i/x_j) > -inf."""
    r, _, xj = _log_ratio(x)
    em = torch.expm1(r)
    zero = em == 0
    ratio = torch.where(zero, torch.full_like(r, p),
                        torch.expm1(p * r) / torch.where(zero, torch.ones_like(em), em))
    return xj.pow(p - 1.0) * ratio


def _log_dd(x: torch.Tensor) -> torch.Tensor:
    """(log x_i - log x_j) / (x_i - x_j) = r / (x_j expm1(r))."""
    r, _, xj = _log_ratio(x)
    em = torch.expm1(r)
    zero = em == 0
    return torch.where(zero, 1.0 / xj.expand_as(r),
                       r / (xj * torch.where(zero, torch.ones_like(em), em)))


def _exp_dd(lam: torch.Tensor) -> torch.Tensor:
    """(e^x - e^y) / (x - y) = e^max (-expm1(-d)) / d, d = |x - y| (no overflow below e^max)."""
    li, lj = _pairs(lam)
    hi = torch.maximum(li, lj)
    d = (li - lj).abs()
    zero = d == 0
    return torch.exp(hi) * torch.where(zero, torch.ones_like(d),
                                       -torch.expm1(-d) / torch.where(zero, torch.ones_like(d), d))


def _psd(name: str, value: Callable[[torch.Tensor], torch.Tensor],
         dd: Callable[[torch.Tensor], torch.Tensor],
         deriv: Callable[[torch.Tensor], torch.Tensor], eps: float) -> SpectralFn:
    def val(lam: torch.Tensor) -> torch.Tensor:
        return value(torch.maximum(lam, _floor(lam, eps)))

    def ddc(lam: torch.Tensor) -> torch.Tensor:
        lt, g = _clamp_dd(lam, _floor(lam, eps))
        return dd(lt) * g

    def floor_weight(lam: torch.Tensor) -> torch.Tensor:
        # c = eps * l_max moves with A (dc = eps v_n^T dA v_n) while l_max is above the
        # tiny floor; every clamped eigenvalue then contributes f'(c) dc
        c = _floor(lam, eps)
        moving = (lam.amax(-1, keepdim=True) > torch.finfo(lam.dtype).tiny).to(lam.dtype)
        return (lam < c).to(lam.dtype) * (eps * moving) * deriv(c)

    return SpectralFn(name, val, ddc, psd=True, floor_weight=floor_weight)


def named(name: str, *, eps: float | None = None, p: float | None = None) -> SpectralFn:
    """The closed-form spectral functions: sqrt, inv_sqrt, pow, log (PSD, clamped at
    ``eps * l_max``) and exp."""
    if name == "exp":
        return SpectralFn("expm_sym", torch.exp, _exp_dd)
    assert eps is not None
    if name == "sqrt":
        def sqrt_dd(x: torch.Tensor) -> torch.Tensor:
            si, sj = _pairs(x.sqrt())
            return (si + sj).reciprocal()
        return _psd("sqrtm_psd", torch.sqrt, sqrt_dd, lambda c: 0.5 * torch.rsqrt(c), eps)
    if name == "inv_sqrt":
        def inv_sqrt_dd(x: torch.Tensor) -> torch.Tensor:
            si, sj = _pairs(x.sqrt())
            return -1.0 / (si * sj * (si + sj))
        return _psd("inv_sqrtm_psd", torch.rsqrt, inv_sqrt_dd,
                    lambda c: -0.5 * c.pow(-1.5), eps)
    if name == "pow":
        assert p is not None
        pf = float(p)
        return _psd("powm_psd", lambda x: x.pow(pf), lambda x: _pow_dd(x, pf),
                    lambda c: pf * c.pow(pf - 1.0), eps)
    if name == "log":
        return _psd("logm_spd", torch.log, _log_dd, lambda c: 1.0 / c, eps)
    raise ValueError(f"unknown spectral function {name!r}")
