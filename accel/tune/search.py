"""The search of `accel tune`: the fastest candidate whose quality stays within a floor, found without
measuring what cannot win.

A candidate is a set of accel methods with their options (one patch, possibly a composition) run at some
number of denoising steps. The search knows nothing of pipelines: it asks a `Measure` for a candidate's
speedup over the exact run and for its quality at a number of samples, so that it can be tested with a
measurement of known answers.

1. Screen: every method variant at the full steps, one timed run (`Measure.speed(pairs=1)`); a variant
   slower than the exact run is dropped (at fewer steps, fewer steps alone would beat it), except
   `none`, which stands for the exact model.
2. Cross the survivors with the step grid; a candidate's speed is estimated as its variant's times the
   ratio of steps (time is close to linear in steps), so the ordering costs no run.
3. Fastest first, successive halving on the number of samples: each candidate's quality is measured at
   the first rung (few samples), and only one within the floor (plus a slack that shrinks with the
   samples: `Floor.slack`) goes on to more samples. At the last rung the floor is strict. A candidate
   that holds it gets its speed measured against the exact run in interleaved pairs, and, if it is the
   fastest so far, its quality on held-out samples; holding there too makes it the best.
4. Stop when the next candidate's estimate is clearly below the best's measured speed (nothing left can
   win), when the time budget is spent (no measurement starts after it, except the speed and held-out
   check of a candidate that held every rung), or on Ctrl-C: what was measured is kept either way.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from accel.errors import InvalidOptionError

# metric -> (what it measures, higher is better)
METRICS: dict[str, tuple[str, bool]] = {
    "psnr": ("mean PSNR in dB of the final output against the exact output of the same seeds", True),
    "accuracy-drop": ("task accuracy below the exact run's on the same samples, in percentage points "
                      "(trained reference models: the entry's judge)", False),
    "agreement": ("share of the outputs equal to the exact run's (language models' tokens)", True),
}


@dataclass(frozen=True)
class Floor:
    """The quality a configuration must keep: `psnr=30` (at least 30 dB), `accuracy-drop=1` (at most one
    point below the exact run), `agreement=0.99` (at least 99% equal)."""

    metric: str
    value: float

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise InvalidOptionError(f"tune: floor metric {self.metric!r} is unknown; expected one of "
                                     f"{', '.join(METRICS)} (e.g. --floor psnr=30)")
        if not math.isfinite(self.value) or self.value < 0 or (self.metric == "agreement" and self.value > 1):
            allowed = "a value in [0, 1]" if self.metric == "agreement" else "a finite value >= 0"
            raise InvalidOptionError(f"tune: floor {self.metric}={self.value!r}; expected {allowed}")

    @classmethod
    def parse(cls, text: str) -> Floor:
        """`METRIC=VALUE`, e.g. "psnr=30", "accuracy-drop=1", "agreement=0.99"."""
        metric, eq, raw = text.partition("=")
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not eq or math.isnan(value):
            raise InvalidOptionError(f"tune: --floor {text!r}; expected METRIC=NUMBER with METRIC one of "
                                     f"{', '.join(METRICS)}, e.g. psnr=30 or accuracy-drop=1")
        return cls(metric.strip(), value)

    @property
    def higher_is_better(self) -> bool:
        return METRICS[self.metric][1]

    def ok(self, quality: float, slack: float = 0.0) -> bool:
        """Whether `quality` (the metric's value) holds the floor, widened by `slack`."""
        if math.isnan(quality):
            return False
        if self.higher_is_better:
            return quality >= self.value - slack
        return quality <= self.value + slack

    def slack(self, n: int, final: int) -> float:
        """How far a measurement on `n` samples may miss the floor and still go on to more samples: a
        screening allowance of about one standard error, none at the `final` rung. psnr: 1 dB; accuracy:
        the binomial standard error at p = 1/2 (25/sqrt(n) points: 12.5 at 4 samples); agreement: 0.5/sqrt(n)."""
        if n >= final:
            return 0.0
        if self.metric == "psnr":
            return 1.0
        if self.metric == "accuracy-drop":
            return 50.0 / math.sqrt(n) / 2
        return 0.5 / math.sqrt(n)

    def __str__(self) -> str:
        return f"{self.metric}={self.value:g}"


Parts = tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]  # ((method, ((option, value), ...)), ...)


