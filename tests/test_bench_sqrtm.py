"""The ``sqrtm`` benchmark suite on a tiny configuration: report files, schema, errors."""

import json

import pytest
import torch

from difflinalg.bench.cli import main
from difflinalg.bench.suites import sqrtm as suite


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-sqrtm")
    status = main(["bench", "sqrtm", "--batch", "2", "--n", "8", "--min-run-time", "0.02",
                   "--threads", "1", "--accuracy-n", "8", "--timeout", "120",
                   "--out", str(out)])
    return status, out, json.loads((out / "results.json").read_text())


def test_sweep_runs_every_method(sweep):
    status, out, data = sweep
    assert status == 0
    (row,) = data["results"]
    assert (row["b"], row["n"]) == (2, 8) and "error" not in row
    for method in suite.METHODS:
        assert row[method]["fwd_err"] < 1e-3
        assert row["timing_fwd_bwd"][method]["median_s"] > 0
        assert row["timing_fwd"][method]["median_s"] > 0
    assert row["timing_fwd_bwd"]["auto"]["ratio_to_reference"] is None
    assert row["timing_fwd_bwd"]["ns10"]["ratio_to_reference"] > 0


def test_saved_memory_iterative_backward_beats_autograd_through_the_loop(sweep):
    _, _, data = sweep
    (row,) = data["results"]
    assert row["newton_schulz"]["saved_mb"] < row["ns10"]["saved_mb"] / 3


def test_accuracy_sweep_and_report(sweep):
    _, out, data = sweep
    rows = data["accuracy"]["rows"]
    assert [r["cond"] for r in rows] == [*suite.PRESETS["quick"]["conds"], None]
    assert rows[0]["methods"]["newton_schulz"]["fwd_err"] < 1e-5
    text = (out / "results.md").read_text()
    assert "## batch 2, n = 8" in text and "Error versus condition number" in text
    assert (out / "error_vs_cond.png").stat().st_size > 0


def test_saved_bytes_counts_saved_tensors_only():
    A = torch.eye(4, dtype=torch.float64).expand(3, 4, 4).clone()
    assert suite._saved_bytes(lambda a: a * 2.0, A) == 0
    assert suite._saved_bytes(lambda a: a @ a.exp(), A) > 0


def test_unknown_method():
    with pytest.raises(ValueError, match="sqrtm bench: unknown method"):
        suite.method_fn("svd10")


def test_failure_is_a_row(tmp_path):
    status = main(["bench", "sqrtm", "--batch", "2", "--n", "8", "--timeout", "0.001",
                   "--no-accuracy", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "results.json").read_text())
    assert status == 1 and data["results"][0]["error"].startswith("timeout")
    assert "error: timeout" in (tmp_path / "results.md").read_text()
