r"""Suite ``factorize``: data-aware low-rank factorization against Composer and truncated SVD.

Three parts, each in its own process:

* ``matrix``: :func:`difflinalg.factorize_matrix` against Composer's ``factorize_matrix``
  (the real one, loaded from an installed ``mosaicml`` by file path so that none of its
  dependencies are needed; else a faithful re-implementation, marked as such) and against a
  truncated SVD of the weight, on a 1024 x 1024 layer with 4096 correlated inputs at rank 256:
  time (interleaved, one process) and the true nmse of each result.
* ``conv_memory``: peak extra resident memory of :func:`difflinalg.factorize_conv2d` on a
  64-channel 3 x 3 conv with a 256 x 64 x 56 x 56 input, next to the size of the unfolded
  activations it never forms.
* ``digits``: a small CNN trained on scikit-learn's 8 x 8 digits (shipped with the package, no
  download), factorised by :func:`difflinalg.nn.factorize_model` at 2x and 4x fewer FLOPs:
  test accuracy before, right after, and after two epochs of fine-tuning.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .._memory import PeakMemory, heap_for_memory
from .._report import (
    collect_metadata,
    format_elapsed,
    format_ratio,
    markdown_table,
    run_facts,
    write_json,
)
from .._timing import IsolatedRunner, measure_interleaved
from ..cli import positive_float, positive_int

__all__ = ["NAME", "DESCRIPTION", "add_arguments", "run"]

NAME = "factorize"
DESCRIPTION = ("factorize_matrix vs Composer's and truncated SVD; factorize_conv2d memory; "
               "a digits CNN factorised at 2x and 4x fewer FLOPs")
PRESETS = {
    "quick": {"matrix": (1024, 1024, 4096, 256), "conv_batch": 256, "epochs": 8,
              "min_run_time": 6.0, "timeout": 600.0},
    "full": {"matrix": (1024, 1024, 4096, 256), "conv_batch": 256, "epochs": 20,
             "min_run_time": 15.0, "timeout": 1800.0},
}


def composer_factorize() -> tuple[Any, str]:
    """Composer's ``factorize_core`` module loaded by path, and where it came from."""
    spec = importlib.util.find_spec("composer")
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / "algorithms" / "factorize" / \
            "factorize_core.py"
        if path.is_file():
            mod_spec = importlib.util.spec_from_file_location("_composer_factorize_core", path)
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
            return module, f"mosaicml composer ({path})"
    return None, "re-implementation (mosaicml not installed)"


def _als(X, Y, Wa, Wb=None, bias=None, rank=0.25, n_iters=3):
    """Composer's algorithm as published (SVD start, alternating lstsq, mean bias)."""
    k = int(rank)
    W = Wa if Wb is None else Wa @ Wb
    U, s, Vt = torch.linalg.svd(W, full_matrices=False)
    Wa, Wb = U[:, :k] * s[:k].sqrt(), s[:k].sqrt()[:, None] * Vt[:k]
    Yc = Y if bias is None else Y - bias
    Ya = torch.linalg.lstsq(X, Yc).solution
    for _ in range(n_iters):
        Wb = torch.linalg.lstsq(X @ Wa, Yc).solution
        Wa = torch.linalg.lstsq(Wb.T, Ya.T).solution.T
    new_bias = (Yc - X @ Wa @ Wb).mean(0) + (0 if bias is None else bias)
    return Wa, Wb, new_bias


def _true_nmse(X, Y, Wa, Wb, b) -> float:
    err = Y.double() - (X.double() @ Wa.double() @ Wb.double() + b.double())
    return float(err.square().mean() / Y.double().var())


def _matrix_worker(spec: dict[str, Any], report: Callable[[dict[str, Any]], None]) -> None:
    import difflinalg

    torch.set_num_threads(spec["threads"])
    d_in, d_out, n, rank = spec["matrix"]
    gen = torch.Generator().manual_seed(spec["seed"])
    mix = torch.randn(d_in, d_in, generator=gen) * torch.logspace(0, -2, d_in)
    X = torch.randn(n, d_in, generator=gen) @ mix          # correlated, like activations
    W = torch.randn(d_in, d_out, generator=gen) / d_in ** 0.5
    bias = torch.randn(d_out, generator=gen)
    Y = X @ W + bias
    module, source = composer_factorize()
    report({"composer_source": source})

    def ours():
        return difflinalg.factorize_matrix(X, Y, W, bias=bias, rank=rank)

    def composer():
        if module is not None:
            sol = module.factorize_matrix(X, Y, W, bias=bias, rank=rank)
            return sol.Wa, sol.Wb, sol.bias
        return _als(X, Y, W, bias=bias, rank=rank)

    def svd():
        U, s, Vt = torch.linalg.svd(W, full_matrices=False)
        return U[:, :rank] * s[:rank], Vt[:rank], bias

    sol = ours()
    c = composer()
    sv = svd()
    reported = None
    if module is not None:
        reported = module.factorize_matrix(X, Y, W, bias=bias, rank=rank).nmse
    report({"nmse": {"ours": _true_nmse(X, Y, sol.Wa, sol.Wb, sol.bias),
                     "ours_reported": sol.nmse,
                     "composer": _true_nmse(X, Y, *c), "composer_reported": reported,
                     "svd": _true_nmse(X, Y, *sv)}})
    report({"stage": "timing"})
    report({"timing": measure_interleaved({"ours": ours, "composer": composer, "svd": svd},
                                          reference="ours", min_run_time=spec["min_run_time"],
                                          num_threads=spec["threads"], rounds=3)})


