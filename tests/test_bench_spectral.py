"""The ``spectral`` benchmark suite on tiny sweeps: schema, ratios (from the paired stage),
accuracy table, report files, and failures as rows."""

import argparse
import copy
import importlib.util
import json
import math
import os

import pytest
import torch

import difflinalg
from difflinalg.bench import _timing
from difflinalg.bench.cli import main
from difflinalg.bench.suites import _spectral_report, spectral

TINY = ["--min-run-time", "0.01", "--threads", "1", "--paired-rounds", "3"]
PROC_MEMORY = os.access("/proc/self/clear_refs", os.W_OK)
HAS_SCIPY = importlib.util.find_spec("scipy") is not None
CONFIGS = [(2, 8), (2, 16)]
TASKS = ("eigh", "eigh_topk", "sqrtm")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-spectral")
    status = main(["bench", "spectral", "--batch", "2", "--n", "8,16", "--timeout", "60",
                   "--out", str(out), *TINY])
    return status, out, json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def failing(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-spectral-fail")
    status = main(["bench", "spectral", "--configs", "2x8", "--timeout", "0.001",
                   "--no-accuracy", "--no-memory", "--out", str(out), *TINY])
    return status, out, json.loads((out / "results.json").read_text())


def test_sweep_exit_status_and_metadata(sweep):
    status, _, data = sweep
    assert status == 0
    meta = data["metadata"]
    for key in ("torch", "python", "threads", "blas", "cpu", "device", "git", "preset",
                "dtype", "date", "tasks", "methods", "ns_iters", "mask_atol",
                "reference_methods", "paired_rounds"):
        assert key in meta, key
    assert meta["suite"] == "spectral"
    assert meta["threads"] == 1 and meta["dtype"] == "float32"
    assert meta["methods"] == {task: list(spectral.TASKS[task]) for task in TASKS}
    assert meta["reference_methods"] == spectral.OURS


def test_sweep_one_row_per_configuration_and_task(sweep):
    rows = sweep[2]["results"]
    assert [(r["b"], r["n"], r["task"]) for r in rows] == [
        (b, n, task) for b, n in CONFIGS for task in TASKS]
    for row in rows:
        assert row["error"] is None
        assert list(row["methods"]) == list(spectral.TASKS[row["task"]])
        if row["task"] == "eigh_topk":
            assert row["k"] == max(1, row["n"] // 8)


def test_sweep_timings_positive_and_ratios_finite(sweep):
    for row in sweep[2]["results"]:
        for name, entry in row["methods"].items():
            for stage in ("fwd", "fwd_bwd", "bwd"):
                assert entry[stage]["median_s"] > 0, (row["task"], name, stage)
            assert entry["bwd_source"] == "retained graph"
            assert entry["skipped"] == {}
            for stage in ("fwd", "fwd_bwd"):
                assert entry[stage]["blocks"] >= 1 and entry[stage]["iqr_s"] >= 0
        ours = spectral.OURS[row["task"]]
        for name in row["methods"]:
            if name == ours:
                continue
            for stage in ("fwd", "bwd", "fwd_bwd"):
                ratio = row[f"speedup_{stage}_vs_{name}"]
                assert math.isfinite(ratio) and ratio > 0, (row["task"], name, stage)
                separate = row["separate_process_speedups"][f"{stage}_vs_{name}"]
                assert math.isfinite(separate) and separate > 0, (row["task"], name, stage)


def test_sweep_paired_stage_gives_every_ratio(sweep):
    for row in sweep[2]["results"]:
        task, paired = row["task"], row["paired"]
        ours = spectral.OURS[task]
        assert "error" not in paired and "not_run" not in paired, paired
        assert paired["reference"] == ours and paired["methods"] == list(spectral.TASKS[task])
        assert paired["left_out"] == {} and paired["bwd_left_out"] == {}
        assert paired["skipped"] == {} and paired["rounds"] == 3
        for stage in ("fwd", "fwd_bwd", "bwd"):
            assert set(paired[stage]) == set(spectral.TASKS[task]), (task, stage)
            assert paired[stage][ours]["ratio_to_reference"] is None
            assert paired[stage][ours]["median_s"] > 0
            for name in spectral.TASKS[task]:
                if name == ours:
                    continue
                timing = paired[stage][name]
                ratio = timing["ratio_to_reference"]
                assert math.isfinite(ratio) and ratio > 0, (task, name, stage)
                assert timing["ratio_iqr"] >= 0 and timing["rounds"] == 3
                assert row[f"speedup_{stage}_vs_{name}"] == ratio
                assert row[f"speedup_{stage}_vs_{name}_paired"] is True


def test_sweep_sqrtm_gradients_match_float64(sweep):
    for row in sweep[2]["results"]:
        if row["task"] != "sqrtm":
            continue
        methods = row["methods"]
        assert methods["ours"]["grad_err"] < 1e-4
        assert methods["ours"]["out_err"] < 1e-5
        for entry in methods.values():
            assert math.isfinite(entry["grad_err"])


@pytest.mark.skipif(not PROC_MEMORY, reason="needs a writable /proc/self/clear_refs")
def test_sweep_measures_memory(sweep):
    for row in sweep[2]["results"]:
        for entry in row["methods"].values():
            assert isinstance(entry["peak_extra_bytes"], int) and entry["peak_extra_bytes"] >= 0
            assert entry["peak_extra_x_input"] >= 0


def test_sweep_targets_listed(sweep):
    targets = sweep[2]["targets"]
    assert [t["want"] for t in targets] == [1.0, 2.0, 1.0, 3.0]
    eigh_backward = targets[2]
    assert [(m["b"], m["n"]) for m in eigh_backward["measured"]] == CONFIGS
    rows = [r for r in sweep[2]["results"] if r["task"] == "eigh"]
    for measured, row in zip(eigh_backward["measured"], rows):
        paired = row["paired"]["bwd"]["torch"]
        assert measured["paired"] is True
        assert measured["ratio"] == paired["ratio_to_reference"] > 0
        assert measured["ratio_iqr"] == paired["ratio_iqr"]
    assert targets[0]["measured"] == [] and targets[3]["measured"] == []  # not in the sweep


@pytest.mark.skipif(not HAS_SCIPY, reason="the accuracy part needs scipy")
def test_accuracy_table(sweep):
    accuracy = sweep[2]["accuracy"]
    assert accuracy["n"] == 8
    assert accuracy["methods"] == ["ours", "torch_eigh", "masked", "newton_schulz"]
    rows = {(r["spectrum"], r["dtype"]): r for r in accuracy["rows"]}
    spectra = ["identity", "2I", "doubled", "tripled", "gap 1e-1", "gap 1e-3", "gap 1e-5",
               "gap 1e-7", "gap 0", "cond 1e1", "cond 1e3", "cond 1e6"]
    assert set(rows) == {(s, d) for s in spectra for d in ("float32", "float64")}
    for (spectrum, dtype), row in rows.items():
        assert row["errors"] == {}
        assert row["oracle_vs_loewner64"] < 1e-9
        if spectrum == "cond 1e6":  # ill-conditioned: float32 rounding of A dominates
            continue
        bound = 1e-4 if dtype == "float32" else 1e-10
        assert row["grad_err"]["ours"] < bound, (spectrum, dtype)
    for dtype in ("float32", "float64"):
        assert rows[("identity", dtype)]["grad_err"]["torch_eigh"] == "NaN"
        assert rows[("2I", dtype)]["grad_err"]["torch_eigh"] == "NaN"
        masked = rows[("identity", dtype)]["grad_err"]["masked"]
        assert isinstance(masked, float) and masked > 0.1  # finite, but wrong


def test_sweep_writes_report(sweep):
    _, out, _ = sweep
    md = (out / "results.md").read_text()
    assert md.startswith("# spectral benchmark")
    for heading in ("## Targets", "## eigh\n", "## eigh_topk", "## sqrtm", "## Summary"):
        assert heading in md, heading
    assert "| 2 | 8" in md and "| 2 | 16" in md
    assert "comes from the paired stage" in md
    assert _spectral_report.DAGGER not in md  # every ratio is paired
    if HAS_SCIPY:
        assert "## Gradient accuracy on hard spectra (n = 8)" in md
        assert "| identity |" in md and "NaN" in md


def test_sweep_writes_charts(sweep):
    pytest.importorskip("matplotlib")
    _, out, _ = sweep
    md = (out / "results.md").read_text()
    names = [f"times_{task}.png" for task in TASKS] + (["grad_error.png"] if HAS_SCIPY else [])
    for name in names:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"]({name})" in md


def test_failing_configuration_becomes_error_rows(failing):
    status, out, data = failing
    assert status == 0
    rows = data["results"]
    assert [r["task"] for r in rows] == list(TASKS)
    for row in rows:
        assert row["error"].startswith(f"{spectral.OURS[row['task']]}: timeout after 0.001 s")
        for entry in row["methods"].values():
            assert entry["error"].startswith("timeout")
        assert row["paired"]["not_run"].startswith(f"{spectral.OURS[row['task']]}: no forward")
        speedups = {k: v for k, v in row.items() if k.startswith("speedup_")}
        assert all(v is None for k, v in speedups.items() if not k.endswith("_paired"))
        assert not any(v for k, v in speedups.items() if k.endswith("_paired"))
    assert data["accuracy"] is None
    md = (out / "results.md").read_text()
    assert "## Failures, skipped cases and skipped stages" in md
    assert "timeout" in md


def _timings(fwd, bwd, fwd_bwd):
    return {"fwd": {"median_s": fwd}, "bwd": {"median_s": bwd}, "fwd_bwd": {"median_s": fwd_bwd}}


def _sqrtm_row(slow_s):
    """A synthetic sqrtm row at the target configuration; newton_schulz takes ``slow_s``."""
    return {"b": 128, "n": 64, "task": "sqrtm", "dtype": "float32", "methods": {
        "ours": _timings(1e-3, 2e-3, 3e-3), "torch_eigh": _timings(1e-3, 3e-3, 4e-3),
        "newton_schulz": _timings(slow_s, slow_s, 2 * slow_s)}}


def test_paired_plan_leaves_out_what_does_not_fit():
    plan = spectral._paired_plan(_sqrtm_row(1e-3), budget_s=100.0, min_run_time=0.2, rounds=5)
    assert plan["methods"] == ["ours", "torch_eigh", "newton_schulz"] and plan["left_out"] == {}
    assert "not_run" not in plan
    plan = spectral._paired_plan(_sqrtm_row(25.0), budget_s=100.0, min_run_time=0.2, rounds=5)
    assert plan["methods"] == ["ours", "torch_eigh"] and "not_run" not in plan
    assert plan["left_out"]["newton_schulz"].startswith("one forward+backward call takes 50 s")
    assert set(plan["own_process_seconds"]) == {"ours", "torch_eigh"}
    row = _sqrtm_row(1e-3)
    row["methods"]["ours"] = _timings(25.0, 25.0, 50.0)
    plan = spectral._paired_plan(row, budget_s=100.0, min_run_time=0.2, rounds=5)
    assert plan["not_run"].startswith("ours alone would need about")
    row["methods"]["ours"] = {"error": "timeout after 1 s"}
    plan = spectral._paired_plan(row, budget_s=100.0, min_run_time=0.2, rounds=5)
    assert plan["not_run"] == "ours: no forward+backward time from its own process"


def test_ratios_fall_back_per_cell_and_are_marked(sweep, tmp_path):
    row = _sqrtm_row(25.0)
    plan = spectral._paired_plan(row, budget_s=100.0, min_run_time=0.2, rounds=5)
    same = {"ours": {"median_s": 1e-3, "ratio_to_reference": None, "ratio_iqr": None},
            "torch_eigh": {"median_s": 1.2e-3, "ratio_to_reference": 1.2, "ratio_iqr": 0.1}}
    row["paired"] = {**plan, "fwd": same, "fwd_bwd": same, "skipped": {"bwd": "no time left"}}
    spectral._derive(row, 4)
    assert row["speedup_fwd_bwd_vs_torch_eigh"] == 1.2
    assert row["speedup_fwd_bwd_vs_torch_eigh_paired"] is True
    assert row["speedup_bwd_vs_torch_eigh"] == pytest.approx(1.5)  # 3 ms / 2 ms, separate
    assert row["speedup_bwd_vs_torch_eigh_paired"] is False
    assert row["speedup_fwd_bwd_vs_newton_schulz"] == pytest.approx(50.0 / 3e-3)
    assert row["speedup_fwd_bwd_vs_newton_schulz_paired"] is False
    targets = spectral._targets([row])
    assert targets[0]["measured"] == [
        {"b": 128, "n": 64, "ratio": 1.2, "paired": True, "ratio_iqr": 0.1}]
    assert targets[1]["measured"][0]["paired"] is False
    path = tmp_path / "results.md"
    _spectral_report.write_markdown(path, sweep[2]["metadata"], [row], targets, None, [])
    md = path.read_text()
    dagger = _spectral_report.DAGGER
    assert "ours vs torch_eigh (b=128 n=64; target >= 1x): b=128 n=64: 1.2x (IQR 0.1)" in md
    assert f"ours vs newton_schulz (b=128 n=64; target >= 2x): b=128 n=64: 16667x{dagger}" \
        in md
    assert f"| 1.2x / 1.5x{dagger} / 1.2x |" in md  # vs torch_eigh fwd / bwd / f+b
    assert f"{dagger} marks a ratio of two separate processes" in md
    assert f"| sqrtm: vs torch_eigh, backward | 1 (1{dagger}) |" in md
    assert "- b=128 n=64 sqrtm paired stage: newton_schulz left out (one forward+backward " \
        "call takes 50 s" in md
    assert "bwd not timed (no time left)" in md


def test_failing_paired_stage_falls_back_to_separate_processes(sweep):
    row = copy.deepcopy(next(r for r in sweep[2]["results"] if r["task"] == "eigh"))
    runner = _timing.IsolatedRunner(preload=["torch", "difflinalg"])
    args = argparse.Namespace(dtype="float16", threads=1, seed=0, ns_iters=10,  # no Half eigh
                              paired_rounds=3)
    row["paired"] = spectral._run_paired(runner, row, args, 0.01, 60.0)
    assert "float16" in row["paired"]["error"]
    assert "fwd" not in row["paired"]
    spectral._derive(row, 4)
    for stage in ("fwd", "bwd", "fwd_bwd"):
        for name in ("torch", "masked"):
            key = f"{stage}_vs_{name}"
            assert row[f"speedup_{key}"] == row["separate_process_speedups"][key] > 0
            assert row[f"speedup_{key}_paired"] is False
    assert spectral._targets([row])[2]["measured"][0]["paired"] is False


def test_worker_error_is_a_message_not_a_crash():
    runner = _timing.IsolatedRunner(preload=["torch", "difflinalg"])
    spec = {"b": 1, "n": 4, "task": "sqrtm", "method": "cholesky", "dtype": "float32",
            "threads": 1, "min_run_time": 0.01, "memory": False, "seed": 0, "ns_iters": 10,
            "budget_s": 30.0}
    results, error = runner.run(spectral._case_worker, spec, timeout=60.0)
    assert error.startswith("ValueError: spectral bench: unknown method 'cholesky'")
    assert results == {}


def test_masked_backward_matches_torch_at_distinct_eigenvalues():
    A = torch.randn(3, 6, 6, dtype=torch.float64)
    A = (A + A.mT) / 2
    G, g = torch.randn(3, 6, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    grads = []
    for fn in (torch.linalg.eigh, spectral._MaskedEighBackward.apply):
        x = A.clone().requires_grad_()
        lam, v = fn(x)
        (grad,) = torch.autograd.grad((v * G).sum() + (lam * g).sum(), x)
        grads.append(grad)
    torch.testing.assert_close(grads[1], (grads[0] + grads[0].mT) / 2)


def test_newton_schulz_converges_on_a_well_conditioned_matrix():
    X = torch.randn(2, 5, 10, dtype=torch.float64)
    A = X @ X.mT / 10 + torch.eye(5, dtype=torch.float64)
    torch.testing.assert_close(spectral.newton_schulz_sqrtm(A, 20), difflinalg.sqrtm_psd(A))


def test_listed_with_the_other_suites(capsys):
    assert main(["bench", "list"]) == 0
    assert "\nspectral " in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--tasks", "eigh,svd"], "expected tasks among eigh, eigh_topk, sqrtm"),
    (["--configs", "1x2x3"], "expected configurations like 128x64,1x512"),
    (["--n", "0"], "expected positive integers"),
    (["--accuracy-n", "2"], "expected an integer >= 4"),
    (["--paired-rounds", "2"], "expected an integer >= 3"),
])
def test_bad_arguments_name_the_choices(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "spectral", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_sweep_options():
    parser = argparse.ArgumentParser()
    spectral.add_arguments(parser)
    quick = spectral.PRESETS["quick"]
    assert spectral._sweep(parser.parse_args([]), quick) == [(32, 32), (128, 64), (8, 256),
                                                             (1, 512)]
    assert spectral._sweep(parser.parse_args(["--batch", "1,4", "--n", "16"]), quick) == [
        (1, 16), (4, 16)]
    assert spectral._sweep(parser.parse_args(["--configs", "4x8,1x8,4x8"]), quick) == [
        (4, 8), (1, 8)]
    full = spectral._sweep(parser.parse_args(["--preset", "full"]), spectral.PRESETS["full"])
    assert set(quick.configs) < set(full) and (1, 2048) in full