@dataclass(frozen=True)
class Candidate:
    """Accel methods with their options (a composition when more than one), run at `steps` steps."""

    parts: Parts
    steps: int

    @classmethod
    def of(cls, parts: Sequence[tuple[str, dict[str, Any]]], steps: int) -> Candidate:
        return cls(tuple((name, tuple(opts.items())) for name, opts in parts), steps)

    @property
    def token(self) -> str:
        """The methods as one `accel bench --methods` token: "tdc(order=1,threshold=0.5)", "pisa+tdc"."""
        from accel.bench.variants import token

        return "+".join(token(name, dict(opts)) for name, opts in self.parts)

    @property
    def label(self) -> str:
        return f"{self.token} @ {self.steps} steps"

    def at(self, steps: int) -> Candidate:
        return Candidate(self.parts, steps)

    def configs(self) -> list[Any]:
        """The validated method configs (`accel.patch(pipe, method=...)` takes the list)."""
        from accel.bench.variants import entry_configs

        return entry_configs(self.token)


class Measure(Protocol):
    """What the search asks of a pipeline (or, in tests, of a model of one)."""

    base_steps: int  # the exact run's steps

    def speed(self, candidate: Candidate, pairs: int) -> float:
        """Speedup of `candidate` over the exact run: exact seconds / candidate seconds, medians over
        `pairs` runs of each, interleaved (pairs=1 may reuse recent exact runs)."""
        ...

    def quality(self, candidate: Candidate, n: int, held_out: bool = False) -> float:
        """The floor's metric for `candidate` on `n` samples (the tuning samples, or `held_out` ones)."""
        ...


@dataclass
class Trial:
    """Everything measured about one candidate; `status` says how far it got."""

    candidate: Candidate
    estimate: float | None = None  # speedup estimated from the screen (variant's speed x steps ratio)
    speedup: float | None = None  # measured against the exact run in interleaved pairs
    quality: dict[int, float] = field(default_factory=dict)  # samples -> the metric, on the tuning samples
    held_out: float | None = None  # the metric on the held-out samples
    status: str = "not tried"
    screen: bool = False  # a screening row (a variant at the full steps)

    def final_quality(self) -> float | None:
        return self.quality[max(self.quality)] if self.quality else None

    def to_json(self) -> dict[str, Any]:
        return {"methods": self.candidate.token, "steps": self.candidate.steps, "label": self.candidate.label,
                "estimate": self.estimate, "speedup": self.speedup,
                "quality": {str(k): v for k, v in sorted(self.quality.items())}, "held_out": self.held_out,
                "status": self.status, "screen": self.screen}


@dataclass
class TuneResult:
    floor: Floor
    rungs: tuple[int, ...]  # tuning samples per rung; the last is the strict one
    held_out_n: int
    base_steps: int
    trials: list[Trial]
    best: Trial | None = None
    stopped: str = "running"  # "running" (files written during the search) | "done" | "budget" | "interrupted"
    elapsed_s: float = 0.0
    measurements: int = 0  # quality and speed measurements made (the cost of the search)
    min_speedup: float = 1.05  # a candidate measured slower than this is not an acceleration

    @property
    def complete(self) -> bool:
        return self.stopped == "done"


class _OutOfBudget(Exception):
    pass


def rungs_for(final: int, eta: int = 3, first: int = 1) -> tuple[int, ...]:
    """Samples per rung, a factor `eta` apart, ending at `final`: 40 -> (5, 14, 40), 8 -> (1, 3, 8)."""
    out = [final]
    while math.ceil(out[0] / eta) >= first and math.ceil(out[0] / eta) < out[0] and len(out) < 3:
        out.insert(0, math.ceil(out[0] / eta))
    return tuple(out)


