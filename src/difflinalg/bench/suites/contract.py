r"""Suite ``contract``: :func:`difflinalg.contract` (the einsum planner) against its alternatives.

Five cases, each timed in a fresh process (:class:`~difflinalg.bench._timing.IsolatedRunner`)
with the methods interleaved round by round
(:func:`~difflinalg.bench._timing.measure_interleaved`: a ratio is the median over the rounds
of the ratio within a round, so drift of a shared machine cancels):

``inner``
    ``'abcijk,ijkd->abcd'`` (a convolution-like contraction of trailing against leading
    indices, x 134 MB float32): ``contract`` against the hand-written
    ``(x.reshape(abc, ijk) @ f.reshape(ijk, d)).view(a, b, c, d)`` and ``torch.einsum``;
    forward; :func:`difflinalg.explain`'s ``copy_bytes`` (0: one GEMM on views).
``strided``
    ``'aibjck,ijkd->abcd'``: the same GEMM, but x's contracted indices interleave with the
    kept ones, so one operand needs one permuted copy. Forward and forward+backward of
    ``(out * G).sum()`` w.r.t. both operands against ``torch.einsum``; the bytes each saves
    for backward (``saved_tensors_hooks``); the peak extra resident memory of one
    forward+backward, each method in its own fresh process
    (:class:`~difflinalg.bench._memory.PeakMemory` with
    :func:`~difflinalg.bench._memory.heap_for_memory`). ``contract`` saves its operands as
    they came, not the permuted copy, so it should peak lower by at least that copy.
``chain``
    four multi-operand contractions where the pairwise order decides the cost: ``contract``
    against ``torch.einsum`` with opt_einsum's path (``torch.backends.opt_einsum``, torch's
    default when the package is installed) and without it (left to right); relative error
    of each against the float64 result.
``overhead``
    per-call cost on a cached equation with 4 x 4 operands: ``'ij,jk->ik'`` against
    ``torch.mm`` and ``torch.einsum``; ``'ij,jk,kl->il'`` with ``contract``,
    ``contract_expression`` and ``torch.einsum`` against two ``torch.mm``. Overhead =
    ``(ratio - 1) * t(mm)``, ratio taken within rounds.
``lazy``
    :func:`difflinalg.trace_product` against ``torch.trace(A @ B)`` and
    :func:`difflinalg.diag_product` against ``torch.diagonal(A @ B)`` at n x n; a product
    call slower than 0.3 s makes its stage run 3 rounds of one measured call each.

``--scale`` shrinks every size (for smoke tests); each case's result row names its shapes.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import torch

import difflinalg

from .._memory import PeakMemory, heap_for_memory
from .._report import (
    BUSY,
    busy_warning,
    collect_metadata,
    format_elapsed,
    format_error,
    format_ratio,
    format_seconds_ms,
    markdown_table,
    relative_error,
    run_facts,
    run_target_jobs,
    write_json,
)
from .._timing import IsolatedRunner, measure_interleaved
from ..cli import choice_list, odd_int, positive_float, positive_int

__all__ = ["DESCRIPTION", "NAME", "add_arguments", "run"]

NAME = "contract"
DESCRIPTION = ("contract (einsum planner) vs torch.einsum with and without opt_einsum and "
               "hand-written GEMMs; trace_product/diag_product vs forming A @ B")

CASES = ("inner", "strided", "chain", "overhead", "lazy")
INNER = ("abcijk,ijkd->abcd", ((32, 32, 32, 8, 8, 16), (8, 8, 16, 64)))
STRIDED = ("aibjck,ijkd->abcd", ((32, 8, 32, 8, 32, 16), (8, 8, 16, 64)))
CHAINS = (
    ("ij,jk,kl,lm->im", ((1000, 1000), (1000, 1000), (1000, 1000), (1000, 10))),
    ("bij,bjk,bkl->bil", ((64, 64, 256), (64, 256, 256), (64, 256, 8))),
    ("ea,fb,abcd,gc,hd->efgh", ((20, 20), (20, 20), (20, 20, 20, 20), (20, 20), (20, 20))),
    ("ij,jk,kl->il", ((64, 64), (64, 64), (64, 64))),
)
OVERHEAD_N = 4
SLOW_CALL_S = 0.3  # a stage whose slowest call exceeds this: 3 rounds of one call each
SLOW_ROUNDS = 3

# Thresholds of the targets in results.md.
INNER_MAX_OURS_OVER_HAND = 1.05
OVERHEAD_MAX_US = 20.0
CHAIN_MAX_REL_ERR = 1e-5
LAZY_MIN_SPEEDUP = {"trace": 25.0, "diag": 10.0}

LABELS = {
    "ours": "difflinalg.contract",
    "hand": "reshape @ reshape (by hand)",
    "torch": "torch.einsum",
    "torch_opt": "torch.einsum + opt_einsum",
    "torch_noopt": "torch.einsum, opt_einsum off",
    "mm": "torch.mm",
    "expression": "contract_expression",
    "product": "via A @ B",
}


@dataclass(frozen=True)
class Preset:
    min_run_time: float  # per method and stage, split over the rounds
    rounds: int  # odd, so that 1 / median(ratio) is the median of 1 / ratio
    lazy_n: tuple[int, ...]
    timeout: float  # seconds per process
    about: str


PRESETS = {
    "quick": Preset(min_run_time=1.0, rounds=5, lazy_n=(4096,), timeout=300.0,
                    about="about 1-2 minutes on 2 cores; lazy ops at n = 4096 only"),
    "full": Preset(min_run_time=3.0, rounds=7, lazy_n=(1024, 4096), timeout=900.0,
                   about="several minutes; lazy ops at n = 1024 and 4096"),
}

Report = Callable[[dict[str, Any]], None]


# ----------------------------------------------------------------------------- inputs

def scaled(shape: Sequence[int], scale: float) -> tuple[int, ...]:
    """``shape`` with every size times ``scale`` (at least 2, so no index degenerates)."""
    if scale == 1:
        return tuple(shape)
    return tuple(max(2, round(d * scale)) for d in shape)


def _generator(spec: dict[str, Any], name: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(f"{spec['seed']}:{name}".encode()))


def _randn(shape: Sequence[int], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(tuple(shape), dtype=dtype, generator=gen)


def _setup(spec: dict[str, Any]) -> torch.dtype:
    torch.set_num_threads(spec["threads"])
    torch.backends.opt_einsum.enabled = torch.backends.opt_einsum.is_available()
    return getattr(torch, spec["dtype"])


def saved_bytes(fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> dict[str, int]:
    """Bytes autograd saves for the backward of ``fn(*inputs)``: the sum over the unique
    storages of the saved tensors (``saved_bytes``), and that without the inputs' own
    storages (``saved_extra_bytes``: memory the saved graph adds)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*inputs)
    del out
    total = sum(seen.values())
    for x in inputs:
        seen.pop(x.untyped_storage().data_ptr(), None)
    return {"saved_bytes": total, "saved_extra_bytes": sum(seen.values())}


