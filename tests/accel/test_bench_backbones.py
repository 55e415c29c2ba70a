"""`accel bench-backbones`: the trained DiT, DiCo and LEGO (and lego-skip) side by side, each row with its
reachable parameters, timed sampling and the judge's accuracy; a bad lego-skip fraction refused first."""

from __future__ import annotations

import json

import pytest
import torch

from accel.cli import main
from accel.zoo import digits_backbones


def test_rows_and_columns(tmp_path, capsys):
    if not all(digits_backbones.checkpoint(kind).is_file() for kind in digits_backbones.KINDS):
        pytest.skip("checkpoint not trained yet (python -m accel.zoo.train digits-dico|digits-lego|digits-dit|...)")
    assert main(["bench-backbones", "--batch", "2", "--repeat", "1", "--accuracy-n", "10",
                 "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    rows = {r["label"]: r for r in result["rows"]}
    assert list(rows) == ["digits-dit", "digits-dit-p2", "digits-dico", "digits-lego", "digits-lego+lego-skip"]
    assert rows["digits-lego+lego-skip"]["method"] == "lego-skip"
    assert rows["digits-lego+lego-skip"]["parameters"] == rows["digits-lego"]["parameters"]
    assert all(r["median_s"] > 0 and 0 <= r["accuracy"] <= 1 for r in rows.values())
    out = capsys.readouterr().out
    assert "| digits-dico |" in out and "| speed vs DiT | speed vs DiT-p2 |" in out
    dit, dit_p2 = rows["digits-dit"]["median_s"], rows["digits-dit-p2"]["median_s"]
    assert f"| {dit / dit_p2:.2f}x | 1.00x |" in out  # the patch-2 DiT's row, against each DiT
    assert result["command"] == "accel bench-backbones --batch 2 --repeat 1 --accuracy-n 10 --out " + str(tmp_path)
    assert result["verdict"]["runs"] == 5 and len(rows["digits-dico"]["other_cpu"]) == 1
    assert "one batch of 2 images" in out
    assert ("Timings: reliable" if result["verdict"]["reliable"] else "**UNRELIABLE TIMINGS**") in out


def test_the_seed_study_trains_each_backbone_once_per_seed(tmp_path, capsys):
    assert main(["bench-backbones", "--train-seeds", "0,3", "--train-steps", "2", "--train-lr", "dico=2e-3",
                 "--accuracy-n", "4", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert [(r["kind"], r["seed"], r["steps"], r["lr"]) for r in result["runs"]] == [
        ("dit", 0, 2, 1e-3), ("dico", 0, 2, 2e-3), ("dit", 3, 2, 1e-3), ("dico", 3, 2, 2e-3)]  # seeds in turn
    assert all(0 <= r["other_cpu"] <= 1 for r in result["runs"])
    table = (tmp_path / "results.md").read_text()
    for kind in ("dit", "dico"):
        accs = [100 * r["accuracy"] for r in result["runs"] if r["kind"] == kind]
        rate = "0.002" if kind == "dico" else "0.001"  # dico's own rate; the DiT keeps the recipe's
        macs = f"{digits_backbones.forward_macs(kind) / 1e6:.1f}"
        assert f"| digits-{kind} | {rate} | 2 | {macs} | {accs[0]:.1f} | {accs[1]:.1f} | {sum(accs) / 2:.2f} |" in table
    assert "digits-dico minus digits-dit:" in table and "seed 3 %" in table
    assert "The judge itself on the 359 real held-out digits: 98.3%" in table  # the committed judge on real digits


def test_an_equal_compute_budget_gives_each_backbone_the_reference_forward_macs(tmp_path):
    assert main(["bench-backbones", "--train-seeds", "1", "--train-steps", "3", "--train-budget", "compute",
                 "--accuracy-n", "2", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    steps = {r["kind"]: r["steps"] for r in result["runs"]}
    macs = {r["kind"]: r["macs"] for r in result["runs"]}
    assert steps["dit"] == 3 and steps["dico"] == round(3 * macs["dit"] / macs["dico"]) > 3  # DiCo is cheaper
    assert abs(steps["dico"] * macs["dico"] - 3 * macs["dit"]) <= macs["dico"] / 2  # equal to within half a step
    assert result["budget"] == "compute" and "at equal training compute (digits-dit 3 steps" in \
        (tmp_path / "results.md").read_text()


def test_an_equal_time_budget_trains_each_backbone_as_long_as_the_reference_on_its_seed(tmp_path):
    assert main(["bench-backbones", "--train-seeds", "0,1", "--train-steps", "4", "--train-budget", "time",
                 "--accuracy-n", "2", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    runs = {(r["kind"], r["seed"]): r for r in result["runs"]}
    for seed in (0, 1):
        dit, dico = runs["dit", seed], runs["dico", seed]
        assert dit["steps"] == 4 and not dit["capped"] and not dico["capped"]
        # DiCo stops at the first step past the DiT's seconds: it took at least as long, and a DiCo step is
        # cheaper than a DiT step, so it took more steps (a run that ignored the cap would never end)
        assert dico["train_s"] >= dit["train_s"] and dico["steps"] > 4
        assert dico["train_s"] - dit["train_s"] < dit["train_s"]  # ended near the cap, not at a later check
    table = (tmp_path / "results.md").read_text()
    assert result["budget"] == "time" and "at equal training time (digits-dit 4 steps" in table
    assert "Other processes used" in table


def test_budget_steps():
    from accel.bench.backbones import UNBOUNDED_STEPS, budget_steps

    macs = {"dico": 30, "dit": 120, "lego": 100}
    assert budget_steps(1200, macs) == {"dico": 1200, "dit": 1200, "lego": 1200}
    assert budget_steps(1200, macs, "compute") == {"dico": 1200, "dit": 300, "lego": 360}  # the first is the reference
    assert budget_steps(2, {"dit": 120, "dico": 30}, "compute") == {"dit": 2, "dico": 8}
    assert budget_steps(1, {"dico": 30, "dit": 120}, "compute")["dit"] == 1  # never below one step
    assert budget_steps(300, {"dit": 120, "dico": 30}, "time") == {"dit": 300, "dico": UNBOUNDED_STEPS}
    with pytest.raises(ValueError, match="budget='flops'; expected one of steps, compute, time"):
        budget_steps(10, macs, "flops")


def test_forward_macs_counts_the_entries_forward_and_keeps_the_rng():
    state = torch.random.get_rng_state()
    macs = {kind: digits_backbones.forward_macs(kind) for kind in digits_backbones.KINDS}
    assert torch.equal(torch.random.get_rng_state(), state)
    # FlopCounterMode on the entries' configs, attention included (without it the DiT's would be 113.9 M):
    # DiT 4 layers of width 96 over 256 tokens (patch 2: 64 tokens), DiCo's U-net at width 24
    assert round(macs["dit"] / 1e5) == 1642 and round(macs["dico"] / 1e5) == 296 and round(macs["lego"] / 1e5) == 1367
    assert round(macs["dit-p2"] / 1e5) == 321
    assert macs == {kind: digits_backbones.forward_macs(kind) for kind in digits_backbones.KINDS}


def test_a_bad_budget_is_refused_by_name(capsys):
    with pytest.raises(SystemExit):
        main(["bench-backbones", "--train-seeds", "0", "--train-budget", "flops"])
    assert "--train-budget: invalid choice: 'flops'" in capsys.readouterr().err


@pytest.mark.parametrize("option, value", [("--train-seeds", "1,1"), ("--train-seeds", "-1"), ("--train-seeds", "a,b"),
                                           ("--train-seeds", ""), ("--train-seeds", "9223372036854775808"),
                                           ("--train-kinds", "dico,dico"),
                                           ("--train-kinds", "unet"), ("--train-lr", "0"), ("--train-lr", "fast"),
                                           ("--train-lr", "unet=1e-3"), ("--train-lr", "dit=2"),
                                           ("--train-lr", "dit=1e-3,dit =5e-3")])
def test_bad_training_options_are_refused_by_name(option, value, capsys):
    with pytest.raises(SystemExit):
        main(["bench-backbones", "--train-seeds", "0", option, value])
    assert f"argument {option}: invalid value {value!r}: expected" in capsys.readouterr().err


@pytest.mark.parametrize("argv, says", [
    (["--train-kinds", "dico"], "--train-kinds has no effect with the digits rows (the default study: the committed "
     "checkpoints timed and judged): --train-kinds acts only with --train-seeds"),
    (["--train-lr", "1e-3"], "--train-lr has no effect with the digits rows"),
    (["--train-budget", "compute"], "--train-budget has no effect with the digits rows"),
    (["--train-seeds", "0", "--train-lr", "lego=1e-3"], "gives a rate for lego"),
    (["--train-seeds", "0", "--train-kinds", "dico", "--train-lr", "dit=1e-3"], "gives a rate for dit"),
    (["--train-seeds", "0", "--batch", "7", "--repeat", "9"], "--batch, --repeat have no effect with --train-seeds "
     "(the training runs): --batch acts only with the digits rows or --sizes; --repeat acts only with"),
    (["--train-seeds", "0", "--fraction", "0.5"], "--fraction has no effect with --train-seeds"),
    (["--accuracy-n", "1"], "--accuracy-n=1: the digits rows need at least 2 judged samples"),
    (["--train-seeds", "0", "--batch", "20"], "--batch has no effect with --train-seeds"),  # given, even at its default
    (["--sizes", "S", "--fraction", "0.4"], "--fraction has no effect with --sizes"),
    (["--publish-unreliable"], "--publish-unreliable acts only with --doc"),
    (["--train-seeds", "0", "--publish-unreliable", "--doc", "d.md"], "--publish-unreliable has no effect with --train-seeds"),
    (["--fraction", "1.5"], "bench-backbones: --fraction=1.5: option fraction=1.5 is out of range"),
    (["--train-seeds", "0", "--train-budget", "compute", "--train-kinds", "dico"], "trains only one"),
])
def test_options_that_would_be_ignored_are_refused(argv, says, capsys):
    assert main(["bench-backbones", *argv]) != 0
    assert says in capsys.readouterr().err


def test_sizes_time_the_papers_equal_size_pairs(tmp_path, capsys):
    """DiCo-S beside diffusers' DiT at DiT-S/2 (256 px): the published DiCo count, the DiT paper's 6.06 GFLOPs
    (multiply-accumulates) and DiCo-S's 4.25 (4.24 here), one row each with DiCo's speed against the DiT."""
    assert main(["bench-backbones", "--sizes", "S", "--batch", "1", "--repeat", "1", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    rows = {r["backbone"]: r for r in result["rows"]}
    assert list(rows) == ["DiT-S/2", "DiCo-S"]
    assert rows["DiCo-S"]["parameters"] == 33_137_672
    assert abs(rows["DiT-S/2"]["macs"] / 6.06e9 - 1) < 0.01 and abs(rows["DiCo-S"]["macs"] / 4.25e9 - 1) < 0.01
    ratio = rows["DiT-S/2"]["median_s"] / rows["DiCo-S"]["median_s"]
    assert "| S | DiCo-S | 33,137,672 | 4.24 |" in capsys.readouterr().out
    assert f"| {ratio:.2f}x |\n" in (tmp_path / "results.md").read_text()  # the DiCo-S row's last cell


@pytest.mark.parametrize("value", ["M", "S,S", "", "s"])
def test_a_bad_size_is_refused_by_name(value, capsys):
    with pytest.raises(SystemExit):
        main(["bench-backbones", "--sizes", value])
    assert f"argument --sizes: invalid value {value!r}: expected distinct sizes of S, B, L, XL" in capsys.readouterr().err


@pytest.mark.parametrize("argv, says", [
    (["--sizes", "S", "--train-seeds", "0"], "--sizes and --train-seeds are two different studies"),
    (["--sizes", "S", "--accuracy-n", "5"], "--accuracy-n has no effect with --sizes"),
    (["--sizes", "S", "--fraction", "0.3"], "--fraction has no effect with --sizes"),
    (["--sizes", "S", "--fraction", "2"], "--fraction has no effect with --sizes"),  # not lego-skip's range
    (["--sizes", "S", "--train-kinds", "dico"], "--train-kinds has no effect with --sizes"),
])
def test_bad_sizes_options_are_refused_by_name(argv, says, capsys):
    assert main(["bench-backbones", *argv]) != 0
    assert says in capsys.readouterr().err


@pytest.mark.parametrize("key", ["a --> b", "one\ntwo", "cr\r", "a --!> b"])
def test_update_doc_refuses_a_key_its_markers_cannot_hold(key, tmp_path):
    from accel.bench.report import update_doc

    doc = tmp_path / "doc.md"
    with pytest.raises(ValueError, match="holds a line break, '-->' or '--!>'"):
        update_doc(doc, key, "body")
    assert not doc.exists()
