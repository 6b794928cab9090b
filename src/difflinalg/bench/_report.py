"""Run metadata, JSON and Markdown writers, and ratio heat maps shared by the suites.

matplotlib is imported only inside :func:`ratio_heatmaps` (Agg backend), so a suite's worker
processes never pay for it.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata as _importlib_metadata
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "collect_metadata",
    "run_facts",
    "busy_warning",
    "BUSY",
    "ratio",
    "relative_error",
    "why_missing",
    "format_elapsed",
    "format_error",
    "format_percent",
    "format_ratio",
    "format_seconds_ms",
    "markdown_table",
    "ratio_heatmaps",
    "write_json",
]


# ----------------------------------------------------------------------------- metadata

def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit(path: Path) -> dict[str, Any] | None:
    """Commit and dirty flag of the checkout containing ``path``, or None without git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=path, capture_output=True, text=True, timeout=10,
                               check=True).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty} if commit else None


def _blas_info() -> dict[str, str | None]:
    """BLAS/LAPACK as torch was built with them (``torch.__config__``)."""
    config = torch.__config__.show()
    info: dict[str, str | None] = {}
    for key in ("BLAS_INFO", "LAPACK_INFO"):
        match = re.search(rf"{key}=([^,\s]+)", config)
        info[key.lower()] = match.group(1) if match else None
    libraries = [line.strip(" -") for line in config.splitlines()
                 if re.search(r"Math Kernel Library|OpenBLAS|BLIS|Accelerate|LAPACK is",
                              line)]
    info["libraries"] = "; ".join(libraries) or None
    parallel = torch.__config__.parallel_info()
    match = re.search(r"ATen parallel backend: (\S+)", parallel)
    info["parallel_backend"] = match.group(1) if match else None
    return info


def _version(distribution: str) -> str | None:
    try:
        return _importlib_metadata.version(distribution)
    except _importlib_metadata.PackageNotFoundError:
        return None


