r"""Suite ``nn_orthogonal``: :func:`difflinalg.nn.orthogonal` against the parametrizations
users reach for instead, on the weight of an ``nn.Linear(r, d)`` (a ``d x r`` frame).

Methods (the peers at their defaults, as a user registers them):

* ``ours``: ``difflinalg.nn.orthogonal(layer)``, reflectors and fixed column signs, no
  ``d x d`` state;
* ``torch``: ``torch.nn.utils.parametrizations.orthogonal(layer)``: Householder map for a
  tall weight, matrix exponential for a square one, with ``use_trivialization=True``, so a
  ``d x d`` orthogonal ``base`` buffer multiplies every forward;
* ``geotorch``: ``geotorch.orthogonal(layer, "weight")`` when the package is installed (it
  also keeps a ``d x d`` base).

Per (d, r), each method in a fresh process: the time to register it on a fresh layer (after
a warm-up on a tiny layer), the bytes of the module's parameters and buffers afterwards, the
orthogonality error of the weight, the peak extra resident memory of one training step
(weight, loss ``(W * G).sum()``, gradient w.r.t. the parameters), and absolute times. Then,
in one process, the methods that registered in time are timed interleaved, step and forward
(reading ``layer.weight``): the speed ratios against ours. A method that fails or times out
is a row with its error.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .._memory import PeakMemory, heap_for_memory, heap_for_timing
from .._report import (
    collect_metadata,
    format_elapsed,
    format_error,
    format_ratio,
    format_seconds_ms,
    markdown_table,
    run_facts,
    why_missing,
    write_json,
)
from .._timing import IsolatedRunner, measure, measure_interleaved
from ..cli import choice_list, positive_float, positive_int

__all__ = ["NAME", "DESCRIPTION", "add_arguments", "run"]

NAME = "nn_orthogonal"
DESCRIPTION = ("difflinalg.nn.orthogonal vs torch.nn.utils.parametrizations.orthogonal and "
               "geotorch: registration, state, training step, memory")
METHODS = ("ours", "torch", "geotorch")
PRESETS = {
    "quick": {"configs": ((256, 64), (1024, 64), (2048, 64), (512, 512)),
              "min_run_time": 0.3, "timeout": 300.0},
    "full": {"configs": ((256, 64), (1024, 64), (2048, 64), (4096, 64), (8192, 64),
                         (512, 512), (1024, 1024), (30000, 50)),
             "min_run_time": 1.0, "timeout": 1800.0},
}


def available(method: str) -> bool:
    """Whether ``method``'s package can be imported here (only geotorch is optional)."""
    return method != "geotorch" or importlib.util.find_spec("geotorch") is not None


def _register(method: str) -> Callable[[torch.nn.Module], object]:
    if method == "ours":
        import difflinalg.nn

        return difflinalg.nn.orthogonal
    if method == "torch":
        return torch.nn.utils.parametrizations.orthogonal
    if method == "geotorch":
        import geotorch

        return lambda layer: geotorch.orthogonal(layer, "weight")
    raise ValueError(f"nn_orthogonal bench: unknown method {method!r}; expected one of "
                     f"{', '.join(METHODS)}")


def _layer(d: int, r: int, seed: int) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(r, d, bias=False)


def _step(layer: torch.nn.Module, G: torch.Tensor) -> Callable[[], object]:
    params = [p for p in layer.parameters() if p.requires_grad]

    def step() -> object:
        return torch.autograd.grad((layer.weight * G).sum(), params)

    return step


