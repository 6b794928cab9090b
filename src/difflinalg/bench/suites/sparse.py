r"""Suite ``sparse``: :mod:`difflinalg.sparse` against scipy and torch's own sparse kernels.

Six cases, each in a fresh process (:class:`~difflinalg.bench._timing.IsolatedRunner`) with
the methods of a stage interleaved round by round (a ratio is the median over the rounds of
the ratio within a round, so drift of a shared machine cancels). A stage whose slowest call
takes over ``SLOW_CALL_S`` runs ``SLOW_ROUNDS`` rounds of one measured call each
(``Timer.timeit(1)``), one over ``VERY_SLOW_CALL_S`` a single round, after one untimed call
of every method:

``spspmm``
    random CSR ``A``, ``B`` (n x n, density 1e-3, float32, int32 indices; scipy's generator
    with a seed). Forward of :func:`~difflinalg.sparse.spspmm` against scipy's ``A @ B``
    (raw: unsorted columns), scipy's ``A @ B`` then ``sort_indices()`` (the canonical sorted
    CSR a torch CSR tensor must hold), ``torch.sparse.mm`` on CSR and on coalesced COO.
    Backward of ours (``autograd.grad(C, (A, B), G, retain_graph=True)``, ``G`` sparse with
    ``C``'s pattern) against our forward, and the layout and nnz of the gradients. A second
    row compares the backward with torch's: COO ``torch.sparse.mm`` (masked to the
    patterns) and CSR ``A @ B`` (``torch.sparse.mm`` on CSR has no backward; ``@`` returns
    gradients on the patterns of ``G B^T`` and ``A^T G``), at a smaller n in the quick preset
    (torch's COO backward takes tens of seconds at n = 20000).
``largest``
    ``A A^T`` for the 200000 x 100000, density 0.002 ``A`` if its product fits, else for the
    largest ``A`` (m x m/2, the same density) whose product is estimated within the preset's
    budget (quick 256 MiB, full 2 GiB; at most an eighth of the memory available): forward of
    ours against scipy's raw ``A @ A^T`` and torch's CSR product. The full problem (about
    150 GiB) does not fit a machine of this kind.
``estimate``
    :func:`~difflinalg.sparse.product_nnz_estimate`'s formula evaluated analytically for the
    200000 x 100000, density 0.002 matrix times its transpose (never built), checked against
    the function and the true nnz on a scaled analogue with the same fill; ``spspmm``'s
    ``MemoryError`` when ``max_bytes`` is below the estimate.
``lsq``
    :func:`~difflinalg.sparse.lsqr` and :func:`~difflinalg.sparse.lsmr` against
    ``scipy.sparse.linalg.lsqr``/``lsmr`` on a random 1e6 x 1e5 system, density 1e-4,
    float64, ``atol = btol = 1e-6``: solve time on a prebuilt operator
    (:func:`~difflinalg.sparse.as_operator`), the build alone, and a solve including it;
    iterations, stop reason and the true residual ``||b - A x||``.
``stochastic``
    :func:`~difflinalg.sparse.sgd_lstsq` against ``lsqr`` on a consistent 2e5 x 2e4 system:
    residual norm against passes over ``A``, with plain minibatch SGD on a mean loss
    (``x -= lr A_B^T r_B / |B|``) for contrast.
``densify``
    memory of the densifying alternatives at the ``spspmm`` size: a dense ``A``, a dense
    gradient, the ``G B^T`` and ``A^T G`` patterns torch's CSR backward returns (estimated,
    and exact at the smaller size), against our gradients (``nnz(A) + nnz(B)`` values); the
    peak extra resident memory of one forward+backward of each method, each alone in a fresh
    process.

``--scale`` multiplies every dimension and divides every density (stored entries per row
stay); each row names its sizes. Products run in ``--dtype`` (float32 by default), least
squares in float64.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.benchmark import Timer

from .._memory import PeakMemory, available_memory_bytes, heap_for_memory
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
from .._timing import IsolatedRunner, OtherLoad, measure_interleaved
from ..cli import choice_list, odd_int, positive_float, positive_int

__all__ = ["DESCRIPTION", "NAME", "add_arguments", "run"]

NAME = "sparse"
DESCRIPTION = ("sparse: spspmm vs scipy/torch (forward, backward, memory), nnz estimate, "
               "lsqr/lsmr vs scipy, sgd_lstsq vs lsqr")

CASES = ("spspmm", "largest", "estimate", "lsq", "stochastic", "densify")
SPSPMM_N, SPSPMM_DENSITY = 20000, 1e-3
BIG_ESTIMATE = (200000, 100000, 0.002)  # A (m, k) at this density, times A^T
ANALOGUE_M = 5000  # analogue of BIG_ESTIMATE: m / 40, k / 40, same fill of A A^T
MEMORY_CAP = 1 << 20  # max_bytes of the MemoryError demonstration (1 MiB)
LSQ_DENSITY, LSQ_TOL = 1e-4, 1e-6
STOCHASTIC = (200000, 20000, 1e-4)
SGD_BATCH, SGD_LR = 1024, 0.5
LSQR_HISTORY_CAP = 200  # lsqr iterations recorded for the convergence chart
SLOW_CALL_S, SLOW_ROUNDS = 0.3, 3
VERY_SLOW_CALL_S = 10.0

# Thresholds of the targets in results.md.
FWD_MAX_OVER_SCIPY = 1.2
BWD_MAX_OVER_FWD = 2.0
BWD_MIN_SPEEDUP_VS_TORCH_COO = 20.0
LSQ_MAX_TIME_OVER_SCIPY = 1.2
LSQ_MAX_ITER_OVER_SCIPY = 1.1
LSQ_MAX_RESIDUAL_OVER_SCIPY = 1.0 + 1e-6

LABELS = {
    "ours": "difflinalg spspmm",
    "scipy_raw": "scipy A @ B (unsorted)",
    "scipy_sorted": "scipy A @ B + sort_indices",
    "torch_csr": "torch.sparse.mm, CSR",
    "torch_coo": "torch.sparse.mm, COO",
    "ours_fwd": "ours forward (grad recorded)",
    "ours_bwd": "ours backward",
    "torch_coo_bwd": "torch COO sparse.mm backward",
    "torch_csr_bwd": "torch CSR A @ B backward",
    "build": "as_operator(A) (build)",
    "with_build": "ours incl. build",
    "scipy": "scipy",
}


@dataclass(frozen=True)
class Preset:
    min_run_time: float  # per method and stage (fast calls), split over the rounds
    rounds: int  # odd
    torch_bwd_n: int  # n of the backward comparison with torch
    largest_bytes: float  # result size (estimated) of the "largest" case's A A^T, at most
    lsq_shape: tuple[int, int]
    epochs: int
    timeout: float  # seconds per process
    about: str


PRESETS = {
    "quick": Preset(min_run_time=1.0, rounds=3, torch_bwd_n=SPSPMM_N, largest_bytes=2.0**28,
                    lsq_shape=(1000000, 100000), epochs=20, timeout=300.0,
                    about="about 5 minutes on 2 idle cores, 2 of them in torch's COO "
                          "backward at n = 20000 (one timed call)"),
    "full": Preset(min_run_time=3.0, rounds=5, torch_bwd_n=SPSPMM_N, largest_bytes=2.0**31,
                   lsq_shape=(1000000, 100000), epochs=50, timeout=1800.0,
                   about="10+ minutes; torch's backward at n = 20000 (tens of seconds a call)"),
}

Report = Callable[[dict[str, Any]], None]


# ----------------------------------------------------------------------------- inputs

def scaled(n: int, density: float, scale: float) -> tuple[int, float]:
    """``(n * scale, density / scale)``: the stored entries per row stay (n at least 8)."""
    if scale == 1:
        return n, density
    return max(8, round(n * scale)), min(1.0, density / scale)


def _setup(spec: dict[str, Any]) -> None:
    torch.set_num_threads(spec["threads"])
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly")
    # torch's first autograd.grad with grad_outputs imports sympy (about 0.5 s): done here,
    # else the warm-up call of the first backward timed would pay it and choose the
    # one-call-per-round mode for a call of 0.2 s
    x = torch.zeros(1, requires_grad=True)
    torch.autograd.grad(x * 2, x, torch.ones(1))


def _random_csr(m: int, n: int, density: float, seed: int, dtype: str) -> Any:
    """``scipy.sparse.random`` CSR (values uniform in [0, 1)), canonical: sorted columns."""
    import numpy as np
    import scipy.sparse as ssp

    s = ssp.random(m, n, density=density, format="csr", dtype=dtype,
                   rng=np.random.default_rng(seed))
    s.sort_indices()
    return s


def _torch_csr(s: Any, index_dtype: torch.dtype) -> torch.Tensor:
    """A torch CSR tensor sharing ``s``'s values (indices converted to ``index_dtype``)."""
    import numpy as np

    np_index = np.int32 if index_dtype == torch.int32 else np.int64
    return torch.sparse_csr_tensor(
        torch.from_numpy(s.indptr.astype(np_index, copy=False)),
        torch.from_numpy(s.indices.astype(np_index, copy=False)),
        torch.from_numpy(s.data), s.shape)


