"""What the demo computes, with no UI: baseline and accelerated runs of one pipeline, side by side.

`DemoSession.compare` runs the baseline (cached per model, settings and seed, so switching methods is
quick) and each requested method or tuned configuration (`Preset`) with the same seed, and returns
outputs, latencies, speedups, PSNR/SSIM against the baseline, the methods' stats, and task accuracy
where a judge exists (the trained reference entries: the same evaluation as `accel bench`, on
`Settings.accuracy_n` samples, so it stays interactive).

The demo opens on `digits-video` (a trained model: a real digit, moving), so the accuracy column is
its judge's. It offers the tuned configuration measured on it (`TUNED`) and any file written by
`accel tune --out` (`Preset.from_file`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

import accel
from accel import zoo
from accel.bench.accuracy import has_task, task_accuracy
from accel.bench.metrics import psnr, ssim

DEFAULT_MODEL = "digits-video"  # trained: the accuracy column is its judge's (per generated frame)


@dataclass(frozen=True)
class Preset:
    """A configuration the demo offers beside the single methods: `method` for `accel.patch` (a config,
    or a tuple of them to compose), run at `step_fraction` of the request's steps (a tuned configuration
    may run fewer steps than the exact one); `source` says where it comes from; `model`, when set, is the
    one model it was tuned for, and the only one it is offered on."""

    label: str
    method: Any
    step_fraction: float = 1.0
    source: str = ""
    model: str | None = None

    def offered_on(self, model: str) -> bool:
        return self.model is None or self.model == model

    @classmethod
    def from_token(cls, token: str, source: str = "", model: str | None = None) -> Preset:
        """A preset from a `--methods` token: "tdc(order=1,threshold=0.5)", "pisa+tdc(order=1)"; `model`: the
        one it was tuned for (None: offered on every model)."""
        from accel.bench.variants import entry_configs

        configs = entry_configs(token)
        return cls(f"tuned: {token}", configs[0] if len(configs) == 1 else tuple(configs), 1.0, source, model)

    @classmethod
    def from_file(cls, path: str | Path) -> Preset:
        """The configuration `accel tune --out DIR` wrote (DIR or its tuned.json), via `accel.tune.read`
        (`accel.load_config` reads the same file). Raises FileNotFoundError or InvalidOptionError."""
        from accel.tune.config import read

        tuned = read(path)
        record = tuned.record
        base = int(record.get("base_steps") or tuned.steps)
        token = record.get("token") or str(tuned.method)
        steps = f" at {tuned.steps} of {base} steps" if tuned.steps < base else ""
        return cls(f"tuned ({Path(path).name}): {token}{steps}", tuned.method, tuned.steps / base,
                   f"{path}: accel tune on {record.get('model', '?')}", record.get("model"))

    def steps(self, requested: int) -> int:
        return max(1, round(requested * self.step_fraction))


# The fastest configuration measured on digits-video that beats fewer steps at equal time (docs/benchmarks.md:
# TDC with order 1, threshold 0.5, at most 3 skips in a row: 2.84x at -0.6 points, where 8 steps give 2.49x).
TUNED = "tdc(order=1,threshold=0.5,max_skips=3)"


def default_presets() -> list[Preset]:
    return [Preset.from_token(TUNED, "measured on digits-video at 20 steps (docs/benchmarks.md)", DEFAULT_MODEL)]


def applicable(pipe: Any) -> list[str]:
    """The methods that can patch `pipe`, `none` left out (the baseline is shown anyway)."""
    from accel.bench.runner import applicable_methods

    return [name for name in applicable_methods(pipe) if name != "none"]


def default_steps(model: str, fallback: int = 10) -> int:
    """The steps a trained entry's figures use (digits-video: 20), else `fallback`."""
    if has_task(model):
        from accel.zoo.reference import TRAINED

        return TRAINED[model].steps or fallback
    return fallback


