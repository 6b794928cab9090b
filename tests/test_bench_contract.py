"""The ``contract`` benchmark suite on a tiny configuration: report files, schema, targets."""

import json
import math
import os

import pytest
import torch

from difflinalg.bench.cli import main
from difflinalg.bench.suites import contract as suite

TINY = ["--scale", "0.125", "--min-run-time", "0.01", "--rounds", "1", "--threads", "1",
        "--timeout", "120"]
PROC_MEMORY = os.access("/proc/self/clear_refs", os.W_OK)


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-contract")
    status = main(["bench", "contract", *TINY, "--out", str(out)])
    return status, out, json.loads((out / "results.json").read_text())


def _rows(data, case):
    return [row for row in data["results"] if row["case"] == case]


def _assert_timing(timing, reference, others):
    assert set(timing) == {reference, *others}
    assert timing[reference]["ratio_to_reference"] is None
    for name in others:
        ratio = timing[name]["ratio_to_reference"]
        assert math.isfinite(ratio) and ratio > 0, name
    for entry in timing.values():
        assert entry["median_s"] > 0 and entry["rounds"] == 1


def test_every_case_runs_and_metadata(result):
    status, _, data = result
    assert status == 0
    meta = data["metadata"]
    for key in ("torch", "python", "blas", "cpu", "device", "git", "date", "preset", "dtype",
                "threads", "min_run_time", "rounds", "scale", "opt_einsum",
                "opt_einsum_available", "wall_time_s", "targets_met"):
        assert key in meta, key
    assert (meta["threads"], meta["dtype"], meta["scale"]) == (1, "float32", 0.125)
    assert meta["cases"] == list(suite.CASES)
    names = [row["name"] for row in data["results"]]
    assert names == ["inner", "strided", *[f"chain {eq}" for eq, _ in suite.CHAINS],
                     "overhead", "lazy n=512"]
    for row in data["results"]:
        assert row["error"] is None, row["name"]


def test_inner_is_one_gemm_on_views(result):
    (row,) = _rows(result[2], "inner")
    assert row["shapes"] == [[4, 4, 4, 2, 2, 2], [2, 2, 2, 8]]
    assert row["copy_bytes"] == 0 and row["gemms"] == 1
    _assert_timing(row["timing"]["fwd"], "ours", ["hand", "torch"])
    assert row["figures"]["ours_over_hand"] > 0 and row["figures"]["torch_over_ours"] > 0
    for name, err in row["rel_err"].items():
        assert err < 1e-5, name


def test_strided_copy_saved_tensors_and_memory(result):
    (row,) = _rows(result[2], "strided")
    x_bytes = math.prod(row["shapes"][0]) * 4
    assert row["copy_size_bytes"] == x_bytes == row["copy_bytes"]
    for stage in ("fwd", "fwd_bwd"):
        _assert_timing(row["timing"][stage], "ours", ["torch"])
    assert row["saved"]["ours"]["saved_extra_bytes"] == 0  # the operands as they came
    assert row["saved"]["ours"]["saved_bytes"] >= x_bytes
    assert row["saved"]["torch"]["saved_extra_bytes"] >= 0
    for name, errors in row["rel_err"].items():
        assert max(errors.values()) < 1e-5, name
    for name in ("ours", "torch"):
        peak = row["memory"][name]["peak_extra_bytes"]
        if PROC_MEMORY:
            assert isinstance(peak, int) and peak >= 0, name
        else:
            assert peak is None and row["memory"][name]["reason"]


def test_chains_agree_with_float64(result):
    data = result[2]
    rows = _rows(data, "chain")
    assert [row["equation"] for row in rows] == [eq for eq, _ in suite.CHAINS]
    assert rows[0]["shapes"] == [[125, 125], [125, 125], [125, 125], [125, 2]]
    baselines = ["torch_noopt"] + (["torch_opt"] if data["metadata"]["opt_einsum_available"]
                                   else [])
    for row in rows:
        _assert_timing(row["timing"]["fwd"], "ours", baselines)
        assert row["gemms"] >= 1 and len(row["path"]) == len(row["shapes"]) - 1
        for name, err in row["rel_err"].items():
            assert err < 1e-5, (row["equation"], name)


