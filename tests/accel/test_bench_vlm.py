"""`accel bench` on a VLM: the rows, what each measures, and the same-budget FastV rows of --keep-sweep."""

from __future__ import annotations

import json

from accel.bench.vlm import fastv_at_budget
from accel.cli import main


def test_vlm_rows_with_a_keep_sweep(tmp_path, capsys):
    assert main(["bench", "--model", "llava", "--size", "tiny", "--repeat", "1", "--warmup", "0", "--keep-sweep",
                 "0.25", "--no-progress", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    rows = {r["label"]: r for r in result["rows"]}
    same = fastv_at_budget(rows["pyramid-drop@0.25"]["budget"], 4)
    assert same["layer"] == 1  # the budget (0.33 of the visual tokens per layer) is below K=2's least
    assert list(rows) == ["baseline", "none", "pyramid-drop", "fastv", "pyramid-drop@0.25",
                          f"fastv@{same['keep_ratio']:g} K=1 (same budget)"]
    assert rows["none"]["agreement"] == 1.0 and rows["none"]["kv_cache_mb"] == rows["baseline"]["kv_cache_mb"]
    pdrop, fastv = rows["pyramid-drop"], rows["fastv"]
    assert pdrop["stats"]["kept_visual"] == [18, 9, 4] and fastv["stats"]["kept_visual"] == [18]
    assert pdrop["kv_cache_mb"] < fastv["kv_cache_mb"] < rows["baseline"]["kv_cache_mb"]
    assert 0 < pdrop["stats"]["flops_ratio"] < 1 and abs(pdrop["budget"] - 0.46875) < 1e-9
    same_row = result["rows"][-1]
    assert abs(same_row["budget"] - rows["pyramid-drop@0.25"]["budget"]) < 0.01
    assert all(r["prefill_s"] and r["decode_tps"] > 0 for r in result["rows"])
    assert "| pyramid-drop |" in capsys.readouterr().out


def test_vlm_rows_take_options_in_their_tokens(tmp_path):
    assert main(["bench", "--model", "llava", "--size", "tiny", "--repeat", "1", "--warmup", "0", "--methods",
                 "pyramid-drop(stages=(0.5,)),fastv(layer=3,keep_ratio=0.25)", "--no-progress",
                 "--out", str(tmp_path)]) == 0
    rows = {r["label"]: r for r in json.loads((tmp_path / "results.json").read_text())["rows"]}
    assert rows["pyramid-drop(stages=(0.5,))"]["stats"]["kept_visual"] == [18]  # one boundary, keep 0.5 of 36
    assert rows["fastv(layer=3,keep_ratio=0.25)"]["stats"]["kept_visual"] == [9]
    assert main(["bench", "--model", "llava", "--size", "tiny", "--methods", "pyramid-drop+fastv"]) != 0


def test_a_method_that_does_not_act_on_vlms_is_refused_before_any_run(tmp_path, capsys):
    for method in ("pisa", "tdc"):
        assert main(["bench", "--model", "llava", "--size", "tiny", "--methods", f"none,{method}", "--no-progress",
                     "--out", str(tmp_path)]) == 2
        assert f"method '{method}'" in capsys.readouterr().err and not (tmp_path / "results.json").exists()


def test_digits_vqa_rows_with_other_weights_say_where_the_model_reads(tmp_path, capsys):
    """--weights swaps the checkpoint (here the committed one, by path); the table names it and the model's
    per-layer localisation (`digits_vqa.quadrant_attention`), and the accuracy column is the weights'."""
    from accel.zoo import digits_vqa

    path = str(digits_vqa.CHECKPOINT)
    assert main(["bench", "--model", "digits-vqa", "--weights", path, "--methods", "none", "--repeat", "1",
                 "--warmup", "0", "--accuracy-n", "8", "--no-progress", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    reads = [round(x, 2) for x in digits_vqa.quadrant_attention(digits_vqa.load())]
    assert result["model"]["weights"] == path and result["model"]["quadrant_attention"] == reads
    table = (tmp_path / "results.md").read_text()
    assert f"weights: `{path}`\n" in table and " ".join(f"{x:.2f}" for x in reads) in table
    assert result["rows"][0]["accuracy"] == digits_vqa.evaluate(digits_vqa.load(), n=8)["accuracy"]
    for argv in (["--model", "llava", "--size", "tiny", "--weights", path],
                 ["--model", "digits-vqa", "--weights", str(tmp_path / "missing.safetensors")]):
        assert main(["bench", *argv, "--no-progress", "--out", str(tmp_path)]) != 0
        assert "weights=" in capsys.readouterr().err
