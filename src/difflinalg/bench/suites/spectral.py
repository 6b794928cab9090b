r"""Suite ``spectral``: :func:`difflinalg.eigh` and :func:`difflinalg.sqrtm_psd` against the
usual alternatives.

Three timed tasks, each on a batch ``(b, n, n)`` built from fixed seeds (the same input for
every method of a task):

``eigh`` - a symmetric Gaussian ``A`` (entries of variance ``1/n``), loss
``(V * G).sum() + (L * g).sum()`` for fixed Gaussian ``G`` and ``g``:

``ours``
    ``difflinalg.eigh(A)``.
``torch``
    ``torch.linalg.eigh((A + A^T) / 2)`` with torch's own backward.
``masked``
    ``torch.linalg.eigh`` forward with a hand-written backward
    ``sym(V (F o (V^T dV) + diag(dL)) V^T)``, ``F_ij = 1 / (l_j - l_i)`` set to zero where
    ``|l_i - l_j| < 1e-9`` (an *absolute* threshold): the rule of the "deep declarative
    networks" style layers, written here for the comparison.

``eigh_topk`` - the same ``A`` and loss on the ``k = max(1, n // 8)`` largest pairs:

``ours_topk``
    ``difflinalg.eigh(A, k=k)`` (backward in ``O(n^2 k)``).
``ours_full``
    ``difflinalg.eigh(A)`` followed by slicing the last ``k`` pairs (backward in ``O(n^3)``).

``sqrtm`` - an SPD covariance ``A = X X^T / (2n) + 1e-3 I`` with ``X`` Gaussian ``n x 2n``,
loss ``(F(A) * G).sum()``:

``ours``
    ``difflinalg.sqrtm_psd(A)`` (Daleckii-Krein backward).
``torch_eigh``
    ``V diag(sqrt(max(L, 0))) V^T`` from ``torch.linalg.eigh`` with torch's backward.
``newton_schulz``
    The coupled Newton-Schulz iteration (``--ns-iters``, default 10) on ``A / ||A||_F``, the
    result multiplied by ``sqrt(||A||_F)``, differentiated by autograd through the iterations.

Per (configuration, task, method), in a fresh process under a timeout
(:class:`~difflinalg.bench._timing.IsolatedRunner`), following
:func:`~difflinalg.bench._timing.profile_differentiable`: warm-up, peak extra resident memory
of forward+backward, forward time, forward+backward time; then the backward alone, timed as
``torch.autograd.grad(loss, A, retain_graph=True)`` on a graph recorded once (its result is
checked against the first gradient; if it differs, the backward time is reported as
``f+b - fwd`` instead). Methods returning ``(L, V)`` are timed on the packed output
``[V; L]`` (an ``(n + 1) x n`` or ``(n + 1) x k`` tensor) with the packed cotangent
``[G; g]``, which is the loss above. The ``sqrtm`` workers also measure the relative error of
the output and of the gradient against :func:`difflinalg.sqrtm_psd` in float64 (the Loewner
formula, exact for this well-conditioned ``A``). These processes give the absolute times,
the peak memory and the accuracy.

The speed ratios come from a paired stage: per (configuration, task), one more process
builds every method of the task on the same input and times the forward, forward+backward
and the backward alone (on one recorded graph per method) of all of them interleaved, round
by round, with :func:`~difflinalg.bench._timing.measure_interleaved`; the ratio ``t(X) /
t(ours)`` (``ours_topk`` for ``eigh_topk``) is formed within each round and its median over
the rounds reported, so the drift of the machine's speed between processes cancels. A method
that would make the stage overrun its time budget (estimated from its own process's call
times) is left out with the reason; where the paired stage has no ratio, the ratio of the two
separate processes is reported instead and marked.

Then, in one more process, the gradient accuracy on hard spectra (``--accuracy-n``, default
8; float32 and float64): for the loss ``<G, A^(1/2)>`` the exact gradient is
``Df(A)[sym(G)]`` (the Frechet derivative of the square root is self-adjoint), computed in
float64 by the block oracle :func:`difflinalg.testing.block_frechet` with
``scipy.linalg.sqrtm`` of the ``2n x 2n`` block matrix, and checked against the closed-form
Loewner matrix ``1 / (sqrt l_i + sqrt l_j)`` of a float64 ``eigh``. The methods are the
square root through ``ours``, ``torch_eigh``, the ``masked`` backward and ``newton_schulz``.
Skipped, with a note, when scipy cannot be imported.

References:
    S. Gould, R. Hartley, D. Campbell, "Deep declarative networks", IEEE TPAMI 44(8), 2022.
    T.-Y. Lin, S. Maji, "Improved bilinear pooling with CNNs", BMVC 2017 (Newton-Schulz
    square root with autograd). N. J. Higham, *Functions of Matrices*, SIAM 2008, sec. 6.3
    and thm. 3.6 (the coupled iteration; the block formula of the Frechet derivative).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import difflinalg
from difflinalg.testing import block_frechet, symmetric_with_spectrum

from .._memory import available_memory_bytes
from .._report import (
    collect_metadata,
    format_elapsed,
    format_ratio,
    ratio,
    relative_error,
    write_json,
)
from .._timing import (
    Budget,
    IsolatedRunner,
    _timed_cost,
    measure,
    measure_interleaved,
    profile_differentiable,
)
from ..cli import choice_list, int_list, positive_float, positive_int
from ._spectral_report import BUSY, STAGES, median_time, write_charts, write_markdown

__all__ = ["DESCRIPTION", "NAME", "add_arguments", "run"]

NAME = "spectral"
DESCRIPTION = ("eigh (full and top-k) and sqrtm_psd vs torch.linalg.eigh, a masked eigh "
               "backward and Newton-Schulz: speed, memory, gradient accuracy on hard spectra")

TASKS: dict[str, tuple[str, ...]] = {
    "eigh": ("ours", "torch", "masked"),
    "eigh_topk": ("ours_topk", "ours_full"),
    "sqrtm": ("ours", "torch_eigh", "newton_schulz"),
}
OURS = {"eigh": "ours", "eigh_topk": "ours_topk", "sqrtm": "ours"}
LABELS = {
    "eigh": {"ours": "difflinalg.eigh",
             "torch": "torch.linalg.eigh",
             "masked": "torch.linalg.eigh + backward masked at |l_i - l_j| < 1e-9"},
    "eigh_topk": {"ours_topk": "difflinalg.eigh(A, k=k)",
                  "ours_full": "difflinalg.eigh(A), last k pairs sliced"},
    "sqrtm": {"ours": "difflinalg.sqrtm_psd",
              "torch_eigh": "torch.linalg.eigh, V sqrt(L) V^T",
              "newton_schulz": "coupled Newton-Schulz with autograd"},
}
ACCURACY_METHODS = ("ours", "torch_eigh", "masked", "newton_schulz")
MASK_ATOL = 1e-9  # the absolute threshold of the `masked` baseline
PAIRED_ROUNDS = 5  # default rounds of the paired stage (measure_interleaved)
_AUTORANGE_SEARCH = 0.06  # seconds blocked_autorange spends finding the block size of a fast call
_REFERENCE_COST = 4.0  # float64 sqrtm reference, in float32 forward+backward calls
_ACCURACY_TIMEOUT = 120.0  # at least this long for the accuracy process


@dataclass(frozen=True)
class Preset:
    configs: tuple[tuple[int, int], ...]  # (b, n)
    timeout: float  # seconds per (configuration, task, method)
    min_run_time: float
    about: str = ""


_QUICK = ((32, 32), (128, 64), (8, 256), (1, 512))
PRESETS = {
    "quick": Preset(configs=_QUICK, timeout=120.0, min_run_time=0.2,
                    about="a few minutes on 2 cores"),
    "full": Preset(configs=_QUICK + ((128, 128), (8, 512), (1, 1024), (1, 2048)),
                   timeout=600.0, min_run_time=1.0,
                   about="tens of minutes: up to n = 2048"),
}


# ----------------------------------------------------------------------------- methods

def _sym(A: torch.Tensor) -> torch.Tensor:
    return (A + A.mT) * 0.5


class _MaskedEighBackward(torch.autograd.Function):
    """``torch.linalg.eigh`` with the absolute-threshold backward of the ``masked`` baseline.

    Classic ``forward(ctx, ...)`` form, as such layers are usually written (and without the
    per-call argument binding of the ``setup_context`` form).
    """

    @staticmethod
    def forward(ctx: Any, A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lam, v = torch.linalg.eigh(A)
        ctx.save_for_backward(lam, v)
        return lam, v

    # dA = sym(V (F o (V^T dV) + diag(dL)) V^T) with F_ij = 1 / (l_j - l_i), the
    # eigenvector term of Magnus (1985) / Giles (2008). F_ij is set to 0 where
    # |l_i - l_j| < MASK_ATOL (the diagonal included): the pair is treated as degenerate and
    # its rotation ignored. The threshold is absolute, so it masks nothing at float32
    # rounding (gaps ~ 1e-7 ||A||) and the reciprocal of a rounding-level gap goes through.
    @staticmethod
    def backward(ctx: Any, g_l: torch.Tensor | None, g_v: torch.Tensor | None
                 ) -> torch.Tensor:
        lam, v = ctx.saved_tensors
        gap = lam.unsqueeze(-2) - lam.unsqueeze(-1)  # gap[i, j] = l_j - l_i
        close = gap.abs() < MASK_ATOL
        inner = torch.zeros_like(gap) if g_v is None else \
            (v.mT @ g_v) / gap.masked_fill(close, 1.0) * ~close
        if g_l is not None:
            inner = inner + torch.diag_embed(g_l)
        grad = v @ inner @ v.mT
        return (grad + grad.mT) * 0.5


def _pack(lam: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
    """``[V; L]``: one tensor whose loss against ``[G; g]`` is ``<V, G> + <L, g>``."""
    return torch.cat([vec, lam.unsqueeze(-2)], dim=-2)


def _eigh_ours(A: torch.Tensor) -> torch.Tensor:
    return _pack(*difflinalg.eigh(A))


def _eigh_torch(A: torch.Tensor) -> torch.Tensor:
    return _pack(*torch.linalg.eigh(_sym(A)))


def _eigh_masked(A: torch.Tensor) -> torch.Tensor:
    return _pack(*_MaskedEighBackward.apply(_sym(A)))


def _sqrt_from_pairs(lam: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (v * lam.clamp_min(0).sqrt().unsqueeze(-2)) @ v.mT


def _sqrtm_torch_eigh(A: torch.Tensor) -> torch.Tensor:
    return _sqrt_from_pairs(*torch.linalg.eigh(_sym(A)))


def _sqrtm_masked(A: torch.Tensor) -> torch.Tensor:
    return _sqrt_from_pairs(*_MaskedEighBackward.apply(_sym(A)))


def newton_schulz_sqrtm(A: torch.Tensor, iters: int) -> torch.Tensor:
    """Coupled Newton-Schulz: ``Y -> A^(1/2)``, ``Z -> A^(-1/2)`` for ``A / ||A||_F``.

    ``T = (3 I - Z Y) / 2``, ``Y <- Y T``, ``Z <- T Z``, from ``Y = A / ||A||_F``, ``Z = I``;
    it converges when the spectrum of the normalised matrix lies in ``(0, 1]``, quadratically
    near the end and slowly for eigenvalues far below 1 (a condition number beyond what the
    iteration count allows is not resolved).
    """
    a = _sym(A)
    norm = torch.linalg.matrix_norm(a).unsqueeze(-1).unsqueeze(-1)
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    y, z = a / norm, eye.expand_as(a)
    for _ in range(iters):
        t = 1.5 * eye - 0.5 * (z @ y)
        y, z = y @ t, t @ z
    return y * norm.sqrt()


def _topk(n: int) -> int:
    return max(1, n // 8)


def _forward(task: str, method: str, n: int, ns_iters: int
             ) -> Callable[[torch.Tensor], torch.Tensor]:
    k = _topk(n)
    table: dict[tuple[str, str], Callable[[torch.Tensor], torch.Tensor]] = {
        ("eigh", "ours"): _eigh_ours,
        ("eigh", "torch"): _eigh_torch,
        ("eigh", "masked"): _eigh_masked,
        ("eigh_topk", "ours_topk"): lambda A: _pack(*difflinalg.eigh(A, k=k)),
        ("eigh_topk", "ours_full"): lambda A: _pack(
            *(x[..., -k:] for x in difflinalg.eigh(A))),
        ("sqrtm", "ours"): difflinalg.sqrtm_psd,
        ("sqrtm", "torch_eigh"): _sqrtm_torch_eigh,
        ("sqrtm", "masked"): _sqrtm_masked,
        ("sqrtm", "newton_schulz"): lambda A: newton_schulz_sqrtm(A, ns_iters),
    }
    if (task, method) not in table:
        raise ValueError(f"spectral bench: unknown method {method!r} for task {task!r}; "
                         f"expected one of {', '.join(TASKS.get(task, ()))}")
    return table[(task, method)]


def _inputs(spec: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, cotangent)`` in float64; they depend on the configuration and task only."""
    b, n, task = spec["b"], spec["n"], spec["task"]
    family = "eigh" if task.startswith("eigh") else task
    gen = torch.Generator().manual_seed(zlib.crc32(f"{spec['seed']}:{family}:{b}:{n}".encode()))
    f64 = torch.float64
    if family == "eigh":
        X = torch.randn(b, n, n, dtype=f64, generator=gen)
        A = (X + X.mT) / (2.0 * n) ** 0.5
        cols = _topk(n) if task == "eigh_topk" else n
        cot = torch.randn(b, n + 1, cols, dtype=f64, generator=gen)
    else:
        X = torch.randn(b, n, 2 * n, dtype=f64, generator=gen)
        A = X @ X.mT / (2 * n) + 1e-3 * torch.eye(n, dtype=f64)
        cot = torch.randn(b, n, n, dtype=f64, generator=gen)
    return A, cot