def _conv_worker(spec: dict[str, Any], report: Callable[[dict[str, Any]], None]) -> None:
    import difflinalg

    torch.set_num_threads(spec["threads"])
    exact = heap_for_memory()
    b = spec["conv_batch"]
    gen = torch.Generator().manual_seed(spec["seed"])
    X = torch.randn(b, 64, 56, 56, generator=gen)
    W = torch.randn(64, 64, 3, 3, generator=gen) / 24
    start = time.perf_counter()
    with PeakMemory() as peak:
        sol = difflinalg.factorize_conv2d(X, W, rank=16, padding=1)
    report({"batch": b, "seconds": time.perf_counter() - start, "heap": exact,
            "input_mb": X.numel() * 4 / 2**20, "unfolded_mb": b * 64 * 9 * 56 * 56 * 4 / 2**20,
            "peak_extra_mb": (peak.peak_extra_bytes or 0) / 2**20, "nmse": sol.nmse})


class _DigitsNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2))
        self.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64 * 4, 128),
                                        torch.nn.ReLU(), torch.nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _digits_worker(spec: dict[str, Any], report: Callable[[dict[str, Any]], None]) -> None:
    import copy

    from sklearn.datasets import load_digits

    import difflinalg

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    data = load_digits()
    X = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(spec["seed"]))
    train, test = perm[:1400], perm[1400:]

    def accuracy(model):
        model.eval()
        with torch.no_grad():
            return float((model(X[test]).argmax(1) == y[test]).float().mean())

    def fit(model, epochs, lr):
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        model.train()
        for _ in range(epochs):
            for idx in train[torch.randperm(len(train))].split(64):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
                opt.step()

    net = _DigitsNet()
    fit(net, spec["epochs"], 2e-3)
    base = accuracy(net)
    rows = [{"budget": "original", "params": sum(p.numel() for p in net.parameters()),
             "flops": None, "acc": base, "acc_finetuned": None, "layers": []}]
    calib = [X[train][i:i + 256] for i in range(0, len(train), 256)]
    for fraction in (0.5, 0.25):
        model = copy.deepcopy(net)
        rep = difflinalg.nn.factorize_model(model, calib, target_flops=fraction,
                                            min_channels=16, min_features=16, progress=False)
        after = accuracy(model)
        fit(model, 2, 1e-4)
        rows.append({"budget": f"{1 / fraction:g}x fewer FLOPs", "params": rep.params_after,
                     "flops": rep.flops_after, "flops_before": rep.flops_before, "acc": after,
                     "acc_finetuned": accuracy(model),
                     "layers": [{"name": r.name, "rank": r.rank, "nmse": r.nmse}
                                for r in rep.layers]})
    report({"rows": rows})


def _markdown(path: Path, metadata: dict, results: dict, charts: list[Path]) -> None:
    lines = ["# factorize benchmark", "", *run_facts(metadata), ""]
    m = results.get("matrix") or {}
    d_in, d_out, n, rank = metadata["matrix"]
    lines += [f"## factorize_matrix: {d_in} x {d_out} layer, {n} correlated inputs, rank {rank}",
              "", f"Composer: {m.get('composer_source', '-')}.", ""]
    if m.get("error"):
        lines.append(f"error: {m['error']}")
    elif m.get("timing"):
        t, e = m["timing"], m["nmse"]
        rows = [[name, f"{t[name]['median_s']:.3f}",
                 "-" if name == "ours" else format_ratio(t[name]["ratio_to_reference"]),
                 f"{e[name]:.5g}"] for name in ("ours", "composer", "svd")]
        lines.append(markdown_table(["method", "time s", "time vs ours", "true nmse"], rows,
                                    [False, True, True, True]))
        if e.get("composer_reported") is not None:
            lines += ["", f"Composer's reported nmse: {e['composer_reported']:.5g} (true "
                          f"{e['composer']:.5g}); ours reported {e['ours_reported']:.5g}."]
    c = results.get("conv_memory") or {}
    lines += ["", "## factorize_conv2d peak memory (64 -> 64 channels, 3 x 3, rank 16)", ""]
    if c.get("error"):
        lines.append(f"error: {c['error']}")
    elif c:
        lines.append(markdown_table(
            ["input", "input MB", "unfolded MB (never formed)", "peak extra MB", "time s"],
            [[f"{c['batch']} x 64 x 56 x 56", f"{c['input_mb']:.0f}", f"{c['unfolded_mb']:.0f}",
              f"{c['peak_extra_mb']:.0f}", f"{c['seconds']:.1f}"]], [False] + [True] * 4))
    dg = results.get("digits") or {}
    lines += ["", "## Digits CNN (scikit-learn 8 x 8 digits, 397 test images)", ""]
    if dg.get("error"):
        lines.append(f"error: {dg['error']}")
    elif dg.get("rows"):
        rows = [[r["budget"], str(r["params"]), "-" if r["flops"] is None else
                 f"{r['flops']} / {r['flops_before']}", f"{r['acc']:.3f}",
                 "-" if r["acc_finetuned"] is None else f"{r['acc_finetuned']:.3f}"]
                for r in dg["rows"]]
        lines.append(markdown_table(["model", "params", "FLOPs of factorised layers (after / "
                                     "before)", "accuracy", "after 2 epochs fine-tune"], rows,
                                    [False, True, True, True, True]))
    if charts:
        lines += ["", "## Charts", ""] + [f"![{p.stem}]({p.name})" for p in charts]
    path.write_text("\n".join(lines) + "\n")


