"""Writing a tuning run: tuned.json (the configuration), results.json and results.md (every candidate
tried), and pareto.png (speedup against quality). Written after every candidate, so that a run stopped by
Ctrl-C or the time budget leaves a valid partial result."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import SCHEMA, method_dicts
from .pipeline import IDENTICAL_DB
from .search import METRICS, Trial, TuneResult, pareto


@dataclass
class RunInfo:
    """What the result files say about the run besides the trials."""

    model: str
    pipeline: str
    device: str
    command: str | None = None
    budget_s: float | None = None
    exact: dict[str, Any] = field(default_factory=dict)  # the exact run: seconds, accuracy
    not_searched: dict[str, str] = field(default_factory=dict)


def _status(result: TuneResult) -> str:
    return {"running": "running: the search has not ended (partial)", "done": "complete", "budget": "stopped: the time budget was spent",
            "interrupted": "stopped: interrupted (Ctrl-C)"}[result.stopped]


def tuned_record(result: TuneResult, info: RunInfo) -> dict[str, Any]:
    """The tuned.json record: the best configuration with its measurements, or none (and why)."""
    floor, best = result.floor, result.best
    record: dict[str, Any] = {
        "schema": SCHEMA, "model": info.model, "pipeline": info.pipeline,
        "floor": {"metric": floor.metric, "value": floor.value, "means": METRICS[floor.metric][0]},
        "status": _status(result), "command": info.command, "device": info.device,
    }
    if best is None:
        return record | {"methods": [], "note": "no candidate held the floor on the tuning and held-out samples"
                                                 + ("" if result.complete else " before the run stopped")}
    return record | {
        "methods": method_dicts(best.candidate.configs()),
        "token": best.candidate.token,
        "steps": best.candidate.steps,
        "base_steps": result.base_steps,
        "measured": {
            "speedup": best.speedup,
            "quality": best.final_quality(),
            "tuning_samples": result.rungs[-1],
            "held_out": best.held_out,
            "held_out_samples": result.held_out_n,
            "exact": info.exact,
        },
        "apply": ("accel.patch(pipe, method=accel.load_config(path))"
                  + (f"; run the pipeline with num_inference_steps={best.candidate.steps}"
                     if best.candidate.steps != result.base_steps else "")),
    }


def _q(value: float | None, metric: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2f}" if metric == "psnr" else (f"{value:+.1f}" if metric == "accuracy-drop" else f"{value:.3f}")


def markdown(result: TuneResult, info: RunInfo) -> str:
    """The table of every candidate tried (screening rows first), the best marked."""
    floor = result.floor
    unit = {"psnr": "PSNR dB", "accuracy-drop": "accuracy drop (points)", "agreement": "agreement"}[floor.metric]
    best = result.best
    head = f"Command: `{info.command}`\n\n" if info.command else ""
    head += (f"model `{info.model}` ({info.pipeline}), floor {floor} ({METRICS[floor.metric][0]}), exact run at "
             f"{result.base_steps} steps, tuning samples {', '.join(map(str, result.rungs))} (rungs), held-out "
             f"{result.held_out_n}; {result.measurements} measurements in {result.elapsed_s / 60:.1f} min"
             + (f" of a {info.budget_s / 60:g} min budget" if info.budget_s else "")
             + f" ({_status(result)}); device: {info.device}\n\n")
    if best is not None:
        head += (f"**Best: `{best.candidate.token}` at {best.candidate.steps} steps: {best.speedup:.2f}x, "
                 f"{unit} {_q(best.final_quality(), floor.metric)} on the tuning samples, "
                 f"{_q(best.held_out, floor.metric)} held out.**\n\n")
    else:
        head += "**No candidate held the floor.**\n\n"
    front = {id(t) for t in pareto(result.trials, floor)}
    cols = ["candidate (--methods token)", "steps", "estimate", "speedup (interleaved)",
            f"{unit} by tuning samples", f"{unit} held out", "status"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    order = [t for t in result.trials if t.screen] + sorted(
        (t for t in result.trials if not t.screen and t.status != "not tried" and not t.status.startswith("not tried")),
        key=lambda t: -(t.estimate or 0.0))
    for t in order:
        quality = ", ".join(f"{n}: {_q(v, floor.metric)}" for n, v in sorted(t.quality.items())) or "-"
        status = t.status + (" (Pareto front)" if id(t) in front and t is not best else "")
        name = f"**{t.candidate.token}**" if t is best else t.candidate.token
        lines.append("| " + " | ".join([
            name, str(t.candidate.steps), f"{t.estimate:.2f}x" if t.estimate else "-",
            f"{t.speedup:.2f}x" if t.speedup else "-", quality, _q(t.held_out, floor.metric), status]) + " |")
    untried = sum(1 for t in result.trials if t.status.startswith("not tried") and not t.screen)
    tail = f"\n{untried} more candidates were not tried (their estimates could not win, or the run stopped).\n" \
        if untried else ""
    return head + "\n".join(lines) + "\n" + tail


def write_plot(result: TuneResult, path: Path) -> bool:
    """Speedup against the floor's metric for every candidate measured at the last rung, the floor as a
    line, the Pareto front joined. False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    floor = result.floor
    def point(t: Trial, x: float | None) -> tuple[float, float]:
        return float(x or 0.0), float(t.final_quality() or 0.0)

    done = [t for t in result.trials if t.speedup is not None and t.quality]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    for t in done:
        mark = "*" if t is result.best else ("^" if t.candidate.parts == (("none", ()),) else "o")
        x, y = point(t, t.speedup)
        ax.scatter(x, y, marker=mark, s=120 if t is result.best else 40)
        ax.annotate(f"{t.candidate.token}@{t.candidate.steps}", (x, y), textcoords="offset points", xytext=(4, 3),
                    fontsize=6)
    rejected = [point(t, t.estimate) for t in result.trials if t.speedup is None and t.quality and t.estimate]
    if rejected:  # stopped at an earlier rung: at their estimated speed, their last measured quality
        ax.scatter([x for x, _ in rejected], [y for _, y in rejected], marker="x", s=14, color="grey", alpha=0.6,
                   label="stopped at an earlier rung (estimated speed)")
    front = [point(t, t.speedup) for t in pareto(result.trials, floor)]
    if front:
        ax.plot([x for x, _ in front], [y for _, y in front], color="grey", lw=0.8)
    ax.axhline(floor.value, color="red", lw=0.8, ls="--", label=f"floor {floor}")
    ax.set_xlabel("speedup over the exact run (x)")
    ax.set_ylabel({"psnr": f"PSNR vs exact (dB; identical drawn at {IDENTICAL_DB:g})",
                   "accuracy-drop": "accuracy drop (points)"}.get(floor.metric, floor.metric))
    ax.set_title(f"accel tune: {len(done)} candidates measured in full, {len(rejected)} stopped earlier", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write_all(result: TuneResult, info: RunInfo, out: Path, plot: bool = True) -> dict[str, Path]:
    """tuned.json, results.json, results.md (and pareto.png) in `out`; each file replaced whole."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"config": out / "tuned.json", "json": out / "results.json", "md": out / "results.md"}
    record = tuned_record(result, info)
    data = {"schema": "accel.tune.results/1", "tuned": record, "rungs": list(result.rungs),
            "held_out_samples": result.held_out_n, "base_steps": result.base_steps, "stopped": result.stopped,
            "elapsed_s": result.elapsed_s, "measurements": result.measurements, "budget_s": info.budget_s,
            "not_searched": info.not_searched, "trials": [t.to_json() for t in result.trials]}
    for key, text in (("config", json.dumps(record, indent=2, default=str)),
                      ("json", json.dumps(data, indent=2, default=str)), ("md", markdown(result, info))):
        tmp = paths[key].with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(paths[key])  # never a half-written file, even when stopped mid-write
    if plot:
        try:
            if write_plot(result, out / "pareto.png"):
                paths["plot"] = out / "pareto.png"
        except KeyboardInterrupt:  # a Ctrl-C while plotting: the results above are complete; no plot
            print(f"tune: interrupted while plotting; {out / 'pareto.png'} not written (the results are)", flush=True)
    return paths

