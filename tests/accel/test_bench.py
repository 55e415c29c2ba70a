"""`accel bench` end to end on a tiny model: rows, metrics, files and the JSON schema."""

from __future__ import annotations

import csv
import json

import pytest

import accel
from accel.bench import BenchSpec, markdown, run, write_all
from accel.cli import main


@pytest.fixture(scope="module")
def result():
    spec = BenchSpec(
        model="wan",
        size="tiny",
        steps=6,
        repeat=2,
        seeds=(0, 1),
        peers=("fewer-steps", "fbc", "pab"),
        methods=("none", "delta-dit"),
        backends=("sdpa", "xformers"),
        fewer_steps=(3,),
        height=32,
        width=32,
        frames=5,
        progress=False,
        settle_s=0.0,  # exactly `repeat` rounds
    )
    return run(spec)


def test_rows_cover_baseline_none_peers_and_fewer_steps(result):
    labels = [r.label for r in result.rows]
    assert labels[:2] == ["baseline", "none"]
    assert {"diffusers:fbc", "diffusers:pab", "backend:sdpa", "backend:xformers"} <= set(labels)
    assert "fewer-steps(3)" in labels
    rows = {r.label: r for r in result.rows}
    assert rows["backend:xformers"].status.startswith("skipped") or rows["backend:xformers"].status == "ok"


def test_exact_rows_are_identical_and_timed(result):
    rows = {r.label: r for r in result.rows}
    for label in ("baseline", "none", "backend:sdpa"):
        r = rows[label]
        assert r.status == "ok"
        assert (
            r.fidelity["identical"]
            and r.fidelity["psnr"] is None
            and r.fidelity["ssim"] == pytest.approx(1.0)
        )
        assert r.latency_s["n"] == 4  # 2 repeats x 2 seeds
        assert r.latency_s["min"] <= r.latency_s["median"] <= r.latency_s["max"]
        assert r.attention_s is not None and 0 < r.attention_share < 1
    assert rows["baseline"].speedup == pytest.approx(1.0)
    assert rows["none"].stats["steps"]["calls_by_branch"] == {"cond": 6, "uncond": 6}


def test_fewer_steps_row_is_inexact_and_runs_fewer_steps(result):
    row = next(r for r in result.rows if r.label == "fewer-steps(3)")
    assert row.steps == 3 and row.status == "ok"
    assert not row.fidelity["identical"] and row.fidelity["psnr"] > 0 and row.fidelity["rel_l1"] > 0