def _chart(path: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = rows[0]
    fr = [1.0] + [r["flops"] / r["flops_before"] for r in rows[1:]]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(fr, [base["acc"]] + [r["acc"] for r in rows[1:]], "o-", label="factorised")
    ax.plot(fr, [base["acc"]] + [r["acc_finetuned"] for r in rows[1:]], "s--",
            label="+ 2 epochs fine-tune")
    ax.set_xlabel("FLOPs of the factorised layers (fraction of original)")
    ax.set_ylabel("test accuracy")
    ax.set_title("digits CNN, factorize_model(target_flops=...)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _matrix_config(text: str) -> tuple[int, int, int, int]:
    parts = text.lower().split("x")
    if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected DxMxNxR like 1024x1024x4096x256, but got "
                                         f"{text!r}")
    return tuple(int(p) for p in parts)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``difflinalg bench factorize``."""
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--parts", default="matrix,conv_memory,digits",
                        help="comma-separated among matrix, conv_memory, digits")
    parser.add_argument("--matrix", type=_matrix_config, metavar="DxMxNxR",
                        help="layer in x out, samples, rank of the matrix part. "
                             "Default: 1024x1024x4096x256")
    parser.add_argument("--conv-batch", type=positive_int, metavar="B",
                        help="batch of the conv memory part. Default: 256")
    parser.add_argument("--epochs", type=positive_int, help="training epochs of the digits CNN")
    parser.add_argument("--threads", type=positive_int, default=2)
    parser.add_argument("--min-run-time", type=positive_float, metavar="SECONDS")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    preset = dict(PRESETS[args.preset])
    if args.conv_batch:
        preset["conv_batch"] = args.conv_batch
    if args.matrix:
        preset["matrix"] = args.matrix
    if args.epochs:
        preset["epochs"] = args.epochs
    if args.min_run_time:
        preset["min_run_time"] = args.min_run_time
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - {"matrix", "conv_memory", "digits"}
    if unknown:
        print(f"factorize bench: unknown parts {sorted(unknown)}; expected matrix, "
              "conv_memory, digits", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    metadata = collect_metadata({"suite": NAME, "preset": args.preset, "dtype": "float32",
                                 "threads": args.threads, "timeout": preset["timeout"],
                                 "min_run_time": preset["min_run_time"], "seed": args.seed,
                                 "matrix": list(preset["matrix"])})
    spec = {**preset, "threads": args.threads, "seed": args.seed}
    runner = IsolatedRunner(preload=["torch", "difflinalg", __name__])
    workers = {"matrix": _matrix_worker, "conv_memory": _conv_worker, "digits": _digits_worker}
    results: dict[str, Any] = {}
    start = time.monotonic()
    status = 0
    for part in parts:
        print(f"{part} ...", end="", file=sys.stderr, flush=True)
        res, error = runner.run(workers[part], spec, preset["timeout"])
        res.pop("stage", None)
        if error:
            res["error"] = error
            status = 1
        results[part] = res
        print(f" {'error: ' + error if error else 'ok'} "
              f"[{format_elapsed(time.monotonic() - start)}]", file=sys.stderr, flush=True)
        write_json(out / "results.json", {"metadata": metadata, "results": results})
    charts = []
    rows = (results.get("digits") or {}).get("rows")
    if rows:
        try:
            _chart(out / "digits_accuracy.png", rows)
            charts.append(out / "digits_accuracy.png")
        except ImportError as exc:
            metadata["charts"] = f"not drawn: {exc}"
    metadata["wall_time_s"] = round(time.monotonic() - start, 1)
    write_json(out / "results.json", {"metadata": metadata, "results": results})
    _markdown(out / "results.md", metadata, results, charts)
    print(f"factorize bench: {len(parts)} parts in {format_elapsed(time.monotonic() - start)};"
          " wrote:")
    for path in (out / "results.json", out / "results.md", *charts):
        print(f"  {path}")
    return status
