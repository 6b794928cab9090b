"""The ``sparse`` benchmark suite on a tiny configuration: report files, schema, targets."""

import json
import math
import os
import time

import pytest
import torch

from difflinalg.bench.cli import main
from difflinalg.bench.suites import sparse as suite

pytest.importorskip("scipy")

TINY = ["--scale", "0.02", "--min-run-time", "0.01", "--rounds", "1", "--threads", "1",
        "--epochs", "3", "--timeout", "120"]
PROC_MEMORY = os.access("/proc/self/clear_refs", os.W_OK)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-sparse")
    status = main(["bench", "sparse", *TINY, "--out", str(out)])
    return status, out, json.loads((out / "results.json").read_text())


def _row(data, name):
    (row,) = [row for row in data["results"] if row["name"] == name]
    return row


def _assert_timing(timing, reference, others):
    assert set(timing) == {reference, *others}
    assert timing[reference]["ratio_to_reference"] is None
    for name in others:
        ratio = timing[name]["ratio_to_reference"]
        assert math.isfinite(ratio) and ratio > 0, name
    for entry in timing.values():
        assert entry["median_s"] > 0 and entry["rounds"] >= 1
        assert entry["mode"] in ("blocked_autorange", "one call per round")


def test_every_case_runs_and_metadata(result):
    status, _, data = result
    assert status == 0
    meta = data["metadata"]
    for key in ("torch", "python", "blas", "cpu", "device", "git", "date", "preset", "dtype",
                "dtype_products", "index_dtype", "threads", "min_run_time", "rounds",
                "scale", "scipy", "wall_time_s", "targets_met"):
        assert key in meta, key
    assert (meta["threads"], meta["dtype_products"], meta["scale"]) == (1, "float32", 0.02)
    assert meta["cases"] == list(suite.CASES)
    assert [row["name"] for row in data["results"]] == [
        "spspmm n=400", "spspmm backward vs torch n=400", "spspmm A A^T, A 679 x 339",
        "estimate", "lsq 20000 x 2000",
        "stochastic 4000 x 400", "densify"]
    for row in data["results"]:
        assert row["error"] is None, row["name"]


def test_spspmm_forward_backward_and_sparse_gradients(result):
    row = _row(result[2], "spspmm n=400")
    assert row["density"] == pytest.approx(0.05) and row["nnz_a"] == row["nnz_b"] == 8000
    _assert_timing(row["timing"]["fwd"], "ours",
                   ["scipy_raw", "scipy_sorted", "torch_csr", "torch_coo"])
    _assert_timing(row["timing"]["bwd"], "ours_fwd", ["ours_bwd"])
    assert row["same_pattern_as_scipy_sorted"] is True and row["rel_err_vs_scipy"] < 1e-6
    grads = row["grads"]["ours"]
    assert grads["A"] == {"layout": "sparse_csr", "nnz": 8000, "shape": [400, 400]}
    assert grads["B"]["layout"] == "sparse_csr" and grads["B"]["nnz"] == 8000
    assert row["figures"]["bwd_over_fwd"] > 0 and row["figures"]["ours_over_scipy_raw"] > 0


def test_backward_against_torch(result):
    row = _row(result[2], "spspmm backward vs torch n=400")
    _assert_timing(row["timing"]["bwd"], "ours_bwd", ["torch_coo_bwd", "torch_csr_bwd"])
    assert len(set(row["nnz_c"].values())) == 1
    grads = row["grads"]
    for key, nnz in (("A", row["nnz_a"]), ("B", row["nnz_b"])):
        assert grads["ours"][key]["nnz"] == grads["torch_coo"][key]["nnz"] == nnz
        assert grads["torch_coo"][key]["layout"] == "sparse_coo"
        assert grads["torch_csr"][key]["layout"] == "sparse_csr"
        assert grads["torch_csr"][key]["nnz"] >= nnz  # the pattern of G B^T, A^T G
        assert row["rel_err_vs_torch_coo"][key] < 1e-5
    assert row["torch_sparse_mm_csr_backward"]


