"""The benchmark CLI on tiny sweeps: schema, ratios, report files, and failures as rows."""

import argparse
import json
import math
import os

import pytest
import torch

from difflinalg.bench import _report, _timing
from difflinalg.bench.cli import main
from difflinalg.bench.suites import householder, load_suites

TINY = ["--min-run-time", "0.01", "--threads", "1", "--timeout", "60"]
PROC_MEMORY = os.access("/proc/self/clear_refs", os.W_OK)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    status = main(["bench", "householder", "--batch", "1", "--d", "8,16", "--r", "4",
                   "--methods", "ours,torch", "--out", str(out), *TINY])
    return status, out, json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def failing(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-fail")
    status = main(["bench", "householder", "--configs", "1x16x4,1x4x8", "--methods",
                   "ours,torch", "--no-memory", "--out", str(out), *TINY])
    return status, json.loads((out / "results.json").read_text())


def test_sweep_exit_status_and_metadata(sweep):
    status, _, data = sweep
    assert status == 0
    meta = data["metadata"]
    for key in ("torch", "python", "threads", "blas", "cpu", "device", "git", "preset",
                "dtype", "date", "methods", "methods_unavailable"):
        assert key in meta
    assert meta["threads"] == 1
    assert meta["dtype"] == "float32"
    assert meta["methods"] == ["ours", "torch"]


def test_sweep_one_row_per_config(sweep):
    rows = sweep[2]["results"]
    assert [(r["b"], r["d"], r["r"]) for r in rows] == [(1, 8, 4), (1, 16, 4)]
    for row in rows:
        assert row["error"] is None
        assert set(row["methods"]) == {"ours", "torch"}


def test_sweep_ratios_positive_finite(sweep):
    for row in sweep[2]["results"]:
        for key in ("speedup_fwd_vs_torch", "speedup_fwd_bwd_vs_torch", "err_ratio_vs_torch",
                    "grad_err_ratio_vs_torch", "speedup_fwd_vs_best_fwd", "gemm_fraction"):
            assert math.isfinite(row[key]) and row[key] > 0, key
        assert row["best_fwd_method"] == "torch"


def test_sweep_timings_and_accuracy(sweep):
    for row in sweep[2]["results"]:
        for name, entry in row["methods"].items():
            for stage in ("fwd", "fwd_bwd"):
                timing = entry[stage]
                assert timing["median_s"] > 0 and timing["iqr_s"] >= 0, (name, stage)
                assert timing["blocks"] >= 1 and timing["calls_per_block"] >= 1
            assert entry["ortho_err"] < 1e-5
            assert entry["grad_err"] < 1e-4
            assert entry["skipped"] == {}
        assert row["methods"]["ours"]["grad_err_vs_torch64"] < 1e-4
        assert row["methods"]["torch"]["grad_err_vs_ours64"] < 1e-4
        assert row["methods"]["torch"]["cross"]["ours64_vs_torch64"] < 1e-10


@pytest.mark.skipif(not PROC_MEMORY, reason="needs a writable /proc/self/clear_refs")
def test_sweep_measures_memory(sweep):
    for row in sweep[2]["results"]:
        for entry in row["methods"].values():
            assert isinstance(entry["peak_extra_bytes"], int)
            assert entry["peak_extra_bytes"] >= 0
            assert entry["peak_extra_x_output"] >= 0
        ours = row["methods"]["ours"]
        # the identity Function's floor is measured for ours only
        assert isinstance(ours["peak_floor_bytes"], int) and ours["peak_floor_bytes"] >= 0
        assert ours["peak_floor_x_output"] == ours["peak_floor_bytes"] / (
            4 * row["b"] * row["d"] * row["r"])
        assert "peak_floor_bytes" not in row["methods"]["torch"]


def test_sweep_writes_report(sweep):
    _, out, _ = sweep
    md = (out / "results.md").read_text()
    assert md.startswith("# householder_product benchmark")
    assert "## b = 1" in md and "## Summary" in md
    assert "| 1 | 8 | 4" in md and "| 1 | 16 | 4" in md
    assert "peak mem ours / torch (floor)" in md


def test_sweep_writes_charts(sweep):
    pytest.importorskip("matplotlib")
    _, out, _ = sweep
    assert "![speedup_vs_torch](speedup_vs_torch.png)" in (out / "results.md").read_text()
    for name in ("speedup_vs_torch.png", "error_ratio_vs_torch.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "speedup_vs_matrix_exp.png").exists()


def test_failing_config_becomes_error_row(failing):
    status, data = failing
    assert status == 0
    good, bad = data["results"]
    assert (bad["d"], bad["r"]) == (4, 8)
    assert good["error"] is None and good["speedup_fwd_bwd_vs_torch"] > 0
    assert bad["error"].startswith("ours: ShapeError: householder_product: ")
    for entry in bad["methods"].values():
        assert entry["error"]
    assert bad["speedup_fwd_bwd_vs_torch"] is None


def test_timeout_keeps_partial_results_and_reports():
    runner = _timing.IsolatedRunner(preload=["torch", "difflinalg"])
    spec = {"b": 1, "d": 2048, "r": 2048, "method": "torch", "dtype": "float32",
            "threads": 1, "min_run_time": 0.01, "memory": False, "scale": 1.0, "seed": 0,
            "budget_s": 100.0}
    results, error = runner.run(householder._case_worker, spec, timeout=2.0)
    assert error == "timeout after 2 s in warm-up"
    assert results["stage"] == "warm-up"


def test_json_has_no_nan(tmp_path):
    path = tmp_path / "x.json"
    _report.write_json(path, {"a": float("nan"), "b": [1.0, float("inf")], "c": (2,)})
    assert json.loads(path.read_text()) == {"a": None, "b": [1.0, None], "c": [2]}


def test_exit_messages():
    assert _timing._exit_message(-9) == "worker killed by SIGKILL (out of memory?)"
    assert _timing._exit_message(3) == "worker exited with code 3 before reporting"


def test_list_and_help(capsys):
    assert main(["bench", "list"]) == 0
    assert capsys.readouterr().out.startswith("householder ")
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--help"])
    assert exc.value.code == 0
    assert "householder" in capsys.readouterr().out


def test_registered_suites_expose_the_interface():
    for name, module in load_suites().items():
        assert module.NAME == name
        assert callable(module.add_arguments) and callable(module.run)


@pytest.mark.parametrize("argv, message", [
    (["--methods", "ours,qr"], "expected methods among ours, torch, torch_householder"),
    (["--methods", "torch"], "the ratios need 'ours'"),
    (["--batch", "1,x"], "expected comma-separated integers"),
    (["--configs", "1x8"], "expected configurations like 1x1024x1024"),
    (["--timeout", "0"], "expected a positive number"),
])
def test_bad_arguments_name_the_choices(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "householder", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_sweep_keeps_d_at_least_r():
    parser = argparse.ArgumentParser()
    householder.add_arguments(parser)
    parsed = parser.parse_args(["--batch", "1", "--d", "16,64", "--r", "32,16"])
    assert householder._sweep(parsed, householder.PRESETS["quick"]) == [
        (1, 16, 16), (1, 64, 16), (1, 64, 32)]
    quick = householder._sweep(parser.parse_args([]), householder.PRESETS["quick"])
    for config in ((1, 1024, 1024), (1, 2048, 64), (1, 256, 32), (1, 256, 16)):
        assert config in quick
    assert any(b > 1 for b, _, _ in quick)


def test_heap_for_memory_makes_the_peak_follow_live_tensors():
    from difflinalg.bench._memory import PeakMemory, heap_for_memory, heap_for_timing

    if not heap_for_memory():
        pytest.skip("glibc mallopt not available")
    try:
        with PeakMemory() as mem:
            x = torch.ones(8 << 20, dtype=torch.uint8)
            del x
            y = torch.ones(4 << 20, dtype=torch.uint8)  # its own mapping, not x's pages
            del y
        if mem.peak_extra_bytes is None:
            pytest.skip(mem.reason)
        assert (7 << 20) <= mem.peak_extra_bytes <= (10 << 20)
    finally:
        assert heap_for_timing()


def test_measure_interleaved_ratio_of_twice_the_work():
    a = torch.randn(128, 128)
    res = _timing.measure_interleaved({"one": lambda: a @ a, "two": lambda: (a @ a, a @ a)},
                                      reference="one", min_run_time=0.2, num_threads=1)
    assert res["one"]["ratio_to_reference"] is None
    assert 1.3 < res["two"]["ratio_to_reference"] < 3.5
    assert res["two"]["median_s"] > 0 and res["two"]["rounds"] == 5


def test_sweep_ratios_come_from_the_paired_stage(sweep):
    for row in sweep[2]["results"]:
        paired = row["paired"]
        assert paired["stages"] == {"fwd": ["ours", "torch"], "fwd_bwd": ["ours", "torch"]}
        assert "error" not in paired
        for stage in ("fwd", "fwd_bwd"):
            assert paired[stage]["ours"]["ratio_to_reference"] is None
            ratio = paired[stage]["torch"]["ratio_to_reference"]
            assert math.isfinite(ratio) and ratio > 0
        assert row["speedup_fwd_bwd_vs_torch_paired"] is True
        assert row["speedup_fwd_bwd_vs_torch"] == paired["fwd_bwd"]["torch"]["ratio_to_reference"]


def test_memory_floor_failure_is_a_reason_not_a_crash():
    param = torch.randn(2, 3, requires_grad=True)
    out = householder._memory_floor(param, torch.randn(4, 5))  # cannot broadcast
    assert out["peak_floor_bytes"] is None
    assert out["peak_floor_reason"].startswith("RuntimeError: ")
    if PROC_MEMORY:
        ok = householder._memory_floor(param, torch.randn(2, 3))
        assert isinstance(ok["peak_floor_bytes"], int) and "peak_floor_reason" not in ok
