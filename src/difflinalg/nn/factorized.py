r"""Low-rank drop-in replacements for ``nn.Linear`` and ``nn.Conv2d``.

:class:`FactorizedLinear` computes ``x -> (x A^T) B^T + b`` with ``A`` ``(rank, in)`` and ``B``
``(out, rank)``; :class:`FactorizedConv2d` a ``k x k`` conv to ``rank`` channels followed by a
``1 x 1`` conv (both grouped like the original). Built from an existing layer with
``from_linear`` / ``from_conv2d``: data-aware when calibration inputs are given (the
closed-form optimum of the output error, :func:`difflinalg.factorize_matrix` /
:func:`difflinalg.factorize_conv2d`), else by truncated SVD of the weight.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from .._errors import ShapeError
from ..factorize import compose_conv_factors, factorize_conv2d, factorize_matrix

__all__ = ["FactorizedLinear", "FactorizedConv2d"]

Calibration = torch.Tensor | Iterable[torch.Tensor] | None


def _check_rank(op: str, rank: int, limit: int, groups: int = 1) -> int:
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= limit:
        raise ShapeError(f"{op}: expected an integer rank in [1, {limit}], but got "
                         f"rank={rank!r}")
    if rank % groups:
        raise ShapeError(f"{op}: expected rank to be a multiple of groups={groups}, but got "
                         f"rank={rank}")
    return rank


class FactorizedLinear(torch.nn.Module):
    """``nn.Linear`` with its weight replaced by ``weight_b @ weight_a`` of rank ``rank``.

    Args:
        in_features, out_features: as ``nn.Linear``.
        rank: inner dimension, ``1 <= rank <= min(in, out)``.
        bias: learn an additive bias (default True).

    Example:
        >>> layer = torch.nn.Linear(64, 32)
        >>> X = torch.randn(500, 64)
        >>> small = FactorizedLinear.from_linear(layer, 8, calibration=X)
        >>> small(X).shape
        torch.Size([500, 32])
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.rank = _check_rank("FactorizedLinear", rank, min(in_features, out_features))
        kw = {"device": device, "dtype": dtype}
        self.weight_a = torch.nn.Parameter(torch.empty(rank, in_features, **kw))
        self.weight_b = torch.nn.Parameter(torch.empty(out_features, rank, **kw))
        self.bias = torch.nn.Parameter(torch.empty(out_features, **kw)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random factors whose product has ``nn.Linear``'s initial scale."""
        torch.nn.init.kaiming_uniform_(self.weight_a, a=math.sqrt(5))
        torch.nn.init.kaiming_uniform_(self.weight_b, a=math.sqrt(5))
        with torch.no_grad():
            self.weight_b.mul_(math.sqrt(3.0 / max(self.rank, 1)))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features) if self.in_features else 0.0
            torch.nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.weight_a), self.weight_b, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}, bias={self.bias is not None}")

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, rank: int,
                    calibration: Calibration = None) -> FactorizedLinear:
        """Factorise ``linear`` at ``rank``: optimal for the outputs on ``calibration``
        inputs ``(N, in)`` (or chunks of them), else truncated SVD of the weight."""
        if not isinstance(linear, torch.nn.Linear):
            raise ShapeError(f"FactorizedLinear.from_linear: expected an nn.Linear, but got "
                             f"{type(linear).__name__}")
        w = linear.weight.detach()
        new = cls(linear.in_features, linear.out_features, rank, linear.bias is not None,
                  device=w.device, dtype=w.dtype)
        new._load(w.mT, None, None if linear.bias is None else linear.bias.detach(), rank,
                  calibration)
        return new

    def set_rank(self, rank: int, calibration: Calibration = None) -> None:
        """Lower (or re-fit) the rank in place from the current factors."""
        _check_rank("FactorizedLinear.set_rank", rank, min(self.in_features,
                                                             self.out_features))
        self._load(self.weight_a.detach().mT, self.weight_b.detach().mT,
                   None if self.bias is None else self.bias.detach(), rank, calibration)

    def _load(self, wa: torch.Tensor, wb: torch.Tensor | None, bias: torch.Tensor | None,
              rank: int, calibration: Calibration) -> None:
        if calibration is not None:
            sol = factorize_matrix(calibration, None, wa, wb, bias=bias, rank=rank)
            if sol.Wb is None:  # rank >= min(in, out): split the fitted single matrix
                u, s, vh = torch.linalg.svd(sol.Wa, full_matrices=False)
                a, b_mat = u[:, :rank] * s[:rank].sqrt(), s[:rank].sqrt()[:, None] * vh[:rank]
            else:
                a, b_mat = sol.Wa, sol.Wb
            new_bias = sol.bias
        else:
            full = wa if wb is None else wa @ wb
            u, s, vh = torch.linalg.svd(full, full_matrices=False)
            a, b_mat = u[:, :rank] * s[:rank].sqrt(), s[:rank].sqrt()[:, None] * vh[:rank]
            new_bias = bias
        self.rank = rank
        self.weight_a = torch.nn.Parameter(a.mT.contiguous())
        self.weight_b = torch.nn.Parameter(b_mat.mT.contiguous())
        if self.bias is not None and new_bias is not None:
            self.bias = torch.nn.Parameter(new_bias.to(self.weight_a).clone())


