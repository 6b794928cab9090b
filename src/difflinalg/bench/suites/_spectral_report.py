"""results.md and the charts of the ``spectral`` suite, from its rows and metadata only.

The suite (:mod:`difflinalg.bench.suites.spectral`) measures; this module formats. It reads
the tasks, their methods and each task's reference method from the run's metadata
(``methods``, ``reference_methods``, ``method_labels``), so it does not import the suite and
the data flows one way. matplotlib is imported only when charts are drawn.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._report import (
    BUSY,
    busy_warning,
    format_error,
    format_ratio,
    format_seconds_ms,
    markdown_table,
    run_facts,
    why_missing,
)

__all__ = ["BUSY", "DAGGER", "STAGES", "format_err", "median_time", "write_charts",
           "write_markdown"]

STAGES = ("fwd", "bwd", "fwd_bwd")
DAGGER = "\u2020"  # a speed ratio of two separate processes (the paired stage lacks it)


def median_time(entry: dict[str, Any] | None, key: str) -> float | None:
    """``entry[key]["median_s"]``, or None when that stage was not timed."""
    timing = (entry or {}).get(key)
    return timing["median_s"] if timing else None


def format_err(value: Any) -> str:
    """A relative error; ``"NaN"`` for the JSON marker of a non-finite result."""
    if isinstance(value, str) or (isinstance(value, float) and math.isnan(value)):
        return "NaN"
    return format_error(value)


def _cell_time(entry: dict[str, Any] | None, key: str) -> str:
    value = median_time(entry, key)
    if value is not None:
        return format_seconds_ms(value)
    if key in (entry or {}).get("skipped", {}):
        return "skip"
    return why_missing(entry)


def _cell_ratio(row: dict[str, Any], stage: str, method: str) -> str:
    """The speed-up of ours over ``method``, daggered when not from the paired stage."""
    ratio = row.get(f"speedup_{stage}_vs_{method}")
    if not ratio:
        return why_missing(row["methods"].get(method))
    paired = row.get(f"speedup_{stage}_vs_{method}_paired", True)
    return format_ratio(ratio) + ("" if paired else DAGGER)


def _mib(entry: dict[str, Any] | None) -> str:
    peak = (entry or {}).get("peak_extra_bytes")
    return "-" if peak is None else f"{peak / 2**20:.3g}"


def _has_fallback(rows: list[dict[str, Any]]) -> bool:
    return any(value is False for row in rows for key, value in row.items()
               if key.startswith("speedup_") and key.endswith("_paired")
               and row.get(key.removesuffix("_paired")))


def _task_table(task: str, rows: list[dict[str, Any]], metadata: dict[str, Any]) -> str:
    methods = metadata["methods"][task]
    ours = metadata["reference_methods"][task]
    baselines = [m for m in methods if m != ours]
    headers = ["b", "n"] + (["k"] if task == "eigh_topk" else [])
    headers += [f"{m} fwd / bwd / f+b ms" for m in methods]
    headers += [f"vs {m} fwd / bwd / f+b" for m in baselines]
    headers.append("peak MiB " + " / ".join(methods))
    if task == "sqrtm":
        headers.append("grad err " + " / ".join(methods))
    lines = []
    for row in rows:
        ms = row["methods"]
        flag = "*" if (row.get("other_load") or 0) > BUSY else ""
        cells = [str(row["b"]), str(row["n"]) + flag]
        if task == "eigh_topk":
            cells.append(str(row["k"]))
        cells += [" / ".join(_cell_time(ms.get(m), s) for s in STAGES) for m in methods]
        cells += [" / ".join(_cell_ratio(row, s, m) for s in STAGES) for m in baselines]
        cells.append(" / ".join(_mib(ms.get(m)) for m in methods))
        if task == "sqrtm":
            cells.append(" / ".join(format_err((ms.get(m) or {}).get("grad_err"))
                                    for m in methods))
        lines.append(cells)
    return markdown_table(headers, lines, numeric=[True] * len(headers))


def _summary(rows: list[dict[str, Any]], metadata: dict[str, Any]) -> list[str]:
    out = ["| ratio (ours better if > 1) | configs | min | median | max |",
           "| :--- | ---: | ---: | ---: | ---: |"]
    for task in metadata["tasks"]:
        sub = [r for r in rows if r["task"] == task]
        if not sub:
            continue
        ours = metadata["reference_methods"][task]
        for m in (m for m in metadata["methods"][task] if m != ours):
            for stage, what in (("bwd", "backward"), ("fwd_bwd", "f+b"), ("fwd", "forward")):
                key = f"speedup_{stage}_vs_{m}"
                measured = [r for r in sub if r.get(key)]
                if not measured:
                    out.append(f"| {task}: vs {m}, {what} | 0 | - | - | - |")
                    continue
                values = [r[key] for r in measured]
                separate = sum(1 for r in measured if not r.get(f"{key}_paired", True))
                count = f"{len(values)}" + (f" ({separate}{DAGGER})" if separate else "")
                out.append(f"| {task}: vs {m}, {what} | {count} | "
                           f"{format_ratio(min(values))} | "
                           f"{format_ratio(statistics.median(values))} | "
                           f"{format_ratio(max(values))} |")
    return out


def _target_value(measured: dict[str, Any]) -> str:
    if not measured["ratio"]:
        return "n/a"
    if not measured.get("paired"):
        return format_ratio(measured["ratio"]) + DAGGER
    iqr = measured.get("ratio_iqr")
    return format_ratio(measured["ratio"]) + (f" (IQR {iqr:.2g})" if iqr is not None else "")


def _target_lines(targets: list[dict[str, Any]]) -> list[str]:
    lines = []
    for t in targets:
        if not t["measured"]:
            found = f"not measured ({t['where']} not in this sweep)"
        else:
            found = ", ".join(f"b={m['b']} n={m['n']}: {_target_value(m)}"
                              for m in t["measured"])
        lines.append(f"- {t['what']} ({t['where']}; target >= {t['want']:g}x): {found}")
    return lines


def _accuracy_section(accuracy: dict[str, Any] | None) -> list[str]:
    if accuracy is None:
        return []
    lines = [f"## Gradient accuracy on hard spectra (n = {accuracy['n']})", ""]
    if accuracy.get("skipped") or accuracy.get("error"):
        return lines + [f"Not measured: {accuracy.get('skipped') or accuracy.get('error')}.", ""]
    rows = accuracy.get("rows", [])
    lines += [
        "Relative error ||g - g*||_F / ||g*||_F of the gradient of <G, A^(1/2)> w.r.t. A "
        "(Gaussian G), in the dtype of the column group; NaN: the gradient has NaN or inf. "
        "g* = Df(A)[sym(G)] in float64 from the block oracle "
        "sqrtm([[A, E], [0, A]])[:n, n:] (scipy.linalg.sqrtm), for A rounded to the dtype; "
        "largest difference between the oracle and the float64 Loewner formula: "
        + format_error(max((r["oracle_vs_loewner64"] or 0.0 for r in rows), default=None))
        + ". Spectra: identity and 2I exactly (no rotation); the others Q diag(l) Q^T for a "
          "random orthogonal Q; doubled/tripled: 1 repeated, then 2..4; gap g: 1 and 1 + g; "
          "cond c: logspaced from 1 to 1/c.", ""]
    headers = ["spectrum"] + [f"{m} {d}" for d in ("float32", "float64")
                              for m in accuracy["methods"]]
    table = []
    for name in dict.fromkeys(r["spectrum"] for r in rows):
        cells = [name]
        for dtype in ("float32", "float64"):
            match = [r for r in rows if r["spectrum"] == name and r["dtype"] == dtype]
            for m in accuracy["methods"]:
                cells.append(format_err(match[0]["grad_err"].get(m)) if match else "-")
        table.append(cells)
    lines += [markdown_table(headers, table, numeric=[False] + [True] * (len(headers) - 1)), ""]
    failed = [(r, m, e) for r in rows for m, e in r.get("errors", {}).items()]
    lines += [f"- {r['spectrum']} {r['dtype']} {m}: {e}" for r, m, e in failed]
    return lines + ([""] if failed else [])


def _failure_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Failed, skipped and not-run cases, stages and paired-stage omissions, one per line."""
    lines = []
    for row in rows:
        where = f"b={row['b']} n={row['n']} {row['task']}"
        for m, e in row["methods"].items():
            if e.get("error") or e.get("not_run") or e.get("skipped"):
                what = e.get("error") or e.get("not_run") or "; ".join(
                    f"{stage}: {why}" for stage, why in e["skipped"].items())
                lines.append(f"- {where} {m}: {what}")
        paired = row.get("paired") or {}
        whole = paired.get("error") or paired.get("not_run")
        if whole:
            lines.append(f"- {where} paired stage: {whole}")
        parts = [f"{m} left out ({why})" for m, why in paired.get("left_out", {}).items()]
        parts += [f"{m} left out of bwd ({why})"
                  for m, why in paired.get("bwd_left_out", {}).items()]
        parts += [f"{stage} not timed ({why})" for stage, why in paired.get("skipped", {}).items()]
        if parts:
            lines.append(f"- {where} paired stage: " + "; ".join(parts))
    return lines


