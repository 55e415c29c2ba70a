"""`accel bench-attn` end to end on a tiny size (FlexAttention left out: compiling it takes a while)."""

from __future__ import annotations

import json
import re

import pytest

from accel.cli import main


def test_bench_attn_writes_table_and_json(tmp_path, capsys):
    argv = ["bench-attn", "--seq-lens", "200", "--head-dims", "32", "--densities", "0.25,1", "--repeat", "2",
            "--warmup", "0", "--backends", "", "--out", str(tmp_path)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "Command: `accel bench-attn --seq-lens 200" in text and "device: cpu" in text
    data = json.loads((tmp_path / "bench-attn.json").read_text())
    names = [(r["density"], r["name"]) for r in data["rows"]]
    assert names == [
        (None, "dense sdpa"),
        (0.25, "accel cpu-kernel (default)"), (0.25, "accel torch"), (0.25, "pisa hybrid"),
        (1.0, "accel cpu-kernel (default)"), (1.0, "accel torch"), (1.0, "pisa hybrid"),
    ]
    for row in data["rows"]:
        assert len(row["times_s"]) == 2 and row["median_s"] > 0
        assert bool(row["note"]) == row["name"].startswith("pisa"), row
    gather = [r for r in data["rows"] if r["name"] == "accel torch"]
    assert all(r["max_diff"] < 1e-5 for r in gather)
    # PISA rows: error vs dense next to the block-sparse one; at density 1 both are exact
    pisa_dense = next(r for r in data["rows"] if r["name"] == "pisa hybrid" and r["density"] == 1.0)
    errors = [float(x) for x in re.findall(r"\d\.\de[+-]\d+", pisa_dense["note"])]
    assert pisa_dense["note"].startswith("rel. L2 err vs dense: ") and len(errors) == 2
    assert max(errors) < 1e-5, pisa_dense["note"]
    assert data["cpu_kernel"]["path"].endswith(".so")
    assert (tmp_path / "bench-attn.md").read_text() in text


def test_bench_attn_rejects_unknown_pisa_order(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench-attn", "--seq-lens", "64", "--pisa", "first", "--backends", "", "--out", str(tmp_path)])
    assert exit_.value.code == 2 and "argument --pisa: first: expected some of" in capsys.readouterr().err
