"""`accel tune`'s measurement on a real diffusers pipeline: speed against the exact run in the same
process, and quality against the exact run on the same seeds or samples.

Speed: a candidate's run is timed beside a run of the exact pipeline (its `steps`, unpatched) on the same
seed, in interleaved pairs, after one untimed warm-up of each; a screening measurement (`pairs=1`) takes
the faster of two runs of the candidate against the fastest of the last three exact runs (one more every
third screen).

Quality, per floor:
- psnr: the final latents of the candidate on tuning seeds `seed, seed+1, ...` (held-out: from `seed +
  HELD_OUT`) against the exact run's latents of the same seeds; the mean over the seeds, in dB (identical
  outputs count as 100 dB). The runs of the first seeds are reused by later rungs.
- accuracy-drop: the trained entry's judge (`accel.zoo.evaluate`) over n samples from `seed` (held-out:
  `seed + HELD_OUT`), exact accuracy minus the candidate's, in points.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import accel
from accel.bench.measure import timed
from accel.bench.metrics import psnr

from .search import Candidate, Floor

HELD_OUT = 10_000  # held-out seeds start this far from the tuning seeds
IDENTICAL_DB = 100.0  # the PSNR counted for an output identical to the exact one


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per non-empty line of a text file."""
    lines = [line.strip() for line in Path(path).read_text().splitlines()]
    prompts = [line for line in lines if line]
    if not prompts:
        raise accel.InvalidOptionError(f"tune: --prompts {path}: the file has no prompt (one per line)")
    return prompts


def check_floor(model: str, floor: Floor) -> None:
    """Raise `InvalidOptionError` when an image or video pipeline `model` cannot measure `floor`."""
    from accel.bench.accuracy import has_task

    if floor.metric == "accuracy-drop" and not has_task(model):
        from accel.zoo.reference import TRAINED

        raise accel.InvalidOptionError(
            f"tune: --floor {floor}: task accuracy needs a trained reference model with a judge "
            f"({', '.join(TRAINED)}); {model!r} is not one. Use --floor psnr=DB.")
    if floor.metric == "agreement":
        raise accel.InvalidOptionError(
            f"tune: --floor {floor}: agreement counts equal tokens of a language model; accel tune searches image "
            "and video pipelines. Use --floor psnr=DB, or accuracy-drop=POINTS on a trained reference model.")


