"""`accel bench` on a noisy machine: each row's spread, repeats until the medians settle, a disturbed run
caught (the table marked unreliable, no fewer-steps rows matched to disturbed numbers, the doc left
alone), and the noise-floor row (the exact model through a second exact path).

The timings are scripted: `_Bench.run_once` is replaced by a run that advances a fake clock by the
row's scripted seconds and reports the scripted load, so no test depends on this machine's noise."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch

from accel.bench import BenchSpec, markdown, run, runner
from accel.bench import noise as N
from accel.bench.measure import Reading, RunSample
from accel.cli import main

QUIET = 0.01  # other processes' share of the CPUs on an idle machine
BUSY = 0.6  # beside another job


def test_spread_is_the_interquartile_range_over_the_median():
    assert N.spread([1.0]) is None
    assert N.spread([1.0, 1.0, 1.0]) == 0.0
    assert N.spread([14.7, 25.0, 29.2]) == pytest.approx((29.2 - 14.7) / 2 / 25.0)  # 3 runs: half the range
    assert N.spread([1.0, 1.0, 1.0, 1.0, 9.0]) == 0.0  # one outlier does not move it


def samples(seconds: list[float], other: float = QUIET) -> list[RunSample]:
    return [RunSample(s, other, 1.0) for s in seconds]


def test_a_quiet_run_is_reliable():
    v = N.judge({"baseline": samples([1.00, 1.01, 0.99]), "none": samples([1.01, 1.02, 1.0]),
                 "tdc": samples([0.5, 0.5, 0.51])})
    assert v.reliable and v.reasons == [] and v.none_vs_baseline == pytest.approx(0.01)
    assert v.tolerance == pytest.approx(N.AGREE) and v.runs == 9 and v.disturbed_runs == 0


def test_the_issue_s_disturbed_run_is_unreliable():
    """Beside one other job: the baseline spread 14.7-29.2 s over 3 repeats and `none` ran 1.75x."""
    v = N.judge({"baseline": samples([14.7, 25.0, 29.2], BUSY), "none": samples([14.0, 14.3, 14.5], BUSY)})
    assert not v.reliable
    assert any("spread 29%" in r for r in v.reasons)
    assert any("ran 1.75x as fast as the baseline" in r for r in v.reasons)
    assert any("6 of 6 timed runs" in r for r in v.reasons)


def test_none_outside_the_noise_of_the_baseline_is_unreliable_and_inside_it_is_not():
    tight = N.judge({"baseline": samples([1.0, 1.0, 1.0]), "none": samples([1.05, 1.05, 1.05])})
    assert not tight.reliable and "(medians 5% apart), outside its noise of 3.0%" in tight.explain()
    # a 5% difference within the rows' measured spread (5.2%) is noise
    loose = N.judge({"baseline": samples([0.96, 0.98, 1.02, 1.04]), "none": samples([1.0, 1.03, 1.07, 1.10])})
    assert loose.reliable and loose.none_vs_baseline == pytest.approx(0.05) and loose.tolerance > 0.05


def test_a_spread_just_over_the_limit_reads_over_it():
    """3 runs of 0.629, 0.678 and 0.767 s spread 10.2%: said as 10.2%, not as "10% (more than 10%)"."""
    v = N.judge({"baseline": samples([0.629, 0.678, 0.767])}, exact="")
    assert not v.reliable and "spread 10.2% (more than 10%)" in v.explain()
    close = N.judge({"baseline": samples([1.0, 1.0, 1.0]), "none": samples([1.0301, 1.0301, 1.0301])})
    assert "(medians 3.01% apart), outside its noise of 3.0%" in close.explain()
    assert [N.beyond(x, 0.1) for x in (0.2, 0.1004, 0.10004, 0.1000001)] == ["20", "10.04", "10.004", "10.00001"]
    slow = N.judge({"baseline": samples([1.0, 1.0, 1.0]), "none": samples([1.2, 1.2, 1.2])})
    assert "took 1.20x as long as the baseline" in slow.explain()


def test_one_run_cannot_be_judged_reliable():
    """One timed run of the baseline has no measurable spread: the table cannot be called reliable."""
    v = N.judge({"baseline": samples([1.0]), "none": samples([1.0])})
    assert not v.reliable and "the baseline ran once" in v.explain()


def test_many_disturbed_runs_make_a_table_unreliable_even_when_the_medians_agree():
    v = N.judge({"baseline": samples([1.0, 1.0, 1.0], BUSY), "none": samples([1.0, 1.0, 1.0], BUSY)})
    assert not v.reliable and v.reasons == ["other processes used more than 10% of the CPUs during 6 of 6 timed runs"]


# ---- the runner with a scripted machine ----------------------------------------------------------------


class Machine:
    """A fake clock and load: `script(label, i)` gives the i-th run of a row as (seconds, other CPU share)."""

    cpus = 2

    def __init__(self, script: Callable[[str, int], tuple[float, float]]) -> None:
        self.now, self.script, self.count = 0.0, script, {}

    def read(self) -> Reading:
        return Reading(self.now)

    def run(self, label: str) -> RunSample:
        i = self.count.get(label, 0)
        self.count[label] = i + 1
        seconds, other = self.script(label, i)
        self.now += seconds
        return RunSample(seconds, other, 2.0 if other > N.DISTURBED_SHARE else 0.1)


@pytest.fixture
def scripted(monkeypatch):
    """Install a scripted machine: rows' runs cost no real time (the pipeline is not called); outputs
    are the baseline's latents, perturbed for inexact rows, so fidelity is computed as usual."""

    def install(script: Callable[[str, int], tuple[float, float]]) -> Machine:
        machine = Machine(script)
        reference = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))

        def run_once(self, variant, seed):
            exact = variant.kind in ("baseline", "noise-floor") or variant.label == "none"
            out = reference if exact else reference + 0.01 * (1 + variant.steps % 3)
            return out.clone(), machine.run(variant.label), 0, {}

        monkeypatch.setattr(runner._Bench, "run_once", run_once)
        monkeypatch.setattr(runner, "MachineProbe", lambda: machine)
        return machine

    return install


