"""How far two exact runs already differ: in time (each row's spread, repeats until the medians settle,
the verdict that marks a disturbed table unreliable) and in output (the noise-floor row).

Time. On a shared machine one disturbed repeat moves a median, and a disturbed calibration run sets the
fewer-steps rows' step counts from wrong numbers. So every timed run carries what the machine did during
it (`measure.RunSample`: the share of the CPUs other processes used, the load average); each row reports
its spread (interquartile range over median); rounds of all rows, interleaved, are added until no
median moves by more than `settle_tol` (within a time budget); and `judge` marks the table unreliable
when `none` (the exact model under accel's no-op patch) is not within the noise of the baseline, when
the baseline itself is too spread to anchor a ratio, or when other processes ran during many of the
timed runs. A verdict of unreliable is published with the table, never hidden.

Output. The noise-floor row runs the exact model through a second exact path, SDPA's math kernel
instead of the fused one torch picks: both are exact attention, and their outputs differ by rounding
alone. Its PSNR and task accuracy against the baseline are the floor below which a method's difference
means nothing.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from . import variants as V
from .measure import RunSample

AGREE = 0.03  # `none` and the baseline agree when their medians differ by at most this (or their spread)
MAX_BASELINE_SPREAD = 0.10  # a baseline whose runs spread more than this anchors no ratio
DISTURBED_SHARE = 0.10  # a run is disturbed when other processes used more than this share of the CPUs
MAX_DISTURBED_FRACTION = 0.25  # a table with more disturbed runs than this is unreliable


def spread(seconds: Sequence[float]) -> float | None:
    """Relative spread of a row's run times: interquartile range over median (0.1 = 10%), None below 2
    runs. With 3 runs it is half the range over the median."""
    if len(seconds) < 2:
        return None
    q1, _, q3 = statistics.quantiles(seconds, n=4, method="inclusive")
    median = statistics.median(seconds)
    return (q3 - q1) / median if median > 0 else None


def beyond(value: float, limit: float) -> str:
    """`value` as a percentage with the fewest decimals (0 to 9) at which it reads apart from `limit`
    (0.1024 beside 0.10: "10.2", never "10" in a message that says it is more than 10%)."""
    for digits in range(10):
        text = f"{100 * value:.{digits}f}"
        if text != f"{100 * limit:.{digits}f}":
            return text
    return text


def disturbed(sample: RunSample) -> bool:
    """Whether other processes used more than DISTURBED_SHARE of the machine's CPUs during the run."""
    return sample.other_cpu is not None and sample.other_cpu > DISTURBED_SHARE


def medians(samples: dict[str, list[RunSample]]) -> dict[str, float]:
    return {label: statistics.median(s.seconds for s in runs) for label, runs in samples.items() if runs}


def moved(before: dict[str, float], after: dict[str, float]) -> float:
    """The largest relative change of a row's median between two rounds (inf for a row new in `after`)."""
    changes = [abs(after[k] - before[k]) / before[k] if before.get(k) else float("inf") for k in after]
    return max(changes, default=0.0)


@dataclass
class Verdict:
    """Whether a table's ratios can be trusted, and why not. `none_vs_baseline`: the relative difference
    of the two exact rows' medians; `tolerance`: what it had to stay within (max of AGREE and their
    spreads); `other_cpu`: the mean share of the CPUs other processes used during the timed runs."""

    reliable: bool = True
    reasons: list[str] = field(default_factory=list)
    none_vs_baseline: float | None = None
    tolerance: float | None = None
    baseline_spread: float | None = None
    runs: int = 0
    disturbed_runs: int = 0
    other_cpu: float | None = None
    load: tuple[float, float] | None = None  # lowest and highest 1-minute load average seen at a run's end

    def explain(self) -> str:
        return "; ".join(self.reasons)


def judge(samples: dict[str, list[RunSample]], baseline: str = "baseline", exact: str = "none") -> Verdict:
    """The verdict on one phase's timed runs (`samples`: row label -> its runs)."""
    v = Verdict()
    runs = [s for rs in samples.values() for s in rs]
    v.runs = len(runs)
    v.disturbed_runs = sum(disturbed(s) for s in runs)
    shares = [s.other_cpu for s in runs if s.other_cpu is not None]
    v.other_cpu = sum(shares) / len(shares) if shares else None
    loads = [s.load for s in runs if s.load is not None]
    v.load = (min(loads), max(loads)) if loads else None
    base = [s.seconds for s in samples.get(baseline, [])]
    if len(base) == 1:
        v.reasons.append("the baseline ran once: one run's noise cannot be measured (time at least 2 repeats)")
    if base:
        v.baseline_spread = spread(base)
        if v.baseline_spread is not None and v.baseline_spread > MAX_BASELINE_SPREAD:
            v.reasons.append(f"the baseline's runs spread {beyond(v.baseline_spread, MAX_BASELINE_SPREAD)}% "
                             f"(more than {100 * MAX_BASELINE_SPREAD:.0f}%), too much to anchor a ratio")
    other = [s.seconds for s in samples.get(exact, [])]
    if base and other:
        b, o = statistics.median(base), statistics.median(other)
        v.none_vs_baseline = (o - b) / b
        v.tolerance = max(AGREE, spread(base) or 0.0, spread(other) or 0.0)
        if abs(v.none_vs_baseline) > v.tolerance:
            pace = f"ran {b / o:.2f}x as fast as" if o < b else f"took {o / b:.2f}x as long as"
            v.reasons.append(f"`{exact}` (the exact model under a no-op patch) {pace} the baseline "
                             f"(medians {beyond(abs(v.none_vs_baseline), v.tolerance)}% apart), outside its noise "
                             f"of {100 * v.tolerance:.1f}%")
    if runs and v.disturbed_runs > MAX_DISTURBED_FRACTION * len(runs):
        v.reasons.append(f"other processes used more than {100 * DISTURBED_SHARE:.0f}% of the CPUs during "
                         f"{v.disturbed_runs} of {len(runs)} timed runs")
    v.reliable = not v.reasons
    return v


def verdict_line(verdict: dict[str, Any] | None) -> str:
    """The timing verdict (`Verdict` as a dict) as the one line printed above a table; "" for None."""
    if verdict is None:
        return ""
    share = verdict.get("other_cpu")
    load = "" if share is None else f"; other processes used {100 * share:.0f}% of the CPUs on average"
    if verdict["reliable"]:
        return f"Timings: reliable ({verdict['disturbed_runs']} of {verdict['runs']} timed runs disturbed{load})."
    return f"**UNRELIABLE TIMINGS**: {'; '.join(verdict['reasons'])}{load}."


# ---- the noise-floor row ----------------------------------------------------------------------------

NOISE_FLOOR = "noise-floor(sdpa-math)"


def noise_floor(steps: int) -> V.Variant:
    """The exact model with every `scaled_dot_product_attention` on SDPA's math kernel (the reference
    implementation), where the baseline runs whatever fused kernel torch picks for the device and dtype.
    Both are exact; their difference is rounding, the floor of every quality column. Bit-identical
    outputs mean the baseline's attention ran the math kernel too (no second path exists there)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def enable(pipe: Any) -> Any:
        context = sdpa_kernel([SDPBackend.MATH])
        context.__enter__()
        return context

    def disable(pipe: Any, context: Any) -> None:
        context.__exit__(None, None, None)

    return V.Variant(NOISE_FLOOR, "noise-floor", steps, enable, disable,
                     note="the exact model through SDPA's math kernel: a second exact path")