def tune(
    measure: Measure,
    floor: Floor,
    variants: Sequence[Parts],
    steps_grid: Sequence[int],
    rungs: Sequence[int],
    held_out_n: int,
    budget_s: float,
    *,
    min_speedup: float = 1.05,
    margin: float = 0.15,
    clock: Callable[[], float] = time.monotonic,
    progress: bool = True,
    on_trial: Callable[[TuneResult], None] | None = None,
    composable: Callable[[str, str], bool] | None = None,
    compose_top: int = 2,
) -> TuneResult:
    """Search `variants` (method parts, e.g. (("tdc", (("order", 1),)),); `(("none", ()),)` is the exact
    model, crossed with `steps_grid` it gives the fewer-steps candidates) at the steps of `steps_grid`,
    with quality measured at `rungs` samples and `held_out_n` held-out samples, within `budget_s` seconds
    of `clock`. `margin`: a candidate whose estimate is more than this fraction below the best's measured
    speedup is not tried. `on_trial` is called with the result after each trial (to save progress).
    `composable(a, b)`: whether methods a and b can share a patch; then the `compose_top` fastest screened
    variants of each such pair of methods are composed and screened too.
    Ctrl-C (KeyboardInterrupt) stops the search and returns what was measured, `stopped="interrupted"`."""
    from tqdm.auto import tqdm

    rungs = tuple(sorted(set(rungs)))
    if not rungs or rungs[0] < 1 or held_out_n < 1:
        raise InvalidOptionError(f"tune: rungs {rungs} and held-out samples {held_out_n} must be >= 1")
    base = measure.base_steps
    grid = sorted({s for s in steps_grid if 1 <= s <= base} | {base}, reverse=True)
    start = clock()
    result = TuneResult(floor, rungs, held_out_n, base, [], min_speedup=min_speedup)

    def spend(finishing: bool = False) -> None:
        """Count a measurement; out of time, stop, unless it finishes a candidate that held every rung
        (its speed and held-out check), which would otherwise be lost."""
        if clock() - start > budget_s and not finishing:
            raise _OutOfBudget
        result.measurements += 1
        result.elapsed_s = clock() - start

    screened = [Trial(Candidate(parts, base), screen=True) for parts in dict.fromkeys(variants)]
    result.trials.extend(screened)
    bar = tqdm(total=len(screened), desc="accel tune: screening", disable=not progress, leave=False)

    def screen(trials: list[Trial]) -> None:
        for trial in trials:  # 1. one timed run per variant at the full steps
            spend()
            try:
                trial.estimate = measure.speed(trial.candidate, 1)
                trial.status = "screened"
            except (ValueError, TypeError, RuntimeError) as err:  # e.g. methods that do not compose
                trial.status = f"failed: {type(err).__name__}: {err}"
            bar.update(1)

    try:
        screen(screened)
        if composable is not None:
            pairs = _compositions(screened, composable, compose_top, min_speedup)
            more = [Trial(Candidate(parts, base), screen=True) for parts in pairs]
            result.trials.extend(more)
            bar.total = (bar.total or 0) + len(more)
            screen(more)
            screened += more
        candidates: list[Trial] = []  # 2. the survivors at every step count, by estimated speed
        for trial in screened:
            exact = trial.candidate.parts == (("none", ()),)
            if trial.estimate is None or (not exact and trial.estimate < 1.0):
                if trial.estimate is not None:
                    trial.status = f"dropped: {trial.estimate:.2f}x at full steps, slower than the exact run"
                continue
            trial.status = "screened: crossed with the step grid"
            for steps in grid:
                if exact and steps == base:
                    continue  # the exact run itself
                est = (1.0 if exact else trial.estimate) * base / steps  # `none` is the exact model
                if est >= min_speedup:
                    candidates.append(Trial(trial.candidate.at(steps), estimate=est))
        candidates.sort(key=lambda t: -(t.estimate or 0.0))
        result.trials.extend(candidates)
        bar.reset(total=len(candidates))
        bar.set_description("accel tune: searching")
        for trial in candidates:  # 3. fastest first, successive halving on the samples
            best = result.best
            if best is not None and best.speedup is not None and (trial.estimate or 0) < best.speedup * (1 - margin):
                break  # 4. nothing left can win
            _try(measure, floor, trial, result, spend)
            bar.update(1)
            if on_trial is not None:
                on_trial(result)
        for trial in candidates:
            if trial.status == "not tried":
                trial.status = "not tried: its estimate is below the best's speedup"
    except _OutOfBudget:
        result.stopped = "budget"
    except KeyboardInterrupt:
        result.stopped = "interrupted"
    finally:
        bar.close()
    if result.stopped == "running":
        result.stopped = "done"
    if result.stopped != "done":
        for trial in result.trials:
            if trial.status == "trying":
                trial.status = "stopped while measured (its figures are partial)"
            if trial.status == "not tried":
                trial.status = f"not tried: {'out of time' if result.stopped == 'budget' else 'interrupted'}"
    result.elapsed_s = clock() - start
    return result