@dataclass(frozen=True)
class Settings:
    """One generation request: what identifies a baseline output."""

    model: str = DEFAULT_MODEL
    size: str = "tiny"
    steps: int = 20
    seed: int = 0
    height: int | None = None
    width: int | None = None
    frames: int | None = None
    accuracy_n: int = 20  # task-accuracy samples on trained reference models; 0 = off

    def __post_init__(self) -> None:
        if self.accuracy_n < 0:
            raise accel.InvalidOptionError(
                f"demo: accuracy_n={self.accuracy_n}; expected 0 (off) or a positive sample count"
            )
        if self.steps < 1 or self.seed < 0:
            raise accel.InvalidOptionError(f"demo: steps={self.steps}, seed={self.seed}; expected steps >= 1 and "
                                           "seed >= 0")
        for name in ("height", "width", "frames"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise accel.InvalidOptionError(f"demo: {name}={value}; expected a positive size, or None for "
                                               "the model's default")


@dataclass
class Result:
    label: str
    output: torch.Tensor  # decoded: [C, H, W] image or [F, C, H, W] frames, values in [0, 1]
    seconds: float
    speedup: float | None = None
    psnr: float | None = None
    ssim: float | None = None
    accuracy: float | None = None  # task accuracy in [0, 1], trained reference models only
    accuracy_delta_pts: float | None = None  # change from the baseline's accuracy, in points
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def is_video(self) -> bool:
        return self.output.dim() == 4


@dataclass
class Comparison:
    settings: Settings
    baseline: Result
    methods: list[Result]


class DemoSession:
    """Holds loaded pipelines, baseline results and the offered presets (`default_presets()` unless
    given); one comparison at a time (the app queues users)."""

    def __init__(self, presets: list[Preset] | None = None) -> None:
        self._pipes: dict[tuple[str, str], Any] = {}
        self._baselines: dict[Settings, Result] = {}
        self._lock = threading.Lock()
        self.presets = {p.label: p for p in (default_presets() if presets is None else presets)}

    def pipeline(self, model: str, size: str) -> Any:
        key = (model, size)
        if key not in self._pipes:
            if model in zoo.names():
                self._pipes[key] = zoo.load(model, size=size)
            else:
                self._pipes[key] = accel.load(model)
        return self._pipes[key]

    def _run(self, pipe: Any, s: Settings) -> tuple[torch.Tensor, float]:
        kwargs = {"steps": s.steps, "seed": s.seed, "output_type": "pt"}
        if s.height or s.width:
            kwargs.update(height=s.height, width=s.width)
        if s.frames:
            kwargs["num_frames"] = s.frames
        start = time.perf_counter()
        out = zoo.generate(pipe, **kwargs)
        seconds = time.perf_counter() - start
        return out[0].float().clamp(0, 1).cpu(), seconds

    def _accuracy(self, pipe: Any, s: Settings) -> float | None:
        """Untimed: runs after the generation whose latency is reported."""
        if s.accuracy_n == 0 or not has_task(s.model):
            return None
        with torch.inference_mode():
            return task_accuracy(s.model, pipe, s.accuracy_n, s.seed, s.steps)

    def baseline(self, s: Settings) -> Result:
        if s not in self._baselines:
            pipe = self.pipeline(s.model, s.size)
            out, seconds = self._run(pipe, s)
            self._baselines[s] = Result(
                "baseline", out, seconds, speedup=1.0, accuracy=self._accuracy(pipe, s), stats={"cached": False}
            )
        return self._baselines[s]

    def choices(self, model: str, size: str) -> list[str]:
        """What the demo offers for `model`: every method that applies, then the presets tuned for it (or
        for no particular model)."""
        return applicable(self.pipeline(model, size)) + [k for k, p in self.presets.items() if p.offered_on(model)]

    def accelerated(self, s: Settings, method: str, options: dict[str, Any], base: Result) -> Result:
        """One method (its name and options) or preset (its label; options are its own), with `base`'s
        seed; a preset's steps are its fraction of `s.steps` (stats()["steps"] says how many ran)."""
        pipe = self.pipeline(s.model, s.size)
        preset = self.presets.get(method)
        run = s if preset is None else replace(s, steps=preset.steps(s.steps))
        patch = accel.patch(pipe, method=method, **options) if preset is None else accel.patch(pipe, method=preset.method)
        with patch as handle:
            out, seconds = self._run(pipe, run)
            stats = handle.stats()
            accuracy = self._accuracy(pipe, run)
        stats.pop("methods", None)
        delta = None if accuracy is None or base.accuracy is None else 100 * (accuracy - base.accuracy)
        return Result(
            method,
            out,
            seconds,
            speedup=base.seconds / seconds,
            psnr=psnr(base.output, out, data_range=1.0),
            ssim=ssim(base.output, out, data_range=1.0, frame_axis=1),
            accuracy=accuracy,
            accuracy_delta_pts=delta,
            stats=stats,
        )

    def compare(
        self,
        s: Settings,
        methods: list[str],
        options: dict[str, dict[str, Any]] | None = None,
        progress: Any = None,
    ) -> Comparison:
        """Baseline plus each method, same seed. `progress(fraction, desc)` is called between runs."""
        options = options or {}
        if not methods:
            raise accel.AccelError("demo: choose at least one method to compare with the baseline.")
        for method in methods:  # before any run
            preset = self.presets.get(method)
            if preset is not None and not preset.offered_on(s.model):
                raise accel.InvalidOptionError(
                    f"demo: {method!r} was tuned on {preset.model}, not on {s.model}; its thresholds and steps were "
                    f"measured there. Tune {s.model} with `accel tune --model {s.model} ...`, or choose another "
                    "method.")
        with self._lock:
            cached = s in self._baselines
            if progress:
                progress(0.0, desc="baseline" + (" (cached)" if cached else ""))
            base = self.baseline(s)
            base.stats["cached"] = cached
            results = []
            for i, method in enumerate(methods):
                if progress:
                    progress((i + 1) / (len(methods) + 1), desc=method)
                results.append(self.accelerated(s, method, options.get(method, {}), base))
        return Comparison(s, base, results)