def _explanation(metadata: dict[str, Any], fallback: bool) -> str:
    rounds = metadata.get("paired_rounds", 5)
    text = (
        "Absolute times (the ms columns and the charts) are medians of "
        "`torch.utils.benchmark.Timer.blocked_autorange` in ms, each method in its own process "
        "(which also measures its peak memory and accuracy); f+b = forward+backward; bwd = "
        "`torch.autograd.grad(loss, A, retain_graph=True)` on a recorded graph (f+b - fwd where "
        "that could not be timed; see results.json `bwd_source`). Speed-up vs X = "
        "time(X) / time(ours) (> 1: ours faster; for eigh_topk, ours = ours_topk) comes from "
        "the paired stage: one more process per configuration and task builds every method on "
        "the same input and times them interleaved, round by round, with the ratio formed "
        f"within each round and its median over {rounds} rounds reported (results.json "
        "`paired`), so the drift of the machine's speed between processes (tens of percent on "
        "a shared machine) cancels; ratios from the per-method times above can differ. ")
    if fallback:
        text += (f"{DAGGER} marks a ratio of two separate processes, used where the paired "
                 "stage did not time that method or stage (why: see the list of failures and "
                 "skipped stages below); such a ratio carries the drift and means little "
                 "near 1. ")
    return text + (
        "peak MiB = peak extra resident memory of one forward+backward (see the householder "
        "suite for the method). grad err (sqrtm) = ||g - g64|| / ||g64|| against "
        "difflinalg.sqrtm_psd in float64. n/r = not run, timeout/error: see below.")


