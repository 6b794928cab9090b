"""The ``factorize`` benchmark suite on tiny settings: report, schema, the real peer."""

import json

import pytest

from difflinalg.bench.cli import main
from difflinalg.bench.suites import factorize as suite

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-factorize")
    status = main(["bench", "factorize", "--matrix", "64x48x500x8", "--conv-batch", "2",
                   "--epochs", "1", "--min-run-time", "0.05", "--threads", "1",
                   "--out", str(out)])
    return status, out, json.loads((out / "results.json").read_text())


def test_every_part_runs_and_is_reported(result):
    status, out, data = result
    assert status == 0
    res = data["results"]
    nmse = res["matrix"]["nmse"]
    assert nmse["ours"] <= nmse["composer"] * (1 + 1e-6) and nmse["ours"] < nmse["svd"]
    assert nmse["ours_reported"] == pytest.approx(nmse["ours"], rel=1e-4)
    assert res["matrix"]["timing"]["composer"]["ratio_to_reference"] > 0
    conv = res["conv_memory"]
    assert conv["batch"] == 2 and conv["unfolded_mb"] > 0 and conv["nmse"] < 1
    rows = res["digits"]["rows"]
    assert [r["budget"] for r in rows] == ["original", "2x fewer FLOPs", "4x fewer FLOPs"]
    assert rows[2]["flops"] <= rows[2]["flops_before"] / 4 and rows[1]["params"] < rows[0]["params"]
    text = (out / "results.md").read_text()
    assert "factorize_matrix" in text and "Digits CNN" in text
    assert (out / "digits_accuracy.png").stat().st_size > 0


def test_composer_reimplementation_matches_the_published_algorithm():
    import torch

    module, source = suite.composer_factorize()
    X = torch.randn(300, 20, dtype=torch.float64)
    W = torch.randn(20, 16, dtype=torch.float64)
    Y = X @ W + 1.0
    Wa, Wb, b = suite._als(X, Y, W, bias=torch.ones(16, dtype=torch.float64), rank=5)
    if module is None:
        pytest.skip(f"Composer not installed: {source}")
    sol = module.factorize_matrix(X, Y, W, bias=torch.ones(16, dtype=torch.float64), rank=5)
    torch.testing.assert_close(Wa @ Wb, sol.Wa @ sol.Wb)
    torch.testing.assert_close(b, sol.bias)


def test_bad_options(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "factorize", "--matrix", "64x48"])
    assert "expected DxMxNxR" in capsys.readouterr().err
