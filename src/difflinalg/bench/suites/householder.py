r"""Suite ``householder``: :func:`difflinalg.householder_product` against its alternatives.

Every method maps the same Gaussian ``A = scale * randn(b, d, r)`` to a ``(b, d, r)`` frame
with orthonormal columns; each is written the way its users would write it:

``ours``
    ``difflinalg.householder_product(A)`` (exact reflections, ``tau=None``).
``torch``
    ``torch.linalg.householder_product(A, tau)`` with ``tau = 2 / (1 + ||tril(A, -1)||^2)``
    computed inside the timed call, so that the gradient reaches ``A`` through ``tau`` as in
    ``ours``: the two compute the same function of ``A``.
``torch_householder``
    ``torch_householder_orgqr(tril(A, -1) + eye(d, r))`` (the ``torch-householder``
    package; the same function again, differentiated w.r.t. its own parameter). Left out,
    and recorded as unavailable, when it cannot be imported.
``matrix_exp``
    ``torch.matrix_exp(S)[..., :r]`` with ``S = tril(P, -1) - tril(P, -1)^T`` for a
    ``(b, d, d)`` parameter ``P`` whose first ``r`` columns are ``A`` (the rest Gaussian too):
    the usual alternative, with ``d^2`` instead of ``dr`` parameters.

Per configuration ``(b, d, r)`` and method, in a fresh process under a timeout
(:class:`~difflinalg.bench._timing.IsolatedRunner`), following
:func:`~difflinalg.bench._timing.profile_differentiable`: warm-up, peak extra resident
memory of forward+backward (loss ``(out * G).sum()`` for a fixed Gaussian ``G``, gradient
w.r.t. the parameter), forward time, forward+backward time; then the accuracy: orthogonality error
``||Q^T Q - I||_F / sqrt(r)`` of the output (worst over the batch) and the relative error
of the gradient against the same method in float64. ``torch``'s process also computes the
cross errors (ours in float32 against torch in float64 and the reverse). ``ours`` also
times the GEMM ``(b, d, r) @ (b, r, r)`` to express its forward speed as a fraction of the
GEMM rate, counting the optimal ``b (2 d r^2 - 2 r^3 / 3)`` flops of a Householder product.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import difflinalg
from difflinalg.testing import orthogonality_error

from .._memory import PeakMemory, available_memory_bytes, heap_for_memory, heap_for_timing
from .._report import (
    BUSY,
    busy_warning,
    collect_metadata,
    format_elapsed,
    format_error,
    format_percent,
    format_ratio,
    format_seconds_ms,
    markdown_table,
    ratio,
    ratio_heatmaps,
    relative_error,
    run_facts,
    why_missing,
    write_json,
)
from .._timing import (
    Budget,
    IsolatedRunner,
    _describe_exception,
    measure,
    measure_interleaved,
    profile_differentiable,
)
from ..cli import int_list, positive_float, positive_int

__all__ = ["DESCRIPTION", "NAME", "add_arguments", "run"]

NAME = "householder"
DESCRIPTION = ("householder_product vs torch.linalg.householder_product, torch-householder "
               "and torch.matrix_exp: speed, accuracy, memory")

METHODS = ("ours", "torch", "torch_householder", "matrix_exp")
BASELINES = METHODS[1:]
LAPACK_LIKE = ("torch", "torch_householder")  # baselines for `speedup_fwd_vs_best_fwd`
LABELS = {
    "ours": "difflinalg.householder_product",
    "torch": "torch.linalg.householder_product",
    "torch_householder": "torch_householder_orgqr",
    "matrix_exp": "torch.matrix_exp (d x d skew)",
}
_REFERENCE_COST = 2.5  # float64 forward+backward, in float32 forward+backward calls


@dataclass(frozen=True)
class Preset:
    grids: tuple[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]], ...]
    timeout: float  # seconds per (configuration, method)
    min_run_time: float
    max_d: dict[str, int] = field(default_factory=dict)  # method -> largest d it runs at
    about: str = ""


PRESETS = {
    "quick": Preset(
        grids=(((1,), (256,), (16, 32, 64, 256)),
               ((1,), (1024,), (64, 1024)),
               ((1,), (2048,), (64,)),
               ((32,), (64, 256), (16, 64))),
        timeout=150.0, min_run_time=0.2, max_d={"matrix_exp": 1024},
        about="a few minutes on 2 cores; matrix_exp only up to d = 1024"),
    "full": Preset(
        grids=(((1, 8, 64), (64, 256, 1024, 4096), (16, 64, 256, 1024, 4096)),),
        timeout=600.0, min_run_time=1.0,
        about="hours: every slow baseline up to its timeout"),
}


# ----------------------------------------------------------------------------- methods

def _skew_exp_frame(P: torch.Tensor, r: int) -> torch.Tensor:
    lower = P.tril(-1)
    return torch.matrix_exp(lower - lower.mT)[..., :r]


def _torch_with_exact_tau(A: torch.Tensor) -> torch.Tensor:
    tau = 2.0 / (1.0 + (A.tril(-1) ** 2).sum(-2))
    return torch.linalg.householder_product(A, tau)


def _forward(method: str, r: int) -> Callable[[torch.Tensor], torch.Tensor]:
    if method == "ours":
        return difflinalg.householder_product
    if method == "torch":
        return _torch_with_exact_tau
    if method == "torch_householder":
        from torch_householder import torch_householder_orgqr
        return torch_householder_orgqr
    if method == "matrix_exp":
        return lambda P: _skew_exp_frame(P, r)
    raise ValueError(f"householder bench: unknown method {method!r}; "
                     f"expected one of {', '.join(METHODS)}")


def _inputs(spec: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(param, G, A)`` in float64 for one method; A and G depend only on the config."""
    b, d, r, method = spec["b"], spec["d"], spec["r"], spec["method"]
    seed = zlib.crc32(f"{spec['seed']}:{b}:{d}:{r}".encode())
    gen = torch.Generator().manual_seed(seed)
    A = spec["scale"] * torch.randn(b, d, r, dtype=torch.float64, generator=gen)
    G = torch.randn(b, d, r, dtype=torch.float64, generator=gen)
    if method in ("ours", "torch"):
        param = A.clone()
    elif method == "torch_householder":
        param = A.tril(-1) + torch.eye(d, r, dtype=torch.float64)
    else:
        param = spec["scale"] * torch.randn(b, d, d, dtype=torch.float64, generator=gen)
        param[..., :r] = A
    return param, G, A


