r"""Data-aware low-rank factorization of linear maps: the closed-form optimum of the output error.

:func:`factorize_matrix` replaces a ``D x M`` weight ``W`` (``Y = X W + bias``) by two thin
factors ``Wa`` (``D x k``) and ``Wb`` (``k x M``) and a new bias ``b`` minimising the error on
the outputs the layer actually produces,

.. math::
    \min_{W_a, W_b, b}\ \| Y - (X W_a W_b + \mathbf{1} b^T) \|_F^2 ,

with the contract of MosaicML Composer's ``factorize_matrix`` / ``LowRankSolution`` (same
arguments, shapes and rank conventions), so code written for it can switch. Composer
approaches this objective by alternating least squares from an SVD start; it has a
closed-form global optimum (reduced-rank regression, A. J. Izenman, "Reduced-rank regression
for the multivariate linear model", J. Multivariate Anal. 5(2), 1975):

1. centre: ``Xc = X - 1 xbar^T``, ``Yc = Y - 1 ybar^T`` (the optimal ``b`` is
   ``ybar - Wb^T Wa^T xbar``, which removes the means);
2. whiten the inputs by the Cholesky factor of their Gram matrix, ``Xc^T Xc = L L^T``:
   ``Q = Xc L^{-T}`` has orthonormal columns and ``Xc B = Q (L^T B)``;
3. the best rank-``k`` ``Z = L^T B`` is the truncated SVD of ``Q^T Yc = L^{-1} Xc^T Yc``
   (Eckart-Young), so ``Wa = L^{-T} U_k S_k^{1/2}``, ``Wb = S_k^{1/2} V_k^T``;
4. the error is ``||Yc||^2 - sum_{i<=k} s_i^2``: every rank's error at once.

Only ``N``, the sums of ``x`` and ``y``, ``sum ||y||^2``, the ``D x D`` Gram matrix and the
``D x M`` cross matrix are needed, so ``X`` and ``Y`` may be streamed in chunks and are never
held whole (each chunk's products in the data's dtype, summed in float64; the solve is in
float64).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator

import torch

from ._checks import check_real_floating, check_tensor
from ._errors import DTypeError, ShapeError, describe

__all__ = ["LowRankSolution", "factorize_matrix", "factorize_conv2d", "OutputStats",
           "ConvPatchStats", "output_spectrum", "solve_from_stats", "pooled_variance",
           "conv_group_maps", "join_conv_factors", "compose_conv_factors"]

_ACC = torch.float64


@dataclasses.dataclass
class LowRankSolution:
    """Result of :func:`factorize_matrix` (fields and conventions of Composer's class).

    ``Wa`` ``(D, rank)`` and ``Wb`` ``(rank, M)`` with ``Y ~ X Wa Wb + bias``; when
    factorising cannot help (``rank >= min(D, M)``), ``Wa`` is the single ``(D, M)`` matrix,
    ``Wb`` is None and ``rank`` is -1. ``nmse`` is the mean squared error of the returned
    map on the given data divided by the variance of ``Y`` (over all its elements): 0 is
    exact, 1 is no better than predicting the mean.
    """

    Wa: torch.Tensor | None = None
    Wb: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    rank: int = -1
    nmse: float = 0.0


@dataclasses.dataclass
class OutputStats:
    """Streamed sufficient statistics of a linear least-squares problem ``Y ~ X B + b``.

    Inputs are shifted by the first chunk's mean ``shift`` (so that the products do not
    cancel): ``n`` samples, ``sx`` = sum of ``x - shift`` ``(D,)``, ``sy`` = sum of ``y``
    ``(M,)``, ``syy`` = sum of ``||y||^2``, ``gxx`` = ``sum (x - shift)(x - shift)^T``
    ``(D, D)``, ``gxy`` = ``sum (x - shift) y^T`` ``(D, M)``. Each chunk's products run in
    the data's dtype (a float32 GEMM for float32 activations: half the time of float64, and
    the shift keeps its rounding at the level of the data's own) and are summed in float64.
    """

    n: int
    shift: torch.Tensor | None
    sx: torch.Tensor
    sy: torch.Tensor
    syy: torch.Tensor
    gxx: torch.Tensor
    gxy: torch.Tensor

    @classmethod
    def empty(cls, d: int, m: int, device: torch.device) -> OutputStats:
        z = torch.zeros
        return cls(0, None, z(d, dtype=_ACC, device=device), z(m, dtype=_ACC, device=device),
                   z((), dtype=_ACC, device=device), z(d, d, dtype=_ACC, device=device),
                   z(d, m, dtype=_ACC, device=device))

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Accumulate a chunk ``x`` ``(n, D)``, ``y`` ``(n, M)``."""
        if x.shape[0] == 0:
            return
        work = torch.promote_types(x.dtype, y.dtype)
        if self.shift is None:
            self.shift = x.to(_ACC).mean(0)
        xs = x.to(work) - self.shift.to(work)
        y = y.to(work)
        self.n += x.shape[0]
        self.sx += xs.sum(0, dtype=_ACC)
        self.sy += y.sum(0, dtype=_ACC)
        self.syy += y.to(_ACC).square().sum()
        self.gxx += (xs.mT @ xs).to(_ACC)
        self.gxy += (xs.mT @ y).to(_ACC)

    def centred(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(xbar, ybar, Xc^T Xc, Xc^T Yc)."""
        xbar_s, ybar = self.sx / self.n, self.sy / self.n
        gxx = self.gxx - self.n * torch.outer(xbar_s, xbar_s)
        gxy = self.gxy - self.n * torch.outer(xbar_s, ybar)
        return self.shift + xbar_s, ybar, gxx, gxy

    def variance(self) -> float:
        """Unbiased variance of all elements of Y (Composer's ``Y.var()``)."""
        return pooled_variance([self])

    def sse(self, B: torch.Tensor, b: torch.Tensor) -> float:
        """``||Y - X B - 1 b^T||_F^2`` of any map ``(B, b)``, from the statistics alone."""
        B = B.to(_ACC)
        b = b.to(_ACC) + self.shift @ B  # the same map written on x - shift
        quad = (B * (self.gxx @ B)).sum()
        cross = (B * self.gxy).sum()
        value = (self.syy - 2.0 * cross - 2.0 * b @ self.sy + quad
                 + 2.0 * b @ (B.mT @ self.sx) + self.n * b.square().sum())
        return max(float(value), 0.0)


def pooled_variance(stats: list[OutputStats]) -> float:
    """Unbiased variance of all output elements of ``stats`` taken together (the groups of a
    conv share their samples)."""
    count = sum(st.n * st.sy.shape[0] for st in stats)
    total = sum(float(st.sy.sum()) for st in stats)
    sq = sum(float(st.syy) for st in stats)
    return (sq - total * total / count) / max(count - 1, 1)


def conv_group_maps(weight: torch.Tensor, bias: torch.Tensor | None, groups: int
                    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per group, the conv as a ``(fan_in, out/groups)`` matrix and its bias (zeros if none)."""
    out_g = weight.shape[0] // groups
    maps = []
    for g in range(groups):
        w = weight[g * out_g:(g + 1) * out_g].reshape(out_g, -1).mT
        b = (torch.zeros(out_g, dtype=weight.dtype, device=weight.device) if bias is None
             else bias[g * out_g:(g + 1) * out_g])
        maps.append((w, b))
    return maps


def join_conv_factors(parts: list[LowRankSolution], weight_shape: torch.Size, rank: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-group factors -> ``(Wa (rank, in/g, kh, kw), Wb (out, rank/g, 1, 1), bias)``."""
    groups = len(parts)
    wa = torch.cat([p.Wa.mT for p in parts]).reshape(rank, *weight_shape[1:])
    wb = torch.cat([p.Wb.mT for p in parts]).reshape(weight_shape[0], rank // groups, 1, 1)
    return wa, wb, torch.cat([p.bias for p in parts])


def _chunks(op: str, name: str, data: torch.Tensor | Iterable[torch.Tensor]
            ) -> Iterator[torch.Tensor]:
    if isinstance(data, torch.Tensor):
        yield data
        return
    try:
        iterator = iter(data)
    except TypeError:
        raise DTypeError(f"{op}: expected {name} to be a tensor or an iterable of tensors, "
                         f"but got {type(data).__name__}") from None
    yield from iterator


def _whitening(gxx: torch.Tensor) -> torch.Tensor:
    """``W`` with ``W^T Gxx W = I`` on the range of ``Gxx``, as an upper-triangular
    ``L^{-T}`` from Cholesky, or from ``eigh`` when ``Gxx`` is (numerically) singular (fewer
    samples than features, constant features): then the minimum-norm optimum."""
    chol, info = torch.linalg.cholesky_ex(gxx)
    scale = gxx.diagonal().abs().max().clamp_min(torch.finfo(_ACC).tiny)
    if int(info) == 0:
        low = chol.diagonal().abs().min()
        if low * low > gxx.shape[0] * torch.finfo(_ACC).eps * scale:
            eye = torch.eye(gxx.shape[0], dtype=_ACC, device=gxx.device)
            return torch.linalg.solve_triangular(chol.mT, eye, upper=True)
    lam, v = torch.linalg.eigh(gxx)
    keep = lam > gxx.shape[0] * torch.finfo(_ACC).eps * scale
    return v[:, keep] * lam[keep].rsqrt()


def _resolve_rank(op: str, rank: int | float, d: int, current: int) -> int:
    if isinstance(rank, bool) or not isinstance(rank, (int, float)) or not rank > 0:
        raise ShapeError(f"{op}: expected rank to be a positive int or a fraction in (0, 1), "
                         f"but got rank={rank!r}")
    if rank < 1:  # a fraction of the input dimension (or of the current rank, if smaller)
        return max(1, min(int(rank * d), current))
    if rank != int(rank):
        raise ShapeError(f"{op}: expected an integer rank >= 1 or a fraction in (0, 1), but "
                         f"got rank={rank!r}")
    return int(rank)


def factorize_matrix(X: torch.Tensor | Iterable[torch.Tensor],
                     Y: torch.Tensor | Iterable[torch.Tensor] | None,
                     Wa: torch.Tensor, Wb: torch.Tensor | None = None,
                     bias: torch.Tensor | None = None, rank: int | float = 0.25,
                     n_iters: int = 3) -> LowRankSolution:
    r"""Best rank-``rank`` factorization ``X Wa Wb + bias`` of the outputs ``Y`` (closed form).

    Drop-in for Composer's ``factorize_matrix``: the same arguments and
    :class:`LowRankSolution`, but the global optimum of the objective (not an alternating
    least-squares approximation of it) and the true ``nmse`` (Composer's is computed against
    ``Y`` without the bias it was passed). See the module docstring for the math.

    Args:
        X: inputs ``(N, D)``, or an iterable of ``(n_i, D)`` chunks (streamed: only ``D x D``
            and ``D x M`` statistics are kept).
        Y: outputs ``(N, M)`` of the layer on ``X`` (chunks matching ``X``'s), or None for
            ``X W + bias`` with ``W = Wa`` (or ``Wa @ Wb``).
        Wa: the ``(D, M)`` weight, or the first factor ``(D, d)`` of an already factorised
            one (progressive rank reduction). Its dtype and device are the result's.
        Wb: the second factor ``(d, M)``, or None.
        bias: ``(M,)`` bias of the layer (used for ``Y=None``; the fitted bias replaces it).
        rank: latent size ``k``: an int, or a fraction in (0, 1) of ``D`` (capped at the
            current rank ``d``). ``k >= min(D, M)`` returns the best single matrix (rank -1);
            ``k >= d`` for factorised input returns ``Wa``, ``Wb`` unchanged (rank -1).
        n_iters: accepted for compatibility and ignored: the solution is exact.

    Returns:
        :class:`LowRankSolution` with ``Wa (D, k)``, ``Wb (k, M)``, ``bias (M,)``, ``rank``
        and ``nmse``.

    Raises:
        ShapeError (ValueError): bad rank, mismatched shapes, no samples.
        DTypeError (TypeError): non-floating or mismatched tensors.

    Example:
        >>> X = torch.randn(2000, 64) @ torch.randn(64, 64)     # correlated inputs
        >>> layer = torch.nn.Linear(64, 48)
        >>> sol = factorize_matrix(X, None, layer.weight.T.detach(), bias=layer.bias, rank=16)
        >>> sol.Wa.shape, sol.Wb.shape, sol.rank
        (torch.Size([64, 16]), torch.Size([16, 48]), 16)
    """
    op = "factorize_matrix"
    check_tensor(op, "Wa", Wa)
    check_real_floating(op, "Wa", Wa)
    if Wa.dim() != 2:
        raise ShapeError(f"{op}: expected Wa of shape (D, M) or (D, d), but got "
                         f"{describe('Wa', Wa)}")
    d_in = Wa.shape[0]
    if Wb is not None:
        check_tensor(op, "Wb", Wb)
        if Wb.dim() != 2 or Wb.shape[0] != Wa.shape[1]:
            raise ShapeError(f"{op}: expected Wb of shape (d, M) with d = Wa.shape[1] = "
                             f"{Wa.shape[1]}, but got {describe('Wb', Wb)}")
    weight = Wa.detach() if Wb is None else Wa.detach() @ Wb.detach()
    m_out = weight.shape[1]
    if bias is not None:
        check_tensor(op, "bias", bias)
        if bias.shape != (m_out,):
            raise ShapeError(f"{op}: expected bias of shape ({m_out},), but got "
                             f"{describe('bias', bias)}")
    current = Wa.shape[1] if Wb is not None else min(d_in, m_out)
    k = _resolve_rank(op, rank, d_in, current)

    stats = OutputStats.empty(d_in, m_out, Wa.device)
    ys = None if Y is None else _chunks(op, "Y", Y)
    with torch.no_grad():
        for i, x in enumerate(_chunks(op, "X", X)):
            check_tensor(op, "X", x)
            if x.dim() != 2 or x.shape[1] != d_in:
                raise ShapeError(f"{op}: expected X of shape (N, {d_in}) matching Wa, but "
                                 f"got {describe('X', x)}" + (f" in chunk {i}" if i else ""))
            if ys is None:
                y = x.to(weight.dtype) @ weight
                if bias is not None:
                    y = y + bias.detach()
            else:
                y = next(ys, None)
                if y is None or y.dim() != 2 or y.shape != (x.shape[0], m_out):
                    raise ShapeError(f"{op}: expected Y of shape ({x.shape[0]}, {m_out}) "
                                     f"matching X and Wa, but got "
                                     + ("no chunk" if y is None else describe("Y", y))
                                     + (f" in chunk {i}" if i else ""))
            stats.add(x.detach(), y.detach())
    if stats.n == 0:
        raise ShapeError(f"{op}: expected at least one sample in X, but got none")
    return solve_from_stats(stats, k, Wa, Wb, bias)


def solve_from_stats(stats: OutputStats, k: int, Wa: torch.Tensor, Wb: torch.Tensor | None,
                     bias: torch.Tensor | None) -> LowRankSolution:
    """The optimum of rank ``k`` from streamed statistics (see :func:`factorize_matrix`)."""
    dtype, device = Wa.dtype, Wa.device
    d_in, m_out = stats.gxx.shape[0], stats.gxy.shape[1]
    var = stats.variance()

    def nmse(B: torch.Tensor, b: torch.Tensor) -> float:
        mse = stats.sse(B, b) / (stats.n * m_out)
        return mse / var if var > 0 else 0.0

    # Composer's order: a rank that cannot help returns the best single matrix first; only
    # then does a rank at or above the current factorisation return it unchanged
    if Wb is not None and k < d_in and k < m_out and k >= Wa.shape[1]:
        B = (Wa.detach() @ Wb.detach()).to(_ACC)
        b = torch.zeros(m_out, dtype=_ACC, device=device) if bias is None else bias.to(_ACC)
        return LowRankSolution(Wa.detach(), Wb.detach(), None if bias is None else bias.detach(),
                               -1, nmse(B, b))
    xbar, ybar, gxx, gxy = stats.centred()
    white = _whitening(gxx)                            # (D, r): white^T Gxx white = I
    if k >= d_in or k >= m_out:  # factorising cannot help: the best single matrix
        B = white @ (white.mT @ gxy)
        b = ybar - xbar @ B
        return LowRankSolution(B.to(dtype), None, b.to(dtype), -1, nmse(B, b))
    # top-k singular triplets of K = white^T Gxy (r x M) from the eigendecomposition of the
    # smaller of K K^T and K^T K: twice as fast as an SVD, and exact for the directions kept
    # (squaring only blurs singular values below sqrt(eps) s_max, which carry no output)
    kk = white.mT @ gxy
    if kk.shape[0] <= kk.shape[1]:
        lam, u = torch.linalg.eigh(kk @ kk.mT)
        lam, u = lam.flip(-1), u.flip(-1)
        k_eff = min(k, int((lam > lam[0] * torch.finfo(_ACC).eps).sum()))
        root = lam[:k_eff].clamp_min(0).sqrt().sqrt()          # s^(1/2)
        wa = (white @ u[:, :k_eff]) * root
        wb = (u[:, :k_eff].mT @ kk) / root[:, None]             # s^(-1/2) U^T K = s^(1/2) V^T
    else:
        lam, v = torch.linalg.eigh(kk.mT @ kk)
        lam, v = lam.flip(-1), v.flip(-1)
        k_eff = min(k, int((lam > lam[0] * torch.finfo(_ACC).eps).sum()))
        root = lam[:k_eff].clamp_min(0).sqrt().sqrt()
        wa = (white @ (kk @ v[:, :k_eff])) / root               # U s^(1/2) = K V s^(-1/2)
        wb = root[:, None] * v[:, :k_eff].mT
    if k_eff < k:  # fewer informative directions than k: pad with zero columns
        wa = torch.cat([wa, wa.new_zeros(d_in, k - k_eff)], 1)
        wb = torch.cat([wb, wb.new_zeros(k - k_eff, m_out)], 0)
    b = ybar - (xbar @ wa) @ wb
    return LowRankSolution(wa.to(dtype), wb.to(dtype), b.to(dtype), k, nmse(wa @ wb, b))


# ----------------------------------------------------------------------------- conv2d

_CONV_KEYS = ("stride", "padding", "dilation", "groups", "padding_mode")
_PATCH_BUDGET = 32 * 2**20  # bytes of unfolded patches per streamed chunk of images


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def compose_conv_factors(Wa: torch.Tensor, Wb: torch.Tensor | None, biasA: torch.Tensor | None,
                  biasB: torch.Tensor | None, groups: int
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The conv as one ``(out, in/groups, kh, kw)`` weight and bias (``Wb`` composed)."""
    if Wb is None:
        return Wa, biasA
    rank = Wa.shape[0]
    wb = Wb.reshape(Wb.shape[0], -1)                       # (out, rank/groups)
    out_g, rank_g = Wb.shape[0] // groups, rank // groups
    blocks = []
    for g in range(groups):
        wa_g = Wa[g * rank_g:(g + 1) * rank_g].reshape(rank_g, -1)
        blocks.append(wb[g * out_g:(g + 1) * out_g] @ wa_g)
    weight = torch.cat(blocks).reshape(Wb.shape[0], *Wa.shape[1:])
    bias = None
    if biasA is not None:
        bias = torch.cat([wb[g * out_g:(g + 1) * out_g] @ biasA[g * rank_g:(g + 1) * rank_g]
                          for g in range(groups)])
    if biasB is not None:
        bias = biasB if bias is None else bias + biasB
    return weight, bias


class ConvPatchStats:
    """Streamed :class:`OutputStats` of a conv's patches and outputs, one per group.

    ``add(x)`` unfolds a few images of ``x`` at a time (at most 32 MiB of patches), runs
    the conv on them for the outputs, and accumulates; ``positions`` counts output pixels
    per image (for FLOP counts).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None,
                 stride: tuple[int, int], padding: tuple[int, int],
                 dilation: tuple[int, int], groups: int, padding_mode: str) -> None:
        self.weight, self.bias = weight, bias
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.groups, self.mode = groups, padding_mode
        out_ch, in_g, kh, kw = weight.shape
        self.fan_in, self.out_g = in_g * kh * kw, out_ch // groups
        self.stats = [OutputStats.empty(self.fan_in, self.out_g, weight.device)
                      for _ in range(groups)]
        self.positions = 0

    def add(self, x: torch.Tensor) -> None:
        kh, kw = self.weight.shape[2:]
        groups, fan_in, out_g = self.groups, self.fan_in, self.out_g
        x = x.detach().to(self.weight.dtype)
        pad = self.padding
        if self.mode != "zeros":
            x = torch.nn.functional.pad(x, (pad[1], pad[1], pad[0], pad[0]), mode=self.mode)
            pad = (0, 0)
        out_h = (x.shape[2] + 2 * pad[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        out_w = (x.shape[3] + 2 * pad[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        positions = max(out_h, 0) * max(out_w, 0)
        self.positions = positions
        per_image = positions * fan_in * groups * x.element_size()
        step = max(1, _PATCH_BUDGET // max(per_image, 1))
        for x_c in x.split(step):  # outputs and patches of a few images at a time
            y_c = torch.nn.functional.conv2d(x_c, self.weight, self.bias, stride=self.stride,
                                             padding=pad, dilation=self.dilation,
                                             groups=groups)
            cols = torch.nn.functional.unfold(x_c, (kh, kw), dilation=self.dilation,
                                              padding=pad, stride=self.stride)
            cols = cols.view(x_c.shape[0], groups, fan_in, positions)
            ys = y_c.reshape(y_c.shape[0], groups, out_g, positions)
            for g in range(groups):
                self.stats[g].add(cols[:, g].transpose(1, 2).reshape(-1, fan_in),
                                  ys[:, g].transpose(1, 2).reshape(-1, out_g))


def output_spectrum(stats: OutputStats) -> tuple[torch.Tensor, float]:
    """``(s^2, sse_full)``: squared singular values (descending) of the whitened
    cross-covariance and the error of the best full-rank map; the best rank-``k`` map's
    error is ``sse_full + sum(s^2[k:])`` (every rank at once)."""
    _, _, gxx, gxy = stats.centred()
    white = _whitening(gxx)
    kk = white.mT @ gxy
    small = kk @ kk.mT if kk.shape[0] <= kk.shape[1] else kk.mT @ kk
    lam = torch.linalg.eigvalsh(small).flip(-1).clamp_min(0)
    ybar = stats.sy / stats.n
    yy = float(stats.syy - stats.n * ybar.square().sum())
    return lam, max(yy - float(lam.sum()), 0.0)


def factorize_conv2d(X: torch.Tensor | Iterable[torch.Tensor], Wa: torch.Tensor,
                     Wb: torch.Tensor | None = None, rank: int | float = 0.25,
                     biasA: torch.Tensor | None = None, biasB: torch.Tensor | None = None,
                     n_iters: int = 3, **conv2d_kwargs) -> LowRankSolution:
    r"""Best ``k x k`` conv with ``rank`` channels followed by a ``1 x 1`` conv (closed form).

    Drop-in for Composer's ``factorize_conv2d``: ``Wa`` ``(out, in/groups, kh, kw)`` (or
    the first factor ``(d, in/groups, kh, kw)`` with ``Wb`` ``(out, d/groups, 1, 1)``),
    returns ``Wa`` ``(rank, in/groups, kh, kw)``, ``Wb`` ``(out, rank/groups, 1, 1)`` and
    the bias minimising the error on the conv's own outputs over ``X``
    (:func:`factorize_matrix` on its patches). Unlike Composer it supports ``stride``,
    ``dilation``, every ``padding_mode`` and ``groups`` (each group factorised on its own
    with ``rank/groups`` channels, so both convs stay grouped), and never materialises the
    unfolded activations: images are unfolded a chunk at a time (at most 32 MiB of
    patches) and reduced to ``fan_in x fan_in`` statistics.

    Args:
        X: ``(N, in, H, W)`` activations, or an iterable of such batches.
        Wa, Wb, biasA, biasB: the conv (and its already factorised form), as in Composer.
        rank: latent channels: an int (a multiple of ``groups``) or, as in Composer, a
            fraction in (0, 1) of ``in * kh * kw`` (capped at ``out`` or the current rank).
        n_iters: accepted for compatibility and ignored (the solution is exact).
        **conv2d_kwargs: ``stride``, ``padding``, ``dilation``, ``groups``,
            ``padding_mode`` of the original conv.

    Returns:
        :class:`LowRankSolution` (``rank`` -1 and a single conv weight when factorising
        cannot help).
    """
    op = "factorize_conv2d"
    unknown = sorted(set(conv2d_kwargs) - set(_CONV_KEYS))
    if unknown:
        raise ShapeError(f"{op}: unexpected conv2d arguments {unknown}; expected among "
                         f"{', '.join(_CONV_KEYS)}")
    stride = _pair(conv2d_kwargs.get("stride", 1))
    dilation = _pair(conv2d_kwargs.get("dilation", 1))
    groups = int(conv2d_kwargs.get("groups", 1))
    padding = conv2d_kwargs.get("padding", 0)
    mode = conv2d_kwargs.get("padding_mode", "zeros")
    check_tensor(op, "Wa", Wa)
    check_real_floating(op, "Wa", Wa)
    if Wa.dim() != 4:
        raise ShapeError(f"{op}: expected Wa of shape (out, in/groups, kh, kw), but got "
                         f"{describe('Wa', Wa)}")
    if isinstance(padding, str):
        raise ShapeError(f"{op}: expected numeric padding (as stored on nn.Conv2d), but got "
                         f"padding={padding!r}")
    padding = _pair(padding)
    if Wb is not None and (Wb.dim() != 4 or Wb.shape[2:] != (1, 1)
                           or Wb.shape[1] * groups != Wa.shape[0]):
        raise ShapeError(f"{op}: expected Wb of shape (out, d/groups, 1, 1) with d = "
                         f"Wa.shape[0] = {Wa.shape[0]}, but got {describe('Wb', Wb)}")
    if biasB is not None and Wb is None:
        raise ShapeError(f"{op}: got biasB but Wb=None; expected biasB only with Wb")
    weight, bias = compose_conv_factors(Wa.detach(), None if Wb is None else Wb.detach(),
                                 None if biasA is None else biasA.detach(),
                                 None if biasB is None else biasB.detach(), groups)
    out_ch, in_g, kh, kw = weight.shape
    if out_ch % groups:
        raise ShapeError(f"{op}: expected out channels divisible by groups={groups}, but got "
                         f"{describe('Wa', Wa)}")
    in_ch, out_g, fan_in = in_g * groups, out_ch // groups, in_g * kh * kw
    current = Wa.shape[0] if Wb is not None else out_ch
    k = _resolve_rank(op, rank, fan_in * groups, current)  # fractions of in * kh * kw
    if k % groups:
        raise ShapeError(f"{op}: expected rank to be a multiple of groups={groups} (each "
                         f"group gets rank/groups channels), but got rank={k}")
    k_g = k // groups
    collector = ConvPatchStats(weight, bias, stride, padding, dilation, groups, mode)
    with torch.no_grad():
        for i, x in enumerate(_chunks(op, "X", X)):
            check_tensor(op, "X", x)
            if x.dim() != 4 or x.shape[1] != in_ch:
                raise ShapeError(f"{op}: expected X of shape (N, {in_ch}, H, W) matching Wa "
                                 f"and groups={groups}, but got {describe('X', x)}"
                                 + (f" in chunk {i}" if i else ""))
            collector.add(x)
    stats = collector.stats
    if stats[0].n == 0:
        raise ShapeError(f"{op}: expected at least one image in X, but got none")
    maps = conv_group_maps(weight, bias, groups)
    total = pooled_variance(stats)

    def nmse_of(maps: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
        sse = sum(st.sse(B, b) for st, (B, b) in zip(stats, maps))
        return sse / (stats[0].n * out_ch) / total if total > 0 else 0.0

    single = k_g >= fan_in or k_g >= out_g  # factorising cannot help: checked first
    if Wb is not None and not single and k >= Wa.shape[0]:  # already at or below the rank
        return LowRankSolution(Wa.detach(), Wb.detach(), bias, -1, nmse_of(maps))
    parts = [solve_from_stats(st, k_g, w, None, b) for st, (w, b) in zip(stats, maps)]
    nmse = nmse_of([(p.Wa if p.Wb is None else p.Wa @ p.Wb, p.bias) for p in parts])
    new_bias = torch.cat([p.bias for p in parts])
    if parts[0].rank == -1:  # factorising cannot help: the best single conv
        w = torch.cat([p.Wa.mT for p in parts]).reshape(out_ch, in_g, kh, kw)
        return LowRankSolution(w, None, new_bias, -1, nmse)
    wa, wb, new_bias = join_conv_factors(parts, weight.shape, k)
    return LowRankSolution(wa, wb, new_bias, k, nmse)
