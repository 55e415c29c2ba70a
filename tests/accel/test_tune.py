"""`accel tune`: the search against a measurement of known answers, the saved configuration, Ctrl-C, and
one real run on a tiny pipeline."""

from __future__ import annotations

import json
import math
import random

import pytest

import accel
from accel.cli import main
from accel.tune import Candidate, Floor, read, rungs_for, tune
from accel.tune import report as R
from accel.tune.search import Trial, pareto

BASE = 20
TDC = [(("tdc", (("order", o), ("threshold", t))),) for o in (0, 1) for t in (0.1, 0.3, 0.5, 1.0)]
NONE = (("none", ()),)


class Fake:
    """A pipeline of known answers: each variant's speed at full steps, and a quality (PSNR-like, in dB)
    that falls with speed; measurements on few samples are off by up to `noise / sqrt(n)`."""

    base_steps = BASE

    def __init__(self, seed: int = 0, noise: float = 0.8, held_out_gap: dict | None = None) -> None:
        rng = random.Random(seed)
        self.truth = {v: (1.0 if v == NONE else rng.uniform(0.9, 3.0)) for v in [NONE, *TDC]}
        self.fall = {v: rng.uniform(2.0, 6.0) for v in self.truth}
        self.noise, self.rng = noise, rng
        self.held_out_gap = held_out_gap or {}
        self.calls = {"speed": 0, "quality": 0}

    def true_speed(self, c: Candidate) -> float:
        return self.truth[c.parts] * BASE / c.steps

    def true_quality(self, c: Candidate) -> float:
        return 60.0 - self.fall[c.parts] * (self.true_speed(c) - 1.0) ** 1.2

    def speed(self, c: Candidate, pairs: int) -> float:
        self.calls["speed"] += 1
        return self.true_speed(c)

    def quality(self, c: Candidate, n: int, held_out: bool = False) -> float:
        self.calls["quality"] += 1
        if held_out:
            return self.true_quality(c) - self.held_out_gap.get(c, 0.0)
        wobble = math.sin(hash((c, n)) % 1000) * self.noise / math.sqrt(n)
        return self.true_quality(c) + (0.0 if n >= 8 else wobble)


GRID = [20, 16, 12, 10, 8, 6, 5]


def _tune(fake, floor, **kw):
    return tune(fake, floor, [NONE, *TDC], GRID, rungs_for(8), 8, budget_s=1e9, progress=False, **kw)


def test_floor_parses_and_refuses_what_it_cannot_mean():
    assert Floor.parse("psnr=30") == Floor("psnr", 30.0)
    assert Floor.parse("accuracy-drop=1").ok(0.9) and not Floor.parse("accuracy-drop=1").ok(1.1)
    assert Floor.parse("psnr=30").ok(30.0) and not Floor.parse("psnr=30").ok(29.9)
    assert Floor("psnr", 30).slack(1, 8) > 0 == Floor("psnr", 30).slack(8, 8)
    for bad, message in (("psnr", "METRIC=NUMBER"), ("lpips=0.1", "unknown"), ("agreement=2", r"\[0, 1\]"),
                         ("psnr=-1", ">= 0"), ("psnr=nan", "METRIC=NUMBER")):
        with pytest.raises(accel.InvalidOptionError, match=message):
            Floor.parse(bad)
    assert rungs_for(40) == (5, 14, 40) and rungs_for(8) == (1, 3, 8) and rungs_for(1) == (1,)