class _Identity(torch.autograd.Function):
    """The cheapest differentiable op written in Python: its forward+backward's peak is the
    floor of the memory measurement at a given output size (the output, the incoming
    gradient, the result and the autograd machinery's own pages)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        return g.clone()


def _memory_floor(param: torch.Tensor, G: torch.Tensor) -> dict[str, Any]:
    """``{"peak_floor_bytes": ...}``: peak extra resident bytes of forward+backward of
    :class:`_Identity`, measured as the methods' own peaks are (warm, glibc's heap following
    the live tensors); ``None`` with ``peak_floor_reason`` if it cannot be measured (a
    failure here must not cost the method's own results)."""
    heap_for_memory()
    try:
        def fwd_bwd() -> None:
            torch.autograd.grad((_Identity.apply(param) * G).sum(), param)

        fwd_bwd()
        fwd_bwd()
        with PeakMemory() as peak:
            fwd_bwd()
        if peak.peak_extra_bytes is None:
            return {"peak_floor_bytes": None, "peak_floor_reason": peak.reason}
        return {"peak_floor_bytes": peak.peak_extra_bytes}
    except (RuntimeError, MemoryError) as exc:
        return {"peak_floor_bytes": None, "peak_floor_reason": _describe_exception(exc)}
    finally:
        heap_for_timing()


def _gradient(forward: Callable[[torch.Tensor], torch.Tensor], values: torch.Tensor,
              G: torch.Tensor) -> torch.Tensor:
    param = values.detach().clone().requires_grad_()
    (grad,) = torch.autograd.grad((forward(param) * G).sum(), param)
    return grad


def _case_worker(spec: dict[str, Any], report: Callable[[dict[str, Any]], None]) -> None:
    """One (configuration, method) in its own process; reports results stage by stage."""
    torch.set_num_threads(spec["threads"])
    budget = Budget(spec["budget_s"])
    method, r = spec["method"], spec["r"]
    dtype = getattr(torch, spec["dtype"])
    forward = _forward(method, r)
    param64, G64, _ = _inputs(spec)
    param = param64.to(dtype).requires_grad_()
    G = G64.to(dtype)

    small = {**spec, "b": min(spec["b"], 2), "d": min(spec["d"], 8), "r": min(r, 4)}
    small_param64, small_G64, _ = _inputs(small)
    small_forward = _forward(method, small["r"])

    def small_warmup() -> None:
        _gradient(small_forward, small_param64.to(dtype), small_G64.to(dtype))

    if method == "ours" and spec["memory"]:
        # first, in the fresh process, as profile_differentiable measures the method's peak
        # next (after the timing stages the heap holds what they freed and reads higher)
        report({"stage": "memory floor"})
        report(_memory_floor(param, G))

    entry, out, grad, call_s = profile_differentiable(
        forward, param, G, small_warmup=small_warmup, min_run_time=spec["min_run_time"],
        num_threads=spec["threads"], memory=spec["memory"], budget=budget, report=report)
    skipped = entry["skipped"]

    if method == "ours":
        report({"stage": "GEMM reference timing"})
        b, d = spec["b"], spec["d"]
        X = torch.randn(b, d, r, dtype=dtype)
        Y = torch.randn(b, r, r, dtype=dtype)
        reason = budget.skip_reason(3.0 * spec["min_run_time"] + call_s)
        if reason is None:
            report({"gemm": measure(lambda: torch.bmm(X, Y), min_run_time=spec["min_run_time"],
                                    num_threads=spec["threads"])})
        else:
            skipped["gemm"] = reason
        del X, Y

    report({"stage": "accuracy"})
    report({"ortho_err": float(orthogonality_error(out).max()), "skipped": skipped})
    if method == "torch":
        ours = _forward("ours", r)
        ours32 = _gradient(ours, param, G)
        ours64 = _gradient(ours, param64, G64)
        report({"grad_err_vs_ours64": relative_error(grad, ours64)})
    if dtype == torch.float64:
        skipped["grad_err"] = "the run is float64 already"
    elif (reason := budget.skip_reason(_REFERENCE_COST * call_s)) is not None:
        skipped["grad_err"] = f"float64 reference {reason}"
    else:
        report({"stage": "float64 reference"})
        ref64 = _gradient(forward, param64, G64)
        report({"grad_err": relative_error(grad, ref64)})
        if method == "torch":
            report({"cross": {"ours_grad_err_vs_torch64": relative_error(ours32, ref64),
                              "ours64_vs_torch64": relative_error(ours64, ref64)}})
    report({"skipped": skipped, "stage": "done"})


PAIRED_MAX_CALL_S = 4.0  # methods slower than this per call are left out of pairing
PAIRED_SLOW_CALL_S = 0.3  # above this, 3 interleaved rounds instead of 5


def _paired_worker(spec: dict[str, Any], report: Callable[[dict[str, Any]], None]) -> None:
    """Forward and forward+backward of several methods timed interleaved in one process.

    The speed ratios of the report come from here (see measure_interleaved): separate
    processes run minutes apart on a shared machine and their speeds drift by tens of
    percent, which is noise for a ratio near 1.
    """
    torch.set_num_threads(spec["threads"])
    dtype = getattr(torch, spec["dtype"])
    fwd: dict[str, Callable[[], object]] = {}
    fwd_bwd: dict[str, Callable[[], object]] = {}
    for method in dict.fromkeys(m for members in spec["stages"].values() for m in members):
        forward = _forward(method, spec["r"])
        param64, G64, _ = _inputs({**spec, "method": method})
        param = param64.to(dtype).requires_grad_()
        G = G64.to(dtype)

        def one_fwd(forward=forward, param=param):
            return forward(param)

        def one_fwd_bwd(forward=forward, param=param, G=G):
            return torch.autograd.grad((forward(param) * G).sum(), param)

        one_fwd_bwd()  # warm-up
        fwd[method], fwd_bwd[method] = one_fwd, one_fwd_bwd
    for stage, every in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
        if stage not in spec["stages"]:
            continue
        fns = {m: every[m] for m in spec["stages"][stage]}
        report({"stage": f"paired {stage}"})
        report({stage: measure_interleaved(fns, reference="ours",
                                           min_run_time=spec["min_run_time"] * 2,
                                           num_threads=spec["threads"],
                                           rounds=spec["rounds"][stage])})
    report({"stage": "done"})


# ----------------------------------------------------------------------------- settings

def _config_list(text: str) -> tuple[tuple[int, int, int], ...]:
    configs = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise argparse.ArgumentTypeError(
                f"expected configurations like 1x1024x1024,32x64x16 (BxDxR), but got {item!r}")
        configs.append((int(parts[0]), int(parts[1]), int(parts[2])))
    return tuple(configs)


def _method_list(text: str) -> tuple[str, ...]:
    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(
            f"expected methods among {', '.join(METHODS)}, but got {text!r}")
    if "ours" not in methods:
        raise argparse.ArgumentTypeError(f"the ratios need 'ours'; got {text!r}")
    return tuple(m for m in METHODS if m in methods)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``difflinalg bench householder``."""
    presets = "; ".join(f"{name}: {p.about}" for name, p in PRESETS.items())
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                        help=f"sweep and limits ({presets}). Default: quick")
    parser.add_argument("--out", type=Path, default=Path("bench-results"),
                        help="output directory (created). Default: bench-results")
    parser.add_argument("--batch", type=int_list, metavar="B,...",
                        help="batch sizes; with --d/--r replaces the preset's sweep by the "
                             "product of the lists (d >= r kept)")
    parser.add_argument("--d", type=int_list, metavar="D,...", help="rows d")
    parser.add_argument("--r", type=int_list, metavar="R,...", help="columns r")
    parser.add_argument("--configs", type=_config_list, metavar="BxDxR,...",
                        help="exact configurations, run as given (overrides the sweep)")
    parser.add_argument("--methods", type=_method_list, default=METHODS, metavar="M,...",
                        help=f"methods to run, among {','.join(METHODS)}. Default: all")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="dtype of the timed runs (references are float64). "
                             "Default: float32")
    parser.add_argument("--threads", type=positive_int, default=2,
                        help="torch.set_num_threads for every run. Default: 2")
    parser.add_argument("--timeout", type=positive_float, metavar="SECONDS",
                        help="limit per (configuration, method). Default: the preset's ("
                             + ", ".join(f"{n} {p.timeout:g}" for n, p in PRESETS.items())
                             + ")")
    parser.add_argument("--min-run-time", type=positive_float, metavar="SECONDS",
                        help="blocked_autorange min_run_time. Default: the preset's ("
                             + ", ".join(f"{n} {p.min_run_time:g}" for n, p in PRESETS.items())
                             + ")")
    parser.add_argument("--no-memory", action="store_true",
                        help="do not measure peak memory")
    parser.add_argument("--scale", type=positive_float, default=1.0,
                        help="standard deviation of the entries of A. Default: 1.0")
    parser.add_argument("--seed", type=int, default=0, help="input seed. Default: 0")


def _sweep(args: argparse.Namespace, preset: Preset) -> list[tuple[int, int, int]]:
    if args.configs:
        return list(dict.fromkeys(args.configs))
    grids = preset.grids
    if args.batch or args.d or args.r:
        every = [sorted({v for g in preset.grids for v in g[i]}) for i in range(3)]
        grids = ((args.batch or tuple(every[0]), args.d or tuple(every[1]),
                  args.r or tuple(every[2])),)
    configs = {(b, d, r) for bs, ds, rs in grids for b in bs for d in ds for r in rs if d >= r}
    return sorted(configs)


def _availability(methods: Sequence[str]) -> dict[str, str]:
    """Methods that cannot run here, with the reason (an import error)."""
    missing = {}
    if "torch_householder" in methods:
        try:
            importlib.import_module("torch_householder")
        except Exception as exc:  # noqa: BLE001 - any import failure means "unavailable"
            missing["torch_householder"] = f"{type(exc).__name__}: {exc}"
    return missing


def _not_run_reason(method: str, b: int, d: int, r: int, itemsize: int,
                    max_d: dict[str, int], preset: str) -> str | None:
    if method in max_d and d > max_d[method]:
        return f"not run at d > {max_d[method]} in the {preset} preset"
    # A rough guard against hopeless cases only; real out-of-memory failures are caught.
    size = b * d * (d if method == "matrix_exp" else r) * max(itemsize, 8)
    needed = size * (24 if method == "matrix_exp" else 12)
    available = available_memory_bytes()
    if available is not None and needed > available:
        return (f"not run: needs about {needed / 2**30:.1f} GiB, "
                f"{available / 2**30:.1f} GiB available")
    return None


# ----------------------------------------------------------------------------- derived

def _median(entry: dict[str, Any], key: str) -> float | None:
    timing = entry.get(key)
    return timing["median_s"] if timing else None


def _derive(row: dict[str, Any], itemsize: int) -> None:
    """Row-level ratios, GEMM fraction, memory multiples and the summary ``error``."""
    b, d, r = row["b"], row["d"], row["r"]
    methods = row["methods"]
    output_bytes = b * d * r * itemsize
    def per_output(peak: int | None) -> float | None:
        return peak / output_bytes if peak is not None and output_bytes else None

    for entry in methods.values():
        entry["peak_extra_x_output"] = per_output(entry.get("peak_extra_bytes"))
        if entry.get("peak_floor_bytes") is not None:  # measured for ours only
            entry["peak_floor_x_output"] = per_output(entry["peak_floor_bytes"])
    ours = methods.get("ours", {})
    cross = methods.get("torch", {}).get("cross", {})
    if "ours_grad_err_vs_torch64" in cross:
        ours["grad_err_vs_torch64"] = cross["ours_grad_err_vs_torch64"]
    paired = row.get("paired") or {}
    for name in BASELINES:
        if name not in methods:
            continue
        other = methods[name]
        for stage, key in (("fwd", "speedup_fwd_vs"), ("fwd_bwd", "speedup_fwd_bwd_vs")):
            same = (paired.get(stage) or {}).get(name, {}).get("ratio_to_reference")
            # paired: t(other) / t(ours) formed in one process; else from two processes
            row[f"{key}_{name}"] = same if same else ratio(_median(other, stage),
                                                              _median(ours, stage))
            row[f"{key}_{name}_paired"] = bool(same)
        row[f"err_ratio_vs_{name}"] = ratio(other.get("ortho_err"), ours.get("ortho_err"))
        row[f"grad_err_ratio_vs_{name}"] = ratio(other.get("grad_err"), ours.get("grad_err"))
    fwd_speedups = {n: row.get(f"speedup_fwd_vs_{n}") for n in LAPACK_LIKE if n in methods}
    fwd_speedups = {n: v for n, v in fwd_speedups.items() if v}
    best = min(fwd_speedups, key=fwd_speedups.__getitem__) if fwd_speedups else None
    row["best_fwd_method"] = best
    row["speedup_fwd_vs_best_fwd"] = fwd_speedups[best] if best else None
    gemm, t_fwd = _median(ours, "gemm"), _median(ours, "fwd")
    optimal_flops = b * (2 * d * r * r - 2 * r**3 / 3)
    row["gemm_fraction"] = (optimal_flops / t_fwd) / (2 * b * d * r * r / gemm) \
        if gemm and t_fwd else None
    loads = [e[stage]["other_load"] for e in methods.values() for stage in ("fwd", "fwd_bwd")
             if e.get(stage) and e[stage].get("other_load") is not None]
    row["other_load"] = max(loads) if loads else None
    errors = [f"{n}: {e['error']}" for n, e in methods.items() if e.get("error")]
    row["error"] = "; ".join(errors) or None


# ----------------------------------------------------------------------------- report

def _cell_time(entry: dict[str, Any] | None, key: str) -> str:
    if entry is None:
        return "-"
    if entry.get(key):
        return format_seconds_ms(entry[key]["median_s"])
    if key in entry.get("skipped", {}):
        return "skip"
    return why_missing(entry)


def _pair(left: str, right: str) -> str:
    return f"{left} / {right}"


def _table(rows: list[dict[str, Any]], methods: Sequence[str]) -> str:
    baselines = [m for m in BASELINES if m in methods]
    headers = ["b", "d", "r", "ours fwd ms", "ours f+b ms", "torch fwd ms", "torch f+b ms"]
    headers += [f"vs {m} f+b / fwd" for m in baselines]
    headers += ["ortho err ours / torch", "grad err ours / torch",
                "peak mem ours / torch (floor)", "GEMM %"]
    lines = []
    for row in rows:
        ms = row["methods"]
        ours, torch_ = ms.get("ours"), ms.get("torch")
        flag = "*" if (row.get("other_load") or 0) > BUSY else ""
        cells = [str(row["b"]), str(row["d"]), str(row["r"]) + flag,
                 _cell_time(ours, "fwd"), _cell_time(ours, "fwd_bwd"),
                 _cell_time(torch_, "fwd"), _cell_time(torch_, "fwd_bwd")]
        for m in baselines:
            fb, f = row.get(f"speedup_fwd_bwd_vs_{m}"), row.get(f"speedup_fwd_vs_{m}")
            missing = why_missing(ms.get(m))
            dagger = {k: "" if row.get(f"{k}_{m}_paired", True) else "\u2020"
                      for k in ("speedup_fwd_bwd_vs", "speedup_fwd_vs")}
            cells.append(_pair(format_ratio(fb) + dagger["speedup_fwd_bwd_vs"] if fb
                               else missing,
                               format_ratio(f) + dagger["speedup_fwd_vs"] if f else missing))
        cells.append(_pair(*(format_error((ms.get(m) or {}).get("ortho_err"))
                             for m in ("ours", "torch"))))
        cells.append(_pair(*(format_error((ms.get(m) or {}).get("grad_err"))
                             for m in ("ours", "torch"))))
        floor = (ours or {}).get("peak_floor_x_output")
        cells.append(_pair(*(format_ratio((ms.get(m) or {}).get("peak_extra_x_output"))
                             for m in ("ours", "torch")))
                     + (f" ({format_ratio(floor)})" if floor is not None else ""))
        gf = row.get("gemm_fraction")
        cells.append(format_percent(gf))
        lines.append(cells)
    return markdown_table(headers, lines, numeric=[True] * len(headers))


def _summary(rows: list[dict[str, Any]], methods: Sequence[str]) -> list[str]:
    out = ["| ratio (ours better if > 1) | configs | min | median | max | ours worse in |",
           "| :--- | ---: | ---: | ---: | ---: | ---: |"]
    for m in (m for m in BASELINES if m in methods):
        for key, what in (("speedup_fwd_bwd_vs", "f+b"), ("speedup_fwd_vs", "fwd"),
                          ("err_ratio_vs", "ortho err ratio")):
            values = [row[f"{key}_{m}"] for row in rows if row.get(f"{key}_{m}")]
            if not values:
                out.append(f"| vs {m}, {what} | 0 | - | - | - | - |")
                continue
            worse = sum(v < 1 for v in values)
            out.append(f"| vs {m}, {what} | {len(values)} | {format_ratio(min(values))} | "
                       f"{format_ratio(statistics.median(values))} | "
                       f"{format_ratio(max(values))} | {worse} |")
    fractions = [row["gemm_fraction"] for row in rows if row.get("gemm_fraction")]
    if fractions:
        out.append("")
        out.append(f"Forward of ours as a fraction of the GEMM rate: "
                   f"{format_percent(min(fractions))} to {format_percent(max(fractions))} "
                   f"(median {format_percent(statistics.median(fractions))}).")
    return out


def _write_markdown(path: Path, metadata: dict[str, Any], rows: list[dict[str, Any]],
                    charts: list[Path]) -> None:
    methods = metadata["methods"]
    lines = ["# householder_product benchmark", "", *run_facts(metadata)]
    lines[-1] += ("; largest share of the CPUs used by other processes while timing: "
                  f"{format_percent(metadata.get('max_other_load'))}")
    lines.append(f"- methods: {', '.join(f'`{m}` = {LABELS[m]}' for m in methods)}")
    for name, why in metadata.get("methods_unavailable", {}).items():
        lines.append(f"- `{name}` unavailable ({why}): its columns are absent")
    lines += busy_warning(rows)
    lines += [
        "",
        "Times are medians of `torch.utils.benchmark.Timer.blocked_autorange` in ms; f+b = "
        "forward+backward. Speed-up vs X = time(X) / time(ours) (> 1: ours faster), "
        "measured in one process with the methods interleaved round by round (the ratio is "
        "the median over 5 rounds, 3 where a call takes over "
        f"{PAIRED_SLOW_CALL_S} s, of the ratio within a round); \u2020 marks a ratio of two "
        "separate processes, for methods slower than "
        f"{PAIRED_MAX_CALL_S} s per call in that stage, where drift between processes is "
        "small next to the ratio. Absolute times come from each method's own process. "
        "ortho err = max over the batch of ||Q^T Q - I||_F / sqrt(r); grad err = "
        "||g - g64|| / ||g64|| against the same method in float64; peak mem = peak extra "
        "resident memory of forward+backward (the incoming gradient and the result included) "
        "as a multiple of the output size, measured with glibc's mmap threshold at 64 KiB and "
        "no heap padding so that resident memory follows the live tensors (timings are taken "
        "afterwards with a 32 MiB threshold, glibc's steady state); (floor) = the same "
        "measure for an identity autograd.Function (clone forward, clone backward): what any "
        "op written in Python costs at that output size, which dominates below ~64 KiB; "
        "GEMM % = "
        "optimal forward flops per second of ours over the rate of a (b, d, r) @ (b, r, r) "
        "GEMM. n/r = not run (preset limit), timeout/error: see below.", ""]
    for b in sorted({row["b"] for row in rows}):
        lines += [f"## b = {b}", "", _table([r for r in rows if r["b"] == b], methods), ""]
    lines += ["## Summary", ""] + _summary(rows, methods) + [""]

    def skipped(e: dict[str, Any]) -> dict[str, str]:
        out = dict(e.get("skipped") or {})
        if e.get("peak_floor_reason"):
            out["memory floor"] = e["peak_floor_reason"]
        return out

    failures = [(row, m, e) for row in rows for m, e in row["methods"].items()
                if e.get("error") or e.get("not_run") or skipped(e)]
    if failures:
        lines += ["## Failures, skipped cases and skipped stages", ""]
        for row, m, e in failures:
            what = e.get("error") or e.get("not_run") or "; ".join(
                f"{stage}: {why}" for stage, why in skipped(e).items())
            lines.append(f"- b={row['b']} d={row['d']} r={row['r']} {m}: {what}")
        lines.append("")
    if charts:
        lines += ["## Charts", ""] + [f"![{c.stem}]({c.name})" for c in charts] + [""]
    elif metadata.get("charts"):
        lines += ["## Charts", "", f"Charts {metadata['charts']}.", ""]
    path.write_text("\n".join(lines))


def _write_charts(out_dir: Path, rows: list[dict[str, Any]], metadata: dict[str, Any]
                  ) -> list[Path]:
    written = []
    batches = sorted({row["b"] for row in rows})
    note = (f"{metadata['cpu']}, {metadata['threads']} threads, {metadata['dtype']}, torch "
            f"{metadata['torch']}. Green: ours better; n/a: failed or not run.")
    for m in (m for m in BASELINES if m in metadata["methods"]):
        for key, stem, what in (
                ("speedup_fwd_bwd_vs", "speedup_vs", "Speed-up (forward+backward)"),
                ("err_ratio_vs", "error_ratio_vs", "Orthogonality error ratio")):
            if not any(row.get(f"{key}_{m}") for row in rows):
                continue
            panels = []
            for b in batches:
                sub = [row for row in rows if row["b"] == b and row["d"] >= row["r"]]
                panels.append({
                    "title": f"b = {b}", "row_label": "d", "col_label": "r",
                    "rows": sorted({row["d"] for row in sub}),
                    "cols": sorted({row["r"] for row in sub}),
                    "cells": {(row["d"], row["r"]): row.get(f"{key}_{m}") for row in sub}})
            path = out_dir / f"{stem}_{m}.png"
            quantity = "time" if stem == "speedup_vs" else "error"
            ratio_heatmaps(path, panels, note=note,
                           title=f"{what} of {LABELS['ours']} over {LABELS[m]}\n"
                                 f"{quantity}({m}) / {quantity}(ours)")
            written.append(path)
    return written


# ----------------------------------------------------------------------------- run

def _run_paired(runner: IsolatedRunner, row: dict[str, Any], args: argparse.Namespace,
                min_run_time: float, timeout: float) -> dict[str, Any]:
    """The paired (same-process, interleaved) timing stage of one configuration.

    A method joins a stage's pairing when its call in that stage took at most
    ``PAIRED_MAX_CALL_S`` in its own process (so the stage fits the time budget).
    """
    stages: dict[str, list[str]] = {}
    rounds: dict[str, int] = {}
    left_out: dict[str, str] = {}
    ours = row["methods"].get("ours", {})
    for stage in ("fwd", "fwd_bwd"):
        if _median(ours, stage) is None:
            continue
        members = ["ours"]
        for name, entry in row["methods"].items():
            t = _median(entry, stage)
            if name == "ours":
                continue
            if t is None:
                left_out[f"{name} {stage}"] = "no time from its own process"
            elif t > PAIRED_MAX_CALL_S:
                left_out[f"{name} {stage}"] = f"call of {t:.2g} s > {PAIRED_MAX_CALL_S} s"
            else:
                members.append(name)
        if len(members) > 1:
            stages[stage] = members
            slowest = max(_median(row["methods"][m], stage) for m in members)
            rounds[stage] = 5 if slowest <= PAIRED_SLOW_CALL_S else 3
    paired: dict[str, Any] = {"stages": stages, "left_out": left_out}
    if not stages:
        paired["error"] = "nothing to pair"
        return paired
    spec = {"b": row["b"], "d": row["d"], "r": row["r"], "stages": stages, "rounds": rounds,
            "dtype": args.dtype, "threads": args.threads, "min_run_time": min_run_time,
            "scale": args.scale, "seed": args.seed}
    entry, error = runner.run(_paired_worker, spec, timeout)
    entry.pop("stage", None)
    paired.update(entry)
    if error:
        paired["error"] = error
    return paired


def run(args: argparse.Namespace) -> int:
    """Run the sweep; write results.json, results.md and charts into ``args.out``."""
    preset = PRESETS[args.preset]
    timeout = args.timeout or preset.timeout
    min_run_time = args.min_run_time or preset.min_run_time
    dtype = getattr(torch, args.dtype)
    itemsize = torch.empty((), dtype=dtype).element_size()
    unavailable = _availability(args.methods)
    methods = [m for m in args.methods if m not in unavailable]
    for name, why in unavailable.items():
        print(f"householder bench: {name} unavailable ({why}); running without it",
              file=sys.stderr)
    configs = _sweep(args, preset)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "results.json", out_dir / "results.md"
    metadata = collect_metadata({
        "suite": NAME, "preset": args.preset, "dtype": args.dtype, "threads": args.threads,
        "timeout": timeout, "min_run_time": min_run_time, "memory": not args.no_memory,
        "scale": args.scale, "seed": args.seed, "methods": methods,
        "methods_unavailable": unavailable, "method_labels": LABELS})
    preload = ["torch", "difflinalg", __name__] + (
        ["torch_householder"] if "torch_householder" in methods else [])
    runner = IsolatedRunner(preload=preload)
    rows: list[dict[str, Any]] = []
    start = time.monotonic()
    status = 0
    try:
        for index, (b, d, r) in enumerate(configs, 1):
            config_start = time.monotonic()
            print(f"[{index}/{len(configs)}] b={b} d={d} r={r} ...", end="", file=sys.stderr,
                  flush=True)
            row: dict[str, Any] = {"b": b, "d": d, "r": r, "dtype": args.dtype,
                                   "scale": args.scale, "methods": {}}
            for method in methods:
                reason = _not_run_reason(method, b, d, r, itemsize, preset.max_d,
                                         args.preset)
                if reason:
                    row["methods"][method] = {"not_run": reason}
                    print(f" {method} n/r", end="", file=sys.stderr, flush=True)
                    continue
                spec = {"b": b, "d": d, "r": r, "method": method, "dtype": args.dtype,
                        "threads": args.threads, "min_run_time": min_run_time,
                        "memory": not args.no_memory, "scale": args.scale, "seed": args.seed,
                        "budget_s": 0.9 * timeout}
                entry, error = runner.run(_case_worker, spec, timeout)
                if error:
                    entry["error"] = error
                else:
                    entry.pop("stage", None)
                row["methods"][method] = entry
                tag = "timeout" if error and error.startswith("timeout") else \
                    ("error" if error else "ok")
                print(f" {method} {tag}", end="", file=sys.stderr, flush=True)
            row["paired"] = _run_paired(runner, row, args, min_run_time, timeout)
            _derive(row, itemsize)
            rows.append(row)
            headline, load = row.get("speedup_fwd_bwd_vs_torch"), row.get("other_load")
            print(f" | {format_elapsed(time.monotonic() - config_start)}"
                  + (f", f+b vs torch {format_ratio(headline)}" if headline else "")
                  + (f", BUSY: other processes used {load:.0%} of the CPUs"
                     if load is not None and load > BUSY else "")
                  + f" (total {format_elapsed(time.monotonic() - start)})",
                  file=sys.stderr, flush=True)
            write_json(json_path, {"metadata": metadata, "results": rows})
    except KeyboardInterrupt:
        print("\nhouseholder bench: interrupted; writing what was measured", file=sys.stderr)
        status = 130
    try:
        metadata["load_average_at_end"] = list(os.getloadavg())
    except OSError:
        metadata["load_average_at_end"] = None
    metadata["wall_time_s"] = round(time.monotonic() - start, 1)
    loads = [row["other_load"] for row in rows if row.get("other_load") is not None]
    metadata["max_other_load"] = max(loads) if loads else None
    for stale in (*out_dir.glob("speedup_vs_*.png"), *out_dir.glob("error_ratio_vs_*.png")):
        stale.unlink()
    try:
        charts = _write_charts(out_dir, rows, metadata)
    except ImportError as exc:  # matplotlib is an optional dependency (the bench extra)
        charts = []
        metadata["charts"] = f"not drawn: {exc}"
        print(f"householder bench: charts not drawn ({exc}); pip install "
              "'difflinalg[bench]'", file=sys.stderr)
    write_json(json_path, {"metadata": metadata, "results": rows})
    _write_markdown(md_path, metadata, rows, charts)
    print(f"householder bench: {len(rows)} configurations in "
          f"{format_elapsed(time.monotonic() - start)}; wrote:")
    for path in (json_path, md_path, *charts):
        print(f"  {path}")
    return status
