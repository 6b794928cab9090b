r"""Model surgery: factorise a network's ``Linear`` and ``Conv2d`` layers under a budget.

:func:`factorize_model` streams calibration batches through the model once, keeping for each
candidate layer only the statistics of its inputs and outputs (``D x D`` and ``D x M``, see
:mod:`difflinalg.factorize`); from them it knows every layer's output error at every rank at
once (the whitened spectrum), picks ranks that meet a parameter or FLOP budget with the least
total error, and swaps the layers for :class:`FactorizedLinear` / :class:`FactorizedConv2d`
carrying the closed-form optimal factors. Nothing is changed unless every layer succeeds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import torch

from .._errors import ShapeError
from ..factorize import (
    ConvPatchStats,
    OutputStats,
    conv_group_maps,
    join_conv_factors,
    output_spectrum,
    pooled_variance,
    solve_from_stats,
)
from .factorized import FactorizedConv2d, FactorizedLinear

__all__ = ["factorize_model", "FactorizeReport", "LayerReport"]


@dataclasses.dataclass
class LayerReport:
    """One layer: ``rank`` None when kept as it was."""

    name: str
    kind: str
    shape: tuple[int, ...]
    rank: int | None
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    nmse: float


@dataclasses.dataclass
class FactorizeReport:
    """Per-layer results of :func:`factorize_model`; ``str()`` prints a table.

    ``params_*`` count the whole model; ``flops_*`` the multiply-accumulates per sample of
    the candidate layers.
    """

    layers: list[LayerReport]
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int

    def __str__(self) -> str:
        rows = [("layer", "kind", "shape", "rank", "params", "FLOPs/sample", "nmse")]
        for r in self.layers:
            rows.append((r.name, r.kind, "x".join(map(str, r.shape)),
                         "-" if r.rank is None else str(r.rank),
                         f"{r.params_before} -> {r.params_after}",
                         f"{r.flops_before} -> {r.flops_after}", f"{r.nmse:.3g}"))
        rows.append(("total", "", "", "", f"{self.params_before} -> {self.params_after} (model)",
                     f"{self.flops_before} -> {self.flops_after} (these layers)", ""))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows)


@dataclasses.dataclass
class _Layer:
    name: str
    module: torch.nn.Module
    stats: list[OutputStats] | OutputStats | None = None
    collector: ConvPatchStats | None = None
    positions: int = 1  # output positions per sample (1 for Linear)
    spectra: list[torch.Tensor] = dataclasses.field(default_factory=list)
    floor: float = 0.0
    var_count: float = 0.0

    @property
    def groups(self) -> int:
        return getattr(self.module, "groups", 1)

    def dims(self) -> tuple[int, int]:
        m = self.module
        if isinstance(m, torch.nn.Linear):
            return m.in_features, m.out_features
        return m.in_channels * m.kernel_size[0] * m.kernel_size[1], m.out_channels

    def cost(self, rank: int | None) -> tuple[int, int]:
        """(params, FLOPs per sample) of the layer at ``rank`` (None: unfactorised)."""
        fan_in, out = self.dims()
        g = self.groups
        bias = out if getattr(self.module, "bias", None) is not None else 0
        weight = fan_in * out // g if rank is None else rank * (fan_in + out) // g
        return weight + bias, weight * self.positions

    def max_rank(self) -> int:
        """Largest rank (a multiple of groups) that saves parameters."""
        fan_in, out = self.dims()
        g = self.groups
        r = (fan_in * out - 1) // (fan_in + out)  # r (fan_in + out) < fan_in out
        return min(r, out - 1) // g * g

    def error(self, rank: int | None) -> float:
        """nmse of the best map at ``rank`` (0 unfactorised)."""
        if rank is None:
            return 0.0
        tail = sum(float(s[rank // self.groups:].sum()) for s in self.spectra)
        return (self.floor + tail) / self.var_count if self.var_count > 0 else 0.0


def _candidates(model: torch.nn.Module, min_features: int, min_channels: int) -> list[_Layer]:
    out = []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and min(m.in_features, m.out_features) >= min_features:
            out.append(_Layer(name, m))
        elif (isinstance(m, torch.nn.Conv2d) and not isinstance(m.padding, str)
              and min(m.in_channels, m.out_channels) >= min_channels):
            out.append(_Layer(name, m))
    return [layer for layer in out if layer.max_rank() >= 1]


def _inputs(batch: object) -> object:
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    return batch


def _collect(model: torch.nn.Module, layers: list[_Layer],
             calibration_data: Iterable[object], progress: bool) -> int:
    def hook_for(layer: _Layer):
        m = layer.module

        def hook(module, args, output):
            x = args[0].detach()
            if isinstance(m, torch.nn.Linear):
                if layer.stats is None:
                    layer.stats = OutputStats.empty(m.in_features, m.out_features, x.device)
                layer.stats.add(x.reshape(-1, m.in_features),
                                output.detach().reshape(-1, m.out_features))
                layer.positions = max(1, x[..., 0].numel() // max(x.shape[0], 1))
            else:
                if layer.collector is None:
                    w = m.weight.detach()
                    layer.collector = ConvPatchStats(
                        w, None if m.bias is None else m.bias.detach(), m.stride, m.padding,
                        m.dilation, m.groups, m.padding_mode)
                layer.collector.add(x)
                layer.positions = layer.collector.positions

        return hook

    handles = [layer.module.register_forward_hook(hook_for(layer)) for layer in layers]
    batches = 0
    was_training = model.training
    model.eval()  # no batch-norm statistics updated, no dropout: the model is not changed
    try:
        with torch.no_grad():
            for batch in calibration_data:
                model(_inputs(batch))
                batches += 1
                if progress:
                    print(f"\rfactorize_model: calibration batch {batches}", end="",
                          flush=True)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
        if progress and batches:
            print()
    return batches


def _choose_ranks(layers: list[_Layer], budget: float | None, key: int,
                  fixed: int | float | None, other: int) -> dict[str, int | None]:
    """Ranks per layer: ``fixed`` for every layer, or a greedy least-error descent to the
    budget (``key`` 0: params, 1: FLOPs; ``other`` = cost of the rest of the model)."""
    if fixed is not None:
        out = {}
        for layer in layers:
            m = layer.module
            width = (min(m.in_features, m.out_features) if isinstance(m, torch.nn.Linear)
                     else min(m.in_channels, m.out_channels))
            r = max(1, int(fixed * width)) if fixed < 1 else int(fixed)
            r = r // layer.groups * layer.groups
            out[layer.name] = r if 1 <= r <= layer.max_rank() else None
        return out
    ranks: dict[str, int | None] = {layer.name: None for layer in layers}
    total = other + sum(layer.cost(None)[key] for layer in layers)
    while total > budget:
        best = None
        for layer in layers:
            r = ranks[layer.name]
            nxt = layer.max_rank() if r is None else r - layer.groups
            if nxt < layer.groups:
                continue
            saved = layer.cost(r)[key] - layer.cost(nxt)[key]
            if saved <= 0:
                continue
            ratio = (layer.error(nxt) - layer.error(r)) / saved
            if best is None or ratio < best[0]:
                best = (ratio, layer, nxt, saved)
        if best is None:
            raise ShapeError(f"factorize_model: the budget {budget:.4g} cannot be met: "
                             f"{total} is the least reachable with these layers")
        _, layer, nxt, saved = best
        ranks[layer.name] = nxt
        total -= saved
    return ranks


def factorize_model(model: torch.nn.Module, calibration_data: Iterable[object], *,
                    rank: int | float | None = None, target_params: int | float | None = None,
                    target_flops: int | float | None = None, min_features: int = 16,
                    min_channels: int = 16, n_iters: int = 3, progress: bool = True
                    ) -> FactorizeReport:
    """Replace ``Linear`` / ``Conv2d`` layers of ``model`` by optimal low-rank factors.

    Args:
        model: any ``nn.Module``; modified in place (only if every step succeeds).
        calibration_data: an iterable of input batches (tensors, or tuples whose first item
            is the input, like a ``DataLoader``'s), run once through the model in eval mode
            (its train/eval mode is restored afterwards).
        rank: every candidate layer at this rank (an int, or a fraction of
            ``min(in, out)`` features or channels; layers where it would not save parameters
            are kept); or, instead, a budget:
        target_params: total parameters of the model afterwards (an int, or a fraction in
            (0, 1) of its current count);
        target_flops: multiply-accumulates per sample of the factorisable layers plus the
            rest (an int, or a fraction of the current count). The greedy choice lowers, one
            step at a time, the rank of the layer whose output error grows least per
            parameter (or FLOP) saved, using every layer's error at every rank.
        min_features, min_channels: smallest ``min(in, out)`` of a ``Linear`` / ``Conv2d``
            considered.
        n_iters: accepted for Composer compatibility, ignored (the factors are exact).
        progress: print calibration progress.

    Returns:
        :class:`FactorizeReport` (per layer: shape, rank, params and FLOPs before and after,
        nmse of its outputs on the calibration data).
    """
    op = "factorize_model"
    chosen = [v is not None for v in (rank, target_params, target_flops)]
    if sum(chosen) != 1:
        raise ShapeError(f"{op}: expected exactly one of rank, target_params, target_flops, "
                         f"but got rank={rank!r}, target_params={target_params!r}, "
                         f"target_flops={target_flops!r}")
    for name, value in (("rank", rank), ("target_params", target_params),
                        ("target_flops", target_flops)):
        if value is not None and (isinstance(value, bool) or not value > 0):
            raise ShapeError(f"{op}: expected {name} > 0, but got {name}={value!r}")
    layers = _candidates(model, min_features, min_channels)
    if not layers:
        raise ShapeError(f"{op}: expected at least one nn.Linear with min(in, out) >= "
                         f"{min_features} or nn.Conv2d with min(in, out) >= {min_channels}, "
                         f"but found none in {type(model).__name__}")
    if _collect(model, layers, calibration_data, progress) == 0:
        raise ShapeError(f"{op}: expected at least one calibration batch, but got none")
    for layer in layers:
        stats = layer.collector.stats if layer.collector is not None else [layer.stats]
        layer.stats = stats
        for st in stats:
            lam, floor = output_spectrum(st)
            layer.spectra.append(lam)
            layer.floor += floor
        count = sum(st.n * st.sy.shape[0] for st in stats)
        layer.var_count = pooled_variance(stats) * count
    all_params = sum(p.numel() for p in model.parameters())
    other_params = all_params - sum(layer.cost(None)[0] for layer in layers)
    flops_before_layers = sum(layer.cost(None)[1] for layer in layers)
    if rank is not None:
        ranks = _choose_ranks(layers, None, 0, rank, 0)
    elif target_params is not None:
        budget = target_params * all_params if target_params < 1 else float(target_params)
        ranks = _choose_ranks(layers, budget, 0, None, other_params)
    else:
        budget = (target_flops * flops_before_layers if target_flops < 1
                  else float(target_flops))
        ranks = _choose_ranks(layers, budget, 1, None, 0)
    # build every replacement first: the model is untouched if anything fails
    replacements: dict[str, torch.nn.Module] = {}
    reports = []
    for layer in layers:
        r = ranks[layer.name]
        m = layer.module
        fan_in, out = layer.dims()
        shape = ((m.out_features, m.in_features) if isinstance(m, torch.nn.Linear)
                 else tuple(m.weight.shape))
        p0, f0 = layer.cost(None)
        if r is not None:
            replacements[layer.name] = _build(layer, r)
        p1, f1 = layer.cost(r)
        reports.append(LayerReport(layer.name, "linear" if isinstance(m, torch.nn.Linear)
                                   else "conv2d", shape, r, p0, p1, f0, f1, layer.error(r)))
    for name, new in replacements.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
    params_after = sum(p.numel() for p in model.parameters())
    flops_after = sum(r.flops_after for r in reports)
    return FactorizeReport(reports, all_params, params_after, flops_before_layers, flops_after)


def _build(layer: _Layer, rank: int) -> torch.nn.Module:
    m = layer.module
    g = layer.groups
    w = m.weight.detach()
    if isinstance(m, torch.nn.Linear):
        sol = solve_from_stats(layer.stats[0], rank, w.mT, None,
                               None if m.bias is None else m.bias.detach())
        new = FactorizedLinear(m.in_features, m.out_features, rank, m.bias is not None,
                               device=w.device, dtype=w.dtype)
        with torch.no_grad():
            new.weight_a.copy_(sol.Wa.mT)
            new.weight_b.copy_(sol.Wb.mT)
            if new.bias is not None:
                new.bias.copy_(sol.bias)
        return new
    maps = conv_group_maps(w, None if m.bias is None else m.bias.detach(), g)
    parts = [solve_from_stats(st, rank // g, wa, None, b)
             for st, (wa, b) in zip(layer.stats, maps)]
    wa, wb, bias = join_conv_factors(parts, w.shape, rank)
    new = FactorizedConv2d(m.in_channels, m.out_channels, m.kernel_size, rank, m.stride,
                           m.padding, m.dilation, g, m.bias is not None, m.padding_mode,
                           device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.conv_a.weight.copy_(wa)
        new.conv_b.weight.copy_(wb)
        if new.conv_b.bias is not None:
            new.conv_b.bias.copy_(bias)
    return new