def write_markdown(path: Path, metadata: dict[str, Any], rows: list[dict[str, Any]],
                   targets: list[dict[str, Any]], accuracy: dict[str, Any] | None,
                   charts: list[Path]) -> None:
    """results.md: run facts, targets, a table per task, summary, accuracy, failures."""
    lines = ["# spectral benchmark: eigh, top-k eigh, sqrtm_psd", "", *run_facts(metadata)]
    for task in metadata["tasks"]:
        labels = ", ".join(f"`{m}` = {label}"
                           for m, label in metadata["method_labels"][task].items())
        lines.append(f"- {task}: {labels}")
    lines.append(f"- newton_schulz: {metadata['ns_iters']} iterations")
    lines += busy_warning(rows, "rows")
    fallback = _has_fallback(rows)
    lines += ["", _explanation(metadata, fallback), "", "## Targets", "",
              "Speed-ups of ours from the paired stage, with the inter-quartile range of the "
              "per-round ratios in parentheses.", "", *_target_lines(targets), ""]
    if any(m["ratio"] and not m.get("paired") for t in targets for m in t["measured"]):
        lines += [f"{DAGGER} from two separate processes: the paired stage did not time it.", ""]
    for task in metadata["tasks"]:
        sub = [r for r in rows if r["task"] == task]
        if not sub:
            continue
        title = f"## {task}" + (" (k = max(1, n // 8) largest pairs)"
                                if task == "eigh_topk" else "")
        lines += [title, "", _task_table(task, sub, metadata), ""]
    lines += ["## Summary", "", *_summary(rows, metadata), ""]
    if fallback:
        lines += [f"configs: number of configurations; ({DAGGER}): how many of them from two "
                  "separate processes.", ""]
    lines += _accuracy_section(accuracy)
    failures = _failure_lines(rows)
    if failures:
        lines += ["## Failures, skipped cases and skipped stages", "", *failures, ""]
    if charts:
        lines += ["## Charts", ""] + [f"![{c.stem}]({c.name})" for c in charts] + [""]
    elif metadata.get("charts"):
        lines += ["## Charts", "", f"Charts {metadata['charts']}.", ""]
    path.write_text("\n".join(lines))


# ----------------------------------------------------------------------------- charts