def test_overhead_per_call(result):
    (row,) = _rows(result[2], "overhead")
    eqs = row["equations"]
    _assert_timing(eqs["ij,jk->ik"]["timing"], "mm", ["ours", "torch"])
    _assert_timing(eqs["ij,jk,kl->il"]["timing"], "mm", ["ours", "expression", "torch"])
    for res in eqs.values():
        assert all(math.isfinite(us) for us in res["overhead_us"].values())


def test_lazy_reductions(result):
    (row,) = _rows(result[2], "lazy")
    assert row["n"] == 512 and row["has_targets"]
    for op in ("trace", "diag"):
        res = row["ops"][op]
        _assert_timing(res["timing"], "ours", ["product"])
        assert res["rel_err"]["ours"] < 1e-5 and res["rel_err"]["product"] < 1e-4
        assert row["figures"][f"{op}_speedup"] > 0


def test_targets_schema(result):
    targets = result[2]["targets"]
    assert len(targets) == 3 + 2 + 3 * len(suite.CHAINS) + 1 + 2
    for target in targets:
        assert set(target) == {"case", "what", "op", "threshold", "goal", "value", "display",
                               "met"}
        assert target["met"] in (True, False, None)
        assert (target["met"] is None) == (target["value"] is None)
    by_what = {(t["case"], t["what"]): t for t in targets}
    assert by_what[("inner", "bytes copied (explain)")]["met"] is True
    assert by_what[("strided", "bytes copied (explain): one copy of x")]["met"] is True
    for eq, _ in suite.CHAINS:
        assert by_what[(f"chain {eq}", "relative error of ours vs float64")]["met"] is True
    if PROC_MEMORY:
        assert all(t["value"] is not None for t in targets)


def test_report_and_charts(result):
    _, out, data = result
    text = (out / "results.md").read_text()
    assert text.startswith("# contract benchmark")
    for heading in ("## Targets", "## inner", "## strided", "## chains", "## overhead",
                    "## lazy reductions"):
        assert heading in text
    assert text.count("| chain ") == 3 * len(suite.CHAINS)
    assert "`ij,jk,kl,lm->im`" in text and "| `ij,jk->ik` | difflinalg.contract |" in text
    pytest.importorskip("matplotlib")
    charts = ["speedup.png"] + (["strided_memory.png"] if PROC_MEMORY else [])
    for name in charts:
        assert f"]({name})" in text
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scaled_keeps_every_index():
    assert suite.scaled((32, 8, 10), 1.0) == (32, 8, 10)
    assert suite.scaled((32, 8, 10), 0.125) == (4, 2, 2)


def test_saved_bytes_counts_unique_storages():
    a = torch.randn(8, 8, requires_grad=True)
    b = torch.randn(8, 8, requires_grad=True)
    assert suite.saved_bytes(lambda x, y: x * 2.0, a, b) == {"saved_bytes": 0,
                                                              "saved_extra_bytes": 0}
    assert suite.saved_bytes(lambda x, y: x @ y, a, b) == {"saved_bytes": 512,
                                                            "saved_extra_bytes": 0}
    assert suite.saved_bytes(lambda x, y: x.exp() @ y, a, b)["saved_extra_bytes"] == 256


@pytest.mark.parametrize("argv, message", [
    (["--cases", "inner,conv"], "expected cases among inner, strided, chain, overhead, lazy"),
    (["--rounds", "2"], "expected an odd number of rounds"),
    (["--scale", "0"], "expected a positive number"),
])
def test_bad_arguments_name_the_choices(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "contract", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_timeout_becomes_an_error_row(tmp_path):
    status = main(["bench", "contract", "--cases", "overhead", "--timeout", "0.001",
                   "--out", str(tmp_path)])
    data = json.loads((tmp_path / "results.json").read_text())
    (row,) = data["results"]
    assert status == 1 and row["error"].startswith("timeout")
    (target,) = data["targets"]
    assert target["value"] is None and target["met"] is None
    assert "error: timeout" in (tmp_path / "results.md").read_text()