def _plan_facts(equation: str, *operands: torch.Tensor) -> dict[str, Any]:
    plan = difflinalg.explain(equation, *operands)
    return {"copy_bytes": plan.copy_bytes, "gemms": plan.gemms, "flops": plan.flops,
            "path": [list(p) for p in plan.path], "plan": str(plan)}


def _einsum_without_opt_einsum(equation: str, *operands: torch.Tensor) -> torch.Tensor:
    """``torch.einsum`` contracting left to right (opt_einsum off for this call only)."""
    previous = torch.backends.opt_einsum.enabled
    torch.backends.opt_einsum.enabled = False
    try:
        return torch.einsum(equation, *operands)
    finally:
        torch.backends.opt_einsum.enabled = previous


def _warm(fns: dict[str, Callable[[], object]], times: int = 2) -> None:
    for fn in fns.values():
        for _ in range(times):
            fn()


def _interleaved(fns: dict[str, Callable[[], object]], spec: dict[str, Any], reference: str
                 ) -> dict[str, dict[str, Any]]:
    """:func:`measure_interleaved` with the spec's rounds and time, or, when the slowest
    call (one untimed-for-the-report call of each, which also warms it up) takes over
    ``SLOW_CALL_S``, in ``SLOW_ROUNDS`` rounds of one measured call per method."""
    slowest = 0.0
    for fn in fns.values():
        t0 = time.perf_counter()
        fn()
        slowest = max(slowest, time.perf_counter() - t0)  # chooses the rounds only
    rounds, min_run_time = spec["rounds"], spec["min_run_time"]
    if slowest > SLOW_CALL_S:
        rounds = min(rounds, SLOW_ROUNDS)
        min_run_time = 0.01 * rounds
    return measure_interleaved(fns, reference=reference, min_run_time=min_run_time,
                               num_threads=spec["threads"], rounds=rounds)


# ----------------------------------------------------------------------------- workers

def _inner_worker(spec: dict[str, Any], report: Report) -> None:
    dtype = _setup(spec)
    eq = spec["equation"]
    gen = _generator(spec, "inner")
    x, f = (_randn(s, dtype, gen) for s in spec["shapes"])
    a, b, c, i, j, k = x.shape
    d = f.shape[-1]
    report({"stage": "plan", **_plan_facts(eq, x, f)})
    fns: dict[str, Callable[[], object]] = {
        "ours": lambda: difflinalg.contract(eq, x, f),
        "hand": lambda: (x.reshape(a * b * c, i * j * k) @ f.reshape(i * j * k, d)
                         ).view(a, b, c, d),
        "torch": lambda: torch.einsum(eq, x, f),
    }
    _warm(fns)
    report({"stage": "timing fwd"})
    report({"timing": {"fwd": _interleaved(fns, spec, reference="ours")}})
    report({"stage": "accuracy"})
    ref = (x.double().reshape(a * b * c, i * j * k) @ f.double().reshape(i * j * k, d)
           ).view(a, b, c, d)
    report({"rel_err": {name: relative_error(fn(), ref) for name, fn in fns.items()}})


def _strided_method(name: str, equation: str) -> Callable[..., torch.Tensor]:
    if name == "ours":
        return lambda x, f: difflinalg.contract(equation, x, f)
    if name == "torch":
        return lambda x, f: torch.einsum(equation, x, f)
    raise ValueError(f"contract bench: unknown strided method {name!r}; expected ours, torch")