def spec(**changes) -> BenchSpec:
    base = dict(model="pixart-alpha", size="tiny", steps=20, methods=("none", "tdc"), peers=("fewer-steps",),
                repeat=3, progress=False, profile_attention=False, settle_s=0.0)
    return BenchSpec(**{**base, **changes})


STEADY = {"baseline": 14.5, "none": 14.4, runner.noise.NOISE_FLOOR: 15.0, "tdc": 7.0}


def steady(label: str, i: int) -> tuple[float, float]:
    return STEADY.get(label, 14.5 * int(label[12:-1]) / 20 if label.startswith("fewer-steps(") else 1.0), QUIET


def test_a_quiet_machine_gives_a_reliable_table_with_fewer_steps_matched(scripted):
    scripted(steady)
    result = run(spec())
    rows = {r.label: r for r in result.rows}
    assert result.reliable and result.calibration["reliable"] and result.reliability["reliable"]
    assert rows["fewer-steps(10)"].note == "baseline at 10 steps, timed to match tdc"  # 20 * 7.0 / 14.5
    assert rows["tdc"].speedup == pytest.approx(14.5 / 7.0) and rows["tdc"].spread == 0.0
    assert rows["baseline"].disturbed_runs == 0 and rows["baseline"].latency_s["n"] == 3
    text = markdown(result)
    assert "Unreliable" not in text and "| 0.0 |" in text and "`none` 0.7% from the baseline" in text


def disturbed_baseline(label: str, i: int) -> tuple[float, float]:
    """The issue's run: beside another job the baseline took 14.7-29.2 s, so `none` looked 1.75x faster."""
    if label == "baseline":
        return (14.7, 29.2, 25.0, 27.0, 16.0, 28.0)[i % 6], BUSY
    return steady(label, i)