def _pair(spec: dict[str, Any], n: int) -> tuple[Any, Any, torch.Tensor, torch.Tensor]:
    """The spspmm operands at size n: scipy CSR a, b and torch CSR A, B."""
    density = spec["densities"][str(n)]
    a = _random_csr(n, n, density, spec["seed"], spec["dtype"])
    b = _random_csr(n, n, density, spec["seed"] + 1, spec["dtype"])
    index = getattr(torch, spec["index_dtype"])
    return a, b, _torch_csr(a, index), _torch_csr(b, index)


def _coo(A: torch.Tensor) -> torch.Tensor:
    return A.to_sparse_coo().coalesce()


def _grad_like(C: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """A sparse incoming gradient with ``C``'s layout and pattern."""
    if C.layout == torch.sparse_csr:
        return torch.sparse_csr_tensor(C.crow_indices(), C.col_indices(), values, C.shape)
    C = C.detach().coalesce()
    return torch.sparse_coo_tensor(C.indices(), values, C.shape, is_coalesced=True)


def _nnz(t: torch.Tensor) -> int:
    return int(t._nnz()) if t.layout != torch.strided else t.numel()


def _describe_grad(g: torch.Tensor | None) -> dict[str, Any] | None:
    if g is None:
        return None
    return {"layout": str(g.layout).replace("torch.", ""), "nnz": _nnz(g),
            "shape": list(g.shape)}


# ----------------------------------------------------------------------------- timing

def _summary(times: dict[str, list[float]], reference: str, load: float | None
             ) -> dict[str, dict[str, Any]]:
    """The summary of :func:`measure_interleaved` from per-round times."""
    out: dict[str, dict[str, Any]] = {}
    ref = times[reference]
    for name, values in times.items():
        ratios = sorted(v / r for v, r in zip(values, ref))
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        out[name] = {"median_s": statistics.median(values), "rounds": len(values),
                     "ratio_to_reference": None if name == reference else
                     statistics.median(ratios),
                     "ratio_iqr": None if name == reference else q[2] - q[0],
                     "other_load": None if load is None else round(load, 3)}
    return out


def _interleaved(fns: dict[str, Callable[[], object]], spec: dict[str, Any], reference: str,
                 rounds: int | None = None) -> dict[str, dict[str, Any]]:
    """Interleaved timing of ``fns``; ratios ``t(name) / t(reference)`` within rounds.

    One untimed call of each method first (a warm-up, and the slowest one picks the mode):
    :func:`measure_interleaved` for fast calls; ``SLOW_ROUNDS`` rounds (one round over
    ``VERY_SLOW_CALL_S``) of one ``Timer.timeit(1)`` per method otherwise, since
    ``blocked_autorange`` would call a slow method twice per round.
    """
    slowest = 0.0
    for fn in fns.values():
        t0 = time.perf_counter()
        fn()
        slowest = max(slowest, time.perf_counter() - t0)  # chooses the mode only
    rounds = rounds or spec["rounds"]
    if slowest <= SLOW_CALL_S:
        out = measure_interleaved(fns, reference=reference, min_run_time=spec["min_run_time"],
                                  num_threads=spec["threads"], rounds=rounds)
        for entry in out.values():
            entry["mode"] = "blocked_autorange"
        return out
    rounds = 1 if slowest > VERY_SLOW_CALL_S else min(rounds, SLOW_ROUNDS)
    timers = {name: Timer(stmt="fn()", globals={"fn": fn}, num_threads=spec["threads"])
              for name, fn in fns.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    with OtherLoad() as load:
        for _ in range(rounds):
            for name, timer in timers.items():
                times[name].append(float(timer.timeit(1).median))
    out = _summary(times, reference, load.fraction)
    for entry in out.values():
        entry["mode"] = "one call per round"
    return out


# ----------------------------------------------------------------------------- workers

def _against_scipy(C: torch.Tensor, ref: Any) -> dict[str, Any]:
    """nnz of our CSR product ``C``, whether its pattern is that of scipy's sorted product
    ``ref``, and the values' relative error where it is."""
    same = (torch.equal(C.crow_indices().long(), torch.from_numpy(ref.indptr).long())
            and torch.equal(C.col_indices().long(), torch.from_numpy(ref.indices).long()))
    return {"nnz_c": _nnz(C), "same_pattern_as_scipy_sorted": same,
            "rel_err_vs_scipy": relative_error(C.values(), torch.from_numpy(ref.data))
            if same else None}


def _spspmm_worker(spec: dict[str, Any], report: Report) -> None:
    """Forward against scipy and torch, then our backward against our forward, at n."""
    from difflinalg.sparse import spspmm

    _setup(spec)
    n = spec["n"]
    report({"stage": "inputs"})
    a, b, A, B = _pair(spec, n)
    Ac, Bc = _coo(A), _coo(B)
    report({"nnz_a": int(a.nnz), "nnz_b": int(b.nnz)})

    def scipy_sorted() -> Any:
        c = a @ b
        c.sort_indices()
        return c

    # Two groups, each interleaved with ours: the calls near ours' time, and the slow ones,
    # which would put the whole stage in one-call-per-round mode (a ratio near 1 from three
    # single calls of 0.1 s moves by 20% on this machine).
    ours = {"ours": lambda: spspmm(A, B)}
    fast: dict[str, Callable[[], object]] = {
        **ours, "scipy_raw": lambda: a @ b, "torch_csr": lambda: torch.sparse.mm(A, B)}
    slow: dict[str, Callable[[], object]] = {
        **ours, "scipy_sorted": scipy_sorted, "torch_coo": lambda: torch.sparse.mm(Ac, Bc)}
    timing: dict[str, Any] = {}
    report({"stage": "timing fwd"})
    timing["fwd"] = {**_interleaved(slow, spec, reference="ours"),
                     **_interleaved(fast, spec, reference="ours")}
    report({"timing": timing})

    report({"stage": "timing bwd"})
    Ar, Br = A.clone().requires_grad_(), B.clone().requires_grad_()
    C = spspmm(Ar, Br)
    gen = torch.Generator().manual_seed(spec["seed"] + 2)
    G = _grad_like(C, torch.randn(_nnz(C), dtype=C.dtype, generator=gen))
    bwd: dict[str, Callable[[], object]] = {
        "ours_fwd": lambda: spspmm(Ar, Br),
        "ours_bwd": lambda: torch.autograd.grad(C, (Ar, Br), G, retain_graph=True)}
    timing["bwd"] = _interleaved(bwd, spec, reference="ours_fwd")
    report({"timing": timing})

    report({"stage": "checks"})
    ga, gb = torch.autograd.grad(C, (Ar, Br), G, retain_graph=True)
    ours = C.detach()
    report({**_against_scipy(ours, scipy_sorted()),
            "layout_c": str(ours.layout).replace("torch.", ""),
            "grads": {"ours": {"A": _describe_grad(ga), "B": _describe_grad(gb)}},
            "input_layout": "sparse_csr"})


def largest_fitting(m_max: int, density: float, budget: float, itemsize: int) -> int:
    """The largest m <= m_max for which A (m x m/2, this density) times A^T is estimated
    (:func:`analytic_estimate`) to take at most ``budget`` bytes (at least 2)."""
    def fits(m: int) -> bool:
        return analytic_estimate(m, max(1, m // 2), density, itemsize)["bytes_estimate"] <= budget

    if fits(m_max):
        return m_max
    lo, hi = 2, m_max  # fits(lo) is taken as true: a 2-row product is a few bytes
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def _largest_worker(spec: dict[str, Any], report: Report) -> None:
    """A A^T forward at the largest size of the BIG_ESTIMATE problem that fits the budget:
    ours against scipy's raw product and torch's CSR product."""
    from difflinalg.sparse import spspmm

    _setup(spec)
    (m, k), density = spec["shape"], spec["density"]
    report({"stage": "inputs"})
    a = _random_csr(m, k, density, spec["seed"], spec["dtype"])
    at = a.T.tocsr()
    index = getattr(torch, spec["index_dtype"])
    A, At = _torch_csr(a, index), _torch_csr(at, index)
    report({"nnz_a": int(a.nnz)})
    report({"stage": "timing fwd"})
    fns: dict[str, Callable[[], object]] = {
        "ours": lambda: spspmm(A, At), "scipy_raw": lambda: a @ at,
        "torch_csr": lambda: torch.sparse.mm(A, At)}
    report({"timing": {"fwd": _interleaved(fns, spec, reference="ours")}})
    report({"stage": "checks"})
    ref = a @ at
    ref.sort_indices()
    report(_against_scipy(spspmm(A, At), ref))


def _torch_bwd_worker(spec: dict[str, Any], report: Report) -> None:
    """Our backward against torch's COO and CSR backward at n (the same incoming G)."""
    from difflinalg.sparse import spspmm

    _setup(spec)
    n = spec["n"]
    report({"stage": "inputs"})
    _, _, A, B = _pair(spec, n)
    leaves = {"ours": (A.clone().requires_grad_(), B.clone().requires_grad_()),
              "torch_coo": (_coo(A).requires_grad_(), _coo(B).requires_grad_()),
              "torch_csr": (A.clone().requires_grad_(), B.clone().requires_grad_())}
    products = {"ours": spspmm, "torch_coo": torch.sparse.mm,
                "torch_csr": lambda x, y: x @ y}
    outputs = {name: products[name](*leaves[name]) for name in leaves}
    nnz_c = {name: _nnz(C) for name, C in outputs.items()}
    gen = torch.Generator().manual_seed(spec["seed"] + 2)
    values = torch.randn(nnz_c["ours"], dtype=outputs["ours"].dtype, generator=gen)
    grads_in = {name: _grad_like(C, values if nnz_c[name] == nnz_c["ours"] else
                                 torch.randn(nnz_c[name], dtype=C.dtype, generator=gen))
                for name, C in outputs.items()}
    report({"nnz_a": _nnz(A), "nnz_b": _nnz(B), "nnz_c": nnz_c})
    try:  # torch.sparse.mm on CSR: record what its backward does
        a, b = A.clone().requires_grad_(), B.clone().requires_grad_()
        torch.autograd.grad(torch.sparse.mm(a, b), (a, b),
                            _grad_like(torch.sparse.mm(A, B), torch.ones(nnz_c["torch_csr"],
                                                                         dtype=A.dtype)))
        sparse_mm_csr = "ok"
    except RuntimeError as exc:
        sparse_mm_csr = f"RuntimeError: {str(exc).splitlines()[0][:200]}"
    report({"torch_sparse_mm_csr_backward": sparse_mm_csr})

    last: dict[str, Any] = {}  # each method's latest gradients: the checks reuse them (a
    # call of torch's COO backward at n = 20000 takes tens of seconds)

    def backward(name: str) -> Callable[[], object]:
        def call() -> object:
            last[name] = torch.autograd.grad(outputs[name], leaves[name], grads_in[name],
                                             retain_graph=True)
            return last[name]
        return call

    report({"stage": "timing bwd"})
    fns = {"ours_bwd": backward("ours"), "torch_coo_bwd": backward("torch_coo"),
           "torch_csr_bwd": backward("torch_csr")}
    report({"timing": {"bwd": _interleaved(fns, spec, reference="ours_bwd")}})

    report({"stage": "checks"})
    grads = {name: last[name] if name in last else fn() for name, fn in fns.items()}
    described = {name.removesuffix("_bwd"): {"A": _describe_grad(g[0]),
                                             "B": _describe_grad(g[1])}
                 for name, g in grads.items()}
    ours, theirs = grads["ours_bwd"], grads["torch_coo_bwd"]
    errors = {}
    for k, key in enumerate("AB"):
        t = theirs[k].coalesce()
        errors[key] = (relative_error(ours[k].values(), t.values())
                       if _nnz(t) == _nnz(ours[k]) else None)
    report({"grads": described, "rel_err_vs_torch_coo": errors})


def _memory_worker(spec: dict[str, Any], report: Report) -> None:
    """Peak extra resident memory of one forward+backward of one method, alone in its
    process (glibc's heap set so that resident memory follows the live tensors)."""
    from difflinalg.sparse import spspmm

    _setup(spec)
    precise = heap_for_memory()
    method = spec["method"]
    products = {"ours": spspmm, "torch_coo": torch.sparse.mm,
                "torch_csr": lambda x, y: x @ y}
    if method not in products:
        raise ValueError(f"sparse bench: unknown method {method!r}; expected "
                         f"{', '.join(products)}")
    product = products[method]

    def leaves(A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if method == "torch_coo":
            A, B = _coo(A), _coo(B)
        return A.clone().requires_grad_(), B.clone().requires_grad_()

    def fwd_bwd(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
        C = product(a, b)
        G = _grad_like(C, torch.ones(_nnz(C), dtype=C.dtype))
        return torch.autograd.grad(C, (a, b), G)

    report({"stage": "warm-up", "heap": "precise" if precise else "default"})
    small = torch.eye(64, dtype=getattr(torch, spec["dtype"])).to_sparse_csr()
    fwd_bwd(*leaves(small, small))
    _, _, A, B = _pair(spec, spec["n"])
    a, b = leaves(A, B)
    report({"stage": "peak memory"})
    with PeakMemory() as peak:
        grads = fwd_bwd(a, b)
    report({"peak_extra_bytes": peak.peak_extra_bytes, "reason": peak.reason,
            "grad_nnz": [_nnz(g) for g in grads]})


def analytic_estimate(m: int, k: int, density: float, itemsize: int = 4) -> dict[str, float]:
    """:func:`~difflinalg.sparse.product_nnz_estimate` of ``A @ A^T`` for a random ``(m, k)``
    ``A`` of this density, from the sizes alone: ``multiplies = nnz(A) * (m density)`` (each
    stored ``A_ij`` meets the ``m density`` entries expected in column j of A, row j of
    ``A^T``), ``nnz = m^2 (1 - exp(-multiplies / m^2))``, ``bytes = nnz (itemsize + 8) +
    8 (m + 1)`` (values, int64 columns, row pointers)."""
    nnz_a = m * k * density
    mults = nnz_a * (m * density)
    cells = float(m) * m
    est = cells * -math.expm1(-mults / cells)
    return {"nnz_a": nnz_a, "multiplies": mults, "nnz_bound": min(mults, cells),
            "nnz_estimate": est, "bytes_estimate": est * (itemsize + 8) + 8 * (m + 1)}


def _estimate_worker(spec: dict[str, Any], report: Report) -> None:
    from difflinalg.sparse import product_nnz_estimate, spspmm

    _setup(spec)
    m, k, density = BIG_ESTIMATE
    item = torch.empty((), dtype=getattr(torch, spec["dtype"])).element_size()
    big = analytic_estimate(m, k, density, item)
    available = available_memory_bytes()
    report({"big": {"m": m, "k": k, "density": density, **big},
            "available_bytes": available,
            "big_would_be_refused": None if available is None else
            big["bytes_estimate"] > available})

    report({"stage": "analogue"})
    am, ak = spec["analogue"]
    ad = math.sqrt(k * density * density / ak)  # same fill: k d^2 = multiplies / m^2
    a = _random_csr(am, ak, ad, spec["seed"], spec["dtype"])
    A = _torch_csr(a, torch.int32)
    At = _torch_csr(a.T.tocsr(), torch.int32)
    est = product_nnz_estimate(A, At)
    C = spspmm(A, At, max_bytes=float("inf"))
    report({"analogue": {"m": am, "k": ak, "density": ad, "nnz_a": int(a.nnz),
                         "analytic": analytic_estimate(am, ak, ad, item),
                         "function": est, "nnz_true": _nnz(C)}})
    del C

    report({"stage": "MemoryError"})
    _, _, A, B = _pair(spec, spec["n"])
    est = product_nnz_estimate(A, B)
    try:
        spspmm(A, B, max_bytes=MEMORY_CAP)
        refusal: dict[str, Any] = {"raised": False, "message": None}
    except MemoryError as exc:
        refusal = {"raised": True, "message": str(exc)}
    report({"refusal": {"n": spec["n"], "max_bytes": MEMORY_CAP,
                        "bytes_estimate": est["bytes_estimate"], **refusal}})


def _lsq_worker(spec: dict[str, Any], report: Report) -> None:
    import numpy as np
    import scipy.sparse.linalg as sla

    from difflinalg.sparse import as_operator, lsmr, lsqr

    _setup(spec)
    m, n = spec["shape"]
    nnz = m * n * spec["density"]
    # scipy's matrix and ours share values; the operator adds a transposed copy; scipy's
    # generator and the solvers' vectors: a generous 8 copies of (values + indices) + 20 m
    need = 8 * nnz * 12 + 20 * 8 * (m + n)
    available = available_memory_bytes()
    report({"need_bytes": need, "available_bytes": available})
    if available is not None and need > available:
        raise MemoryError(f"sparse bench lsq: needs about {need / 2**30:.1f} GiB, "
                          f"{available / 2**30:.1f} GiB available")
    report({"stage": "inputs"})
    a = _random_csr(m, n, spec["density"], spec["seed"], "float64")
    A = _torch_csr(a, torch.int32)
    b_np = np.random.default_rng(spec["seed"] + 1).standard_normal(m)
    b = torch.from_numpy(b_np)
    report({"nnz": int(a.nnz)})
    op = as_operator(A)
    tol = {"atol": LSQ_TOL, "btol": LSQ_TOL}
    solvers = {"lsqr": (lsqr, sla.lsqr), "lsmr": (lsmr, sla.lsmr)}
    results: dict[str, Any] = {}
    for method, (ours, theirs) in solvers.items():
        report({"stage": f"timing {method}"})
        fns: dict[str, Callable[[], object]] = {
            "ours": lambda ours=ours: ours(op, b, **tol),
            "scipy": lambda theirs=theirs: theirs(a, b_np, **tol),
            "with_build": lambda ours=ours: ours(A, b, **tol)}
        if method == "lsqr":
            fns["build"] = lambda: as_operator(A)
        timing = _interleaved(fns, spec, reference="ours")
        res, ref = ours(op, b, **tol), theirs(a, b_np, **tol)
        x = res.x.numpy()
        results[method] = {
            "timing": timing,
            "ours": {"iterations": int(res.info.iterations), "istop": int(res.info.istop),
                     "residual_estimate": float(res.info.residual_norm),
                     "residual": float(np.linalg.norm(b_np - a @ x))},
            "scipy": {"iterations": int(ref[2]), "istop": int(ref[1]),
                      "residual_estimate": float(ref[3]),
                      "residual": float(np.linalg.norm(b_np - a @ ref[0]))},
            "x_rel_diff": float(np.linalg.norm(x - ref[0]) / max(np.linalg.norm(ref[0]),
                                                                 1e-300))}
        report({"solvers": results})


def plain_sgd(A: torch.Tensor, b: torch.Tensor, *, batch_size: int, epochs: int, lr: float,
              generator: torch.Generator) -> list[float]:
    """Minibatch SGD on the mean loss, ``x -= lr A_B^T r_B / |B|`` (rows shuffled every
    epoch, ``A`` CSR); returns ``||A x - b||`` after each epoch."""
    m, n = A.shape
    crow, col, val = A.crow_indices().long(), A.col_indices().long(), A.values()
    x = torch.zeros(n, dtype=b.dtype)
    norms = []
    for _ in range(epochs):
        order = torch.randperm(m, generator=generator)
        for r0 in range(0, m, batch_size):
            rows = order[r0:r0 + batch_size]
            lens = crow[rows + 1] - crow[rows]
            total = int(lens.sum())
            entries = torch.repeat_interleave(crow[rows] - (torch.cumsum(lens, 0) - lens),
                                              lens, output_size=total) + torch.arange(total)
            j, v = col[entries], val[entries]
            local = torch.repeat_interleave(torch.arange(rows.numel()), lens,
                                            output_size=total)
            r = torch.zeros(rows.numel(), dtype=b.dtype).index_add_(0, local, v * x[j])
            r -= b[rows]  # r_B = A_B x - b_B
            x.index_add_(0, j, v * r[local], alpha=-lr / rows.numel())
        norms.append(float(torch.linalg.vector_norm(A @ x - b)))
    return norms


def _stochastic_worker(spec: dict[str, Any], report: Report) -> None:
    from difflinalg.sparse import as_operator, lsqr, sgd_lstsq

    _setup(spec)
    m, n = spec["shape"]
    report({"stage": "inputs"})
    A = _torch_csr(_random_csr(m, n, spec["density"], spec["seed"], "float64"), torch.int32)
    gen = torch.Generator().manual_seed(spec["seed"] + 3)
    b = A @ torch.randn(n, dtype=torch.float64, generator=gen)  # consistent: b = A x_true
    b_norm = float(torch.linalg.vector_norm(b))
    report({"nnz": _nnz(A), "b_norm": b_norm})
    op = as_operator(A)
    epochs, batch = spec["epochs"], spec["batch_size"]

    last: dict[str, Any] = {}

    def sgd() -> Any:
        last["sgd"] = sgd_lstsq(A, b, batch_size=batch, epochs=epochs, lr=SGD_LR,
                                reduction="mean",
                                generator=torch.Generator().manual_seed(spec["seed"] + 4))
        return last["sgd"]

    def solve(max_iter: int | None = None) -> Any:
        return lsqr(op, b, atol=LSQ_TOL, btol=LSQ_TOL, max_iter=max_iter)

    report({"stage": "timing"})
    timing = _interleaved({"sgd": sgd, "lsqr": solve}, spec, reference="lsqr", rounds=1)
    report({"timing": {"run": timing}})
    report({"stage": "convergence"})
    result, converged = last["sgd"], solve()
    iterations = min(int(converged.info.iterations), LSQR_HISTORY_CAP)
    lsqr_hist = [float(torch.linalg.vector_norm(A @ solve(k).x - b))
                 for k in range(1, iterations + 1)]
    plain = plain_sgd(A, b, batch_size=batch, epochs=epochs, lr=SGD_LR,
                      generator=torch.Generator().manual_seed(spec["seed"] + 4))
    report({"sgd": {"passes": list(range(1, epochs + 1)), "residual": result.residual_norms,
                    "steps": result.steps},
            "lsqr": {"passes": [2 * k + 1 for k in range(1, iterations + 1)],
                     "residual": lsqr_hist, "iterations": int(converged.info.iterations),
                     "istop": int(converged.info.istop)},
            "plain_sgd": {"passes": list(range(1, epochs + 1)), "residual": plain}})


def _densify_worker(spec: dict[str, Any], report: Report) -> None:
    """Sizes of the densifying alternatives at n and (exactly) at the comparison size."""
    from difflinalg.sparse import product_nnz_estimate, spspmm

    _setup(spec)
    item = torch.empty((), dtype=getattr(torch, spec["dtype"])).element_size()
    sizes: dict[str, Any] = {}
    for n in sorted({spec["n"], spec["torch_bwd_n"]}):
        report({"stage": f"patterns n={n}"})
        a, b, A, B = _pair(spec, n)
        At, Bt = (_torch_csr(s.T.tocsr(), torch.int32) for s in (a, b))
        C = spspmm(A, B)
        gbt = product_nnz_estimate(C, Bt)  # dL/dA of torch's CSR @: pattern of G B^T
        atg = product_nnz_estimate(At, C)  # dL/dB: pattern of A^T G
        entry = {"nnz_a": int(a.nnz), "nnz_b": int(b.nnz), "nnz_c": _nnz(C),
                 "dense_a_bytes": n * n * item, "dense_grad_b_bytes": n * n * item,
                 "gbt_nnz_estimate": gbt["nnz_estimate"], "atg_nnz_estimate": atg["nnz_estimate"],
                 "ours_grad_value_bytes": (int(a.nnz) + int(b.nnz)) * item}
        if n == spec["torch_bwd_n"]:
            entry["gbt_nnz_exact"] = _nnz(spspmm(C, Bt, max_bytes=float("inf")))
            entry["atg_nnz_exact"] = _nnz(spspmm(At, C, max_bytes=float("inf")))
        sizes[str(n)] = entry
        report({"sizes": sizes})


# ----------------------------------------------------------------------------- derived

def _ratio(timing: dict[str, Any], name: str) -> float | None:
    value = (timing.get(name) or {}).get("ratio_to_reference")
    return value if value is not None and value > 0 and math.isfinite(value) else None


def _inv(value: float | None) -> float | None:
    return 1.0 / value if value else None


def _target(case: str, what: str, value: float | None, op: str, threshold: float,
            display: str, goal: str | None = None) -> dict[str, Any]:
    checks = {"<=": lambda v: v <= threshold, ">=": lambda v: v >= threshold,
              "==": lambda v: v == threshold}
    met = None if value is None else bool(checks[op](value))
    return {"case": case, "what": what, "op": op, "threshold": threshold,
            "goal": goal or f"{op} {threshold:g}", "value": value,
            "display": display if value is not None else "-", "met": met}


def _bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GiB", 2.0**30), ("MiB", 2.0**20), ("KiB", 2.0**10)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def _never_densify(grads: dict[str, Any] | None, nnz_a: int | None, nnz_b: int | None
                   ) -> float | None:
    """1.0 when our A.grad and B.grad are sparse CSR with nnz(A), nnz(B) entries, else 0."""
    ours = (grads or {}).get("ours") or {}
    if not ours.get("A") or not ours.get("B") or nnz_a is None:
        return None
    ok = (ours["A"]["layout"] == ours["B"]["layout"] == "sparse_csr"
          and ours["A"]["nnz"] == nnz_a and ours["B"]["nnz"] == nnz_b)
    return 1.0 if ok else 0.0


def _derive(row: dict[str, Any]) -> list[dict[str, Any]]:
    """Headline figures of a row (``row["figures"]``) and its targets."""
    case, name = row["case"], row["name"]
    fig: dict[str, Any] = {}
    targets: list[dict[str, Any]] = []
    timing = row.get("timing") or {}
    if case == "spspmm" and row.get("part") == "forward":
        fwd, bwd = timing.get("fwd") or {}, timing.get("bwd") or {}
        fig["ours_over_scipy_raw"] = _inv(_ratio(fwd, "scipy_raw"))
        fig["ours_over_scipy_sorted"] = _inv(_ratio(fwd, "scipy_sorted"))
        fig["ours_over_torch_csr"] = _inv(_ratio(fwd, "torch_csr"))
        fig["ours_over_torch_coo"] = _inv(_ratio(fwd, "torch_coo"))
        fig["bwd_over_fwd"] = _ratio(bwd, "ours_bwd")
        ok = _never_densify(row.get("grads"), row.get("nnz_a"), row.get("nnz_b"))
        targets += [
            _target(name, "forward time ours / scipy A @ B (raw, unsorted)",
                    fig["ours_over_scipy_raw"], "<=", FWD_MAX_OVER_SCIPY,
                    format_ratio(fig["ours_over_scipy_raw"])),
            _target(name, "backward time / forward time (ours)", fig["bwd_over_fwd"], "<=",
                    BWD_MAX_OVER_FWD, format_ratio(fig["bwd_over_fwd"])),
            _target(name, "A.grad, B.grad sparse CSR with nnz(A), nnz(B) entries", ok, "==",
                    1.0, "yes" if ok else "no", "(never densified)")]
    elif case == "spspmm":
        bwd = timing.get("bwd") or {}
        fig["torch_coo_bwd_over_ours"] = _ratio(bwd, "torch_coo_bwd")
        fig["torch_csr_bwd_over_ours"] = _ratio(bwd, "torch_csr_bwd")
        targets.append(_target(name, "backward time torch COO sparse.mm / ours",
                               fig["torch_coo_bwd_over_ours"], ">=",
                               BWD_MIN_SPEEDUP_VS_TORCH_COO,
                               format_ratio(fig["torch_coo_bwd_over_ours"])))
    elif case == "largest":
        fwd = timing.get("fwd") or {}
        fig["ours_over_scipy_raw"] = _inv(_ratio(fwd, "scipy_raw"))
        fig["ours_over_torch_csr"] = _inv(_ratio(fwd, "torch_csr"))
        targets.append(_target(name, "forward time ours / scipy A @ B (raw, unsorted)",
                               fig["ours_over_scipy_raw"], "<=", FWD_MAX_OVER_SCIPY,
                               format_ratio(fig["ours_over_scipy_raw"])))
    elif case == "estimate":
        big, refusal = row.get("big") or {}, row.get("refusal") or {}
        fig["big_gib"] = (big["bytes_estimate"] / 2.0**30) if big else None
        raised = refusal.get("raised")
        targets.append(_target(name, f"spspmm raises MemoryError at max_bytes = "
                                     f"{_bytes(MEMORY_CAP)} (n = {refusal.get('n', '-')})",
                               None if raised is None else float(raised), "==", 1.0,
                               "raised" if raised else "not raised", "(refuses)"))
    elif case == "lsq":
        for method, res in (row.get("solvers") or {}).items():
            t = res["timing"]
            fig[f"{method}_ours_over_scipy"] = _inv(_ratio(t, "scipy"))
            fig[f"{method}_with_build_over_scipy"] = _safe_div(
                _ratio(t, "with_build"), _ratio(t, "scipy"))
            its = _safe_div(res["ours"]["iterations"], res["scipy"]["iterations"])
            resid = _safe_div(res["ours"]["residual"], res["scipy"]["residual"])
            fig[f"{method}_iterations_ratio"], fig[f"{method}_residual_ratio"] = its, resid
            targets += [
                _target(name, f"{method}: time ours (prebuilt operator) / scipy",
                        fig[f"{method}_ours_over_scipy"], "<=", LSQ_MAX_TIME_OVER_SCIPY,
                        format_ratio(fig[f"{method}_ours_over_scipy"])),
                _target(name, f"{method}: iterations ours / scipy", its, "<=",
                        LSQ_MAX_ITER_OVER_SCIPY,
                        f"{res['ours']['iterations']} / {res['scipy']['iterations']}"),
                _target(name, f"{method}: residual ‖b - A x‖ ours / scipy", resid, "<=",
                        LSQ_MAX_RESIDUAL_OVER_SCIPY,
                        "-" if resid is None else f"1 {resid - 1:+.1e}",
                        "<= 1 + 1e-6")]
    elif case == "stochastic":
        sgd, lsqr_ = row.get("sgd") or {}, row.get("lsqr") or {}
        b_norm = row.get("b_norm")
        fig["sgd_final_relative"] = _safe_div((sgd.get("residual") or [None])[-1], b_norm)
        fig["lsqr_final_relative"] = _safe_div((lsqr_.get("residual") or [None])[-1], b_norm)
        plain = (row.get("plain_sgd") or {}).get("residual") or [None]
        fig["plain_sgd_final_relative"] = _safe_div(plain[-1], b_norm)
    row["figures"] = fig
    loads = [entry.get("other_load") for t in _every_timing(row) for entry in t.values()]
    row["other_load"] = max((v for v in loads if v is not None), default=None)
    return targets


def _safe_div(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den == 0:
        return None
    return num / den


def _every_timing(row: dict[str, Any]) -> list[dict[str, Any]]:
    timings = list((row.get("timing") or {}).values())
    timings += [res["timing"] for res in (row.get("solvers") or {}).values()]
    return timings


# ----------------------------------------------------------------------------- report

def _ms(timing: dict[str, Any], name: str) -> str:
    return format_seconds_ms((timing.get(name) or {}).get("median_s"))


def _iqr(timing: dict[str, Any], name: str) -> str:
    value = (timing.get(name) or {}).get("ratio_iqr")
    return "-" if value is None else f"{value:.2g}"


def _mode(timing: dict[str, Any]) -> str:
    """How a stage was timed: the reference's mode, then any other methods' in brackets."""
    def one(entry: dict[str, Any]) -> str:
        return f"{entry.get('mode', '-')}, rounds: {entry.get('rounds', '-')}"

    entries = list(timing.items())
    if not entries:
        return one({})
    first = one(entries[0][1])
    others: dict[str, list[str]] = {}
    for name, entry in entries[1:]:
        if one(entry) != first:
            others.setdefault(one(entry), []).append(LABELS.get(name, name))
    return first + "".join(f"; {', '.join(names)}: {mode}" for mode, names in others.items())


def _heading(row: dict[str, Any]) -> list[str]:
    busy = " *" if (row.get("other_load") or 0) > BUSY else ""
    lines = ["", f"## {row['name']}{busy}", ""]
    if row.get("about"):
        lines += [row["about"], ""]
    if row.get("error"):
        lines += [f"error: {row['error']}", ""]
    return lines


def _grads_table(grads: dict[str, Any]) -> list[str]:
    table = []
    for method, g in grads.items():
        for key in "AB":
            d = g.get(key) or {}
            table.append([LABELS.get(method, method), f"{key}.grad", d.get("layout", "-"),
                          f"{d.get('nnz', '-'):,}" if d.get("nnz") is not None else "-"])
    return [markdown_table(["method", "gradient", "layout", "nnz"], table,
                           [False, False, False, True])]


def _spspmm_section(row: dict[str, Any]) -> list[str]:
    timing = row.get("timing") or {}
    lines: list[str] = []
    if row.get("part") == "forward":
        fwd = timing.get("fwd") or {}
        if fwd:
            table = [[LABELS[m], _ms(fwd, m), "1x" if m == "ours" else
                      format_ratio(_inv(_ratio(fwd, m))), _iqr(fwd, m)] for m in fwd]
            lines += [f"Forward ({_mode(fwd)}); `C` has {row.get('nnz_c', '-'):,} entries, "
                      f"the same sorted pattern as scipy's: "
                      f"{row.get('same_pattern_as_scipy_sorted')}, values rel err "
                      f"{format_error(row.get('rel_err_vs_scipy'))}.", "",
                      markdown_table(["method", "ms", "time ours / time method",
                                      "ratio IQR"], table, [False, True, True, True])]
        bwd = timing.get("bwd") or {}
        if bwd:
            lines += ["", f"Backward of ours against its forward ({_mode(bwd)}):", "",
                      markdown_table(["stage", "ms", "time / forward"],
                                     [[LABELS[m], _ms(bwd, m), "1x" if m == "ours_fwd" else
                                       format_ratio(_ratio(bwd, m))] for m in bwd],
                                     [False, True, True])]
    else:
        bwd = timing.get("bwd") or {}
        if bwd:
            lines += [f"Backward only (`autograd.grad(C, (A, B), G, retain_graph=True)`, "
                      f"{_mode(bwd)}); nnz(C): "
                      + ", ".join(f"{LABELS.get(k, k)} {v:,}"
                                  for k, v in (row.get("nnz_c") or {}).items()) + ".", "",
                      markdown_table(["method", "ms", "time method / time ours",
                                      "ratio IQR"],
                                     [[LABELS[m], _ms(bwd, m), "1x" if m == "ours_bwd" else
                                       format_ratio(_ratio(bwd, m)), _iqr(bwd, m)]
                                      for m in bwd], [False, True, True, True])]
        errs = row.get("rel_err_vs_torch_coo") or {}
        lines += ["", f"Gradients of ours against torch COO's: rel err A "
                      f"{format_error(errs.get('A'))}, B {format_error(errs.get('B'))}. "
                      f"`torch.sparse.mm` on CSR, backward: "
                      f"{row.get('torch_sparse_mm_csr_backward', '-')}."]
    if row.get("grads"):
        lines += ["", "Gradients (A: nnz "
                      f"{row.get('nnz_a', '-')}, B: nnz {row.get('nnz_b', '-')}):", ""]
        lines += _grads_table(row["grads"])
    return lines


def _largest_section(row: dict[str, Any]) -> list[str]:
    (m, k), fwd = row["shape"], (row.get("timing") or {}).get("fwd") or {}
    est = row.get("estimate") or {}
    m_big, k_big, density = BIG_ESTIMATE
    def count(value: Any) -> str:
        return f"{value:,}" if isinstance(value, int) else "-"

    lines = [f"`A` {m} x {k} at density {row['density']:g} (nnz {count(row.get('nnz_a'))}) "
             f"times `A^T`: the largest of the {m_big // 1000}k x {k_big // 1000}k, density "
             f"{density:g} problem whose product is estimated within "
             f"{_bytes(row['budget'])} (the preset's budget, at most an eighth of the "
             f"memory available: ours, scipy's and torch's results are alive at once). "
             f"Estimated: {est.get('nnz_estimate', 0):.3g} entries, "
             f"{_bytes(est.get('bytes_estimate'))}; `C` has {count(row.get('nnz_c'))}, the "
             f"same sorted pattern as scipy's: {row.get('same_pattern_as_scipy_sorted')}, "
             f"values rel err {format_error(row.get('rel_err_vs_scipy'))}."]
    if fwd:
        table = [[LABELS[mt], _ms(fwd, mt), "1x" if mt == "ours" else
                  format_ratio(_inv(_ratio(fwd, mt))), _iqr(fwd, mt)] for mt in fwd]
        lines += ["", f"Forward ({_mode(fwd)}):", "",
                  markdown_table(["method", "ms", "time ours / time method", "ratio IQR"],
                                 table, [False, True, True, True])]
    return lines


def _estimate_section(row: dict[str, Any]) -> list[str]:
    big, ana, refusal = row.get("big") or {}, row.get("analogue") or {}, row.get("refusal") or {}
    lines: list[str] = []
    if big:
        available = row.get("available_bytes")
        lines += [f"`A` {big['m']} x {big['k']}, density {big['density']:g} "
                  f"({big['nnz_a']:.3g} stored), times `A^T`, from the sizes alone: "
                  f"{big['multiplies']:.3g} multiplies, about **{big['nnz_estimate']:.3g} "
                  f"entries, {big['bytes_estimate'] / 2**30:.0f} GiB** (at most "
                  f"{big['nnz_bound']:.3g} entries). Memory available: {_bytes(available)}: "
                  + ("spspmm's default limit (the available memory) would refuse it."
                     if row.get("big_would_be_refused") else "it would fit."), ""]
    if ana:
        f, a = ana["function"], ana["analytic"]
        lines += [f"Check on an analogue with the same fill ({ana['m']} x {ana['k']}, "
                  f"density {ana['density']:.4g}, nnz(A) {ana['nnz_a']:,}):", "",
                  markdown_table(["", "multiplies", "nnz estimate", "bytes estimate"],
                                 [["from the sizes (formula above)", f"{a['multiplies']:.4g}",
                                   f"{a['nnz_estimate']:.4g}", _bytes(a["bytes_estimate"])],
                                  ["product_nnz_estimate (patterns)", f"{f['multiplies']:.4g}",
                                   f"{f['nnz_estimate']:.4g}", _bytes(f["bytes_estimate"])],
                                  ["true nnz of spspmm(A, A^T)", "-",
                                   f"{ana['nnz_true']:,}", "-"]],
                                 [False, True, True, True]), ""]
    if refusal:
        lines += [f"`spspmm(A, B, max_bytes={refusal['max_bytes']})` at n = {refusal['n']} "
                  f"(estimate {_bytes(refusal['bytes_estimate'])}): "
                  + (f"MemoryError:\n\n> {refusal['message']}" if refusal.get("raised")
                     else "**no error raised**")]
    return lines


def _lsq_section(row: dict[str, Any]) -> list[str]:
    lines = [f"`A` {row['shape'][0]} x {row['shape'][1]}, density {row['density']:g} "
             f"({row.get('nnz', '-')} stored), float64, b standard normal, atol = btol = "
             f"{LSQ_TOL:g}. residual = `||b - A x||` computed by scipy for both.", ""]
    table = []
    for method, res in (row.get("solvers") or {}).items():
        t = res["timing"]
        for who in ("ours", "with_build", "build", "scipy"):
            if who not in t:
                continue
            stats = res["scipy"] if who == "scipy" else res["ours"]
            solve = who != "build"
            table.append([method, LABELS[who] if who != "ours" else "ours (prebuilt operator)",
                          _ms(t, who), "1x" if who == "ours" else format_ratio(_ratio(t, who)),
                          str(stats["iterations"]) if solve else "-",
                          str(stats["istop"]) if solve else "-",
                          f"{stats['residual']:.10g}" if solve else "-"])
        table.append([method, "x: ours vs scipy (rel diff)", "", "", "", "",
                      format_error(res.get("x_rel_diff"))])
    if table:
        lines.append(markdown_table(["solver", "method", "ms", "time / ours", "iterations",
                                     "istop", "residual"], table,
                                    [False, False, True, True, True, True, True]))
    return lines


def _stochastic_section(row: dict[str, Any]) -> list[str]:
    sgd, lsqr_ = row.get("sgd") or {}, row.get("lsqr") or {}
    plain = row.get("plain_sgd") or {}
    b_norm = row.get("b_norm")
    t = (row.get("timing") or {}).get("run") or {}
    lines = [f"Consistent system (`b = A x_true`), `A` {row['shape'][0]} x {row['shape'][1]}, "
             f"density {row['density']:g}, float64, `||b||` = "
             f"{b_norm if b_norm is None else f'{b_norm:.4g}'}; sgd_lstsq: batch "
             f"{row['batch_size']}, lr {SGD_LR}, mean loss (AdaGrad steps); plain SGD: same "
             "batches and lr, `x -= lr A_B^T r_B / |B|`. Passes over `A`: one per epoch; "
             "lsqr: 2 per iteration + 1 to start (the residual evaluations are not counted).",
             "", "The stochastic mode is for when passes over `A` are unaffordable (streamed "
             "from disk, or more than a Krylov method's budget allows); when they are "
             "affordable, compare the passes and the wall time below.", ""]
    table = []
    for label, entry in (("lsqr", lsqr_), ("sgd_lstsq (AdaGrad)", sgd),
                         ("plain SGD, mean loss", plain)):
        res = entry.get("residual") or []
        passes = entry.get("passes") or []
        if not res:
            continue
        hit = next((p for p, r in zip(passes, res) if b_norm and r <= 1e-2 * b_norm), None)
        table.append([label, str(passes[-1]), f"{res[-1]:.3g}",
                      format_error(res[-1] / b_norm if b_norm else None),
                      "-" if hit is None else str(hit)])
    if table:
        lines.append(markdown_table(["method", "passes", "final residual",
                                     "final residual / ‖b‖",
                                     "passes to residual <= 1e-2 ‖b‖"], table,
                                    [False, True, True, True, True]))
    if t:
        epochs, its = len(sgd.get("passes") or []), lsqr_.get("iterations")
        t_sgd, t_lsqr = ((t.get(k) or {}).get("median_s") for k in ("sgd", "lsqr"))
        per_pass = [_safe_div(t_sgd, epochs), _safe_div(t_lsqr, 2 * its + 1 if its else None)]
        lines += ["", f"Wall time (one call each): sgd_lstsq, {sgd.get('steps', '-')} steps "
                      f"over {epochs} epochs: {_ms(t, 'sgd')} ms "
                      f"({format_seconds_ms(per_pass[0])} ms per pass); lsqr to convergence "
                      f"({its} iterations, prebuilt operator): {_ms(t, 'lsqr')} ms "
                      f"({format_seconds_ms(per_pass[1])} ms per pass)."]
    return lines


def _densify_section(row: dict[str, Any]) -> list[str]:
    sizes = row.get("sizes") or {}
    item = row["itemsize"]
    table = []
    for n, s in sizes.items():
        gbt = s.get("gbt_nnz_exact") or s["gbt_nnz_estimate"]
        atg = s.get("atg_nnz_exact") or s["atg_nnz_estimate"]
        how = "exact" if "gbt_nnz_exact" in s else "estimated"
        table += [
            [n, "dense A", "", _bytes(s["dense_a_bytes"])],
            [n, "dense gradient of B (n x n)", "", _bytes(s["dense_grad_b_bytes"])],
            [n, f"torch CSR @ A.grad: pattern of G B^T ({how})", f"{gbt:.3g}",
             _bytes(gbt * (item + 8))],
            [n, f"torch CSR @ B.grad: pattern of A^T G ({how})", f"{atg:.3g}",
             _bytes(atg * (item + 8))],
            [n, "ours: A.grad + B.grad values (nnz(A) + nnz(B))",
             f"{s['nnz_a'] + s['nnz_b']:.3g}", _bytes(s["ours_grad_value_bytes"])]]
    lines = [f"Bytes at {row['dtype']} values + 8-byte indices (the dense rows: values "
             "only); torch's COO backward forms `G B^T` and masks it to A's pattern "
             "(module docstring of difflinalg.sparse.products).", "",
             markdown_table(["n", "what", "entries", "bytes"], table,
                            [True, False, True, True])]
    memory = row.get("memory") or {}
    if memory:
        mtable = []
        for key, entry in memory.items():
            method, n = key.split("@")
            peak = entry.get("peak_extra_bytes")
            mtable.append([LABELS.get(method, method), n,
                           _bytes(peak) if peak is not None else
                           (entry.get("error") or entry.get("reason") or "-")])
        lines += ["", "Peak extra resident memory of one forward+backward (each alone in a "
                      "fresh process, inputs excluded):", "",
                  markdown_table(["method", "n", "peak extra"], mtable, [False, True, True])]
    return lines


def _write_markdown(path: Path, metadata: dict[str, Any], rows: list[dict[str, Any]],
                    targets: list[dict[str, Any]], charts: list[Path]) -> None:
    lines = ["# sparse benchmark", "", *run_facts(metadata),
             f"- scipy {metadata.get('scipy') or 'not installed'}; index dtype of the torch "
             f"CSR operands: {metadata['index_dtype']}; rounds per interleaved timing: "
             f"{metadata['rounds']}; scale: {metadata['scale']}"]
    lines += busy_warning(rows, "cases")
    lines += [
        "", "Times are medians in ms; the methods of a stage run in one fresh process, "
        "interleaved round by round, and a ratio is the median over the rounds of the ratio "
        "within a round (`ratio IQR` its spread). Fast calls: "
        "`Timer.blocked_autorange`; a stage whose slowest call takes over "
        f"{SLOW_CALL_S} s: {SLOW_ROUNDS} rounds of one `Timer.timeit(1)` per method (one "
        f"round over {VERY_SLOW_CALL_S:g} s), after one untimed call of each. "
        "* marks cases timed while other processes were busy.", "", "## Targets", ""]
    marks = {True: "met", False: "**not met**", None: "n/a"}
    lines.append(markdown_table(
        ["case", "target", "measured", "status"],
        [[t["case"], f"{t['what']} {t['goal']}", t["display"], marks[t["met"]]]
         for t in targets], [False, False, True, False]))
    sections = {"spspmm": _spspmm_section, "largest": _largest_section,
                "estimate": _estimate_section,
                "lsq": _lsq_section, "stochastic": _stochastic_section,
                "densify": _densify_section}
    for row in rows:
        lines += _heading(row)
        if not row.get("error") or row.get("timing") or row.get("solvers") or row.get("sizes"):
            lines += sections[row["case"]](row)
    if charts:
        lines += ["", "## Charts", ""] + [f"![{c.stem}]({c.name})" for c in charts]
    elif metadata.get("charts"):
        lines += ["", "## Charts", "", f"Charts {metadata['charts']}."]
    path.write_text("\n".join(lines) + "\n")


def _bar_chart(ax: Any, bars: list[tuple[str, float, bool]], xlabel: str, title: str) -> None:
    from matplotlib.ticker import NullFormatter

    labels = [b[0] for b in bars]
    values = [b[1] for b in bars]
    colors = ["#4d9221" if b[2] else "#7f7f7f" for b in bars]
    ax.barh(range(len(bars)), values, color=colors)
    ax.set_xscale("log")
    ax.set_xlim(left=min(values) / 3, right=max(values) * 4)  # bars start well left
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_yticks(range(len(bars)), labels, fontsize=8)
    ax.invert_yaxis()
    for k, v in enumerate(values):
        ax.text(v, k, f" {format_seconds_ms(v / 1e3)} ms", va="center", fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=9)


def _write_charts(out_dir: Path, rows: list[dict[str, Any]], metadata: dict[str, Any]
                  ) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    note = f"{metadata['cpu']}, {metadata['threads']} threads, torch {metadata['torch']}"
    panels = []
    for row in rows:
        if row["case"] not in ("spspmm", "largest"):
            continue
        for stage, timing in (row.get("timing") or {}).items():
            bars = [(LABELS[m], e["median_s"] * 1e3, m.startswith("ours"))
                    for m, e in timing.items() if e.get("median_s")]
            if not bars:
                continue
            if row["case"] == "largest":
                panels.append((bars, f"A A^T forward, A {row['shape'][0]} x "
                                     f"{row['shape'][1]}, density {row['density']:g}"))
                continue
            what = "forward" if stage == "fwd" and row["part"] == "forward" else (
                "ours: forward vs backward" if row["part"] == "forward" else
                "backward vs torch")
            panels.append((bars, f"{what}, n = {row['n']}"))
    if panels:
        fig, axes = plt.subplots(len(panels), 1, squeeze=False, layout="constrained",
                                 figsize=(8.0, sum(0.35 * len(p[0]) + 0.9 for p in panels)))
        for ax, (bars, title) in zip(axes[:, 0], panels):
            _bar_chart(ax, bars, "ms (log)", title)
        fig.suptitle(f"spspmm, {metadata['dtype_products']}\n{note}", fontsize=9)
        path = out_dir / "spspmm_speed.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    lsq = next((r for r in rows if r["case"] == "lsq" and r.get("solvers")), None)
    if lsq:
        bars = []
        for method, res in lsq["solvers"].items():
            for who in ("ours", "with_build", "build", "scipy"):
                entry = res["timing"].get(who)
                if entry:
                    label = "ours (prebuilt)" if who == "ours" else LABELS[who]
                    bars.append((f"{method}: {label}", entry["median_s"] * 1e3,
                                 who in ("ours", "with_build", "build")))
        fig, ax = plt.subplots(figsize=(8.0, 0.35 * len(bars) + 1.4), layout="constrained")
        _bar_chart(ax, bars, "ms (log)", f"least squares, {lsq['shape'][0]} x "
                   f"{lsq['shape'][1]}, density {lsq['density']:g}, float64\n{note}")
        path = out_dir / "lsq_speed.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    sto = next((r for r in rows if r["case"] == "stochastic" and r.get("sgd")), None)
    if sto:
        fig, ax = plt.subplots(figsize=(7.0, 4.2), layout="constrained")
        b_norm = sto["b_norm"]
        for key, label, style in (("lsqr", "lsqr", "-o"),
                                  ("sgd", "sgd_lstsq (AdaGrad, mean loss)", "-s"),
                                  ("plain_sgd", "plain SGD, mean loss", "-^")):
            entry = sto.get(key) or {}
            if entry.get("residual"):
                ax.plot([0, *entry["passes"]], [b_norm, *entry["residual"]], style,
                        markersize=3, label=label)
        ax.set_yscale("log")
        ax.set_xlabel("passes over A")
        ax.set_ylabel("||A x - b||")
        ax.set_title(f"consistent system {sto['shape'][0]} x {sto['shape'][1]}, density "
                     f"{sto['density']:g}\n{note}", fontsize=9)
        ax.legend(fontsize=8)
        path = out_dir / "stochastic_convergence.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


# ----------------------------------------------------------------------------- run

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``difflinalg bench sparse``."""
    presets = "; ".join(f"{name}: {p.about}" for name, p in PRESETS.items())
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                        help=f"settings ({presets}). Default: quick")
    parser.add_argument("--out", type=Path, default=Path("bench-results"),
                        help="output directory (created). Default: bench-results")
    parser.add_argument("--cases", type=choice_list(CASES), default=CASES, metavar="CASE,...",
                        help=f"cases to run, among {','.join(CASES)}. Default: all")
    parser.add_argument("--scale", type=positive_float, default=1.0,
                        help="multiply every dimension by this and divide every density by "
                             "it (entries per row stay); for smoke tests. Default: 1")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="dtype of the products (least squares: float64). "
                             "Default: float32")
    parser.add_argument("--index-dtype", choices=("int32", "int64"), default="int32",
                        help="index dtype of the torch CSR operands of the products. "
                             "Default: int32")
    parser.add_argument("--threads", type=positive_int, default=2,
                        help="torch.set_num_threads in every process. Default: 2")
    parser.add_argument("--epochs", type=positive_int,
                        help="epochs of the stochastic case. Default: the preset's ("
                             + ", ".join(f"{n} {p.epochs}" for n, p in PRESETS.items()) + ")")
    parser.add_argument("--min-run-time", type=positive_float, metavar="SECONDS",
                        help="blocked_autorange time per method and stage (fast calls), "
                             "split over the rounds. Default: the preset's ("
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
    """One row per job: its static description and its worker."""
    s = args.scale
    n, density = scaled(SPSPMM_N, SPSPMM_DENSITY, s)
    n_cmp, density_cmp = scaled(preset.torch_bwd_n, SPSPMM_DENSITY, s)
    densities = {str(n): density, str(n_cmp): density_cmp}
    products = {"n": n, "torch_bwd_n": n_cmp, "densities": densities}
    jobs: list[dict[str, Any]] = []
    if "spspmm" in args.cases:
        jobs += [{"case": "spspmm", "part": "forward", "name": f"spspmm n={n}",
                  "density": density, "worker": _spspmm_worker, **products},
                 {"case": "spspmm", "part": "torch backward",
                  "name": f"spspmm backward vs torch n={n_cmp}", "density": density_cmp,
                  "worker": _torch_bwd_worker, **products, "n": n_cmp}]
    if "largest" in args.cases:
        m_max, density_big = scaled(BIG_ESTIMATE[0], BIG_ESTIMATE[2], s)
        item = torch.empty((), dtype=getattr(torch, args.dtype)).element_size()
        available = available_memory_bytes()
        budget = preset.largest_bytes * s
        if available is not None:
            budget = min(budget, available / 8)
        m = largest_fitting(m_max, density_big, budget, item)
        k = max(1, m // 2)
        jobs.append({"case": "largest", "name": f"spspmm A A^T, A {m} x {k}",
                     "shape": (m, k), "density": density_big, "budget": budget,
                     "estimate": analytic_estimate(m, k, density_big, item),
                     "worker": _largest_worker})
    if "estimate" in args.cases:
        am, _ = scaled(ANALOGUE_M, 1.0, s)
        jobs.append({"case": "estimate", "name": "estimate", "worker": _estimate_worker,
                     "analogue": (am, max(2, am // 2)), **products})
    if "lsq" in args.cases:
        m, density_lsq = scaled(preset.lsq_shape[0], LSQ_DENSITY, s)
        cols = max(4, round(preset.lsq_shape[1] * s))
        jobs.append({"case": "lsq", "name": f"lsq {m} x {cols}", "shape": (m, cols),
                     "density": density_lsq, "worker": _lsq_worker})
    if "stochastic" in args.cases:
        m, density_sto = scaled(STOCHASTIC[0], STOCHASTIC[2], s)
        cols = max(4, round(STOCHASTIC[1] * s))
        jobs.append({"case": "stochastic", "name": f"stochastic {m} x {cols}",
                     "shape": (m, cols), "density": density_sto,
                     "epochs": args.epochs or preset.epochs,
                     "batch_size": max(8, round(SGD_BATCH * s)),
                     "worker": _stochastic_worker})
    if "densify" in args.cases:
        jobs.append({"case": "densify", "name": "densify", "worker": _densify_worker,
                     **products})
    return jobs


_SPEC_KEYS = ("n", "torch_bwd_n", "densities", "analogue", "shape", "density", "epochs",
              "batch_size")


def _run_job(runner: IsolatedRunner, job: dict[str, Any], base: dict[str, Any],
             timeout: float) -> dict[str, Any]:
    worker = job.pop("worker")
    row = {**job, "dtype": base["dtype"] if job["case"] in ("spspmm", "largest", "estimate",
                                                           "densify")
           else "float64", "threads": base["threads"]}
    spec = {**base, **{k: v for k, v in job.items() if k in _SPEC_KEYS}}
    errors = []
    result, error = runner.run(worker, spec, timeout)
    result.pop("stage", None)
    row.update(result)
    if error:
        errors.append(error)
    if job["case"] == "densify":
        row["itemsize"] = torch.empty((), dtype=getattr(torch, base["dtype"])).element_size()
        row["memory"] = {}
        runs = [("ours", job["n"])] + [(m, job["torch_bwd_n"]) for m in
                                        ("ours", "torch_coo", "torch_csr")]
        for method, n in dict.fromkeys(runs):
            result, error = runner.run(_memory_worker, {**spec, "method": method, "n": n},
                                       timeout)
            result.pop("stage", None)
            if error:
                result["error"] = error
                errors.append(f"memory {method} n={n}: {error}")
            row["memory"][f"{method}@{n}"] = result
    row["error"] = "; ".join(errors) or None
    return row


def _progress(row: dict[str, Any]) -> str:
    fig = row.get("figures") or {}
    shown = {k: v for k, v in fig.items() if isinstance(v, float)}
    text = ", ".join(f"{k} {v:.3g}" for k, v in shown.items())
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
        import scipy

        scipy_version: str | None = scipy.__version__
    except ImportError:
        scipy_version = None
    metadata = collect_metadata({
        "suite": NAME, "preset": args.preset,
        "dtype": f"{args.dtype} (products), float64 (least squares)",
        "dtype_products": args.dtype, "index_dtype": args.index_dtype,
        "threads": args.threads, "timeout": timeout, "min_run_time": min_run_time,
        "rounds": rounds, "scale": args.scale, "seed": args.seed, "cases": list(args.cases),
        "scipy": scipy_version, "available_memory_bytes": available_memory_bytes(),
        "method_labels": LABELS})
    base = {"dtype": args.dtype, "index_dtype": args.index_dtype, "threads": args.threads,
            "seed": args.seed, "min_run_time": min_run_time, "rounds": rounds}
    preload = ["torch", "difflinalg", "difflinalg.sparse", __name__]
    runner = IsolatedRunner(preload=preload + (["scipy.sparse.linalg"] if scipy_version
                                               else []))
    jobs = _jobs(args, preset)
    rows, targets, status, start = run_target_jobs(
        "sparse", jobs, lambda job: _run_job(runner, job, base, timeout), _derive, _progress,
        json_path, metadata)
    for stale in ("spspmm_speed.png", "lsq_speed.png", "stochastic_convergence.png"):
        (out_dir / stale).unlink(missing_ok=True)
    try:
        charts = _write_charts(out_dir, rows, metadata)
    except ImportError as exc:  # matplotlib is an optional dependency (the bench extra)
        charts = []
        metadata["charts"] = f"not drawn: {exc}"
        print(f"sparse bench: charts not drawn ({exc}); pip install 'difflinalg[bench]'",
              file=sys.stderr)
    write_json(json_path, {"metadata": metadata, "targets": targets, "results": rows})
    _write_markdown(md_path, metadata, rows, targets, charts)
    print(f"sparse bench: {len(rows)} cases in {format_elapsed(time.monotonic() - start)}, "
          f"targets met: {metadata['targets_met']}; wrote:")
    for path in (json_path, md_path, *charts):
        print(f"  {path}")
    return status