@pytest.mark.parametrize("seed", range(6))
def test_the_search_finds_the_fastest_candidate_that_holds_the_floor_and_measures_less_than_all(seed):
    fake = Fake(seed)
    floor = Floor("psnr", 50.0)
    result = _tune(fake, floor)
    # a method not faster than the exact run at full steps is dropped (at fewer steps, fewer steps alone beat it)
    kept = [v for v in fake.truth if v == NONE or fake.truth[v] >= 1.0]
    everything = [Candidate(v, s) for v in kept for s in GRID if not (v == NONE and s == BASE)]
    holding = [c for c in everything if fake.true_quality(c) >= 50.0 and fake.true_speed(c) >= 1.05]
    fastest = max(holding, key=fake.true_speed)
    assert result.best is not None and result.complete
    # never a candidate below the floor on the tuning samples, at the strict (last) rung, nor held out
    assert result.best.quality[8] >= 50.0 and result.best.held_out >= 50.0
    assert fake.true_speed(result.best.candidate) == pytest.approx(fake.true_speed(fastest))
    # successive halving: far fewer quality measurements than every candidate at every rung
    assert fake.calls["quality"] < 0.5 * len(everything) * len(result.rungs)
    for t in result.trials:  # whatever measured below the floor at the last rung is never the best
        if 8 in t.quality and t.quality[8] < 50.0:
            assert t is not result.best and t.status.startswith("below the floor")


def test_the_floor_is_never_violated_on_the_tuning_samples_whatever_the_noise():
    for seed in range(20):
        fake = Fake(seed, noise=5.0)
        result = _tune(fake, Floor("psnr", 52.0))
        if result.best is not None:
            assert result.best.quality[max(result.rungs)] >= 52.0
            assert result.best.held_out >= 52.0


def test_a_candidate_that_fails_on_held_out_samples_is_not_the_best():
    fake = Fake(1)
    first = _tune(Fake(1), Floor("psnr", 50.0)).best.candidate
    result = _tune(Fake(1, held_out_gap={first: 30.0}), Floor("psnr", 50.0))
    failed = next(t for t in result.trials if t.candidate == first and not t.screen)
    assert failed.status.startswith("holds the floor on the tuning samples, not on the held-out")
    assert result.best is not None and result.best.candidate != first
    assert fake.true_speed(result.best.candidate) <= fake.true_speed(first)


def test_accuracy_drop_is_a_ceiling():
    class Drop(Fake):
        def quality(self, c, n, held_out=False):
            return (60.0 - super().quality(c, n, held_out)) / 5  # points lost grow with speed

    fake = Drop(2)
    result = _tune(fake, Floor("accuracy-drop", 1.0))
    assert result.best is not None and result.best.quality[8] <= 1.0 and result.best.held_out <= 1.0


def test_compositions_of_methods_that_change_different_parts_are_screened():
    sparse = (("pisa", (("density", 0.25),)),)
    fake = Fake(3)
    fake.truth[sparse] = 1.5
    fake.fall[sparse] = 3.0
    fake.truth.update({sparse + v: 1.5 * fake.truth[v] for v in TDC})
    fake.fall.update({sparse + v: 3.0 for v in TDC})
    result = tune(fake, Floor("psnr", 40.0), [NONE, sparse, *TDC], GRID, rungs_for(8), 8, 1e9, progress=False,
                  composable=lambda a, b: {a, b} == {"pisa", "tdc"}, compose_top=2)
    composed = [t for t in result.trials if t.screen and len(t.candidate.parts) == 2]
    assert len(composed) == 2 and all(t.candidate.parts[:1] == sparse for t in composed)


def test_out_of_time_stops_with_what_was_measured():
    ticks = iter(range(10_000))
    result = tune(Fake(0), Floor("psnr", 50.0), [NONE, *TDC], GRID, rungs_for(8), 8, budget_s=12,
                  clock=lambda: float(next(ticks)), progress=False)
    assert result.stopped == "budget" and not result.complete
    assert result.measurements <= 12
    assert any(t.status == "not tried: out of time" for t in result.trials)


def _info():
    return R.RunInfo("digits-video", "FakePipeline", "cpu (test)", command="accel tune ...", budget_s=60)