def _gradient(forward: Callable[[torch.Tensor], torch.Tensor], values: torch.Tensor,
              cot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    param = values.detach().clone().requires_grad_()
    out = forward(param)
    (grad,) = torch.autograd.grad((out * cot).sum(), param)
    return out.detach(), grad


def _error_or_nan(error: float | None) -> float | str | None:
    """The error, or the string ``"NaN"`` for a non-finite result (JSON has no NaN)."""
    return "NaN" if error is not None and math.isnan(error) else error


def _case_worker(spec: dict[str, Any], report: Callable[[dict[str, Any]], None]) -> None:
    """One (configuration, task, method) in its own process; reports stage by stage."""
    torch.set_num_threads(spec["threads"])
    budget = Budget(spec["budget_s"])
    task, method, n = spec["task"], spec["method"], spec["n"]
    dtype = getattr(torch, spec["dtype"])
    forward = _forward(task, method, n, spec["ns_iters"])
    A64, cot64 = _inputs(spec)
    param = A64.to(dtype).requires_grad_()
    cot = cot64.to(dtype)

    small = {**spec, "b": min(spec["b"], 2), "n": min(n, 8)}
    small_A, small_cot = _inputs(small)
    small_forward = _forward(task, method, small["n"], spec["ns_iters"])

    def small_warmup() -> None:
        _gradient(small_forward, small_A.to(dtype), small_cot.to(dtype))

    entry, out, grad, call_s = profile_differentiable(
        forward, param, cot, small_warmup=small_warmup, min_run_time=spec["min_run_time"],
        num_threads=spec["threads"], memory=spec["memory"], budget=budget, report=report)
    skipped = entry["skipped"]

    report({"stage": "backward timing"})
    reason = budget.skip_reason(_timed_cost(call_s, spec["min_run_time"]) + call_s)
    if reason is None:
        loss = (forward(param) * cot).sum()

        def backward() -> torch.Tensor:
            return torch.autograd.grad(loss, param, retain_graph=True)[0]

        check = relative_error(backward(), grad.double())
        if check is not None and check <= 1e-4:
            report({"bwd": measure(backward, min_run_time=spec["min_run_time"],
                                   num_threads=spec["threads"]),
                    "bwd_source": "retained graph"})
        else:
            skipped["bwd"] = (f"the retained-graph backward differs from the first gradient "
                              f"(relative {check}); bwd = f+b - fwd")
        del loss
    else:
        skipped["bwd"] = reason

    if task == "sqrtm":
        if (reason := budget.skip_reason(_REFERENCE_COST * call_s)) is not None:
            skipped["grad_err"] = f"float64 reference {reason}"
        else:
            report({"stage": "float64 reference"})
            ref_out, ref_grad = _gradient(difflinalg.sqrtm_psd, A64, cot64)
            report({"out_err": _error_or_nan(relative_error(out, ref_out)),
                    "grad_err": _error_or_nan(relative_error(grad, ref_grad))})
    report({"skipped": skipped, "stage": "done"})


# ----------------------------------------------------------------------------- paired

def _per_round(min_run_time: float, rounds: int) -> float:
    """The ``blocked_autorange`` minimum run time of one round of ``measure_interleaved``."""
    return max(min_run_time / rounds, 0.01)


def _paired_cost(seconds: dict[str, float], min_run_time: float, rounds: int) -> float:
    """Generous estimate of what one method costs the paired stage, from its call times:
    warm-up, a recorded graph and its check, then each stage once per round."""
    per_round = _per_round(min_run_time, rounds)
    return 3.0 * seconds["fwd_bwd"] + rounds * sum(
        _timed_cost(seconds[stage], per_round) + _AUTORANGE_SEARCH for stage in STAGES)


def _paired_plan(row: dict[str, Any], *, budget_s: float, min_run_time: float,
                 rounds: int) -> dict[str, Any]:
    """Which methods the paired stage of ``row`` times, from their own processes' times.

    A method without a forward+backward time of its own is left out (it failed or was not
    run). While the estimated cost (:func:`_paired_cost`) exceeds ``budget_s``, the costliest
    baseline is left out, with its call time and the estimate as the reason. Without the
    reference method, or with nothing left to compare it with, the stage is ``not_run``.
    """
    task = row["task"]
    reference = OURS[task]
    methods: list[str] = []
    left_out: dict[str, str] = {}
    seconds: dict[str, dict[str, float]] = {}
    plan: dict[str, Any] = {"reference": reference, "methods": methods, "left_out": left_out,
                            "rounds": rounds, "min_run_time": min_run_time,
                            "own_process_seconds": seconds}
    for name in TASKS[task]:
        entry = row["methods"].get(name) or {}
        fwd_bwd = median_time(entry, "fwd_bwd")
        if fwd_bwd is None:
            left_out[name] = ("not run" if entry.get("not_run") else
                              "no forward+backward time from its own process")
            continue
        methods.append(name)
        seconds[name] = {stage: median_time(entry, stage) or fwd_bwd for stage in STAGES}
    if reference not in methods:
        plan["not_run"] = f"{reference}: {left_out[reference]}"
        return plan
    costs = {m: _paired_cost(seconds[m], min_run_time, rounds) for m in methods}
    total = sum(costs.values())
    while total > budget_s and len(methods) > 1:
        worst = max((m for m in methods if m != reference), key=costs.__getitem__)
        left_out[worst] = (
            f"one forward+backward call takes {seconds[worst]['fwd_bwd']:.2g} s; with it the "
            f"paired stage would need about {total:.0f} s, over its budget of {budget_s:.0f} s")
        methods.remove(worst)
        del seconds[worst]
        total -= costs.pop(worst)
    if total > budget_s:
        plan["not_run"] = (f"{reference} alone would need about {total:.0f} s, over the "
                           f"budget of {budget_s:.0f} s")
    elif len(methods) < 2:
        plan["not_run"] = "nothing to compare with: every baseline left out"
    return plan


def _call_forward(forward: Callable[[torch.Tensor], torch.Tensor], param: torch.Tensor
                  ) -> Callable[[], torch.Tensor]:
    return lambda: forward(param)


def _call_forward_backward(forward: Callable[[torch.Tensor], torch.Tensor],
                           param: torch.Tensor, cot: torch.Tensor
                           ) -> Callable[[], torch.Tensor]:
    return lambda: torch.autograd.grad((forward(param) * cot).sum(), param)[0]


def _call_backward(loss: torch.Tensor, param: torch.Tensor) -> Callable[[], torch.Tensor]:
    return lambda: torch.autograd.grad(loss, param, retain_graph=True)[0]


def _paired_worker(spec: dict[str, Any], report: Callable[[dict[str, Any]], None]) -> None:
    """The methods of one (configuration, task) timed interleaved in one process.

    The speed ratios of the report come from here (see
    :func:`~difflinalg.bench._timing.measure_interleaved`): per-method processes run at
    different moments, and on a shared machine their speeds differ by tens of percent, which
    is noise for a ratio near 1. Every method runs on the same input tensor. Stages: forward,
    forward+backward, then the backward alone on one recorded graph per method (a method whose
    retained-graph backward differs from its first gradient is left out of that stage). A
    stage that would not fit in the time left is skipped and says so.
    """
    torch.set_num_threads(spec["threads"])
    budget = Budget(spec["budget_s"])
    task, n, ns_iters = spec["task"], spec["n"], spec["ns_iters"]
    methods, reference = spec["methods"], spec["reference"]
    seconds = spec["own_process_seconds"]
    rounds, min_run_time = spec["rounds"], spec["min_run_time"]
    dtype = getattr(torch, spec["dtype"])
    A64, cot64 = _inputs(spec)
    param, cot = A64.to(dtype).requires_grad_(), cot64.to(dtype)
    small = {**spec, "b": min(spec["b"], 2), "n": min(n, 8)}
    small_A, small_cot = (x.to(dtype) for x in _inputs(small))

    report({"stage": "paired warm-up"})
    forwards: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    grads: dict[str, torch.Tensor] = {}
    for method in methods:
        forwards[method] = _forward(task, method, n, ns_iters)
        _gradient(_forward(task, method, small["n"], ns_iters), small_A, small_cot)
        grads[method] = _call_forward_backward(forwards[method], param, cot)()

    skipped: dict[str, str] = {}

    def interleaved(stage: str, fns: dict[str, Callable[[], object]]) -> None:
        per_round = _per_round(min_run_time, rounds)
        estimate = rounds * sum(_timed_cost(seconds[m][stage], per_round) + _AUTORANGE_SEARCH
                                for m in fns)
        reason = budget.skip_reason(estimate)
        if reason is not None:
            skipped[stage] = reason
            report({"skipped": skipped})
            return
        report({"stage": f"paired {stage}"})
        report({stage: measure_interleaved(fns, reference=reference, min_run_time=min_run_time,
                                           num_threads=spec["threads"], rounds=rounds)})

    interleaved("fwd", {m: _call_forward(forwards[m], param) for m in methods})
    interleaved("fwd_bwd", {m: _call_forward_backward(forwards[m], param, cot)
                            for m in methods})

    report({"stage": "paired bwd graphs"})
    backwards: dict[str, Callable[[], object]] = {}
    left_out: dict[str, str] = {}
    if (reason := budget.skip_reason(sum(seconds[m]["fwd_bwd"] for m in methods))) is None:
        for method in methods:
            backward = _call_backward((forwards[method](param) * cot).sum(), param)
            check = relative_error(backward(), grads[method].double())
            if check is not None and check <= 1e-4:
                backwards[method] = backward
            else:
                left_out[method] = (f"the retained-graph backward differs from the first "
                                    f"gradient (relative {check})")
        report({"bwd_left_out": left_out})
    if reason is not None:
        skipped["bwd"] = reason
    elif reference not in backwards:
        skipped["bwd"] = f"{reference} left out of bwd"
    elif len(backwards) < 2:
        skipped["bwd"] = "nothing to compare with: every baseline left out of bwd"
    else:
        interleaved("bwd", backwards)
    backwards.clear()
    report({"skipped": skipped, "stage": "done"})


# ----------------------------------------------------------------------------- accuracy

def _spectra(n: int) -> list[tuple[str, torch.Tensor, bool]]:
    """``(name, eigenvalues, rotate)``: the hard spectra, all positive (the square root is
    smooth there, so the exact gradient exists and is finite)."""
    f64 = torch.float64

    def with_rest(head: list[float]) -> torch.Tensor:
        rest = torch.linspace(2.0, 4.0, n - len(head), dtype=f64)
        return torch.cat([torch.tensor(head, dtype=f64), rest])

    spectra = [("identity", torch.ones(n, dtype=f64), False),
               ("2I", torch.full((n,), 2.0, dtype=f64), False),
               ("doubled", with_rest([1.0, 1.0]), True),
               ("tripled", with_rest([1.0, 1.0, 1.0]), True)]
    for exponent in (1, 3, 5, 7):
        spectra.append((f"gap 1e-{exponent}", with_rest([1.0, 1.0 + 10.0**-exponent]), True))
    spectra.append(("gap 0", with_rest([1.0, 1.0]), True))
    for exponent in (1, 3, 6):
        spectra.append((f"cond 1e{exponent}",
                        torch.logspace(0, -exponent, n, dtype=f64), True))
    return spectra


def _accuracy_worker(spec: dict[str, Any], report: Callable[[dict[str, Any]], None]) -> None:
    """Gradient of ``<G, sqrtm(A)>`` per hard spectrum, dtype and method vs the block oracle."""
    torch.set_num_threads(spec["threads"])
    try:
        import numpy as np
        import scipy.linalg
    except ImportError as exc:
        report({"skipped": f"scipy not importable ({exc}); pip install 'difflinalg[test]'"})
        return

    def scipy_sqrtm(M: torch.Tensor) -> torch.Tensor:
        root = np.asarray(scipy.linalg.sqrtm(M.numpy()))
        if np.iscomplexobj(root):
            if np.abs(root.imag).max() > 1e-10 * max(np.abs(root.real).max(), 1.0):
                raise ValueError("scipy.linalg.sqrtm returned a complex square root")
            root = root.real
        return torch.from_numpy(np.ascontiguousarray(root))

    n, seed = spec["n"], spec["seed"]
    G64 = torch.randn(n, n, dtype=torch.float64,
                      generator=torch.Generator().manual_seed(zlib.crc32(f"{seed}:G".encode())))
    rows: list[dict[str, Any]] = []
    report({"stage": "accuracy"})
    for name, eigenvalues, rotate in _spectra(n):
        if rotate:
            gen = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}".encode()))
            A64 = symmetric_with_spectrum(eigenvalues, generator=gen)
        else:
            A64 = torch.diag(eigenvalues)
        for dtype_name in ("float32", "float64"):
            dtype = getattr(torch, dtype_name)
            A, G = A64.to(dtype), G64.to(dtype)
            exact = A.double()  # the matrix (and weights) the methods see, rounded
            S64 = _sym(G.double())
            truth = block_frechet(scipy_sqrtm, exact, S64)
            lam, v = torch.linalg.eigh(exact)
            root = lam.clamp_min(0).sqrt()
            loewner = v @ ((v.mT @ S64 @ v) / (root.unsqueeze(-1) + root.unsqueeze(-2))) @ v.mT
            row: dict[str, Any] = {
                "spectrum": name, "dtype": dtype_name,
                "eigenvalues": [float(x) for x in eigenvalues],
                "oracle_vs_loewner64": relative_error(loewner, truth),
                "grad_err": {}, "errors": {}}
            for method in ACCURACY_METHODS:
                try:
                    forward = _forward("sqrtm", method, n, spec["ns_iters"])
                    _, grad = _gradient(forward, A, G)
                    row["grad_err"][method] = _error_or_nan(relative_error(grad, truth))
                except Exception as exc:  # noqa: BLE001 - a failing method is a cell, not a crash
                    row["grad_err"][method] = None
                    row["errors"][method] = f"{type(exc).__name__}: {exc}"
            rows.append(row)
            report({"rows": rows})
    report({"stage": "done"})


