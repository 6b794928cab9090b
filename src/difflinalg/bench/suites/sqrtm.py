r"""Suite ``sqrtm``: :func:`difflinalg.sqrtm` against the ways users compute a matrix root.

Reproduces the experiment of Lin & Maji's matrix-square-root code (batch 128, dim 64,
``A = X^T X / 1000 + tau I`` from 1000 Gaussian points, tau = 1, float32) and extends it
with n = 256 and with spectra of condition number 1e1 .. 1e6 and rank-deficient input.

Methods (forward + backward of ``sum(sqrtm(A) * G)``):

* ``auto``, ``newton_schulz``, ``denman_beavers``, ``pade``, ``eigh``: ours (iterative
  forwards with the matmul sign-iteration backward); ``newton_schulz/eigh``: the
  Newton-Schulz forward with the backward's Lyapunov equation solved by one eigh;
* ``torch_eigh``: ``V diag(sqrt(l)) V^T`` from :func:`torch.linalg.eigh` with autograd;
* ``torch_svd``: ``U diag(sqrt(s)) V^T`` from :func:`torch.linalg.svd` with autograd;
* ``ns10``: 10 coupled Newton-Schulz iterations on ``A / ||A||_F`` with autograd through
  the loop (Lin & Maji's iterative forward + autograd backward).

Per configuration one fresh process times every method interleaved
(:func:`~difflinalg.bench._timing.measure_interleaved`; ratios are medians of per-round
ratios), measures the bytes each method saves for backward (``saved_tensors_hooks``), and
the forward and gradient error against a float64 eigen reference. A second process sweeps
the condition number and writes the error-versus-condition chart.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import difflinalg

from .._report import (
    collect_metadata,
    format_elapsed,
    format_error,
    format_ratio,
    format_seconds_ms,
    markdown_table,
    ratio,
    relative_error,
    run_facts,
    write_json,
)
from .._timing import IsolatedRunner, measure_interleaved
from ..cli import int_list, positive_float, positive_int
from .spectral import newton_schulz_sqrtm

__all__ = ["NAME", "DESCRIPTION", "add_arguments", "run"]

NAME = "sqrtm"
DESCRIPTION = ("sqrtm (Newton-Schulz, Denman-Beavers, Pade, eigh, auto) vs torch eigh, SVD and "
               "10 Newton-Schulz iterations with autograd; Lin & Maji's experiment")
OURS = ("auto", "newton_schulz", "newton_schulz/eigh", "denman_beavers", "pade", "eigh")
BASELINES = ("torch_eigh", "torch_svd", "ns10")
METHODS = OURS + BASELINES
PRESETS = {
    "quick": {"configs": ((128, 64), (16, 256)), "conds": (1e1, 1e2, 1e3, 1e4, 1e5, 1e6),
              "min_run_time": 1.5, "rounds": 3, "timeout": 600.0},
    "full": {"configs": ((128, 64), (128, 128), (32, 256), (8, 512)),
             "conds": (1e1, 1e2, 1e3, 1e4, 1e5, 1e6), "min_run_time": 4.0, "rounds": 5,
             "timeout": 1800.0},
}


def _eigh_sqrt(A: torch.Tensor) -> torch.Tensor:
    lam, v = torch.linalg.eigh(A)
    return (v * lam.clamp_min(0).sqrt().unsqueeze(-2)) @ v.mT


def _svd_sqrt(A: torch.Tensor) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(A)
    return (u * s.sqrt().unsqueeze(-2)) @ vh


def method_fn(method: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The forward of one method, ``A -> A^(1/2)``."""
    if method == "newton_schulz/eigh":
        return lambda A: difflinalg.sqrtm(A, method="newton_schulz", backward="eigh")
    if method in OURS:
        return lambda A: difflinalg.sqrtm(A, method=method)
    if method == "torch_eigh":
        return _eigh_sqrt
    if method == "torch_svd":
        return _svd_sqrt
    if method == "ns10":
        return lambda A: newton_schulz_sqrtm(A, 10)
    raise ValueError(f"sqrtm bench: unknown method {method!r}; expected one of "
                     f"{', '.join(METHODS)}")