def test_ctrl_c_keeps_a_valid_partial_result(tmp_path):
    saved = []

    class Interrupted(Fake):  # Ctrl-C two measurements after a best was found and saved
        def quality(self, c, n, held_out=False):
            if saved and saved[-1] is not None and self.calls["quality"] >= self.at:
                raise KeyboardInterrupt
            return super().quality(c, n, held_out)

    def save(result):
        paths = R.write_all(result, _info(), tmp_path, plot=False)
        # a file written during the search says so, never "complete"
        assert json.loads(paths["config"].read_text())["status"].startswith("running")
        if not saved or saved[-1] is None:
            fake.at = fake.calls["quality"] + 2
        saved.append(result.best)

    fake = Interrupted(0, noise=0.0)

    result = _tune(fake, Floor("psnr", 45.0), on_trial=save)
    assert result.stopped == "interrupted"
    paths = R.write_all(result, _info(), tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["stopped"] == "interrupted" and len(data["trials"]) == len(result.trials)
    assert any(t["status"].startswith("stopped while measured") for t in data["trials"])
    assert "interrupted" in paths["md"].read_text()
    assert result.best is not None  # found before the interrupt: the saved configuration applies
    tuned = read(tmp_path)
    assert tuned.record["status"] == "stopped: interrupted (Ctrl-C)"
    assert tuned.steps == result.best.candidate.steps
    assert tuned.method == result.best.candidate.configs()[0]


def test_ctrl_c_while_plotting_keeps_the_finished_files(tmp_path, monkeypatch):
    result = _tune(Fake(0), Floor("psnr", 45.0))

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(R, "write_plot", interrupted)
    paths = R.write_all(result, _info(), tmp_path)  # no traceback
    assert "plot" not in paths and not (tmp_path / "pareto.png").exists()
    assert read(tmp_path).record["status"] == json.loads(paths["config"].read_text())["status"]
    assert json.loads(paths["json"].read_text())["stopped"] == result.stopped


def test_no_configuration_found_is_said_and_refused_on_reading(tmp_path):
    result = _tune(Fake(0), Floor("psnr", 99.0))
    assert result.best is None
    R.write_all(result, _info(), tmp_path, plot=False)
    with pytest.raises(accel.InvalidOptionError, match="holds no configuration"):
        accel.load_config(tmp_path / "tuned.json")
    assert "No candidate held the floor" in (tmp_path / "results.md").read_text()


def test_the_saved_configuration_round_trips_into_accel_patch(tmp_path, tiny, caplog):
    for parts, steps in (((("tdc", (("order", 1), ("threshold", 0.5), ("max_skips", 3))),), 16),
                         ((("pisa", (("density", 0.25),)), ("tdc", (("order", 1),))), 20)):
        fake = Fake(0)
        cand = Candidate(parts, steps)
        result = _tune(fake, Floor("psnr", 0.0))
        result.best.candidate, result.best.speedup = cand, 2.5  # as if this one had won
        paths = R.write_all(result, _info(), tmp_path, plot=False)
        record = json.loads(paths["config"].read_text())
        assert record["model"] == "digits-video" and record["floor"]["metric"] == "psnr"
        assert record["measured"]["speedup"] == 2.5 and record["steps"] == steps
        caplog.clear()
        with caplog.at_level("WARNING", logger="accel.tune.config"):
            method = accel.load_config(paths["config"])
        # fewer steps than the exact run are not applied by the patch: the loader says so
        assert (f"num_inference_steps={steps}" in caplog.text) == (steps < result.base_steps)
        configs = list(method) if isinstance(method, tuple) else [method]
        assert configs == cand.configs()  # every option, defaults included
        assert read(tmp_path).call_kwargs() == {"num_inference_steps": steps}
        pipe = tiny("wan")
        handle = accel.patch(pipe, method=method)
        assert [m.name for m in handle.methods] == [p[0] for p in parts]
        handle.unpatch()


def test_a_bad_configuration_file_is_refused_naming_the_problem(tmp_path):
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps({"schema": "other"}))
    with pytest.raises(accel.InvalidOptionError, match="expected schema"):
        accel.load_config(path)
    path.write_text(json.dumps({"schema": "accel.tune/1", "steps": 4,
                                "methods": [{"method": "tdc", "threshold": -1.0}]}))
    with pytest.raises(accel.InvalidOptionError, match="threshold=-1.0 is out of range"):
        accel.load_config(path)


def test_pareto_front_keeps_what_nothing_beats_in_both():
    floor = Floor("psnr", 30.0)
    trials = []
    for speed, q in ((3.0, 35.0), (2.0, 40.0), (2.5, 33.0), (1.5, 39.0)):
        t = Trial(Candidate(NONE, 10), speedup=speed, quality={8: q})
        trials.append(t)
    assert [t.speedup for t in pareto(trials, floor)] == [3.0, 2.0]