# ----------------------------------------------------------------------------- settings

def _config_list(text: str) -> tuple[tuple[int, int], ...]:
    configs = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise argparse.ArgumentTypeError(
                f"expected configurations like 128x64,1x512 (BxN), but got {item!r}")
        configs.append((int(parts[0]), int(parts[1])))
    return tuple(configs)


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        value = positive_int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, but got {text!r}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``difflinalg bench spectral``."""
    presets = "; ".join(f"{name}: {p.about}" for name, p in PRESETS.items())
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                        help=f"sweep and limits ({presets}). Default: quick")
    parser.add_argument("--out", type=Path, default=Path("bench-results-spectral"),
                        help="output directory (created). Default: bench-results-spectral")
    parser.add_argument("--batch", type=int_list, metavar="B,...",
                        help="batch sizes; with --n replaces the preset's sweep by the product "
                             "of the lists")
    parser.add_argument("--n", type=int_list, metavar="N,...", help="matrix sizes n")
    parser.add_argument("--configs", type=_config_list, metavar="BxN,...",
                        help="exact configurations, run as given (overrides the sweep)")
    parser.add_argument("--tasks", type=choice_list(tuple(TASKS), "tasks"), default=tuple(TASKS),
                        metavar="T,...",
                        help=f"tasks to run, among {','.join(TASKS)}. Default: all")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="dtype of the timed runs (references are float64). "
                             "Default: float32")
    parser.add_argument("--threads", type=positive_int, default=2,
                        help="torch.set_num_threads for every run. Default: 2")
    parser.add_argument("--timeout", type=positive_float, metavar="SECONDS",
                        help="limit per (configuration, task, method) process and per "
                             "paired stage. Default: the preset's ("
                             + ", ".join(f"{n} {p.timeout:g}" for n, p in PRESETS.items())
                             + f"); the accuracy part gets at least {_ACCURACY_TIMEOUT:g}")
    parser.add_argument("--min-run-time", type=positive_float, metavar="SECONDS",
                        help="blocked_autorange min_run_time. Default: the preset's ("
                             + ", ".join(f"{n} {p.min_run_time:g}" for n, p in PRESETS.items())
                             + ")")
    parser.add_argument("--paired-rounds", type=_int_at_least(3), default=PAIRED_ROUNDS,
                        metavar="N",
                        help="rounds of the paired stage, which times the methods of a task "
                             "interleaved in one process and gives the speed ratios (median "
                             f"over the rounds). Default: {PAIRED_ROUNDS}")
    parser.add_argument("--no-memory", action="store_true",
                        help="do not measure peak memory")
    parser.add_argument("--ns-iters", type=positive_int, default=10,
                        help="Newton-Schulz iterations. Default: 10")
    parser.add_argument("--accuracy-n", type=_int_at_least(4), default=8,
                        help="matrix size of the gradient-accuracy part. Default: 8")
    parser.add_argument("--no-accuracy", action="store_true",
                        help="skip the gradient-accuracy part")
    parser.add_argument("--seed", type=int, default=0, help="input seed. Default: 0")


def _sweep(args: argparse.Namespace, preset: Preset) -> list[tuple[int, int]]:
    if args.configs:
        return list(dict.fromkeys(args.configs))
    if args.batch or args.n:
        batches = args.batch or tuple(sorted({b for b, _ in preset.configs}))
        sizes = args.n or tuple(sorted({n for _, n in preset.configs}))
        return sorted({(b, n) for b in batches for n in sizes})
    return sorted(preset.configs, key=lambda c: (c[1], c[0]))


def _not_run_reason(method: str, b: int, n: int, ns_iters: int) -> str | None:
    # A rough guard against hopeless cases only; real out-of-memory failures are caught.
    copies = 6 * ns_iters + 16 if method == "newton_schulz" else 16
    needed = b * n * n * 8 * copies
    available = available_memory_bytes()
    if available is not None and needed > available:
        return (f"not run: needs about {needed / 2**30:.1f} GiB, "
                f"{available / 2**30:.1f} GiB available")
    return None


# ----------------------------------------------------------------------------- derived

def _paired_ratio(row: dict[str, Any], stage: str, name: str) -> float | None:
    """``t(name) / t(ours)`` of the paired stage, or None where it has none."""
    timing = ((row.get("paired") or {}).get(stage) or {}).get(name) or {}
    value = timing.get("ratio_to_reference")
    if isinstance(value, (int, float)) and math.isfinite(value) and value > 0:
        return float(value)
    return None


def _derive(row: dict[str, Any], itemsize: int) -> None:
    """Backward times, ratios to ours, memory in units of the input, and ``error``.

    ``speedup_<stage>_vs_<name>`` is the paired stage's ``t(name) / t(ours)`` where it has
    one (``speedup_<stage>_vs_<name>_paired`` true), else the ratio of the medians of the two
    methods' own processes (false); both are kept in ``separate_process_speedups``.
    """
    methods = row["methods"]
    input_bytes = row["b"] * row["n"] * row["n"] * itemsize
    for entry in methods.values():
        if not entry.get("bwd"):
            fwd, fwd_bwd = median_time(entry, "fwd"), median_time(entry, "fwd_bwd")
            if fwd is not None and fwd_bwd is not None and fwd_bwd > fwd:
                entry["bwd"] = {"median_s": fwd_bwd - fwd}
                entry["bwd_source"] = "f+b - fwd"
        peak = entry.get("peak_extra_bytes")
        entry["peak_extra_x_input"] = peak / input_bytes if peak is not None else None
    ours = methods.get(OURS[row["task"]])
    separate: dict[str, float | None] = {}
    for name in TASKS[row["task"]]:
        if name == OURS[row["task"]] or name not in methods:
            continue
        for stage in STAGES:
            key = f"{stage}_vs_{name}"
            separate[key] = ratio(median_time(methods[name], stage), median_time(ours, stage))
            same = _paired_ratio(row, stage, name)
            row[f"speedup_{key}"] = same if same is not None else separate[key]
            row[f"speedup_{key}_paired"] = same is not None
        row[f"memory_ratio_vs_{name}"] = ratio(methods[name].get("peak_extra_bytes"),
                                                (ours or {}).get("peak_extra_bytes"))
    row["separate_process_speedups"] = separate
    paired = row.get("paired") or {}
    timings = [e.get(stage) for e in methods.values() for stage in ("fwd", "fwd_bwd")]
    timings += [t for stage in STAGES for t in (paired.get(stage) or {}).values()]
    loads = [t["other_load"] for t in timings if t and t.get("other_load") is not None]
    row["other_load"] = max(loads) if loads else None
    errors = [f"{n}: {e['error']}" for n, e in methods.items() if e.get("error")]
    row["error"] = "; ".join(errors) or None


def _targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The figures the issue asks for, with where they were measured (no verdicts)."""

    def find(task: str, **where: int) -> list[dict[str, Any]]:
        return [r for r in rows if r["task"] == task
                and all(r[key] == value for key, value in where.items())]

    targets = []
    for baseline, want in (("torch_eigh", 1.0), ("newton_schulz", 2.0)):
        targets.append({
            "what": f"sqrtm forward+backward, ours vs {baseline}", "want": want,
            "where": "b=128 n=64", "key": f"speedup_fwd_bwd_vs_{baseline}",
            "rows": find("sqrtm", b=128, n=64)})
    targets.append({"what": "eigh backward, ours vs torch", "want": 1.0, "where": "every config",
                    "key": "speedup_bwd_vs_torch", "rows": find("eigh")})
    targets.append({"what": "top-k eigh backward, speed-up over full", "want": 3.0,
                    "where": "n=512", "key": "speedup_bwd_vs_ours_full",
                    "rows": find("eigh_topk", n=512)})
    for target in targets:
        target["measured"] = [_measured(r, target["key"]) for r in target.pop("rows")]
    return targets


