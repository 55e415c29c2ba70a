"""`accel tune`: the fastest configuration of accel's methods, their options, their compositions and fewer
steps that keeps a quality floor on the user's own pipeline, measured against its exact output.

    accel tune --model digits-video --floor accuracy-drop=1 --budget-minutes 20 --out tuned/
    handle = accel.patch(pipe, method=accel.load_config("tuned/tuned.json"))

`search` is the search (independent of pipelines), `pipeline` measures a real pipeline, `space` says what
is searched, `config` reads and writes the configuration, `report` the table and plot.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import TunedConfig, load_config, read
from .search import Candidate, Floor, Measure, Trial, TuneResult, rungs_for, tune

__all__ = ["Candidate", "Floor", "Measure", "Trial", "TuneResult", "TuneSpec", "TunedConfig", "load_config", "read",
           "run", "rungs_for", "tune"]


@dataclass(frozen=True)
class TuneSpec:
    """One `accel tune` run. Defaults are the command's."""

    model: str  # a zoo name, a local pipeline directory, or a hub id in the local cache
    floor: Floor
    out: str = "tune-results"
    prompts: str | None = None  # a text file, one prompt per line (pipelines with a text encoder)
    methods: tuple[str, ...] = ()  # methods (or tokens with fixed options) to search; () = every one that applies
    steps: int | None = None  # the exact run's steps; None: the trained entry's, else 20
    samples: int | None = None  # tuning samples at the last rung; None: 40 for accuracy-drop, 8 seeds for psnr
    held_out: int | None = None  # held-out samples; None: as many as `samples`
    seed: int = 0
    budget_minutes: float = 20.0
    size: str = "bench"
    device: str = "cpu"
    progress: bool = True
    command: str | None = None


DEFAULT_STEPS = 20


def _defaults(spec: TuneSpec) -> tuple[int, int, int]:
    from accel.zoo.reference import TRAINED

    steps = spec.steps or (TRAINED[spec.model].steps if spec.model in TRAINED else None) or DEFAULT_STEPS
    samples = spec.samples or (40 if spec.floor.metric == "accuracy-drop" else 8)
    return steps, samples, spec.held_out or samples


def run(spec: TuneSpec) -> tuple[TuneResult, dict[str, Path]]:
    """Load the pipeline, search, and write the result files into `spec.out` (after every candidate, so
    that Ctrl-C or the budget leaves a valid partial result). Returns the result and the files written."""
    import accel
    from accel import zoo

    from . import report, space
    from .pipeline import PipelineMeasure, check_floor, read_prompts

    prompts = read_prompts(spec.prompts) if spec.prompts else None
    if prompts and spec.model in zoo.names():
        raise accel.InvalidOptionError(f"tune: --prompts with zoo model {spec.model!r}: zoo pipelines have no text "
                                       "encoder and take seeded prompt embeddings; --prompts is for local pipelines")
    if spec.model in zoo.names() and (zoo.is_vlm(spec.model) or zoo.is_text(spec.model)
                                      or spec.model in zoo.CHUNK_NAMES):
        raise accel.InvalidOptionError(f"tune: --model {spec.model}: accel tune searches image and video diffusion "
                                       "pipelines; this is a language model or a chunk-wise video pipeline")
    check_floor(spec.model, spec.floor)
    from accel.bench.variants import entry_configs

    for entry in spec.methods:  # an unknown method or option is refused before the pipeline loads
        entry_configs(entry)
    steps, samples, held_out = _defaults(spec)
    pipe: Any = zoo.load(spec.model, size=spec.size) if spec.model in zoo.names() else accel.load(spec.model)
    pipe = pipe.to(spec.device)
    measure = PipelineMeasure(pipe, spec.model, spec.floor, steps, spec.seed, prompts, spec.device)
    variants, not_searched = space.variants(pipe, spec.methods)
    from accel.info import info as env_info

    info = report.RunInfo(spec.model, type(pipe).__name__, env_info()["device"], spec.command,
                          spec.budget_minutes * 60, not_searched=not_searched)
    out = Path(spec.out)

    def save(result: TuneResult) -> None:
        info.exact = _exact(measure)
        report.write_all(result, info, out, plot=False)

    result = tune(measure, spec.floor, variants, space.steps_grid(steps), rungs_for(samples), held_out,
                  spec.budget_minutes * 60, progress=spec.progress, on_trial=save, composable=space.composable)
    info.exact = _exact(measure)
    return result, report.write_all(result, info, out)


def _exact(measure: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"steps": measure.base_steps, "seconds": measure.exact_seconds()}
    if measure.exact_accuracy:
        out["accuracy"] = dict(measure.exact_accuracy)
    return out