class FactorizedConv2d(torch.nn.Module):
    """``nn.Conv2d`` as a ``k x k`` conv to ``rank`` channels and a ``1 x 1`` conv.

    Both convs use the original ``groups``; the first keeps ``stride``, ``padding``,
    ``dilation`` and ``padding_mode``. ``rank`` must be a multiple of ``groups``.

    Example:
        >>> conv = torch.nn.Conv2d(16, 32, 3, padding=1)
        >>> X = torch.randn(8, 16, 12, 12)
        >>> small = FactorizedConv2d.from_conv2d(conv, 8, calibration=X)
        >>> small(X).shape
        torch.Size([8, 32, 12, 12])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 rank: int, stride: int | tuple[int, int] = 1,
                 padding: int | tuple[int, int] = 0, dilation: int | tuple[int, int] = 1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        _check_rank("FactorizedConv2d", rank, max(out_channels, 1), groups)
        self.rank, self.groups = rank, groups
        self.conv_a = torch.nn.Conv2d(in_channels, rank, kernel_size, stride, padding,
                                      dilation, groups, bias=False, padding_mode=padding_mode,
                                      device=device, dtype=dtype)
        self.conv_b = torch.nn.Conv2d(rank, out_channels, 1, groups=groups, bias=bias,
                                      device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_b(self.conv_a(x))

    def reset_parameters(self) -> None:
        self.conv_a.reset_parameters()
        self.conv_b.reset_parameters()

    def _conv_kwargs(self) -> dict:
        c = self.conv_a
        return {"stride": c.stride, "padding": c.padding, "dilation": c.dilation,
                "groups": c.groups, "padding_mode": c.padding_mode}

    @classmethod
    def from_conv2d(cls, conv: torch.nn.Conv2d, rank: int,
                    calibration: Calibration = None) -> FactorizedConv2d:
        """Factorise ``conv`` at ``rank``: optimal for its outputs on ``calibration`` images
        ``(N, in, H, W)`` (or batches of them), else truncated SVD of each group's weight."""
        if not isinstance(conv, torch.nn.Conv2d) or isinstance(conv.padding, str):
            raise ShapeError(f"FactorizedConv2d.from_conv2d: expected an nn.Conv2d with numeric "
                             f"padding, but got {type(conv).__name__}"
                             + (f" with padding={conv.padding!r}"
                                if isinstance(conv, torch.nn.Conv2d) else ""))
        w = conv.weight.detach()
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, rank, conv.stride,
                  conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                  conv.padding_mode, device=w.device, dtype=w.dtype)
        new._load(w, None, None if conv.bias is None else conv.bias.detach(), rank, calibration)
        return new

    def set_rank(self, rank: int, calibration: Calibration = None) -> None:
        """Lower (or re-fit) the rank in place from the current factors."""
        _check_rank("FactorizedConv2d.set_rank", rank, self.conv_b.out_channels, self.groups)
        b = self.conv_b.bias
        self._load(self.conv_a.weight.detach(), self.conv_b.weight.detach(),
                   None if b is None else b.detach(), rank, calibration)

    def _load(self, wa: torch.Tensor, wb: torch.Tensor | None, bias: torch.Tensor | None,
              rank: int, calibration: Calibration) -> None:
        groups = self.groups
        if calibration is not None:
            sol = factorize_conv2d(calibration, wa, wb, rank=rank,
                                   biasB=bias if wb is not None else None,
                                   biasA=bias if wb is None else None, **self._conv_kwargs())
            if sol.Wb is not None and sol.rank == rank:
                a, b_w, new_bias = sol.Wa, sol.Wb, sol.bias
            else:  # no factorisation came back: truncate the fitted single conv
                a, b_w = self._svd_split(sol.Wa if sol.Wb is None else
                                         self._compose(sol.Wa, sol.Wb), rank)
                new_bias = sol.bias
        else:
            a, b_w = self._svd_split(wa if wb is None else self._compose(wa, wb), rank)
            new_bias = bias
        if a.shape[0] != rank:
            raise ShapeError(f"FactorizedConv2d: could not reach rank={rank} "
                             f"(got {a.shape[0]})")
        kw = self._conv_kwargs()
        self.rank = rank
        self.conv_a = torch.nn.Conv2d(a.shape[1] * groups, rank, tuple(a.shape[2:]),
                                      kw["stride"], kw["padding"], kw["dilation"], groups,
                                      bias=False, padding_mode=kw["padding_mode"],
                                      device=a.device, dtype=a.dtype)
        self.conv_b = torch.nn.Conv2d(rank, b_w.shape[0], 1, groups=groups,
                                      bias=self.conv_b.bias is not None, device=a.device,
                                      dtype=a.dtype)
        with torch.no_grad():
            self.conv_a.weight.copy_(a)
            self.conv_b.weight.copy_(b_w)
            if self.conv_b.bias is not None and new_bias is not None:
                self.conv_b.bias.copy_(new_bias)

    def _compose(self, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
        return compose_conv_factors(wa, wb, None, None, self.groups)[0]

    def _svd_split(self, w: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        g, out = self.groups, w.shape[0]
        r_g = rank // g
        a_parts, b_parts = [], []
        for i in range(g):
            block = w[i * out // g:(i + 1) * out // g].flatten(1)   # (out/g, fan_in)
            u, s, vh = torch.linalg.svd(block, full_matrices=False)
            if s.shape[0] < r_g:
                raise ShapeError(f"FactorizedConv2d: expected rank/groups <= "
                                 f"{s.shape[0]}, but got rank={rank}")
            a_parts.append(s[:r_g].sqrt()[:, None] * vh[:r_g])
            b_parts.append(u[:, :r_g] * s[:r_g].sqrt())
        a = torch.cat(a_parts).reshape(rank, *w.shape[1:])
        b = torch.cat(b_parts).reshape(out, r_g, 1, 1)
        return a, b