def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _time_chart(path: Path, task: str, methods: Sequence[str], rows: list[dict[str, Any]],
                note: str) -> None:
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter, NullFormatter

    labels = [f"{r['b']}\u00d7{r['n']}" for r in rows]
    width = 0.8 / len(methods)
    fig, axes = plt.subplots(1, 2, figsize=(max(7.0, 1.6 * len(rows) + 3.0) * 1.6, 4.2),
                             layout="constrained")
    for ax, stage, what in zip(axes, ("fwd", "bwd"), ("forward", "backward")):
        for j, m in enumerate(methods):
            values = [median_time(r["methods"].get(m), stage) for r in rows]
            xs = [i + (j - (len(methods) - 1) / 2) * width for i in range(len(rows))]
            ax.bar([x for x, v in zip(xs, values) if v], [1e3 * v for v in values if v],
                   width=width, label=m)
            for x, v in zip(xs, values):
                ax.text(x, 1e3 * v if v else 0.02, format_seconds_ms(v) if v else "n/a",
                        ha="center", va="bottom", fontsize=7, color="0.2" if v else "0.4",
                        transform=ax.transData if v else ax.get_xaxis_transform())
        ax.set_yscale("log")
        shown = [1e3 * v for r in rows for m in methods
                 if (v := median_time(r["methods"].get(m), stage))]
        if shown:  # bars start well below the smallest, so heights compare on the log scale
            ax.set_ylim(min(shown) / 5, max(shown) * 2)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(range(len(rows)), labels)
        ax.set_xlabel("b \u00d7 n")
        ax.set_ylabel("median time (ms, log scale)")
        ax.set_title(what)
        ax.grid(axis="y", which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{task}: time per call by method, each in its own process "
                 "(lower is better)", fontsize=11)
    fig.supxlabel(note, fontsize=8, color="0.35")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _error_chart(path: Path, accuracy: dict[str, Any], note: str) -> None:
    plt = _pyplot()
    import numpy as np
    from matplotlib.colors import LogNorm

    rows, methods = accuracy["rows"], accuracy["methods"]
    spectra = list(dict.fromkeys(r["spectrum"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11.0, 0.42 * len(spectra) + 2.2),
                             layout="constrained")
    norm = LogNorm(vmin=1e-16, vmax=10.0)
    image = None
    for ax, dtype in zip(axes, ("float32", "float64")):
        grid = np.full((len(spectra), len(methods)), np.nan)
        text = [["-"] * len(methods) for _ in spectra]
        for r in (r for r in rows if r["dtype"] == dtype):
            i = spectra.index(r["spectrum"])
            for j, m in enumerate(methods):
                value = r["grad_err"].get(m)
                text[i][j] = format_err(value)
                if isinstance(value, float) and math.isfinite(value):
                    grid[i, j] = min(max(value, 1e-16), 10.0)
        cmap = plt.get_cmap("viridis").with_extremes(bad="0.8")
        image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm, aspect="auto")
        for i in range(len(spectra)):
            for j in range(len(methods)):
                dark = not np.isnan(grid[i, j]) and grid[i, j] < 1e-6
                ax.text(j, i, text[i][j], ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")
        ax.set_xticks(range(len(methods)), methods, rotation=20)
        ax.set_yticks(range(len(spectra)), spectra)
        ax.set_title(dtype)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.9, label="relative gradient error")
    fig.suptitle(f"Gradient of <G, sqrtm(A)>: relative error vs the exact float64 gradient "
                 f"(n = {accuracy['n']}; grey: NaN/inf)", fontsize=11)
    fig.supxlabel(note, fontsize=8, color="0.35")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def write_charts(out_dir: Path, rows: list[dict[str, Any]], accuracy: dict[str, Any] | None,
                 metadata: dict[str, Any]) -> list[Path]:
    """times_<task>.png per task with timings, grad_error.png; raises ImportError without
    matplotlib."""
    note = (f"{metadata['cpu']}, {metadata['threads']} threads, {metadata['dtype']}, torch "
            f"{metadata['torch']}")
    written = []
    for task in metadata["tasks"]:
        sub = [r for r in rows if r["task"] == task]
        if any(median_time(e, "fwd") for r in sub for e in r["methods"].values()):
            path = out_dir / f"times_{task}.png"
            _time_chart(path, task, metadata["methods"][task], sub, note)
            written.append(path)
    if accuracy and accuracy.get("rows"):
        path = out_dir / "grad_error.png"
        _error_chart(path, accuracy, f"torch {metadata['torch']}")
        written.append(path)
    return written