def collect_metadata(extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Everything needed to reproduce or compare a run: versions, BLAS, CPU, git commit.

    ``extra`` (suite settings: preset, dtype, threads, ...) is merged in last.
    """
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    meta: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "difflinalg": _version("difflinalg"),
        "device": "cpu",
        "cpu": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "blas": _blas_info(),
        "git": _git_commit(Path(__file__).resolve().parent),
        "load_average_at_start": list(load) if load else None,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    if extra:
        meta.update(extra)
    return meta


def _finite(obj: Any) -> Any:
    """``obj`` with NaN and infinities replaced by None (JSON has no spelling for them)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: _finite(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(value) for value in obj]
    return obj


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically (a reader never sees half a file).

    Non-finite floats become ``null``; unknown objects their ``str``.
    """
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_finite(obj), indent=1, allow_nan=False, default=str) + "\n")
    tmp.replace(path)


# ----------------------------------------------------------------------------- formatting

def format_seconds_ms(seconds: float | None) -> str:
    """Milliseconds with three significant digits (``"0.412"``, ``"27 500"``)."""
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    if ms >= 1000:
        return f"{ms:,.0f}".replace(",", " ")
    return f"{ms:.3g}"


def format_ratio(ratio: float | None) -> str:
    """``"3.4x"``, ``"0.52x"``, ``"120x"``; ``"-"`` when missing."""
    if ratio is None or not math.isfinite(ratio):
        return "-"
    if ratio >= 100:
        return f"{ratio:.0f}x"
    if ratio >= 1:
        return f"{ratio:.3g}x"
    return f"{ratio:.2g}x"


def format_percent(fraction: float | None) -> str:
    """``"42%"``; two significant digits below 10% (``"0.07%"``)."""
    if fraction is None:
        return "-"
    return f"{100 * fraction:.0f}%" if fraction >= 0.1 else f"{100 * fraction:.2g}%"


def format_elapsed(seconds: float) -> str:
    """Wall time for progress lines: ``"12.3s"``, ``"4m05s"``."""
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


def format_error(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]],
                   numeric: Sequence[bool] | None = None) -> str:
    """A GitHub Markdown table; ``numeric`` columns are right-aligned."""
    numeric = numeric if numeric is not None else [False] * len(headers)
    rule = ["---:" if num else ":---" for num in numeric]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- heat maps

def _ratio_label(ratio: float) -> str:
    return format_ratio(ratio).replace("x", "\u00d7")


def ratio_heatmaps(path: Path, panels: Sequence[dict[str, Any]], *, title: str,
                   note: str = "") -> None:
    """One figure of ratio heat maps, one panel each, coloured by ``log2(ratio)``.

    Each panel is ``{"title", "rows", "cols", "row_label", "col_label", "cells"}`` where
    ``cells[(row, col)]`` is a positive ratio, or None for a case that was run but gave no
    ratio (failed or skipped: drawn grey, marked ``n/a``); cells absent from the dict were
    not in the sweep and stay blank. Green means the ratio is above 1 (ours is better).
    The colour scale is diverging and centred at 1x, symmetric in ``log2``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm

    finite = [abs(math.log2(v)) for p in panels for v in p["cells"].values()
              if v is not None and v > 0 and math.isfinite(v)]
    limit = max(1.0, math.ceil(max(finite, default=1.0)))
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit)
    cmap = plt.get_cmap("PiYG").with_extremes(bad="white")

    ncols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / ncols)
    cell_w = max(len(p["cols"]) for p in panels)
    cell_h = max(len(p["rows"]) for p in panels)
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, layout="constrained",
                             figsize=(max(ncols * (1.2 + 0.9 * cell_w) + 1.5, 6.0),
                                      nrows * (1.2 + 0.6 * cell_h) + 1.4))
    image = None
    for ax, panel in zip(axes.flat, panels):
        rows, cols, cells = panel["rows"], panel["cols"], panel["cells"]
        grid = np.full((len(rows), len(cols)), np.nan)
        for i, row in enumerate(rows):
            for j, col in enumerate(cols):
                value = cells.get((row, col))
                if value is not None and value > 0 and math.isfinite(value):
                    grid[i, j] = math.log2(value)
        image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm, aspect="auto")
        for i, row in enumerate(rows):
            for j, col in enumerate(cols):
                if (row, col) not in cells:
                    continue
                value = cells[(row, col)]
                if np.isnan(grid[i, j]):
                    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, color="0.85"))
                    ax.text(j, i, "n/a", ha="center", va="center", fontsize=8, color="0.3")
                    continue
                dark = abs(grid[i, j]) > 0.6 * limit
                ax.text(j, i, _ratio_label(value), ha="center", va="center", fontsize=9,
                        color="white" if dark else "black")
        ax.set_xticks(range(len(cols)), [str(c) for c in cols])
        ax.set_yticks(range(len(rows)), [str(r) for r in rows])
        ax.set_xlabel(panel["col_label"])
        ax.set_ylabel(panel["row_label"])
        ax.set_title(panel["title"])
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if image is not None:
        ticks = list(range(-int(limit), int(limit) + 1))
        step = max(1, math.ceil(len(ticks) / 9))
        ticks = [t for t in ticks if t % step == 0]
        bar = fig.colorbar(image, ax=axes, ticks=ticks, shrink=0.9)
        bar.ax.set_yticklabels([_ratio_label(2.0**t) if t >= 0 else f"1/{2**-t:g}\u00d7"
                                for t in ticks])
    fig.suptitle(title, fontsize=11)
    if note:
        fig.supxlabel(note, fontsize=8, color="0.35")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


# ----------------------------------------------------------------------------- shared cells

def ratio(num: float | None, den: float | None) -> float | None:
    """num / den for two positive finite numbers, else None."""
    if num is None or den is None or not (num > 0 and den > 0):
        return None
    if not (math.isfinite(num) and math.isfinite(den)):
        return None
    return num / den


def relative_error(x: torch.Tensor, ref: torch.Tensor) -> float | None:
    """``||x - ref|| / ||ref||`` in float64; NaN when ``x`` is not finite, None if ref = 0."""
    ref_norm = torch.linalg.vector_norm(ref)
    if ref_norm == 0:
        return None
    if not bool(torch.isfinite(x).all()):
        return math.nan
    return float(torch.linalg.vector_norm(x.double() - ref) / ref_norm)