def test_outputs_written_with_schema(result, tmp_path):
    paths = write_all(result, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["schema"] == "accel.bench/2"
    assert {"spec", "env", "model", "rows", "reliability", "calibration"} <= set(data)
    assert data["env"]["device"].startswith("cpu")
    row_keys = {
        "label",
        "kind",
        "steps",
        "status",
        "latency_s",
        "speedup",
        "warmup_s",
        "attention_s",
        "attention_share",
        "peak_mem_mb",
        "fidelity",
        "stats",
        "options",
        "spread",
        "disturbed_runs",
    }
    for row in data["rows"]:
        assert row_keys <= set(row)
    assert [r["label"] for r in csv.DictReader(paths["csv"].open())] == [r.label for r in result.rows]
    assert paths["plot"].stat().st_size > 1000
    table = markdown(result)
    assert "| baseline |" in table and "inf (identical)" in table and "device: cpu" in table


def test_fewer_steps_are_timed_to_match_each_accelerating_row():
    from accel.bench.runner import _fewer_steps

    class FakeBench:
        spec = BenchSpec(steps=20)
        rows = [
            (None, type("R", (), {"label": label, "kind": kind})())
            for label, kind in [
                ("baseline", "baseline"),
                ("none", "accel"),
                ("delta", "accel"),
                ("diffusers:fbc", "diffusers-cache"),
                ("diffusers:pab", "diffusers-cache"),
            ]
        ]

    seconds = {"baseline": 10.0, "none": 9.0, "delta": 5.0, "diffusers:fbc": 7.4, "diffusers:pab": 9.6}
    rows = _fewer_steps(FakeBench(), seconds)
    assert [(v.steps, v.note) for v in rows] == [
        (10, "baseline at 10 steps, timed to match delta"),
        (15, "baseline at 15 steps, timed to match diffusers:fbc"),
    ]


def test_cli_quick_runs_on_a_tiny_model(tmp_path, capsys):
    assert (
        main(
            [
                "bench",
                "--quick",
                "--model",
                "pixart-alpha",
                "--size",
                "tiny",
                "--steps",
                "3",
                "--peers",
                "fewer-steps",
                "--fewer-steps",
                "2",
                "--no-progress",
                "--no-profile",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "Command: `accel bench --quick --model pixart-alpha" in out
    assert "| baseline | 3 |" in out and "| fewer-steps(2) | 2 |" in out
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["spec"]["height"] == 16 and data["spec"]["repeat"] == 1  # quick: half the tiny resolution


def test_quick_keeps_fixed_size_models_at_their_size():
    from accel.bench import quick

    assert quick(BenchSpec(model="dit", steps=20)).height is None
    assert quick(BenchSpec(model="digits-image")).accuracy_n == 10 and quick(BenchSpec(accuracy_n=0)).accuracy_n == 0
    assert quick(BenchSpec()).settle_s == 0
    q = quick(BenchSpec(model="wan", steps=20))
    assert (q.steps, q.repeat, q.frames) == (8, 1, 41)  # half of the bench size's 81 frames (1 + 4k)


@pytest.fixture(scope="module")
def trained_result():
    spec = BenchSpec(
        model="digits-image", steps=4, repeat=1, peers=("fewer-steps",), methods=("none", "delta-dit"),
        method_options={"delta-dit": {"interval": 2, "warmup": 1}}, accuracy_n=10, progress=False,
        profile_attention=False, settle_s=0.0,
    )
    return run(spec)


def test_trained_models_get_task_accuracy_per_row(trained_result, tmp_path):
    rows = {r.label: r for r in trained_result.rows}
    assert {"baseline", "none", "delta-dit"} <= set(rows) and any(r.kind == "fewer-steps" for r in rows.values())
    for r in rows.values():
        assert 0.0 <= r.accuracy <= 1.0
        assert r.accuracy_delta_pts == pytest.approx(100 * (r.accuracy - rows["baseline"].accuracy))
    assert rows["none"].accuracy == rows["baseline"].accuracy  # exact patch, same samples: same accuracy
    floor = rows["noise-floor(sdpa-math)"]  # a second exact path: rounding apart, the same output
    assert floor.fidelity["psnr"] is None or floor.fidelity["psnr"] > 100
    assert trained_result.model["task_accuracy"] == {"samples": 10, "seed": 0}
    table = markdown(trained_result)
    assert "task accuracy %" in table and "(digits-image" not in table and "(DiTPipeline, trained)" in table
    assert f"| {100 * rows['baseline'].accuracy:.1f} (+0.0) |" in table
    paths = write_all(trained_result, tmp_path)
    by_label = {r["label"]: r for r in csv.DictReader(paths["csv"].open())}
    assert float(by_label["none"]["accuracy"]) == rows["none"].accuracy
    assert json.loads(paths["json"].read_text())["rows"][0]["accuracy"] == rows["baseline"].accuracy


def test_random_weight_models_have_no_accuracy_and_bad_counts_are_refused(result):
    assert all(r.accuracy is None for r in result.rows) and "task accuracy" not in markdown(result)
    with pytest.raises(ValueError, match="accuracy_n=-1"):
        BenchSpec(model="digits-image", accuracy_n=-1)


def test_fbc_peer_takes_a_threshold_and_bad_peers_are_named():
    from accel.bench import variants
    from accel.errors import InvalidOptionError

    assert variants.parse_peer("fbc") == ("fbc", None)
    assert variants.parse_peer("fbc@0.25") == ("fbc", 0.25)
    for bad in ("fbc@x", "fbc@-1", "pab@0.1", "teacache"):
        with pytest.raises(InvalidOptionError, match=bad.replace(".", r"\.")):
            variants.parse_peer(bad)


def test_a_composition_row_is_one_patch_with_each_method_s_options(tiny):
    from accel.bench import variants as V

    pipe = tiny("wan")
    row = V.accel_method("pisa+delta-dit", 4, {"pisa.density": 0.5, "delta-dit.interval": 3})
    handle = row.enable(pipe)
    try:
        assert [c.method for c in handle.config] == ["pisa", "delta-dit"]
        assert handle.config[0].density == 0.5 and handle.config[1].interval == 3
    finally:
        row.disable(pipe, handle)
    with pytest.raises(accel.InvalidOptionError, match=r"name their method, e.g. pisa\+delta-dit.pisa"):
        V.accel_method("pisa+delta-dit", 4, {"density": 0.5})


def test_the_default_job_is_every_method_and_composition_on_the_trained_digits_video():
    from accel import zoo
    from accel.bench.runner import _expand_methods

    spec = BenchSpec()
    assert (spec.model, spec.steps, spec.noise_floor, spec.accuracy_n) == ("digits-video", 20, True, 20)
    assert spec.measures_accuracy and "fewer-steps" in spec.peers and {"fbc", "taylorseer", "pab"} <= set(spec.peers)
    rows = dict(_expand_methods(spec, zoo.load("digits-video")))
    assert list(rows)[0] == "none"
    assert {"adaspa", "delta-dit", "pisa", "sixbit", "tdc", "pisa+tdc", "adaspa+tdc", "sixbit+tdc"} == set(rows) - {"none"}
    assert "delta-dit+tdc" not in rows  # two caches change the same blocks: no composition
    from pathlib import Path

    committed = (Path(zoo.__file__).parent / "checkpoints" / "digits-video" / "sixbit_calibration.json").resolve()
    assert Path(rows["sixbit"]["calibration"]).resolve() == committed
    assert rows["sixbit+tdc"] == {"sixbit.calibration": rows["sixbit"]["calibration"]}
    assert rows["pisa"] is None  # defaults


def test_a_composition_s_stats_cell_names_the_method_of_a_shared_key():
    from accel.bench.report import _stat_summary

    stats = {"methods": ["lego-skip", "tdc"], "steps": {"runs": 1},
             "lego-skip": {"skip_rate": 0.4, "steps_skipped": 8, "held_peak_MB": 0.5},
             "tdc": {"skip_rate": 0.25, "held_peak_MB": 1.0}}
    assert _stat_summary(stats) == ("lego-skip.skip_rate=0.4, steps_skipped=8, tdc.skip_rate=0.25, "
                                    "held_peak_MB=1.5")
    assert _stat_summary({"tdc": {"skip_rate": 0.25}}) == "skip_rate=0.25"