def _measured(row: dict[str, Any], key: str) -> dict[str, Any]:
    """One target figure: the ratio, whether it is paired, and its spread over the rounds."""
    stage, name = key.removeprefix("speedup_").split("_vs_")
    paired = bool(row.get(f"{key}_paired"))
    timing = ((row.get("paired") or {}).get(stage) or {}).get(name) or {}
    return {"b": row["b"], "n": row["n"], "ratio": row.get(key), "paired": paired,
            "ratio_iqr": timing.get("ratio_iqr") if paired else None}


# ----------------------------------------------------------------------------- run

def _run_accuracy(runner: IsolatedRunner, args: argparse.Namespace, timeout: float
                  ) -> dict[str, Any]:
    spec = {"n": args.accuracy_n, "seed": args.seed, "threads": args.threads,
            "ns_iters": args.ns_iters}
    limit = max(timeout, _ACCURACY_TIMEOUT)
    start = time.monotonic()
    print(f"accuracy on hard spectra (n = {args.accuracy_n}) ...", end="", file=sys.stderr,
          flush=True)
    result, error = runner.run(_accuracy_worker, spec, limit)
    result.pop("stage", None)
    accuracy: dict[str, Any] = {
        "n": args.accuracy_n, "methods": list(ACCURACY_METHODS), "rows": [],
        "loss": "<G, sqrtm(A)>, G Gaussian",
        "reference": "block_frechet(scipy.linalg.sqrtm, A, sym(G)) in float64", **result}
    if error:
        accuracy["error"] = error
    state = "error" if error else ("skipped" if accuracy.get("skipped") else "ok")
    print(f" {state} | {format_elapsed(time.monotonic() - start)}", file=sys.stderr,
          flush=True)
    return accuracy