def lin_maji_inputs(b: int, n: int, seed: int, points: int = 1000, tau: float = 1.0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``A = X^T X / points + tau I`` (float64) and an incoming gradient G."""
    gen = torch.Generator().manual_seed(seed * 1000003 + n)
    X = torch.randn(b, points, n, dtype=torch.float64, generator=gen)
    A = X.mT @ X / points + tau * torch.eye(n, dtype=torch.float64)
    G = torch.randn(b, n, n, dtype=torch.float64, generator=gen)
    return A, G


def _sym(g: torch.Tensor) -> torch.Tensor:
    """The gradient restricted to symmetric perturbations, the convention of every method
    here but the SVD route (whose function differs off the symmetric matrices)."""
    return (g + g.mT) * 0.5


def _reference(A64: torch.Tensor, G64: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a = A64.clone().requires_grad_()
    s = difflinalg.sqrtm_psd(a)
    (g,) = torch.autograd.grad((s * G64).sum(), a)
    return s.detach(), g


def _saved_bytes(fn: Callable[[torch.Tensor], torch.Tensor], A: torch.Tensor) -> int:
    """Bytes of the tensors autograd saves for the backward of one call."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
        return t

    a = A.detach().clone().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(a)
    del out
    seen.pop(a.untyped_storage().data_ptr(), None)  # the input itself is not extra memory
    return sum(seen.values())


def _config_worker(spec: dict[str, Any], report: Callable[[dict[str, Any]], None]) -> None:
    torch.set_num_threads(spec["threads"])
    dtype = getattr(torch, spec["dtype"])
    A64, G64 = lin_maji_inputs(spec["b"], spec["n"], spec["seed"])
    s_ref, g_ref = _reference(A64, G64)
    A, G = A64.to(dtype), G64.to(dtype)
    param = A.clone().requires_grad_()
    fwd: dict[str, Callable[[], object]] = {}
    fwd_bwd: dict[str, Callable[[], object]] = {}
    for method in spec["methods"]:
        fn = method_fn(method)
        report({"stage": f"accuracy {method}"})
        with torch.no_grad():
            out = fn(A)
        (grad,) = torch.autograd.grad((fn(param) * G).sum(), param)
        report({method: {"fwd_err": relative_error(out, s_ref),
                         "grad_err": relative_error(_sym(grad), g_ref),
                         "saved_mb": _saved_bytes(fn, A) / 2**20}})

        def one_fwd(fn=fn):
            with torch.no_grad():
                return fn(A)

        def one_fwd_bwd(fn=fn):
            return torch.autograd.grad((fn(param) * G).sum(), param)

        fwd[method], fwd_bwd[method] = one_fwd, one_fwd_bwd
    for stage, fns in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
        report({"stage": f"timing {stage}"})
        timed = measure_interleaved(fns, reference="auto", min_run_time=spec["min_run_time"],
                                    num_threads=spec["threads"], rounds=spec["rounds"])
        report({"timing_" + stage: timed})


def spectrum_inputs(n: int, cond: float | None, batch: int, seed: int) -> torch.Tensor:
    """SPD matrices with eigenvalues log-spaced over [1/cond, 1] in a random basis (float64);
    ``cond=None``: rank n/2 (PSD, singular)."""
    gen = torch.Generator().manual_seed(seed + 17)
    if cond is None:
        X = torch.randn(batch, n, n // 2, dtype=torch.float64, generator=gen)
        return X @ X.mT / n
    lam = torch.logspace(0, -math.log10(cond), n, dtype=torch.float64).expand(batch, n)
    q, r = torch.linalg.qr(torch.randn(batch, n, n, dtype=torch.float64, generator=gen))
    q = q * torch.sign(r.diagonal(dim1=-2, dim2=-1)).unsqueeze(-2)
    a = (q * lam.unsqueeze(-2)) @ q.mT
    return (a + a.mT) / 2


def _accuracy_worker(spec: dict[str, Any], report: Callable[[dict[str, Any]], None]) -> None:
    torch.set_num_threads(spec["threads"])
    dtype = getattr(torch, spec["dtype"])
    n, batch = spec["n"], spec["batch"]
    rows = []
    for cond in [*spec["conds"], None]:
        A64 = spectrum_inputs(n, cond, batch, spec["seed"])
        gen = torch.Generator().manual_seed(spec["seed"] + 5)
        G64 = torch.randn(batch, n, n, dtype=torch.float64, generator=gen)
        A = A64.to(dtype)
        ref_in = A.double()  # the float64 reference of the rounded input
        s_ref, g_ref = _reference(ref_in, G64)
        row: dict[str, Any] = {"cond": cond, "methods": {}}
        for method in spec["methods"]:
            fn = method_fn(method)
            param = A.clone().requires_grad_()
            entry = row["methods"][method] = {"fwd_err": None, "grad_err": None}
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # non-convergence is what is measured
                    with torch.no_grad():
                        entry["fwd_err"] = relative_error(fn(A), s_ref)
                    (grad,) = torch.autograd.grad((fn(param) * G64.to(dtype)).sum(), param)
                entry["grad_err"] = relative_error(_sym(grad), g_ref)
            except RuntimeError as exc:  # e.g. a factorisation of singular input
                entry["error"] = f"{type(exc).__name__}: {str(exc)[:100]}"
        rows.append(row)
        report({"stage": f"cond {cond}", "rows": rows})


# ----------------------------------------------------------------------------- report

def _chart(path: Path, accuracy: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in accuracy["rows"] if r["cond"] is not None]
    conds = [r["cond"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, title in ((axes[0], "fwd_err", "forward"), (axes[1], "grad_err", "gradient")):
        for method in accuracy["methods"]:
            vals = [r["methods"][method].get(key) for r in rows]
            vals = [v if v is not None and math.isfinite(v) and v > 0 else float("nan")
                    for v in vals]
            style = "-o" if method in OURS else "--s"
            ax.loglog(conds, vals, style, label=method, markersize=4)
        ax.set_xlabel("condition number of A")
        ax.set_ylabel("relative error vs float64")
        ax.set_title(f"{title} error, n={accuracy['n']}, {accuracy['dtype']}")
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _markdown(path: Path, metadata: dict[str, Any], rows: list[dict[str, Any]],
              accuracy: dict[str, Any] | None, charts: list[Path]) -> None:
    lines = ["# sqrtm benchmark", "", *run_facts(metadata), "",
             "Lin & Maji's setting: `A = X^T X / 1000 + I` from 1000 Gaussian points, loss "
             "`sum(sqrtm(A) * G)`. Times are medians in ms; `vs auto` = time(method) / "
             "time(auto) measured interleaved in one process (> 1: auto faster); bwd = f+b - fwd "
             "(forward without autograd); speed-up over "
             "SVD = time(torch_svd) / time(method), as Lin & Maji report it. Errors are "
             "relative Frobenius errors against a float64 eigen reference (forward: the root; "
             "grad: the symmetric part of dL/dA, the gradient for symmetric perturbations). "
             "saved MB = tensors autograd keeps for the backward."]
    for row in rows:
        lines += ["", f"## batch {row['b']}, n = {row['n']}", ""]
        if row.get("error"):
            lines.append(f"error: {row['error']}")
            continue
        table = []
        for method in metadata["methods"]:
            e = row.get(method) or {}
            f = (row.get("timing_fwd") or {}).get(method) or {}
            fb = (row.get("timing_fwd_bwd") or {}).get(method) or {}
            svd = (row.get("timing_fwd_bwd") or {}).get("torch_svd") or {}
            bwd = (fb["median_s"] - f["median_s"]
                   if fb.get("median_s") and f.get("median_s") else None)
            table.append([method, format_seconds_ms(f.get("median_s")),
                          format_seconds_ms(bwd if bwd is None or bwd > 0 else None),
                          format_seconds_ms(fb.get("median_s")),
                          format_ratio(fb.get("ratio_to_reference")),
                          format_ratio(ratio(svd.get("median_s"), fb.get("median_s"))),
                          format_error(e.get("fwd_err")), format_error(e.get("grad_err")),
                          "-" if e.get("saved_mb") is None else f"{e['saved_mb']:.2f}"])
        lines.append(markdown_table(
            ["method", "fwd ms", "bwd ms", "f+b ms", "f+b vs auto", "speed-up over SVD f+b",
             "fwd err", "grad err", "saved MB"], table, [False] + [True] * 8))
    if accuracy:
        lines += ["", f"## Error versus condition number (n = {accuracy['n']}, batch "
                      f"{accuracy['batch']}, {accuracy['dtype']}; spectrum log-spaced in "
                      "[1/cond, 1]; `rank n/2` = singular PSD input)", ""]
        for key, what in (("fwd_err", "forward"), ("grad_err", "gradient")):
            table = []
            for r in accuracy["rows"]:
                label = "rank n/2" if r["cond"] is None else f"{r['cond']:.0e}"
                table.append([label] + [format_error(r["methods"][m].get(key))
                                        for m in accuracy["methods"]])
            lines += [f"{what} error:", "", markdown_table(["cond", *accuracy["methods"]],
                                                           table), ""]
    if charts:
        lines += ["## Charts", ""] + [f"![{c.stem}]({c.name})" for c in charts]
    path.write_text("\n".join(lines) + "\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``difflinalg bench sqrtm``."""
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                        help="quick: batch 128 x 64 and 16 x 256, a few minutes; full: up to "
                             "n = 512. Default: quick")
    parser.add_argument("--out", type=Path, default=Path("bench-results"),
                        help="output directory (created). Default: bench-results")
    parser.add_argument("--batch", type=int_list, metavar="B,...",
                        help="batch sizes (with --n: replaces the preset's configurations)")
    parser.add_argument("--n", type=int_list, metavar="N,...", help="matrix sizes")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--min-run-time", type=positive_float, metavar="SECONDS")
    parser.add_argument("--no-accuracy", action="store_true",
                        help="skip the error-versus-condition sweep")
    parser.add_argument("--accuracy-n", type=positive_int, default=64, metavar="N",
                        help="matrix size of the error-versus-condition sweep. Default: 64")
    parser.add_argument("--timeout", type=positive_float, metavar="SECONDS",
                        help="limit per configuration process. Default: the preset's ("
                             + ", ".join(f"{k} {v['timeout']:g}" for k, v in PRESETS.items())
                             + ")")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    preset = PRESETS[args.preset]
    configs = (tuple((b, n) for b in args.batch for n in args.n)
               if args.batch and args.n else preset["configs"])
    min_run_time = args.min_run_time or preset["min_run_time"]
    timeout = args.timeout or preset["timeout"]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    metadata = collect_metadata({
        "suite": NAME, "preset": args.preset, "dtype": args.dtype, "threads": args.threads,
        "timeout": timeout, "min_run_time": min_run_time, "seed": args.seed,
        "methods": list(METHODS), "rounds": preset["rounds"]})
    runner = IsolatedRunner(preload=["torch", "difflinalg", __name__])
    rows: list[dict[str, Any]] = []
    accuracy: dict[str, Any] | None = None
    start = time.monotonic()
    json_path, md_path = out_dir / "results.json", out_dir / "results.md"
    for index, (b, n) in enumerate(configs, 1):
        print(f"[{index}/{len(configs)}] b={b} n={n} ...", end="", file=sys.stderr, flush=True)
        spec = {"b": b, "n": n, "dtype": args.dtype, "threads": args.threads,
                "seed": args.seed, "methods": list(METHODS), "min_run_time": min_run_time,
                "rounds": preset["rounds"]}
        result, error = runner.run(_config_worker, spec, timeout)
        result.pop("stage", None)
        row = {"b": b, "n": n, **result}
        if error:
            row["error"] = error
        rows.append(row)
        fb = (row.get("timing_fwd_bwd") or {})
        speed = ", ".join(f"{m} {format_ratio(fb[m]['ratio_to_reference'])}"
                          for m in BASELINES if fb.get(m))
        print(f" {'error: ' + error if error else 'ok'}"
              f"{' (f+b vs auto: ' + speed + ')' if speed else ''} "
              f"[{format_elapsed(time.monotonic() - start)}]", file=sys.stderr, flush=True)
        write_json(json_path, {"metadata": metadata, "results": rows, "accuracy": accuracy})
    if not args.no_accuracy:
        print("accuracy sweep over condition numbers ...", end="", file=sys.stderr, flush=True)
        spec = {"n": args.accuracy_n, "batch": 8, "conds": list(preset["conds"]),
                "dtype": args.dtype, "threads": args.threads, "seed": args.seed,
                "methods": list(METHODS)}
        result, error = runner.run(_accuracy_worker, spec, timeout)
        accuracy = {"n": args.accuracy_n, "batch": 8, "dtype": args.dtype, "methods": list(METHODS),
                    "rows": result.get("rows", [])}
        if error:
            accuracy["error"] = error
        print(f" {'error: ' + error if error else 'ok'}", file=sys.stderr, flush=True)
    charts: list[Path] = []
    if accuracy and accuracy["rows"]:
        try:
            _chart(out_dir / "error_vs_cond.png", accuracy)
            charts.append(out_dir / "error_vs_cond.png")
        except ImportError as exc:
            metadata["charts"] = f"not drawn: {exc}"
    metadata["wall_time_s"] = round(time.monotonic() - start, 1)
    write_json(json_path, {"metadata": metadata, "results": rows, "accuracy": accuracy})
    _markdown(md_path, metadata, rows, accuracy, charts)
    print(f"sqrtm bench: {len(configs)} configurations in "
          f"{format_elapsed(time.monotonic() - start)}; wrote:")
    for path in (json_path, md_path, *charts):
        print(f"  {path}")
    return 1 if any(r.get("error") for r in rows) else 0
