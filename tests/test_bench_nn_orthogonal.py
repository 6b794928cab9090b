"""The ``nn_orthogonal`` benchmark suite on tiny settings: report, schema, failures as rows."""

import json

import pytest

from difflinalg.bench.cli import main
from difflinalg.bench.suites import nn_orthogonal as suite


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-nn-orthogonal")
    status = main(["bench", "nn_orthogonal", "--configs", "48x8,16x16", "--min-run-time",
                   "0.02", "--threads", "1", "--out", str(out)])
    return status, out, json.loads((out / "results.json").read_text())


def test_every_method_is_run_and_reported(result):
    status, out, data = result
    assert status == 0
    meta, rows = data["metadata"], data["results"]
    assert meta["methods"][:2] == ["ours", "torch"]
    optional = "geotorch" in meta["methods"]
    assert optional == suite.available("geotorch")
    assert optional or meta["not_installed"] == ["geotorch"]
    assert [(row["d"], row["r"]) for row in rows] == [(48, 8), (16, 16)]
    for row in rows:
        d, r = row["d"], row["r"]
        ours, theirs = row["methods"]["ours"], row["methods"]["torch"]
        assert ours["weight_bytes"] == theirs["weight_bytes"] == d * r * 4
        # ours: the reflectors and r column signs; torch: also a d x d base
        assert ours["state_bytes"] == d * r * 4 + r * 4
        assert theirs["state_bytes"] >= d * r * 4 + d * d * 4
        for entry in row["methods"].values():
            assert entry["ortho_err"] < 1e-5 and entry["register_s"] > 0
            assert entry["step"]["median_s"] > 0 and entry["fwd"]["median_s"] > 0
        for method in meta["methods"][1:]:
            assert row["timing"]["step"][method]["ratio_to_reference"] > 0
            assert row["timing"]["fwd"][method]["ratio_to_reference"] > 0
    text = (out / "results.md").read_text()
    assert "# nn.orthogonal benchmark" in text and "step speed-up vs torch" in text
    assert "| 48 | 8 |" in text
    assert (out / "register_and_step.png").stat().st_size > 0


def test_a_method_that_runs_out_of_time_is_a_row_with_its_error(tmp_path):
    status = main(["bench", "nn_orthogonal", "--configs", "32x4", "--methods", "ours,torch",
                   "--timeout", "0.001", "--out", str(tmp_path)])
    assert status == 1  # ours failed
    row = json.loads((tmp_path / "results.json").read_text())["results"][0]
    assert set(row["methods"]) == {"ours", "torch"} and "timing" not in row
    assert all(e["error"].startswith("timeout") for e in row["methods"].values())
    text = (tmp_path / "results.md").read_text()
    assert "d=32 r=4 ours: timeout" in text and "| 32 | 4 | timeout / timeout |" in text


def test_bad_options(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["bench", "nn_orthogonal", "--configs", "8x16"])
    assert "expected DxR with D >= R" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["bench", "nn_orthogonal", "--methods", "ours,cayley", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "expected methods among ours, torch, geotorch, but got 'ours,cayley'" \
        in capsys.readouterr().err