def _run_paired(runner: IsolatedRunner, row: dict[str, Any], args: argparse.Namespace,
                min_run_time: float, timeout: float) -> dict[str, Any]:
    """The paired (same-process, interleaved) timing stage of one (configuration, task)."""
    paired = _paired_plan(row, budget_s=0.9 * timeout, min_run_time=min_run_time,
                          rounds=args.paired_rounds)
    if paired.get("not_run"):
        return paired
    spec = {"b": row["b"], "n": row["n"], "task": row["task"], "dtype": args.dtype,
            "threads": args.threads, "seed": args.seed, "ns_iters": args.ns_iters,
            "budget_s": 0.9 * timeout,
            **{key: paired[key] for key in ("methods", "reference", "own_process_seconds",
                                            "rounds", "min_run_time")}}
    result, error = runner.run(_paired_worker, spec, timeout)
    if not error:
        result.pop("stage", None)
    paired.update(result)
    if error:
        paired["error"] = error
    return paired


def run(args: argparse.Namespace) -> int:
    """Run the sweep and the accuracy part; write results.json, results.md and charts."""
    preset = PRESETS[args.preset]
    timeout = args.timeout or preset.timeout
    min_run_time = args.min_run_time or preset.min_run_time
    itemsize = torch.empty((), dtype=getattr(torch, args.dtype)).element_size()
    configs = _sweep(args, preset)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "results.json", out_dir / "results.md"
    metadata = collect_metadata({
        "suite": NAME, "preset": args.preset, "dtype": args.dtype, "threads": args.threads,
        "timeout": timeout, "min_run_time": min_run_time, "memory": not args.no_memory,
        "seed": args.seed, "tasks": list(args.tasks), "ns_iters": args.ns_iters,
        "methods": {t: list(TASKS[t]) for t in args.tasks},
        "method_labels": {t: LABELS[t] for t in args.tasks},
        "reference_methods": {t: OURS[t] for t in args.tasks}, "paired_rounds": args.paired_rounds,
        "mask_atol": MASK_ATOL})
    runner = IsolatedRunner(preload=["torch", "difflinalg", __name__])
    rows: list[dict[str, Any]] = []
    accuracy: dict[str, Any] | None = None
    start = time.monotonic()
    status = 0

    def save() -> None:
        write_json(json_path, {"metadata": metadata, "results": rows,
                               "targets": _targets(rows), "accuracy": accuracy})

    try:
        for index, (b, n) in enumerate(configs, 1):
            config_start = time.monotonic()
            print(f"[{index}/{len(configs)}] b={b} n={n}", end="", file=sys.stderr, flush=True)
            for task in args.tasks:
                print(f" | {task}:", end="", file=sys.stderr, flush=True)
                row: dict[str, Any] = {"b": b, "n": n, "task": task, "dtype": args.dtype,
                                       "methods": {}}
                if task == "eigh_topk":
                    row["k"] = _topk(n)
                for method in TASKS[task]:
                    reason = _not_run_reason(method, b, n, args.ns_iters)
                    if reason:
                        row["methods"][method] = {"not_run": reason}
                        print(f" {method} n/r", end="", file=sys.stderr, flush=True)
                        continue
                    spec = {"b": b, "n": n, "task": task, "method": method,
                            "dtype": args.dtype, "threads": args.threads,
                            "min_run_time": min_run_time, "memory": not args.no_memory,
                            "seed": args.seed, "ns_iters": args.ns_iters,
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
                row["paired"] = paired = _run_paired(runner, row, args, min_run_time, timeout)
                error = paired.get("error") or ""
                tag = "n/r" if paired.get("not_run") else "timeout" if error.startswith(
                    "timeout") else ("error" if error else "ok")
                print(f" paired {tag}", end="", file=sys.stderr, flush=True)
                _derive(row, itemsize)
                rows.append(row)
            headlines = [(f"{task} {stage} vs {m}", r.get(f"speedup_{stage}_vs_{m}"))
                         for r in rows[-len(args.tasks):] for task, stage, m in (
                             ("eigh", "bwd", "torch"), ("eigh_topk", "bwd", "ours_full"),
                             ("sqrtm", "fwd_bwd", "torch_eigh")) if r["task"] == task]
            loads = [r["other_load"] for r in rows[-len(args.tasks):]
                     if r.get("other_load") is not None]
            print(f" || {format_elapsed(time.monotonic() - config_start)}"
                  + "".join(f", {what} {format_ratio(v)}" for what, v in headlines if v)
                  + (f", BUSY: other processes used {max(loads):.0%} of the CPUs"
                     if loads and max(loads) > BUSY else "")
                  + f" (total {format_elapsed(time.monotonic() - start)})",
                  file=sys.stderr, flush=True)
            save()
        if not args.no_accuracy:
            accuracy = _run_accuracy(runner, args, timeout)
    except KeyboardInterrupt:
        print("\nspectral bench: interrupted; writing what was measured", file=sys.stderr)
        status = 130
    try:
        metadata["load_average_at_end"] = list(os.getloadavg())
    except OSError:
        metadata["load_average_at_end"] = None
    metadata["wall_time_s"] = round(time.monotonic() - start, 1)
    loads = [row["other_load"] for row in rows if row.get("other_load") is not None]
    metadata["max_other_load"] = max(loads) if loads else None
    for stale in (*out_dir.glob("times_*.png"), out_dir / "grad_error.png"):
        stale.unlink(missing_ok=True)
    try:
        charts = write_charts(out_dir, rows, accuracy, metadata)
    except ImportError as exc:  # matplotlib is an optional dependency (the bench extra)
        charts = []
        metadata["charts"] = f"not drawn: {exc}"
        print(f"spectral bench: charts not drawn ({exc}); pip install 'difflinalg[bench]'",
              file=sys.stderr)
    save()
    write_markdown(md_path, metadata, rows, _targets(rows), accuracy, charts)
    print(f"spectral bench: {len(configs)} configurations x {len(args.tasks)} tasks in "
          f"{format_elapsed(time.monotonic() - start)}; wrote:")
    for path in (json_path, md_path, *charts):
        print(f"  {path}")
    return status