class PipelineMeasure:
    """The `Measure` of `accel.tune.search` for a diffusers image or video pipeline.

    `model`: its zoo name (for the accuracy judge and the zoo's call arguments) or a path; `prompts`: text
    prompts for a pipeline with its own text encoder (sample i uses prompt i modulo their number), else
    the zoo's seeded inputs are used. Raises `InvalidOptionError` for a floor this pipeline cannot measure.
    """

    def __init__(self, pipe: Any, model: str, floor: Floor, steps: int, seed: int = 0,
                 prompts: Sequence[str] | None = None, device: str = "cpu") -> None:
        check_floor(model, floor)
        self.pipe, self.model, self.floor = pipe, model, floor
        self.base_steps, self.seed, self.prompts = steps, seed, list(prompts or [])
        self.device = torch.device(device)
        self.exact_times: list[float] = []
        self._calls = 0
        self._exact_out: dict[int, torch.Tensor] = {}
        self._outputs: dict[tuple[Candidate, int], torch.Tensor] = {}
        self._exact_accuracy: dict[tuple[int, int], float] = {}
        self.exact_accuracy: dict[str, float] = {}  # "tuning"/"held-out" -> the exact run's accuracy
        self._warm: set[Any] = set()

    # ---- one run -----------------------------------------------------------------------------
    def _kwargs(self, steps: int, seed: int) -> dict[str, Any]:
        if self.prompts:
            gen = torch.Generator(self.device.type).manual_seed(seed)
            prompt = self.prompts[(seed - self.seed) % len(self.prompts)]
            return {"prompt": prompt, "num_inference_steps": steps, "generator": gen, "output_type": "latent"}
        kwargs = accel.zoo.inputs(self.pipe, steps=steps, seed=seed, output_type="latent")
        if self.device.type != "cpu" and isinstance(kwargs.get("generator"), torch.Generator):
            kwargs["generator"] = torch.Generator(self.device).manual_seed(seed)
        return kwargs

    def _run(self, candidate: Candidate | None, seed: int) -> tuple[torch.Tensor, float]:
        """One run (None: the exact pipeline at the base steps): (its output on the CPU, seconds)."""
        from accel.bench.runner import pipeline_output

        steps = self.base_steps if candidate is None else candidate.steps
        kwargs = self._kwargs(steps, seed)
        handle = None if candidate is None else accel.patch(self.pipe, method=candidate.configs())
        try:
            with torch.inference_mode():
                result, seconds, _ = timed(lambda: self.pipe(**kwargs), self.device)
        finally:
            if handle is not None:
                handle.unpatch()
        return pipeline_output(result).detach().to("cpu", torch.float32), seconds

    def _exact(self, seed: int) -> float:
        out, seconds = self._run(None, seed)
        self._exact_out.setdefault(seed, out)
        self.exact_times.append(seconds)
        return seconds

    def _warm_up(self, candidate: Candidate | None) -> None:
        if candidate not in self._warm:
            self._warm.add(candidate)
            self._run(candidate, self.seed)

    # ---- the Measure protocol ------------------------------------------------------------------
    def speed(self, candidate: Candidate, pairs: int) -> float:
        self._warm_up(None)
        if pairs <= 1:  # a screen: the faster of two runs (the first may carry one-time costs)
            if not self.exact_times or self._calls % 3 == 0:
                self._exact(self.seed)
            self._calls += 1
            out, first = self._run(candidate, self.seed)
            self._outputs.setdefault((candidate, self.seed), out)
            return min(self.exact_times[-3:]) / min(first, self._run(candidate, self.seed)[1])
        self._warm_up(candidate)
        exact, mine = [], []
        for i in range(pairs):
            seed = self.seed + i
            if i % 2 == 0:  # alternate which runs first
                exact.append(self._exact(seed))
                out, seconds = self._run(candidate, seed)
            else:
                out, seconds = self._run(candidate, seed)
                exact.append(self._exact(seed))
            mine.append(seconds)
            self._outputs.setdefault((candidate, seed), out)
        return statistics.median(exact) / statistics.median(mine)

    def quality(self, candidate: Candidate, n: int, held_out: bool = False) -> float:
        first = self.seed + (HELD_OUT if held_out else 0)
        if self.floor.metric == "accuracy-drop":
            return 100 * (self._accuracy(None, n, first) - self._accuracy(candidate, n, first))
        values = []
        for seed in range(first, first + n):
            if seed not in self._exact_out:
                self._exact(seed)
            if (candidate, seed) not in self._outputs:
                self._outputs[(candidate, seed)] = self._run(candidate, seed)[0]
            db = psnr(self._exact_out[seed], self._outputs[(candidate, seed)])
            values.append(min(db, IDENTICAL_DB))
        return sum(values) / len(values)

    def _accuracy(self, candidate: Candidate | None, n: int, seed: int) -> float:
        from accel.bench.accuracy import task_accuracy

        if candidate is None and (n, seed) in self._exact_accuracy:
            return self._exact_accuracy[(n, seed)]
        steps = self.base_steps if candidate is None else candidate.steps
        handle = None if candidate is None else accel.patch(self.pipe, method=candidate.configs())
        try:
            with torch.inference_mode():
                value = task_accuracy(self.model, self.pipe, n, seed, steps)
        finally:
            if handle is not None:
                handle.unpatch()
        if candidate is None:
            self._exact_accuracy[(n, seed)] = value
            self.exact_accuracy["held-out" if seed != self.seed else "tuning"] = value
        return value

    def exact_seconds(self) -> float | None:
        return statistics.median(self.exact_times) if self.exact_times else None
