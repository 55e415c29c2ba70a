"""What the demo computes, with no UI: baseline and accelerated runs of one pipeline, side by side.

`DemoSession.compare` runs the baseline (cached per model, settings and seed, so switching methods is
quick) and each requested method with the same seed, and returns outputs, latencies, speedups,
PSNR/SSIM against the baseline, the methods' stats, and task accuracy where a judge exists (the trained
reference entries: the same evaluation as `accel bench`, on `Settings.accuracy_n` samples, so it stays
interactive).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch

import accel
from accel import zoo
from accel.bench.accuracy import has_task, task_accuracy
from accel.bench.metrics import psnr, ssim


@dataclass(frozen=True)
class Settings:
    """One generation request: what identifies a baseline output."""

    model: str
    size: str = "tiny"
    steps: int = 10
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
    """Holds loaded pipelines and baseline results; one comparison at a time (the app queues users)."""

    def __init__(self) -> None:
        self._pipes: dict[tuple[str, str], Any] = {}
        self._baselines: dict[Settings, Result] = {}
        self._lock = threading.Lock()

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

    def accelerated(self, s: Settings, method: str, options: dict[str, Any], base: Result) -> Result:
        pipe = self.pipeline(s.model, s.size)
        with accel.patch(pipe, method=method, **options) as handle:
            out, seconds = self._run(pipe, s)
            stats = handle.stats()
            accuracy = self._accuracy(pipe, s)
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