def test_refusals_before_any_run(capsys, tmp_path):
    assert main(["tune", "--model", "dit", "--size", "tiny", "--floor", "accuracy-drop=1",
                 "--out", str(tmp_path)]) == 2
    assert "needs a trained reference model" in capsys.readouterr().err
    assert main(["tune", "--model", "dit", "--size", "tiny", "--floor", "agreement=0.9",
                 "--out", str(tmp_path)]) == 2
    assert "agreement counts equal tokens" in capsys.readouterr().err
    assert main(["tune", "--model", "dit", "--floor", "psnr=30", "--methods", "tdc(ordr=1)", "--out", str(tmp_path)]) == 2
    assert "unknown option 'ordr'" in capsys.readouterr().err
    assert main(["tune", "--model", "llava", "--floor", "psnr=30", "--out", str(tmp_path)]) == 2
    assert "searches image and video diffusion" in capsys.readouterr().err


def test_a_real_tuning_run_on_a_tiny_pipeline_writes_a_configuration_that_patches(tmp_path, capsys, tiny):
    out = tmp_path / "tuned"
    rc = main(["tune", "--model", "dit", "--size", "tiny", "--floor", "psnr=0", "--steps", "4", "--samples", "1",
               "--methods", "tdc(order=1,threshold=0.5)", "--budget-minutes", "2", "--no-progress",
               "--out", str(out), "--doc", str(tmp_path / "bench.md"), "--doc-key", "tune test"])
    text = capsys.readouterr().out
    data = json.loads((out / "results.json").read_text())
    tokens = {t["methods"] for t in data["trials"]}
    assert tokens <= {"none", "tdc(order=1,threshold=0.5)"} and "tdc(order=1,threshold=0.5)" in tokens
    assert "<!-- accel-bench:tune test -->" in (tmp_path / "bench.md").read_text()
    assert "| candidate (--methods token) |" in text
    if rc == 0:  # something measured faster than the exact run (a loaded machine may say otherwise)
        tuned = read(out)
        assert tuned.record["measured"]["speedup"] >= 1.05
        pipe = tiny("dit")
        accel.patch(pipe, method=accel.load_config(out / "tuned.json")).unpatch()
    else:
        assert "no candidate held the floor" in (out / "tuned.json").read_text()


def test_a_candidate_that_fails_to_run_is_a_row_that_says_so():
    class Broken(Fake):
        def quality(self, c, n, held_out=False):
            if c.steps == 5:
                raise RuntimeError("no kernel for this")
            return super().quality(c, n, held_out)

    result = _tune(Broken(0), Floor("psnr", 50.0))
    failed = [t for t in result.trials if t.status.startswith("failed: RuntimeError: no kernel")]
    assert failed and all(t.candidate.steps == 5 for t in failed) and result.best is not None


def test_the_accuracy_drop_of_a_real_trained_pipeline_is_measured_against_the_exact_run_s():
    from accel.bench.accuracy import task_accuracy
    from accel.tune.pipeline import PipelineMeasure

    pipe = accel.zoo.load("digits-image")
    measure = PipelineMeasure(pipe, "digits-image", Floor("accuracy-drop", 1.0), steps=4)
    fewer = Candidate(NONE, 2)
    drop = measure.quality(fewer, 5)
    exact = task_accuracy("digits-image", pipe, 5, 0, 4)
    with accel.patch(pipe, method="none"):
        mine = task_accuracy("digits-image", pipe, 5, 0, 2)
    assert drop == pytest.approx(100 * (exact - mine))
    assert measure.exact_accuracy["tuning"] == exact
    assert measure.quality(Candidate(NONE, 4), 5) == 0.0  # the exact model at its own steps loses nothing
    measure.quality(fewer, 5, held_out=True)
    assert set(measure.exact_accuracy) == {"tuning", "held-out"}
    assert measure.speed(fewer, 1) > 0 and measure.exact_times  # timed beside exact runs