def _strided_inputs(spec: dict[str, Any], dtype: torch.dtype
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = _generator(spec, "strided")
    x, f = (_randn(s, dtype, gen).requires_grad_() for s in spec["shapes"])
    a, _, b, _, c, _ = x.shape
    G = _randn((a, b, c, f.shape[-1]), dtype, gen)
    return x, f, G


def _strided_timing_worker(spec: dict[str, Any], report: Report) -> None:
    dtype = _setup(spec)
    eq = spec["equation"]
    x, f, G = _strided_inputs(spec, dtype)
    report({"stage": "plan", **_plan_facts(eq, x, f)})
    methods = {name: _strided_method(name, eq) for name in ("ours", "torch")}
    report({"saved": {name: saved_bytes(fn, x, f) for name, fn in methods.items()}})
    fwd = {name: (lambda fn=fn: fn(x, f)) for name, fn in methods.items()}
    fwd_bwd = {name: (lambda fn=fn: torch.autograd.grad((fn(x, f) * G).sum(), (x, f)))
               for name, fn in methods.items()}
    timing: dict[str, Any] = {}
    for stage, fns in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
        report({"stage": f"timing {stage}"})
        timing[stage] = _interleaved(fns, spec, reference="ours")
        report({"timing": timing})
    report({"stage": "accuracy"})
    x64, f64 = (t.detach().double().requires_grad_() for t in (x, f))
    out64 = torch.einsum(eq, x64, f64)
    gx64, gf64 = torch.autograd.grad((out64 * G.double()).sum(), (x64, f64))
    errors = {}
    for name, fn in methods.items():
        out = fn(x, f)
        gx, gf = torch.autograd.grad((out * G).sum(), (x, f))
        errors[name] = {"fwd": relative_error(out.detach(), out64.detach()),
                        "grad_x": relative_error(gx, gx64), "grad_f": relative_error(gf, gf64)}
    report({"rel_err": errors})


def _strided_memory_worker(spec: dict[str, Any], report: Report) -> None:
    """Peak extra resident memory of one warm forward+backward of one method, alone in its
    process (glibc's heap set so that resident memory follows the live tensors)."""
    dtype = _setup(spec)
    precise = heap_for_memory()
    x, f, G = _strided_inputs(spec, dtype)
    fn = _strided_method(spec["method"], spec["equation"])

    def fwd_bwd() -> tuple[torch.Tensor, ...]:
        return torch.autograd.grad((fn(x, f) * G).sum(), (x, f))

    report({"stage": "warm-up", "heap": "precise" if precise else "default"})
    fwd_bwd()
    report({"stage": "peak memory"})
    with PeakMemory() as peak:
        grads = fwd_bwd()
    del grads
    report({"peak_extra_bytes": peak.peak_extra_bytes, "reason": peak.reason})


def _chain_worker(spec: dict[str, Any], report: Report) -> None:
    dtype = _setup(spec)
    eq = spec["equation"]
    gen = _generator(spec, eq)
    ops = [_randn(s, dtype, gen) for s in spec["shapes"]]
    report({"stage": "plan", **_plan_facts(eq, *ops)})
    fns: dict[str, Callable[[], object]] = {"ours": lambda: difflinalg.contract(eq, *ops)}
    if torch.backends.opt_einsum.is_available():
        fns["torch_opt"] = lambda: torch.einsum(eq, *ops)
    fns["torch_noopt"] = lambda: _einsum_without_opt_einsum(eq, *ops)
    _warm(fns)
    report({"stage": "timing fwd"})
    report({"timing": {"fwd": _interleaved(fns, spec, reference="ours")}})
    report({"stage": "accuracy"})
    ref = torch.einsum(eq, *[op.double() for op in ops])
    report({"rel_err": {name: relative_error(fn(), ref) for name, fn in fns.items()}})


def _overhead_worker(spec: dict[str, Any], report: Report) -> None:
    dtype = _setup(spec)
    n = spec["n"]
    gen = _generator(spec, "overhead")
    a, b, c = (_randn((n, n), dtype, gen) for _ in range(3))
    eq2, eq3 = "ij,jk->ik", "ij,jk,kl->il"
    expression = difflinalg.contract_expression(eq3, (n, n), (n, n), (n, n))
    cases: dict[str, dict[str, Callable[[], object]]] = {
        eq2: {"mm": lambda: torch.mm(a, b),
              "ours": lambda: difflinalg.contract(eq2, a, b),
              "torch": lambda: torch.einsum(eq2, a, b)},
        eq3: {"mm": lambda: torch.mm(torch.mm(a, b), c),
              "ours": lambda: difflinalg.contract(eq3, a, b, c),
              "expression": lambda: expression(a, b, c),
              "torch": lambda: torch.einsum(eq3, a, b, c)},
    }
    results: dict[str, Any] = {}
    for eq, fns in cases.items():
        _warm(fns, times=10)
        report({"stage": f"timing {eq}"})
        timing = _interleaved(fns, spec, reference="mm")
        t_mm = timing["mm"]["median_s"]
        results[eq] = {
            "timing": timing,
            "overhead_us": {name: (t["ratio_to_reference"] - 1.0) * t_mm * 1e6
                            for name, t in timing.items() if name != "mm"}}
        report({"equations": results})


def _lazy_worker(spec: dict[str, Any], report: Report) -> None:
    dtype = _setup(spec)
    n = spec["n"]
    gen = _generator(spec, f"lazy{n}")
    A, B = _randn((n, n), dtype, gen), _randn((n, n), dtype, gen)
    ops: dict[str, dict[str, Callable[[], torch.Tensor]]] = {
        "trace": {"ours": lambda: difflinalg.trace_product(A, B),
                  "product": lambda: torch.trace(A @ B)},
        "diag": {"ours": lambda: difflinalg.diag_product(A, B),
                 "product": lambda: torch.diagonal(A @ B)},
    }
    P64 = A.double() * B.double().mT  # the float64 reference, elementwise: O(n^2)
    refs = {"trace": P64.sum(), "diag": P64.sum(-1)}
    del P64
    results: dict[str, Any] = {}
    for op, fns in ops.items():
        report({"stage": f"timing {op}"})
        timing = _interleaved(fns, spec, reference="ours")
        results[op] = {"timing": timing, "rel_err": {name: relative_error(fn(), refs[op])
                                                      for name, fn in fns.items()}}
        report({"ops": results})


# ----------------------------------------------------------------------------- derived

def _timing(row: dict[str, Any], stage: str = "fwd") -> dict[str, Any]:
    return (row.get("timing") or {}).get(stage) or {}


def _speedup(timing: dict[str, Any], name: str) -> float | None:
    """t(name) / t(reference) from an interleaved timing (> 1: the reference is faster)."""
    value = (timing.get(name) or {}).get("ratio_to_reference")
    return value if value is not None and value > 0 and math.isfinite(value) else None


def _target(case: str, what: str, value: float | None, op: str, threshold: float,
            display: str, goal: str | None = None) -> dict[str, Any]:
    checks = {"<=": lambda v: v <= threshold, ">=": lambda v: v >= threshold,
              "<": lambda v: v < threshold, ">": lambda v: v > threshold,
              "==": lambda v: v == threshold}
    met = None if value is None else bool(checks[op](value))
    return {"case": case, "what": what, "op": op, "threshold": threshold,
            "goal": goal or f"{op} {threshold:g}", "value": value,
            "display": display if value is not None else "-", "met": met}


def _bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def _derive(row: dict[str, Any]) -> list[dict[str, Any]]:
    """Headline figures of a row (``row["figures"]``) and its targets."""
    case, name = row["case"], row["name"]
    fig: dict[str, Any] = {}
    targets: list[dict[str, Any]] = []
    if case == "inner":
        t = _timing(row)
        hand = _speedup(t, "hand")
        fig["ours_over_hand"] = 1.0 / hand if hand else None
        fig["torch_over_ours"] = _speedup(t, "torch")
        targets += [
            _target(name, "time ours / hand GEMM (fwd)", fig["ours_over_hand"], "<=",
                    INNER_MAX_OURS_OVER_HAND, format_ratio(fig["ours_over_hand"])),
            _target(name, "time torch.einsum / ours (fwd)", fig["torch_over_ours"], ">=",
                    1.0, format_ratio(fig["torch_over_ours"])),
            _target(name, "bytes copied (explain)", row.get("copy_bytes"), "==", 0,
                    _bytes(row.get("copy_bytes")), "= 0 B")]
    elif case == "strided":
        fig["torch_over_ours_fwd"] = _speedup(_timing(row, "fwd"), "torch")
        fig["torch_over_ours_fwd_bwd"] = _speedup(_timing(row, "fwd_bwd"), "torch")
        memory = row.get("memory") or {}
        peaks = [(memory.get(m) or {}).get("peak_extra_bytes") for m in ("ours", "torch")]
        fig["peak_saving_bytes"] = (peaks[1] - peaks[0] if None not in peaks else None)
        copy = row["copy_size_bytes"]
        targets += [
            _target(name, "bytes copied (explain): one copy of x", row.get("copy_bytes"),
                    "==", copy, _bytes(row.get("copy_bytes")), f"= {_bytes(copy)}"),
            # resident memory is counted in pages and the allocator rounds: 1% tolerance
            _target(name, "peak extra memory of f+b, torch.einsum - ours",
                    fig["peak_saving_bytes"], ">=", 0.99 * copy,
                    f"{_bytes(fig['peak_saving_bytes'])} ("
                    f"{(fig['peak_saving_bytes'] or 0) / copy:.4f} x)",
                    f">= size of x, {_bytes(copy)} (to 1%: pages)")]
    elif case == "chain":
        t = _timing(row)
        fig["torch_opt_over_ours"] = _speedup(t, "torch_opt")
        fig["torch_noopt_over_ours"] = _speedup(t, "torch_noopt")
        err = (row.get("rel_err") or {}).get("ours")
        targets += [
            _target(name, "time torch.einsum+opt_einsum / ours", fig["torch_opt_over_ours"],
                    ">=", 1.0, format_ratio(fig["torch_opt_over_ours"])),
            _target(name, "time torch.einsum (no opt_einsum) / ours",
                    fig["torch_noopt_over_ours"], ">", 1.0,
                    format_ratio(fig["torch_noopt_over_ours"])),
            _target(name, "relative error of ours vs float64", err, "<", CHAIN_MAX_REL_ERR,
                    format_error(err))]
    elif case == "overhead":
        eq = row.get("equations") or {}
        for key in eq:
            for method, us in eq[key]["overhead_us"].items():
                fig[f"{key} {method} overhead_us"] = us
        us = (eq.get("ij,jk->ik") or {}).get("overhead_us", {}).get("ours")
        targets.append(_target(name, "per-call overhead of contract over torch.mm, "
                                     f"'ij,jk->ik' {row['n']}x{row['n']}", us, "<",
                               OVERHEAD_MAX_US, "-" if us is None else f"{us:.1f} us",
                               f"< {OVERHEAD_MAX_US:g} us"))
    elif case == "lazy":
        for op in ("trace", "diag"):
            fig[f"{op}_speedup"] = _speedup(((row.get("ops") or {}).get(op) or {}).get(
                "timing") or {}, "product")
            if row.get("has_targets"):
                targets.append(_target(
                    name, f"{op}: time via A @ B / {op}_product, n = {row['n']}",
                    fig[f"{op}_speedup"], ">=", LAZY_MIN_SPEEDUP[op],
                    format_ratio(fig[f"{op}_speedup"])))
    row["figures"] = fig
    loads = [t.get("other_load") for t in _every_timing(row)]
    row["other_load"] = max((v for v in loads if v is not None), default=None)
    return targets


def _every_timing(row: dict[str, Any]) -> list[dict[str, Any]]:
    timings = list((row.get("timing") or {}).values())
    for group in ("equations", "ops"):
        timings += [v["timing"] for v in (row.get(group) or {}).values() if v.get("timing")]
    return [entry for t in timings for entry in t.values()]


# ----------------------------------------------------------------------------- report

def _ms(timing: dict[str, Any], name: str) -> str:
    return format_seconds_ms((timing.get(name) or {}).get("median_s"))


def _iqr(timing: dict[str, Any], name: str) -> str:
    value = (timing.get(name) or {}).get("ratio_iqr")
    return "-" if value is None else f"{value:.2g}"


def _shapes(shapes: Sequence[Sequence[int]]) -> str:
    return ", ".join("(" + ", ".join(map(str, s)) + ")" for s in shapes)


def _heading(row: dict[str, Any]) -> list[str]:
    busy = " *" if (row.get("other_load") or 0) > BUSY else ""
    lines = ["", f"## {row['name']}{busy}", ""]
    if row.get("about"):
        lines.append(row["about"])
    if row.get("equation"):
        lines.append(f"`{row['equation']}` with operands {_shapes(row['shapes'])}, "
                     f"{row['dtype']}.")
    if row.get("plan"):
        lines += ["", "```", row["plan"], "```"]
    if row.get("error"):
        lines += ["", f"error: {row['error']}"]
    return lines + [""]


def _inner_section(row: dict[str, Any]) -> list[str]:
    t, err = _timing(row), row.get("rel_err") or {}
    table = [[LABELS[m], _ms(t, m), "1x" if m == "ours" else format_ratio(_speedup(t, m)),
              _iqr(t, m), format_error(err.get(m))] for m in ("ours", "hand", "torch")]
    return [markdown_table(["method", "fwd ms", "time / time(ours)", "ratio IQR",
                            "rel err vs float64"], table, [False] + [True] * 4)]


def _strided_section(row: dict[str, Any]) -> list[str]:
    f, fb = _timing(row, "fwd"), _timing(row, "fwd_bwd")
    saved, memory, err = row.get("saved") or {}, row.get("memory") or {}, row.get("rel_err") or {}
    table = []
    for m in ("ours", "torch"):
        s, mem, e = saved.get(m) or {}, memory.get(m) or {}, err.get(m) or {}
        peak = mem.get("peak_extra_bytes")
        table.append([LABELS[m], _ms(f, m), _ms(fb, m),
                      "1x" if m == "ours" else format_ratio(_speedup(fb, m)),
                      _bytes(peak) if peak is not None else (mem.get("error") or
                                                              mem.get("reason") or "-"),
                      _bytes(s.get("saved_bytes")), _bytes(s.get("saved_extra_bytes")),
                      format_error(e.get("fwd")), format_error(e.get("grad_x")),
                      format_error(e.get("grad_f"))])
    lines = [markdown_table(["method", "fwd ms", "f+b ms", "f+b time / ours", "peak extra f+b",
                             "saved for bwd", "saved beyond inputs", "fwd err", "grad x err",
                             "grad f err"], table, [False] + [True] * 9)]
    fig = row.get("figures") or {}
    saving, copy = fig.get("peak_saving_bytes"), row["copy_size_bytes"]
    lines += ["", f"x = {_bytes(copy)} (the permuted copy); peak of torch - peak of ours = "
                  f"{_bytes(saving)}" + (f" = {saving / copy:.4f} x" if saving is not None
                                         else "") + "; forward time torch / ours = "
                  f"{format_ratio(fig.get('torch_over_ours_fwd'))}."]
    return lines


def _chain_table(rows: list[dict[str, Any]]) -> list[str]:
    table = []
    for row in rows:
        t, err = _timing(row), row.get("rel_err") or {}
        flag = "*" if (row.get("other_load") or 0) > BUSY else ""
        if row.get("error"):
            table.append([f"`{row['equation']}`", _shapes(row["shapes"]),
                          f"error: {row['error']}"] + ["-"] * 6)
            continue
        table.append([f"`{row['equation']}`{flag}", _shapes(row["shapes"]),
                      _ms(t, "ours"), _ms(t, "torch_opt"), _ms(t, "torch_noopt"),
                      format_ratio(_speedup(t, "torch_opt")),
                      format_ratio(_speedup(t, "torch_noopt")),
                      " / ".join(format_error(err.get(m))
                                 for m in ("ours", "torch_opt", "torch_noopt")),
                      _bytes(row.get("copy_bytes"))])
    return [markdown_table(
        ["equation", "shapes", "ours ms", "+opt_einsum ms", "no opt_einsum ms",
         "speed-up vs +opt_einsum", "speed-up vs no opt_einsum",
         "rel err ours / +opt / no opt", "copied"], table,
        [False, False] + [True] * 7)]


def _overhead_section(row: dict[str, Any]) -> list[str]:
    table = []
    for eq, res in (row.get("equations") or {}).items():
        t = res["timing"]
        for name in t:
            us = res["overhead_us"].get(name)
            table.append([f"`{eq}`", LABELS[name],
                          f"{t[name]['median_s'] * 1e6:.2f}",
                          "-" if us is None else f"{us:.2f}", _iqr(t, name)])
    return [markdown_table(["equation", "call", "us per call", "overhead vs torch.mm (us)",
                            "ratio IQR"], table, [False, False, True, True, True])]


def _lazy_table(rows: list[dict[str, Any]]) -> list[str]:
    table = []
    for row in rows:
        for op in ("trace", "diag"):
            res = (row.get("ops") or {}).get(op)
            if not res:
                table.append([op, str(row["n"]), row.get("error") or "-"] + ["-"] * 4)
                continue
            t, err = res["timing"], res["rel_err"]
            table.append([f"{op}_product vs {'torch.trace' if op == 'trace' else 'torch.diagonal'}"
                          "(A @ B)", str(row["n"]), _ms(t, "ours"), _ms(t, "product"),
                          format_ratio(_speedup(t, "product")), format_error(err.get("ours")),
                          format_error(err.get("product"))])
    return [markdown_table(["op", "n", "ours ms", "via A @ B ms", "speed-up",
                            "rel err ours", "rel err via A @ B"], table,
                           [False] + [True] * 6)]


def _write_markdown(path: Path, metadata: dict[str, Any], rows: list[dict[str, Any]],
                    targets: list[dict[str, Any]], charts: list[Path]) -> None:
    lines = ["# contract benchmark", "", *run_facts(metadata),
             f"- opt_einsum {metadata['opt_einsum'] or 'not installed'} (torch's "
             f"opt_einsum backend {'available' if metadata['opt_einsum_available'] else 'off'}"
             f"); rounds per interleaved timing: {metadata['rounds']}; scale: "
             f"{metadata['scale']}"]
    lines += busy_warning(rows, "cases")
    lines += [
        "", "Times are medians in ms of `torch.utils.benchmark.Timer.blocked_autorange`; "
        "the methods of a case run in one fresh process, interleaved round by round, and a "
        "ratio is the median over the rounds of the ratio within a round (`ratio IQR` its "
        f"spread); a stage whose slowest call takes over {SLOW_CALL_S} s runs "
        f"{SLOW_ROUNDS} rounds of one measured call each. Speed-up = time(baseline) / "
        "time(ours): > 1 means ours is faster. rel err = relative Frobenius error against "
        "the float64 result. Peak memory: extra "
        "resident memory of one warm forward+backward, each method alone in a fresh "
        "process. * marks cases timed while other processes were busy.", "", "## Targets", ""]
    marks = {True: "met", False: "**not met**", None: "n/a"}
    lines.append(markdown_table(
        ["case", "target", "measured", "status"],
        [[t["case"], f"{t['what']} {t['goal']}", t["display"], marks[t["met"]]]
         for t in targets], [False, False, True, False]))
    for case in CASES:
        group = [r for r in rows if r["case"] == case]
        if not group:
            continue
        if case == "chain":
            lines += ["", "## chains", "", "Forward; the pairwise order decides the cost "
                      "(torch.einsum + opt_einsum plans its path on every call). Plans of "
                      "ours below the table.", ""]
            lines += _chain_table(group)
            plans = [r["plan"] for r in group if r.get("plan")]
            if plans:
                lines += ["", "```", *plans, "```"]
        elif case == "lazy":
            lines += ["", "## lazy reductions", "", "`trace(A @ B)` and `diag(A @ B)` of "
                      f"n x n {metadata['dtype']} Gaussian matrices without forming the product "
                      "(reference: the float64 elementwise sums).", ""]
            lines += _lazy_table(group)
        else:
            section = {"inner": _inner_section, "strided": _strided_section,
                       "overhead": _overhead_section}[case]
            for row in group:
                lines += _heading(row) + section(row)
    if charts:
        lines += ["", "## Charts", ""] + [f"![{c.stem}]({c.name})" for c in charts]
    elif metadata.get("charts"):
        lines += ["", "## Charts", "", f"Charts {metadata['charts']}."]
    path.write_text("\n".join(lines) + "\n")


def _speedup_bars(rows: list[dict[str, Any]]) -> list[tuple[str, float]]:
    bars: list[tuple[str, float]] = []
    for row in rows:
        fig = row.get("figures") or {}
        if row["case"] == "inner":
            if fig.get("ours_over_hand"):
                bars.append(("inner fwd vs hand GEMM", 1.0 / fig["ours_over_hand"]))
            bars.append(("inner fwd vs torch.einsum", fig.get("torch_over_ours")))
        elif row["case"] == "strided":
            bars.append(("strided f+b vs torch.einsum", fig.get("torch_over_ours_fwd_bwd")))
        elif row["case"] == "chain":
            bars.append((f"{row['equation']} vs +opt_einsum", fig.get("torch_opt_over_ours")))
            bars.append((f"{row['equation']} vs no opt_einsum",
                         fig.get("torch_noopt_over_ours")))
        elif row["case"] == "lazy":
            for op in ("trace", "diag"):
                bars.append((f"{op} n={row['n']} vs A @ B", fig.get(f"{op}_speedup")))
    return [(label, value) for label, value in bars if value]


def _write_charts(out_dir: Path, rows: list[dict[str, Any]], metadata: dict[str, Any]
                  ) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    bars = _speedup_bars(rows)
    note = (f"{metadata['cpu']}, {metadata['threads']} threads, {metadata['dtype']}, torch "
            f"{metadata['torch']}")
    if bars:
        fig, ax = plt.subplots(figsize=(8.5, 0.38 * len(bars) + 1.6), layout="constrained")
        labels, values = zip(*bars)
        colors = ["#4d9221" if v >= 1 else "#c51b7d" for v in values]
        ax.barh(range(len(bars)), values, color=colors)
        ax.set_xscale("log")
        ax.axvline(1.0, color="0.3", linewidth=1)
        ax.set_yticks(range(len(bars)), labels, fontsize=8)
        ax.invert_yaxis()
        for k, v in enumerate(values):
            ax.text(v, k, f" {format_ratio(v)}", va="center", fontsize=7)
        ax.set_xlabel("speed-up of difflinalg = time(baseline) / time(ours)  (> 1: ours faster)")
        ax.set_title(f"contract benchmark\n{note}", fontsize=9)
        path = out_dir / "speedup.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    strided = next((r for r in rows if r["case"] == "strided"), None)
    memory = (strided or {}).get("memory") or {}
    peaks = {m: (memory.get(m) or {}).get("peak_extra_bytes") for m in ("ours", "torch")}
    if strided and None not in peaks.values():
        saved = strided.get("saved") or {}
        fig, ax = plt.subplots(figsize=(6.5, 3.6), layout="constrained")
        names = [LABELS[m] for m in peaks]
        ax.bar([k - 0.2 for k in range(2)], [peaks[m] / 1e6 for m in peaks], width=0.4,
               label="peak extra, f+b")
        ax.bar([k + 0.2 for k in range(2)],
               [(saved.get(m) or {}).get("saved_extra_bytes", 0) / 1e6 for m in peaks],
               width=0.4, label="saved beyond inputs")
        ax.axhline(strided["copy_size_bytes"] / 1e6, color="0.3", linestyle="--",
                   label="size of x (the permuted copy)")
        ax.set_xticks(range(2), names)
        ax.set_ylabel("MB")
        ax.set_title(f"{strided['equation']}: memory of forward+backward\n{note}", fontsize=9)
        ax.legend(fontsize=8)
        path = out_dir / "strided_memory.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


# ----------------------------------------------------------------------------- run

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``difflinalg bench contract``."""
    presets = "; ".join(f"{name}: {p.about}" for name, p in PRESETS.items())
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                        help=f"settings ({presets}). Default: quick")
    parser.add_argument("--out", type=Path, default=Path("bench-results"),
                        help="output directory (created). Default: bench-results")
    parser.add_argument("--cases", type=choice_list(CASES), default=CASES, metavar="CASE,...",
                        help=f"cases to run, among {','.join(CASES)}. Default: all")
    parser.add_argument("--scale", type=positive_float, default=1.0,
                        help="multiply every size by this (at least 2 per index; lazy n too); "
                             "for smoke tests. Default: 1")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="dtype of the timed runs. Default: float32")
    parser.add_argument("--threads", type=positive_int, default=2,
                        help="torch.set_num_threads in every process. Default: 2")
    parser.add_argument("--min-run-time", type=positive_float, metavar="SECONDS",
                        help="blocked_autorange time per method and stage, split over the "
                             "rounds. Default: the preset's ("
                             + ", ".join(f"{n} {p.min_run_time:g}" for n, p in PRESETS.items())
                             + ")")
    parser.add_argument("--rounds", type=odd_int, metavar="N",
                        help="rounds of each interleaved timing (odd). Default: the preset's ("
                             + ", ".join(f"{n} {p.rounds}" for n, p in PRESETS.items()) + ")")
    parser.add_argument("--timeout", type=positive_float, metavar="SECONDS",
                        help="limit per process. Default: the preset's ("
                             + ", ".join(f"{n} {p.timeout:g}" for n, p in PRESETS.items())
                             + ")")
    parser.add_argument("--seed", type=int, default=0, help="input seed. Default: 0")


def _jobs(args: argparse.Namespace, preset: Preset) -> list[dict[str, Any]]:
    """One row per job: its static description and the worker processes it needs."""
    s, itemsize = args.scale, torch.empty((), dtype=getattr(torch, args.dtype)).element_size()
    jobs: list[dict[str, Any]] = []
    if "inner" in args.cases:
        jobs.append({"case": "inner", "name": "inner", "equation": INNER[0],
                     "shapes": [scaled(sh, s) for sh in INNER[1]], "workers": [_inner_worker]})
    if "strided" in args.cases:
        shapes = [scaled(sh, s) for sh in STRIDED[1]]
        jobs.append({"case": "strided", "name": "strided", "equation": STRIDED[0],
                     "shapes": shapes, "copy_size_bytes": math.prod(shapes[0]) * itemsize,
                     "workers": [_strided_timing_worker]})
    if "chain" in args.cases:
        jobs += [{"case": "chain", "name": f"chain {eq}", "equation": eq,
                  "shapes": [scaled(sh, s) for sh in shapes], "workers": [_chain_worker]}
                 for eq, shapes in CHAINS]
    if "overhead" in args.cases:
        jobs.append({"case": "overhead", "name": "overhead", "n": OVERHEAD_N,
                     "about": f"Per-call time with {OVERHEAD_N} x {OVERHEAD_N} operands, "
                              "plans cached by a warm-up; overhead = (median per-round time "
                              "ratio to torch.mm - 1) x time(torch.mm), where torch.mm is "
                              "one call for `ij,jk->ik` and two for `ij,jk,kl->il`.",
                     "workers": [_overhead_worker]})
    if "lazy" in args.cases:
        sizes = sorted({scaled((n,), s)[0] for n in preset.lazy_n})
        jobs += [{"case": "lazy", "name": f"lazy n={n}", "n": n, "has_targets": n == sizes[-1],
                  "workers": [_lazy_worker]} for n in sizes]
    return jobs


def _run_job(runner: IsolatedRunner, job: dict[str, Any], base: dict[str, Any],
             timeout: float) -> dict[str, Any]:
    workers = job.pop("workers")
    row = {**job, "dtype": base["dtype"]}
    spec = {**base, **{k: v for k, v in job.items() if k in ("equation", "shapes", "n")}}
    errors = []
    for worker in workers:
        result, error = runner.run(worker, spec, timeout)
        result.pop("stage", None)
        row.update(result)
        if error:
            errors.append(error)
    if job["case"] == "strided":
        row["memory"] = {}
        for method in ("ours", "torch"):
            result, error = runner.run(_strided_memory_worker, {**spec, "method": method},
                                       timeout)
            result.pop("stage", None)
            if error:
                result["error"] = error
                errors.append(f"memory {method}: {error}")
            row["memory"][method] = result
    row["error"] = "; ".join(errors) or None
    return row


def _progress(row: dict[str, Any]) -> str:
    fig = row.get("figures") or {}
    shown = {k: v for k, v in fig.items() if isinstance(v, float) and "bytes" not in k}
    text = ", ".join(f"{k} {v:.1f}" if k.endswith("_us") else f"{k} {format_ratio(v)}"
                     for k, v in shown.items())
    return f"error: {row['error']}" if row.get("error") else f"ok ({text})" if text else "ok"


def run(args: argparse.Namespace) -> int:
    """Run the cases; write results.json, results.md and charts into ``args.out``."""
    preset = PRESETS[args.preset]
    min_run_time = args.min_run_time or preset.min_run_time
    timeout = args.timeout or preset.timeout
    rounds = args.rounds or preset.rounds
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "results.json", out_dir / "results.md"
    try:
        opt_einsum_version: str | None = importlib_metadata.version("opt_einsum")
    except importlib_metadata.PackageNotFoundError:
        opt_einsum_version = None
    metadata = collect_metadata({
        "suite": NAME, "preset": args.preset, "dtype": args.dtype, "threads": args.threads,
        "timeout": timeout, "min_run_time": min_run_time, "rounds": rounds,
        "scale": args.scale, "seed": args.seed, "cases": list(args.cases),
        "opt_einsum": opt_einsum_version,
        "opt_einsum_available": torch.backends.opt_einsum.is_available(),
        "method_labels": LABELS})
    base = {"dtype": args.dtype, "threads": args.threads, "seed": args.seed,
            "min_run_time": min_run_time, "rounds": rounds}
    preload = ["torch", "difflinalg", __name__]
    runner = IsolatedRunner(preload=preload + (["opt_einsum"] if opt_einsum_version else []))
    jobs = _jobs(args, preset)
    rows, targets, status, start = run_target_jobs(
        "contract", jobs, lambda job: _run_job(runner, job, base, timeout), _derive, _progress,
        json_path, metadata)
    for stale in (out_dir / "speedup.png", out_dir / "strided_memory.png"):
        stale.unlink(missing_ok=True)
    try:
        charts = _write_charts(out_dir, rows, metadata)
    except ImportError as exc:  # matplotlib is an optional dependency (the bench extra)
        charts = []
        metadata["charts"] = f"not drawn: {exc}"
        print(f"contract bench: charts not drawn ({exc}); pip install 'difflinalg[bench]'",
              file=sys.stderr)
    write_json(json_path, {"metadata": metadata, "targets": targets, "results": rows})
    _write_markdown(md_path, metadata, rows, targets, charts)
    print(f"contract bench: {len(rows)} cases in {format_elapsed(time.monotonic() - start)}, "
          f"targets met: {metadata['targets_met']}; wrote:")
    for path in (json_path, md_path, *charts):
        print(f"  {path}")
    return status
