"""`accel bench`: every row in one process, same seeds, interleaved repeats, after warm-up.

Per row: end-to-end latency (median, min, max), speedup over the baseline, time in attention, peak
memory, fidelity of the final output against the baseline's output at the same seed, the method's own
stats and, on trained reference models, task accuracy (measured after the timed repeats, never in them). A "fewer steps" row, timed to match the fastest accelerated row, is the honest baseline for
any caching method.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from tqdm.auto import tqdm

import accel
from accel import zoo

from . import variants as V
from .accuracy import has_task, task_accuracy
from .measure import attention_seconds, timed
from .metrics import fidelity

logger = logging.getLogger("accel")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_PEERS = ("fewer-steps", *V.DIFFUSERS_CACHES)


@dataclass
class BenchSpec:
    """What to benchmark. Defaults are the README's `accel bench` run."""

    model: str = "flux"  # a zoo name, a local directory, or a hub id already in the local cache
    size: str = "bench"  # zoo size: "tiny" or "bench"
    methods: tuple[str, ...] = ("auto",)  # "auto": none + every method that supports it; "name:label": a 2nd row
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    peers: tuple[str, ...] = DEFAULT_PEERS  # "fewer-steps" and diffusers caches: fbc, taylorseer, pab, fastercache
    backends: tuple[str, ...] = ()  # extra dense attention backends: sdpa, flex, xformers
    fewer_steps: tuple[int, ...] = ()  # explicit fewer-steps rows, besides the ones timed to match methods
    steps: int = 10
    height: int | None = None
    width: int | None = None
    frames: int | None = None
    seeds: tuple[int, ...] = (0,)
    repeat: int = 3
    warmup: int = 1
    device: str = "cpu"
    dtype: str = "fp32"
    output_type: str = "latent"
    profile_attention: bool = True
    progress: bool = True
    accuracy_n: int = 100  # task-accuracy samples per row on trained reference models; 0 = off
    keep_sweep: tuple[float, ...] = ()  # VLMs: PyramidDrop rows at these keep ratios, FastV at the same budget

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise accel.InvalidOptionError(f"bench: dtype={self.dtype!r}; expected one of {', '.join(DTYPES)}")
        if any(not 1 <= k < self.steps for k in self.fewer_steps):
            raise accel.InvalidOptionError(f"bench: fewer_steps={self.fewer_steps}; each must be in [1, steps)")
        if self.steps < 1 or self.repeat < 1 or self.warmup < 0 or not self.seeds:
            raise accel.InvalidOptionError("bench: steps and repeat must be >= 1, warmup >= 0, and seeds non-empty")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise accel.InvalidOptionError(f"bench: device={self.device!r}; expected cpu or cuda")
        if self.accuracy_n < 0:
            raise accel.InvalidOptionError(
                f"bench: accuracy_n={self.accuracy_n}; expected 0 (off) or a positive sample count"
            )

    @property
    def measures_accuracy(self) -> bool:
        return self.accuracy_n > 0 and has_task(self.model)


@dataclass
class RowResult:
    label: str
    kind: str
    steps: int
    note: str = ""
    status: str = "ok"
    latency_s: dict[str, float] = field(default_factory=dict)
    speedup: float | None = None
    warmup_s: float | None = None
    attention_s: float | None = None
    attention_share: float | None = None
    peak_mem_mb: float | None = None
    fidelity: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    accuracy: float | None = None  # task accuracy in [0, 1] (trained reference models only)
    accuracy_delta_pts: float | None = None  # accuracy minus the baseline's, in percentage points


@dataclass
class BenchResult:
    spec: BenchSpec
    env: dict[str, Any]
    model: dict[str, Any]
    rows: list[RowResult]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": "accel.bench/1",
            "spec": asdict(self.spec),
            "env": self.env,
            "model": self.model,
            "rows": [asdict(r) for r in self.rows],
        }


def _load(spec: BenchSpec) -> Any:
    dtype = DTYPES[spec.dtype]
    if spec.model in zoo.names():
        pipe = zoo.load(spec.model, size=spec.size, dtype=dtype)
    else:
        pipe = accel.load(spec.model, dtype=dtype)
    return pipe.to(spec.device)