def test_largest_product_that_fits(result):
    """A A^T for the largest A of the 200k x 100k, density 0.002 kind (at scale 0.02: density
    0.1, 4000 x 2000 at most) whose product fits the quick budget times the scale."""
    row = _row(result[2], "spspmm A A^T, A 679 x 339")
    (m, k), density = row["shape"], row["density"]
    assert (m, k) == (679, 339) and density == pytest.approx(0.1)
    assert row["budget"] == pytest.approx(2.0**28 * 0.02)
    assert row["estimate"]["bytes_estimate"] <= row["budget"]
    assert suite.analytic_estimate(m + 1, (m + 1) // 2, density, 4)["bytes_estimate"] > \
        row["budget"]
    _assert_timing(row["timing"]["fwd"], "ours", ["scipy_raw", "torch_csr"])
    assert row["same_pattern_as_scipy_sorted"] is True and row["rel_err_vs_scipy"] < 1e-6
    assert row["nnz_c"] == pytest.approx(row["estimate"]["nnz_estimate"], rel=0.05)
    assert row["figures"]["ours_over_scipy_raw"] > 0
    (target,) = [t for t in result[2]["targets"] if t["case"] == row["name"]]
    assert target["threshold"] == suite.FWD_MAX_OVER_SCIPY and target["op"] == "<="


def test_largest_fitting_is_the_largest():
    fits = suite.largest_fitting(200000, 0.002, 2.0**28, 4)
    est = suite.analytic_estimate
    assert est(fits, fits // 2, 0.002, 4)["bytes_estimate"] <= 2.0**28
    assert est(fits + 1, (fits + 1) // 2, 0.002, 4)["bytes_estimate"] > 2.0**28
    assert 20000 < fits < 25000
    assert suite.largest_fitting(200000, 0.002, 2.0**40, 4) == 200000  # 1 TiB: all of it


def test_estimate_and_refusal(result):
    row = _row(result[2], "estimate")
    assert 140 < row["figures"]["big_gib"] < 155  # the unscaled 200k x 100k case
    assert row["big"]["multiplies"] == pytest.approx(1.6e10)
    ana = row["analogue"]
    for source in ("analytic", "function"):
        assert ana[source]["nnz_estimate"] == pytest.approx(ana["nnz_true"], rel=0.2)
    refusal = row["refusal"]
    assert refusal["raised"] is True and refusal["message"].startswith("spspmm: ")
    assert refusal["bytes_estimate"] > refusal["max_bytes"]


def test_lsq_matches_scipy(result):
    row = _row(result[2], "lsq 20000 x 2000")
    assert set(row["solvers"]) == {"lsqr", "lsmr"}
    for method, res in row["solvers"].items():
        others = ["scipy", "with_build"] + (["build"] if method == "lsqr" else [])
        _assert_timing(res["timing"], "ours", others)
        assert abs(res["ours"]["iterations"] - res["scipy"]["iterations"]) <= 1, method
        assert res["ours"]["residual"] == pytest.approx(res["scipy"]["residual"], rel=1e-6)
        assert res["x_rel_diff"] < 1e-4


def test_stochastic_histories(result):
    row = _row(result[2], "stochastic 4000 x 400")
    assert row["batch_size"] == 20 and row["b_norm"] > 0
    for key in ("sgd", "plain_sgd"):
        assert row[key]["passes"] == [1, 2, 3]
        assert len(row[key]["residual"]) == 3
        assert all(math.isfinite(r) and r >= 0 for r in row[key]["residual"])
    lsqr = row["lsqr"]
    assert lsqr["passes"] == [2 * k + 1 for k in range(1, len(lsqr["residual"]) + 1)]
    assert len(lsqr["residual"]) == min(lsqr["iterations"], suite.LSQR_HISTORY_CAP)
    _assert_timing(row["timing"]["run"], "lsqr", ["sgd"])


def test_densify_sizes_and_memory(result):
    row = _row(result[2], "densify")
    # the quick preset compares with torch's backward at the spspmm size itself
    assert set(row["sizes"]) == {"400"}
    size = row["sizes"]["400"]
    assert size["dense_a_bytes"] == 400 * 400 * 4
    assert size["gbt_nnz_exact"] > size["nnz_a"]
    assert size["ours_grad_value_bytes"] == (size["nnz_a"] + size["nnz_b"]) * 4
    assert set(row["memory"]) == {"ours@400", "torch_coo@400", "torch_csr@400"}
    for key, entry in row["memory"].items():
        peak = entry["peak_extra_bytes"]
        if PROC_MEMORY:
            assert isinstance(peak, int) and peak >= 0, key
        else:
            assert peak is None and entry["reason"]


def test_targets_schema(result):
    targets = result[2]["targets"]
    assert len(targets) == 3 + 1 + 1 + 1 + 6
    for target in targets:
        assert set(target) == {"case", "what", "op", "threshold", "goal", "value", "display",
                               "met"}
        assert target["met"] in (True, False)
    by_what = {t["what"]: t for t in targets}
    assert by_what["A.grad, B.grad sparse CSR with nnz(A), nnz(B) entries"]["met"] is True
    assert by_what["lsqr: residual ‖b - A x‖ ours / scipy"]["met"] is True


def test_report_and_charts(result):
    _, out, data = result
    text = (out / "results.md").read_text()
    assert text.startswith("# sparse benchmark")
    for heading in ("## Targets", "## spspmm n=400", "## spspmm backward vs torch n=400",
                    "## estimate", "## lsq 20000 x 2000", "## stochastic 4000 x 400",
                    "## densify"):
        assert heading in text
    assert text.count("| spspmm n=400 |") == 3 and "MemoryError:" in text
    pytest.importorskip("matplotlib")
    for name in ("spspmm_speed.png", "lsq_speed.png", "stochastic_convergence.png"):
        assert f"]({name})" in text
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scaled_keeps_entries_per_row():
    assert suite.scaled(20000, 1e-3, 1.0) == (20000, 1e-3)
    n, density = suite.scaled(20000, 1e-3, 0.02)
    assert n == 400 and n * density == pytest.approx(20.0)


def test_analytic_estimate_of_the_big_product():
    est = suite.analytic_estimate(200000, 100000, 0.002)
    assert est["nnz_a"] == pytest.approx(4e7) and est["multiplies"] == pytest.approx(1.6e10)
    assert est["nnz_estimate"] == pytest.approx(4e10 * -math.expm1(-0.4))
    assert 145 < est["bytes_estimate"] / 2**30 < 150


def test_plain_sgd_on_a_mean_loss_barely_moves():
    A = torch.eye(64, dtype=torch.float64).repeat(8, 1).to_sparse_csr()  # 512 x 64
    b = A @ torch.ones(64, dtype=torch.float64)
    norms = suite.plain_sgd(A, b, batch_size=256, epochs=2, lr=0.5,
                            generator=torch.Generator().manual_seed(0))
    initial = float(torch.linalg.vector_norm(b))
    assert len(norms) == 2 and 0.9 * initial < norms[-1] < initial


def test_slow_calls_take_one_call_per_round():
    spec = {"rounds": 5, "threads": 1, "min_run_time": 0.01}
    timing = suite._interleaved({"slow": lambda: time.sleep(0.35), "fast": lambda: None},
                                spec, reference="slow")
    assert {e["mode"] for e in timing.values()} == {"one call per round"}
    assert {e["rounds"] for e in timing.values()} == {suite.SLOW_ROUNDS}
    assert timing["slow"]["ratio_to_reference"] is None
    assert timing["fast"]["ratio_to_reference"] > 0


@pytest.mark.parametrize("argv, message", [
    (["--cases", "spspmm,qr"], "expected cases among spspmm, largest, estimate, lsq"),
    (["--rounds", "2"], "expected an odd number of rounds"),
    (["--scale", "0"], "expected a positive number"),
    (["--index-dtype", "int16"], "invalid choice: 'int16'"),
])
def test_bad_arguments_name_the_choices(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "sparse", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_timeout_becomes_an_error_row(tmp_path):
    status = main(["bench", "sparse", "--cases", "estimate", "--timeout", "0.001",
                   "--out", str(tmp_path)])
    data = json.loads((tmp_path / "results.json").read_text())
    (row,) = data["results"]
    assert status == 1 and row["error"].startswith("timeout")
    (target,) = data["targets"]
    assert target["value"] is None and target["met"] is None
    assert "error: timeout" in (tmp_path / "results.md").read_text()