def why_missing(entry: Mapping[str, Any] | None) -> str:
    """Table cell for a method without a value: not run, timeout, error or '-'."""
    if entry is None:
        return "-"
    if entry.get("not_run"):
        return "n/r"
    error = entry.get("error") or ""
    return "timeout" if error.startswith("timeout") else ("error" if error else "-")


def run_facts(metadata: Mapping[str, Any]) -> list[str]:
    """The Markdown bullet lines every report opens with: settings, versions, machine, load."""
    blas = metadata["blas"]
    git = metadata.get("git") or {}
    loads = metadata.get("load_average_at_start")
    return [
        f"- date: {metadata['date']}, preset: {metadata['preset']}, dtype: {metadata['dtype']},"
        f" threads: {metadata['threads']}, min_run_time: {metadata['min_run_time']} s,"
        f" timeout: {metadata['timeout']} s per case",
        f"- torch {metadata['torch']}, python {metadata['python']}, difflinalg "
        f"{metadata['difflinalg']}, git {(git.get('commit') or 'n/a')[:12]}"
        + (" (dirty)" if git.get("dirty") else ""),
        f"- {metadata['cpu']} ({metadata['logical_cpus']} logical CPUs, "
        f"{metadata['cpu_capability']}), BLAS {blas['blas_info']}, LAPACK "
        f"{blas['lapack_info']}, {blas['parallel_backend']}",
        "- load average (1, 5, 15 min) at start: "
        + ("n/a" if not loads else ", ".join(f"{v:.2f}" for v in loads)),
    ]


BUSY = 0.1  # share of the CPUs used by other processes above which timings are flagged


def busy_warning(rows: Sequence[Mapping[str, Any]], what: str = "configurations"
                 ) -> list[str]:
    """Markdown lines warning about rows timed while other processes were busy (or none)."""
    busy = [row for row in rows if (row.get("other_load") or 0) > BUSY]
    if not busy:
        return []
    worst = max(row["other_load"] for row in busy)
    return ["", f"> **Warning:** other processes used up to {worst:.0%} of the CPUs while "
                f"{len(busy)} of {len(rows)} {what} were timed (marked * below); those "
                "timings are unreliable. Re-run on an idle machine."]


def run_target_jobs(suite: str, jobs: Sequence[dict[str, Any]],
                    run_one: Callable[[dict[str, Any]], dict[str, Any]],
                    derive: Callable[[dict[str, Any]], list[dict[str, Any]]],
                    progress: Callable[[dict[str, Any]], str], json_path: Any,
                    metadata: dict[str, Any]
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int, float]:
    """Run a suite's jobs in order: a progress line each, its targets derived, results.json
    rewritten after every job (a crash or Ctrl-C keeps what was measured).

    Fills the closing metadata (wall time, load average at the end, the largest share of
    the CPUs other processes used, targets met) and returns ``(rows, targets, status,
    start)``; status is 130 after Ctrl-C, 1 if a job reported an error, else 0.
    """
    rows: list[dict[str, Any]] = []
    targets: list[dict[str, Any]] = []
    start = time.monotonic()
    status = 0
    try:
        for index, job in enumerate(jobs, 1):
            print(f"[{index}/{len(jobs)}] {job['name']} ...", end="", file=sys.stderr,
                  flush=True)
            row = run_one(job)
            targets += derive(row)
            rows.append(row)
            print(f" {progress(row)} [{format_elapsed(time.monotonic() - start)}]",
                  file=sys.stderr, flush=True)
            write_json(json_path, {"metadata": metadata, "targets": targets, "results": rows})
    except KeyboardInterrupt:
        print(f"\n{suite} bench: interrupted; writing what was measured", file=sys.stderr)
        status = 130
    if status == 0 and any(row.get("error") for row in rows):
        status = 1
    try:
        metadata["load_average_at_end"] = list(os.getloadavg())
    except OSError:
        metadata["load_average_at_end"] = None
    metadata["wall_time_s"] = round(time.monotonic() - start, 1)
    loads = [row["other_load"] for row in rows if row.get("other_load") is not None]
    metadata["max_other_load"] = max(loads) if loads else None
    met = [t["met"] for t in targets]
    metadata["targets_met"] = f"{sum(m is True for m in met)} of {len(met)}"
    return rows, targets, status, start