def _compositions(screened: list[Trial], composable: Callable[[str, str], bool], top: int,
                  min_speedup: float) -> list[Parts]:
    """The `top` fastest screened single-method variants of each method, composed pairwise where
    `composable` allows: one patch of both (a sparse attention with a step cache)."""
    fastest: dict[str, list[Trial]] = {}
    for t in sorted(screened, key=lambda t: -(t.estimate or 0.0)):
        parts = t.candidate.parts
        if len(parts) == 1 and parts[0][0] != "none" and (t.estimate or 0.0) >= min_speedup:
            fastest.setdefault(parts[0][0], [])
            if len(fastest[parts[0][0]]) < top:
                fastest[parts[0][0]].append(t)
    order = [t.candidate.parts[0][0] for t in screened]  # a composition lists its methods as the variants do
    names = sorted(fastest, key=order.index)
    out: list[Parts] = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if composable(a, b):
                out += [ta.candidate.parts + tb.candidate.parts for ta in fastest[a] for tb in fastest[b]]
    return out


def _try(measure: Measure, floor: Floor, trial: Trial, result: TuneResult, spend: Callable[..., None]) -> None:
    """One candidate through the rungs, its interleaved speed, and the held-out check; a candidate that
    fails to run (methods that cannot run on this input) is a row that says so."""
    trial.status = "trying"
    try:
        _rungs(measure, floor, trial, result, spend)
    except (ValueError, TypeError, RuntimeError) as err:
        trial.status = f"failed: {type(err).__name__}: {err}"


def _rungs(measure: Measure, floor: Floor, trial: Trial, result: TuneResult, spend: Callable[..., None]) -> None:
    final = result.rungs[-1]
    for n in result.rungs:
        spend()
        trial.quality[n] = q = measure.quality(trial.candidate, n)
        if not floor.ok(q, floor.slack(n, final)):
            trial.status = f"below the floor at {n} samples"
            return
    spend(finishing=True)
    trial.speedup = measure.speed(trial.candidate, 3)
    if trial.speedup < result.min_speedup:
        trial.status = f"holds the floor; measured {trial.speedup:.2f}x, not faster than the exact run"
        return
    best = result.best
    if best is not None and best.speedup is not None and trial.speedup <= best.speedup:
        trial.status = "holds the floor; slower than the best"
        return
    spend(finishing=True)
    trial.held_out = measure.quality(trial.candidate, result.held_out_n, held_out=True)
    if not floor.ok(trial.held_out):
        trial.status = "holds the floor on the tuning samples, not on the held-out ones"
        return
    if best is not None:
        best.status = "holds the floor; slower than the best"
    trial.status = "best"
    result.best = trial


def pareto(trials: Sequence[Trial], floor: Floor) -> list[Trial]:
    """The trials measured at the last rung that no other beats in both speed and quality."""
    done = [t for t in trials if t.speedup is not None and t.quality]
    sign = 1.0 if floor.higher_is_better else -1.0

    def beaten(t: Trial) -> bool:
        q = sign * (t.final_quality() or 0.0)
        return any(o is not t and (o.speedup or 0) >= (t.speedup or 0) and sign * (o.final_quality() or 0) >= q
                   and ((o.speedup or 0) > (t.speedup or 0) or sign * (o.final_quality() or 0) > q) for o in done)

    return sorted((t for t in done if not beaten(t)), key=lambda t: -(t.speedup or 0))