def test_a_disturbed_baseline_marks_the_table_unreliable_and_matches_no_fewer_steps(scripted):
    scripted(disturbed_baseline)
    result = run(spec())
    assert not result.reliable and not result.calibration["reliable"] and not result.reliability["reliable"]
    fewer = [r for r in result.rows if r.kind == "fewer-steps"]
    assert [r.label for r in fewer] == ["fewer-steps(12)"]  # 60% of the steps, not a step count from the times
    assert "timed to match" not in fewer[0].note.replace("not timed to match", "")
    assert "calibration runs were disturbed" in fewer[0].note
    rows = {r.label: r for r in result.rows}
    assert rows["baseline"].disturbed_runs == 3 and rows["baseline"].spread > N.MAX_BASELINE_SPREAD
    text = markdown(result)
    assert text.index("**Unreliable timings:") < text.index("| row |")  # said before the table
    assert "not timed to match any row: the calibration runs were disturbed" in text
    assert "| baseline | 20 |" in text and "(3/3)" in text  # the baseline's disturbed runs, in its spread cell


def test_the_cli_does_not_publish_a_disturbed_table(scripted, tmp_path, capsys):
    scripted(disturbed_baseline)
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n")
    argv = ["bench", "--model", "pixart-alpha", "--size", "tiny", "--methods", "none,tdc", "--peers", "fewer-steps",
            "--settle-s", "0", "--no-profile", "--no-progress", "--out", str(tmp_path / "out"), "--doc", str(doc)]
    assert main(argv) == 3
    assert doc.read_text() == "# Benchmarks\n" and "left unchanged" in capsys.readouterr().err
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["schema"] == "accel.bench/2" and data["reliability"]["reliable"] is False  # the files say so
    assert main([*argv, "--publish-unreliable"]) == 0 and "Unreliable timings" in doc.read_text()


def test_rounds_continue_until_the_medians_settle(scripted):
    """The baseline is slow for its first runs, then steady: extra rounds are added until no median
    moves 2% in a round."""
    machine = scripted(lambda label, i: ((30.0 if i < 2 else 14.5) if label == "baseline" else steady(label, i)[0], QUIET))
    result = run(spec(settle_s=10_000.0, peers=(), noise_floor=False))
    rel = result.reliability
    assert rel["settled"] and rel["rounds"] > 3 and rel["moved"] < 0.02
    assert machine.count["baseline"] == 1 + rel["rounds"]  # warm-up, then one per round
    assert result.rows[0].latency_s["median"] == pytest.approx(14.5)


def test_settling_stops_when_its_budget_is_spent(scripted):
    """A baseline 1.5x slower at every run never settles: rounds are added while the next one (predicted
    as long as the last) fits in the 60 s budget."""
    scripted(lambda label, i: (10.0 * 1.5**i if label == "baseline" else 5.0, QUIET))
    result = run(spec(settle_s=60.0, peers=(), noise_floor=False))
    rel = result.reliability
    # rounds take 25, 32.5, 43.75 s (within the budget, one more), then 60.6 s: no fifth round
    assert not rel["settled"] and rel["rounds"] == 4 and rel["extra_s"] == pytest.approx(60.625)
    assert rel["moved"] == pytest.approx(28.125 / 22.5 - 1)
    assert "not settled: the last round moved a median 25.0%" in markdown(result)


# ---- the noise-floor row ---------------------------------------------------------------------------------


def test_the_noise_floor_row_is_a_second_exact_path():
    result = run(BenchSpec(model="pixart-alpha", size="tiny", steps=3, methods=("none",), peers=(), repeat=1,
                           warmup=0, settle_s=0.0, profile_attention=False, progress=False))
    rows = {r.label: r for r in result.rows}
    assert [r.label for r in result.rows] == ["baseline", "none", N.NOISE_FLOOR]
    floor = rows[N.NOISE_FLOOR]
    assert floor.kind == "noise-floor" and floor.status == "ok"
    assert not floor.fidelity["identical"] and floor.fidelity["psnr"] > 100  # rounding, nothing more
    assert rows["none"].fidelity["identical"]
    variant = N.noise_floor(3)
    assert torch.backends.cuda.flash_sdp_enabled()
    context = variant.enable(None)
    assert not torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()
    variant.disable(None, context)
    assert torch.backends.cuda.flash_sdp_enabled()  # the run's backends are restored
    assert "second exact path" in markdown(result)