def _call_kwargs(pipe: Any, spec: BenchSpec, steps: int, seed: int) -> dict[str, Any]:
    kwargs = zoo.inputs(
        pipe, steps=steps, seed=seed, height=spec.height, width=spec.width, num_frames=spec.frames,
        output_type=spec.output_type,
    )
    gen = kwargs.get("generator")
    if spec.device != "cpu" and isinstance(gen, torch.Generator):
        kwargs["generator"] = torch.Generator(spec.device).manual_seed(seed)
    return kwargs


def _output(result: Any) -> torch.Tensor:
    for name in ("images", "frames"):
        value = getattr(result, name, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(result, tuple) and isinstance(result[0], torch.Tensor):
        return result[0]
    raise TypeError(f"accel bench: cannot find a tensor output in {type(result).__name__}")


class _Bench:
    def __init__(self, spec: BenchSpec) -> None:
        self.spec = spec
        self.device = torch.device(spec.device)
        self.pipe = _load(spec)
        self.rows: list[tuple[V.Variant, RowResult]] = []
        self.outputs: dict[tuple[str, int], torch.Tensor] = {}
        self.times: dict[str, list[float]] = {}
        self.peaks: dict[str, list[int]] = {}

    # ---- one run ---------------------------------------------------------------------------
    def run_once(self, variant: V.Variant, seed: int) -> tuple[torch.Tensor, float, int, Any]:
        kwargs = _call_kwargs(self.pipe, self.spec, variant.steps, seed)
        handle = variant.enable(self.pipe)
        try:
            with torch.inference_mode():
                result, seconds, peak = timed(lambda: self.pipe(**kwargs), self.device)
            stats = variant.stats(handle)
        finally:
            variant.disable(self.pipe, handle)
        return _output(result), seconds, peak, stats

    def add(self, variant: V.Variant) -> RowResult:
        row = RowResult(variant.label, variant.kind, variant.steps, variant.note, options=variant.options)
        self.rows.append((variant, row))
        return row

    def skip(self, label: str, kind: str, steps: int, reason: str) -> None:
        self.rows.append((V.Variant(label, kind, steps), RowResult(label, kind, steps, status=f"skipped: {reason}")))

    # ---- phases ----------------------------------------------------------------------------
    def warm_up(self, bar: tqdm) -> None:
        for variant, row in self.rows:
            if row.status != "ok" or row.warmup_s is not None:
                continue
            try:
                for _ in range(max(1, self.spec.warmup)):
                    _, seconds, _, _ = self.run_once(variant, self.spec.seeds[0])
                    row.warmup_s = seconds if row.warmup_s is None else row.warmup_s
                    bar.update(1)
            except Exception as err:  # a peer that cannot run here is a row that says so
                row.status = f"failed: {type(err).__name__}: {err}"

    def calibrate(self, bar: tqdm) -> dict[str, float]:
        """One more timed run per row after warm-up, to choose the fewer-steps counts."""
        seconds = {}
        for variant, row in self.rows:
            if row.status == "ok":
                seconds[row.label] = self.run_once(variant, self.spec.seeds[0])[1]
                bar.update(1)
        return seconds

    def repeats(self, bar: tqdm) -> None:
        live = [(v, r) for v, r in self.rows if r.status == "ok"]
        for rep in range(self.spec.repeat if live else 0):
            shift = rep % len(live)
            for variant, row in live[shift:] + live[:shift]:  # rotate the order each repeat
                if row.status != "ok":
                    continue
                for seed in self.spec.seeds:
                    try:
                        out, seconds, peak, stats = self.run_once(variant, seed)
                    except Exception as err:
                        row.status = f"failed: {type(err).__name__}: {err}"
                        break
                    self.times.setdefault(row.label, []).append(seconds)
                    self.peaks.setdefault(row.label, []).append(peak)
                    self.outputs.setdefault((row.label, seed), out.detach().to("cpu", torch.float32))
                    row.stats = stats
                    bar.update(1)

    def profile(self, bar: tqdm) -> None:
        for variant, row in self.rows:
            if row.status != "ok" or not self.spec.profile_attention:
                continue
            kwargs = _call_kwargs(self.pipe, self.spec, variant.steps, self.spec.seeds[0])
            handle = variant.enable(self.pipe)
            try:
                with torch.inference_mode():
                    attn, total = attention_seconds(lambda kw=kwargs: self.pipe(**kw), self.device)
            finally:
                variant.disable(self.pipe, handle)
            row.attention_s, row.attention_share = attn, (attn / total if total > 0 else None)
            bar.update(1)

    def accuracy(self, bar: tqdm) -> None:
        """Task accuracy of every row on the same samples (first seed), each with its own steps."""
        spec = self.spec
        for variant, row in self.rows:
            if row.status != "ok":
                continue
            handle = variant.enable(self.pipe)
            try:
                with torch.inference_mode():
                    row.accuracy = task_accuracy(spec.model, self.pipe, spec.accuracy_n, spec.seeds[0], variant.steps)
            finally:
                variant.disable(self.pipe, handle)
            bar.update(1)
        base = next((r.accuracy for _, r in self.rows if r.label == "baseline"), None)
        for _, row in self.rows:
            if row.accuracy is not None and base is not None:
                row.accuracy_delta_pts = 100 * (row.accuracy - base)

    def summarize(self) -> None:
        base_times = self.times.get("baseline")
        base_median = statistics.median(base_times) if base_times else None
        frame_axis = 1 if type(self.pipe.transformer).__name__.startswith("CogVideoX") else 2
        decoded = self.spec.output_type != "latent"
        for _, row in self.rows:
            times = self.times.get(row.label)
            if not times or row.status != "ok":
                continue
            median = statistics.median(times)
            row.latency_s = {"median": median, "min": min(times), "max": max(times), "n": len(times)}
            row.speedup = base_median / median if base_median else None
            row.peak_mem_mb = max(self.peaks[row.label]) / 2**20
            per_seed = [
                fidelity(self.outputs[("baseline", s)], self.outputs[(row.label, s)], decoded, frame_axis)
                for s in self.spec.seeds
                if ("baseline", s) in self.outputs and (row.label, s) in self.outputs
            ]
            row.fidelity = _mean_fidelity(per_seed)


def _mean_fidelity(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    if not per_seed:
        return {}
    out: dict[str, Any] = {}
    for key in per_seed[0]:
        values = [f[key] for f in per_seed if f[key] is not None]
        out[key] = sum(values) / len(values) if values else None
    psnr = out.get("psnr")
    out["identical"] = psnr is not None and math.isinf(psnr)
    if out["identical"]:
        out["psnr"] = None  # JSON has no infinity; `identical` says so
    return out


def _fewer_steps(bench: _Bench, seconds: dict[str, float]) -> list[V.Variant]:
    """One baseline row at fewer steps per accelerating row (at least 5% faster in the calibration run),
    its step count chosen to take the same time (time is close to linear in steps)."""
    base = seconds.get("baseline")
    if not base:
        return []
    chosen: dict[int, str] = {}
    for _, row in bench.rows:
        faster = row.label in seconds and seconds[row.label] < 0.95 * base
        if row.kind in ("accel", "diffusers-cache") and row.label != "none" and faster:
            steps = max(1, round(bench.spec.steps * seconds[row.label] / base))
            if steps < bench.spec.steps:
                chosen.setdefault(steps, row.label)
    return [V.fewer_steps(k, label) for k, label in sorted(chosen.items())]


def _expand_methods(names: tuple[str, ...], pipe: Any) -> list[str]:
    """Replace "auto" by `none` and every registered method that can patch this pipeline."""
    from accel.method import method_class
    from accel.target import resolve_target

    out: list[str] = []
    for name in names:
        if name != "auto":
            out.append(name)
            continue
        target = resolve_target(pipe)
        for info in accel.methods():
            method = method_class(info.name)(method_class(info.name).Config())
            try:
                method.check(target)
            except accel.UnsupportedModelError:
                continue
            out.append(info.name)
    ordered = ["none"] if "none" in out else []
    return ordered + [n for n in dict.fromkeys(out) if n != "none"]


def quick(spec: BenchSpec) -> BenchSpec:
    """`--quick`: the same rows at half the zoo resolution (a quarter of the tokens), at most 8 steps,
    one repeat and at most 50 task-accuracy samples: under two minutes on a 2-core CPU for the default model."""
    changes: dict[str, Any] = {"steps": min(spec.steps, 8), "repeat": 1, "accuracy_n": min(spec.accuracy_n, 50)}
    changes["fewer_steps"] = tuple(k for k in spec.fewer_steps if k < changes["steps"])
    from accel.zoo.families import ENTRIES  # random-weight entries; trained ones keep their size

    if spec.model in ENTRIES and zoo.resizable(spec.model) and spec.height is None and spec.width is None:
        res = zoo.default_resolution(spec.model, spec.size)
        changes["height"], changes["width"] = res["height"] // 2, res["width"] // 2
        if "num_frames" in res and spec.frames is None:
            changes["frames"] = (res["num_frames"] - 1) // 2 + 1
    return replace(spec, **changes)


def run(spec: BenchSpec) -> BenchResult:
    """Run the benchmark described by `spec` and return every row."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if load is not None and spec.device == "cpu" and load >= 1.0:
        logger.warning("accel bench: the 1-minute load average is %.1f before the run; other processes share the "
                       "CPU, so the ratios will be noisy", load)
    bench = _Bench(spec)
    bench.add(V.baseline(spec.steps))
    for name in _expand_methods(spec.methods, bench.pipe):
        bench.add(V.accel_method(name, spec.steps, spec.method_options.get(name)))
    for peer in spec.peers:
        if peer == "fewer-steps":
            continue
        if peer in V.QUANT_PEERS:
            reason = V.quant_peer_support(peer)
            if reason:
                bench.skip(peer, "quant-peer", spec.steps, reason)
            else:
                bench.add(V.quant_peer(peer, spec.steps))
            continue
        name, threshold = V.parse_peer(peer)
        reason = V.diffusers_cache_support(bench.pipe, name)
        if reason:
            bench.skip(f"diffusers:{peer}", "diffusers-cache", spec.steps, reason)
        else:
            bench.add(V.diffusers_cache(name, spec.steps, bench.pipe, threshold))
    for name in spec.backends:
        reason = V.backend_support(name)
        if reason:
            bench.skip(f"backend:{name}", "backend", spec.steps, reason)
        else:
            bench.add(V.attention_backend(name, spec.steps))

    n_rows = len(bench.rows)
    total = n_rows * (max(1, spec.warmup) + spec.repeat * len(spec.seeds) + int(spec.profile_attention))
    total += 2 * n_rows if "fewer-steps" in spec.peers else 0  # calibration, and the rows it adds
    total += 2 * n_rows if spec.measures_accuracy else 0
    with tqdm(total=total, desc=f"accel bench {spec.model}", disable=not spec.progress, leave=False) as bar:
        bench.warm_up(bar)
        matched = _fewer_steps(bench, bench.calibrate(bar)) if "fewer-steps" in spec.peers else []
        if "fewer-steps" in spec.peers and not matched and spec.steps > 1:
            matched = [V.fewer_steps(max(1, round(0.6 * spec.steps)), "")]  # no faster row: 60% of the steps
        matched_steps = {v.steps for v in matched}
        for variant in matched + [V.fewer_steps(k, "") for k in spec.fewer_steps if k not in matched_steps]:
            bench.add(variant)
        bench.warm_up(bar)
        bench.repeats(bar)
        bench.profile(bar)
        if spec.measures_accuracy:
            bench.accuracy(bar)
    bench.summarize()

    from ..info import info

    model = {
        "name": spec.model,
        "pipeline": type(bench.pipe).__name__,
        "denoiser": type(bench.pipe.transformer).__name__,
        "parameters": sum(p.numel() for p in bench.pipe.transformer.parameters()),
        "call": {k: v for k, v in _call_kwargs(bench.pipe, spec, spec.steps, 0).items()
                 if isinstance(v, (int, float, str)) and not isinstance(v, bool)},
    }
    if spec.measures_accuracy:
        model["task_accuracy"] = {"samples": spec.accuracy_n, "seed": spec.seeds[0]}
    env = info()
    if load is not None and spec.device == "cpu":
        env["device"] += f", load average {load:.1f} before the run"
    return BenchResult(spec, env, model, [r for _, r in bench.rows])