def _state_bytes(layer: torch.nn.Module) -> int:
    tensors = list(layer.parameters()) + list(layer.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def _method_worker(spec: dict[str, Any], report: Callable[[dict[str, Any]], None]) -> None:
    torch.set_num_threads(spec["threads"])
    d, r, method = spec["d"], spec["r"], spec["method"]
    register = _register(method)
    report({"stage": "warm-up", "heap": "precise" if heap_for_memory() else "default"})
    tiny = _layer(8, 4, spec["seed"])
    register(tiny)
    _step(tiny, torch.ones(8, 4))()
    layer = _layer(d, r, spec["seed"])
    weight_bytes = layer.weight.numel() * layer.weight.element_size()
    report({"stage": "register"})
    start = time.perf_counter()
    register(layer)
    report({"register_s": time.perf_counter() - start, "state_bytes": _state_bytes(layer),
            "weight_bytes": weight_bytes})
    W = layer.weight.detach().double()
    eye = torch.eye(r, dtype=torch.float64)
    report({"ortho_err": float((W.mT @ W - eye).norm() / math.sqrt(r))})
    G = torch.randn(d, r, generator=torch.Generator().manual_seed(spec["seed"] + 1))
    step = _step(layer, G)
    report({"stage": "peak memory"})
    step()
    with PeakMemory() as peak:
        step()
    report({"peak_step_bytes": peak.peak_extra_bytes, "peak_reason": peak.reason})
    heap_for_timing()
    report({"stage": "timing"})
    report({"fwd": measure(lambda: layer.weight, min_run_time=spec["min_run_time"],
                           num_threads=spec["threads"]),
            "step": measure(step, min_run_time=spec["min_run_time"],
                            num_threads=spec["threads"])})


def _timing_worker(spec: dict[str, Any], report: Callable[[dict[str, Any]], None]) -> None:
    torch.set_num_threads(spec["threads"])
    heap_for_timing()
    d, r = spec["d"], spec["r"]
    G = torch.randn(d, r, generator=torch.Generator().manual_seed(spec["seed"] + 1))
    steps, fwds = {}, {}
    for method in spec["methods"]:
        layer = _layer(d, r, spec["seed"])
        _register(method)(layer)
        steps[method] = _step(layer, G)
        fwds[method] = (lambda lay: lambda: lay.weight)(layer)
        steps[method]()
    report({"stage": "interleaved step"})
    report({"step": measure_interleaved(steps, reference="ours", num_threads=spec["threads"],
                                        min_run_time=spec["min_run_time"] * len(steps))})
    report({"stage": "interleaved forward"})
    report({"fwd": measure_interleaved(fwds, reference="ours", num_threads=spec["threads"],
                                       min_run_time=spec["min_run_time"] * len(fwds))})


# ----------------------------------------------------------------------------- report

def _per_weight(entry: dict[str, Any], key: str) -> float | None:
    value = entry.get(key)
    return value / entry["weight_bytes"] if value is not None and entry.get("weight_bytes") \
        else None


def _speedup(timing: dict[str, Any], method: str) -> float | None:
    """time(method) / time(ours) from the interleaved run (> 1: ours faster)."""
    entry = (timing or {}).get(method) or {}
    return entry.get("ratio_to_reference")


def _markdown(path: Path, metadata: dict, rows: list[dict], charts: list[Path]) -> None:
    methods = metadata["methods"]
    peers = [m for m in methods if m != "ours"]

    def cells(row: dict, fmt: Callable[[dict], str]) -> str:
        return " / ".join(fmt(row["methods"].get(m) or {}) for m in methods)

    def seconds(e: dict) -> str:
        return f"{e['register_s']:.3g}" if e.get("register_s") is not None else why_missing(e)

    lines = ["# nn.orthogonal benchmark", "", *run_facts(metadata), "",
             "The weight of `nn.Linear(r, d)` (a d x r frame, float32). register = seconds to "
             "register the parametrization on a fresh layer (after a warm-up on a tiny one); "
             "state = bytes of the module's parameters and buffers, as a multiple of the "
             "weight's; step = the weight, the loss `(W * G).sum()` and its gradient w.r.t. the "
             "parameters; fwd = reading `layer.weight`; speed-up vs X = time(X) / time(ours) "
             "from one process with the methods interleaved (median of per-round ratios); "
             "peak = peak extra resident memory of one step as a multiple of the weight; "
             "ortho err = ||W^T W - I||_F / sqrt(r). Columns list "
             f"{' / '.join(methods)}.", ""]
    headers = ["d", "r", f"register s ({' / '.join(methods)})", "state (x weight)",
               "ours step ms", *[f"step speed-up vs {p}" for p in peers],
               *[f"fwd speed-up vs {p}" for p in peers], "peak step mem (x weight)",
               "ortho err"]
    table = []
    for row in rows:
        timing = row.get("timing") or {}
        ours = row["methods"].get("ours") or {}
        table.append([
            str(row["d"]), str(row["r"]), cells(row, seconds),
            cells(row, lambda e: format_ratio(_per_weight(e, "state_bytes"))),
            format_seconds_ms((ours.get("step") or {}).get("median_s")),
            *[format_ratio(_speedup(timing.get("step"), p)) for p in peers],
            *[format_ratio(_speedup(timing.get("fwd"), p)) for p in peers],
            cells(row, lambda e: format_ratio(_per_weight(e, "peak_step_bytes"))),
            cells(row, lambda e: format_error(e.get("ortho_err")))])
    lines.append(markdown_table(headers, table, [True] * len(headers)))
    problems = [f"- d={row['d']} r={row['r']} {name}: {e['error']}"
                for row in rows for name, e in row["methods"].items() if e.get("error")]
    problems += [f"- d={row['d']} r={row['r']} interleaved timing: {row['timing_error']}"
                 for row in rows if row.get("timing_error")]
    if metadata.get("not_installed"):
        problems.append(f"- not installed: {', '.join(metadata['not_installed'])}")
    lines += ["", "## Failures and methods not run", ""] + (problems or ["none"])
    if charts:
        lines += ["", "## Charts", ""] + [f"![{p.stem}]({p.name})" for p in charts]
    path.write_text("\n".join(lines) + "\n")


def _chart(path: Path, metadata: dict, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = metadata["methods"]
    labels = [f"{row['d']}x{row['r']}" for row in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(rows))]
        reg = [(row["methods"].get(method) or {}).get("register_s") or float("nan")
               for row in rows]
        step = [((row["methods"].get(method) or {}).get("step") or {}).get("median_s")
                for row in rows]
        axes[0].bar(xs, reg, width, label=method)
        axes[1].bar(xs, [s * 1e3 if s else float("nan") for s in step], width, label=method)
    for ax, title in zip(axes, ("registration (s)", "training step (ms)")):
        ax.set_yscale("log")
        ax.set_xticks(range(len(rows)), labels)
        ax.set_xlabel("d x r")
        ax.set_title(title)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend()
    fig.suptitle("orthogonal weight of nn.Linear(r, d): lower is better")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- command line

def _config(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts) \
            or int(parts[0]) < int(parts[1]):
        raise argparse.ArgumentTypeError(f"expected DxR with D >= R >= 1 like 2048x64, but got "
                                         f"{text!r}")
    return int(parts[0]), int(parts[1])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``difflinalg bench nn_orthogonal``."""
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--configs", type=lambda s: [_config(c) for c in s.split(",")],
                        metavar="DxR[,DxR...]", help="weights to run instead of the preset's")
    parser.add_argument("--methods", type=choice_list(METHODS, "methods"), default=METHODS,
                        metavar="M,...",
                        help=f"comma-separated among {', '.join(METHODS)} (ours is always run)")
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--min-run-time", type=positive_float, metavar="SECONDS")
    parser.add_argument("--timeout", type=positive_float, metavar="SECONDS",
                        help="per process (one method at one size)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    preset = dict(PRESETS[args.preset])
    configs = args.configs or list(preset["configs"])
    min_run_time = args.min_run_time or preset["min_run_time"]
    timeout = args.timeout or preset["timeout"]
    asked = ["ours"] + [m for m in args.methods if m != "ours"]
    methods = [m for m in asked if available(m)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    metadata = collect_metadata({"suite": NAME, "preset": args.preset, "dtype": "float32",
                                 "threads": args.threads, "timeout": timeout,
                                 "min_run_time": min_run_time, "seed": args.seed,
                                 "methods": methods,
                                 "not_installed": [m for m in asked if m not in methods]})
    runner = IsolatedRunner(preload=["torch", "difflinalg", __name__])
    base = {"threads": args.threads, "seed": args.seed, "min_run_time": min_run_time}
    rows: list[dict[str, Any]] = []
    start = time.monotonic()
    status = 0

    def save() -> None:
        write_json(out / "results.json", {"metadata": metadata, "results": rows})

    for d, r in configs:
        row: dict[str, Any] = {"d": d, "r": r, "methods": {}}
        rows.append(row)
        for method in methods:
            print(f"{d}x{r} {method} ...", end="", file=sys.stderr, flush=True)
            res, error = runner.run(_method_worker, {**base, "d": d, "r": r, "method": method},
                                    timeout)
            if error is None:
                res.pop("stage", None)  # kept on failure: where it stopped
            else:
                res["error"] = error
                status = status or (1 if method == "ours" else 0)
            row["methods"][method] = res
            print(f" {'error: ' + error if error else 'ok'} "
                  f"[{format_elapsed(time.monotonic() - start)}]", file=sys.stderr, flush=True)
            save()
        timed = [m for m in methods if not row["methods"][m].get("error")]
        if "ours" in timed and len(timed) > 1:
            print(f"{d}x{r} interleaved ...", end="", file=sys.stderr, flush=True)
            res, error = runner.run(_timing_worker, {**base, "d": d, "r": r, "methods": timed},
                                    timeout)
            res.pop("stage", None)
            row["timing"] = res
            if error:
                row["timing_error"] = error
            print(f" {'error: ' + error if error else 'ok'} "
                  f"[{format_elapsed(time.monotonic() - start)}]", file=sys.stderr, flush=True)
            save()
    charts = []
    try:
        _chart(out / "register_and_step.png", metadata, rows)
        charts.append(out / "register_and_step.png")
    except ImportError as exc:
        metadata["charts"] = f"not drawn: {exc}"
    metadata["wall_time_s"] = round(time.monotonic() - start, 1)
    save()
    _markdown(out / "results.md", metadata, rows, charts)
    print(f"nn_orthogonal bench: {len(configs)} configs in "
          f"{format_elapsed(time.monotonic() - start)}; wrote:")
    for path in (out / "results.json", out / "results.md", *charts):
        print(f"  {path}")
    return status
