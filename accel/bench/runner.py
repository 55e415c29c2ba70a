"""`accel bench`: every row in one process, same seeds, interleaved repeats, after warm-up.

Per row: end-to-end latency (median, min, max, spread), speedup over the baseline, time in attention,
peak memory, fidelity of the final output against the baseline's output at the same seed, the method's
own stats and, on trained reference models, task accuracy (measured after the timed repeats, never in
them). A "fewer steps" row, timed to match each faster row, is the honest baseline for any caching
method; the noise-floor row (a second exact path) is the floor of every quality column.

The phases: warm-up; calibration (`repeat` interleaved rounds of every row on the first seed, more
until the medians settle) whose medians choose the fewer-steps rows, unless its verdict says it was
disturbed; warm-up of those rows; the timed repeats of every row (again until the medians settle);
the attention profile; task accuracy. Every timed run records what the machine did meanwhile, and the
table carries the verdict of `noise.judge` on its runs (accel/bench/noise.py).
"""

from __future__ import annotations

import logging
import math
import os
import statistics
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

import accel
from accel import zoo

from . import noise
from . import variants as V
from .accuracy import has_task, task_accuracy
from .measure import MachineProbe, Probe, RunSample, attention_seconds, watched
from .metrics import fidelity

logger = logging.getLogger("accel")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_PEERS = ("fewer-steps", *V.DIFFUSERS_CACHES)


@dataclass
class BenchSpec:
    """What to benchmark. Defaults are the README's `accel bench` run: the trained digits-video model
    (task accuracy is its judge's), every method, the compositions, diffusers' caches, fewer steps and
    the noise floor, 10-15 minutes on 2 cores."""

    model: str = "digits-video"  # a zoo name, a local directory, or a hub id already in the local cache
    size: str = "bench"  # zoo size: "tiny" or "bench" (trained reference entries have one size)
    weights: str | None = None  # digits-vqa: another checkpoint of its architecture (a safetensors file) in place of the committed one
    # "auto": none, every method that supports the model, and each one that changes another part than
    # the blocks composed with tdc ("pisa+tdc"); "name:label": a 2nd row; "tdc(order=1)": options in the token
    methods: tuple[str, ...] = ("auto",)
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    peers: tuple[str, ...] = DEFAULT_PEERS  # "fewer-steps" and diffusers caches: fbc, taylorseer, pab, fastercache
    backends: tuple[str, ...] = ()  # extra dense attention backends: sdpa, flex, xformers
    fewer_steps: tuple[int, ...] = ()  # explicit fewer-steps rows, besides the ones timed to match methods
    steps: int = 20
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
    accuracy_n: int = 20  # task-accuracy samples per row on trained reference models; 0 = off
    keep_sweep: tuple[float, ...] = ()  # VLMs: PyramidDrop rows at these keep ratios, FastV at the same budget
    noise_floor: bool = True  # the noise-floor row: the exact model through a second exact path
    settle_s: float = 60.0  # seconds of extra interleaved rounds, after `repeat`, until the medians settle; 0 = none
    settle_tol: float = 0.02  # settled: no row's median moved by more than this fraction in the last round

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise accel.InvalidOptionError(f"bench: dtype={self.dtype!r}; expected one of {', '.join(DTYPES)}")
        if any(not 1 <= k < self.steps for k in self.fewer_steps):
            raise accel.InvalidOptionError(f"bench: fewer_steps={self.fewer_steps}; each must be in [1, steps)")
        if self.steps < 1 or self.repeat < 1 or self.warmup < 0 or not self.seeds:
            raise accel.InvalidOptionError("bench: steps and repeat must be >= 1, warmup >= 0, and seeds non-empty")
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise accel.InvalidOptionError(f"bench: device={self.device!r}; expected cpu or cuda")
        if not self.settle_s >= 0 or not 0 < self.settle_tol < 1:
            raise accel.InvalidOptionError(
                f"bench: settle_s={self.settle_s}, settle_tol={self.settle_tol}; expected settle_s >= 0 (seconds) "
                "and settle_tol in (0, 1)"
            )
        if self.weights is not None:
            weights = Path(self.weights)
            problem = ("acts only with model digits-vqa" if self.model != "digits-vqa" else
                       "is a directory" if weights.is_dir() else None if weights.is_file() else "does not exist")
            if problem:
                raise accel.InvalidOptionError(
                    f"bench: weights={self.weights!r} (model={self.model!r}) {problem}; weights takes a safetensors "
                    "file of the digits-vqa architecture, with model digits-vqa"
                )
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
    spread: float | None = None  # interquartile range of the timed runs over their median (noise.spread)
    disturbed_runs: int | None = None  # timed runs during which other processes used > noise.DISTURBED_SHARE


@dataclass
class BenchResult:
    """Every row, and the verdicts on the timed runs: `reliability` on the repeats the table shows,
    `calibration` on the runs that chose the fewer-steps rows (`noise.Verdict` as dicts, plus the rounds
    run and whether the medians settled)."""

    spec: BenchSpec
    env: dict[str, Any]
    model: dict[str, Any]
    rows: list[RowResult]
    reliability: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)

    @property
    def reliable(self) -> bool:
        return bool(self.reliability.get("reliable", True)) and bool(self.calibration.get("reliable", True))

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": "accel.bench/2",
            "spec": asdict(self.spec),
            "env": self.env,
            "model": self.model,
            "reliability": self.reliability,
            "calibration": self.calibration,
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


def pipeline_output(result: Any) -> torch.Tensor:
    """The tensor a pipeline call returned (`images` or `frames`, or the first of a tuple); shared by `accel tune`."""
    for name in ("images", "frames"):
        value = getattr(result, name, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(result, tuple) and isinstance(result[0], torch.Tensor):
        return result[0]
    raise TypeError(f"accel bench: cannot find a tensor output in {type(result).__name__}")


MAX_EXTRA_ROUNDS = 20  # settling stops after this many extra rounds even with budget left


class _Bench:
    def __init__(self, spec: BenchSpec, probe: Probe | None = None, pipe: Any = None) -> None:
        self.spec = spec
        self.device = torch.device(spec.device)
        self.pipe = _load(spec) if pipe is None else pipe
        self.probe = probe or MachineProbe()
        self.rows: list[tuple[V.Variant, RowResult]] = []
        self.outputs: dict[tuple[str, int], torch.Tensor] = {}
        self.samples: dict[str, list[RunSample]] = {}  # the timed repeats the table shows
        self.calibration: dict[str, list[RunSample]] = {}  # the runs that choose the fewer-steps rows
        self.peaks: dict[str, list[int]] = {}
        self.settle_left = spec.settle_s

    # ---- one run ---------------------------------------------------------------------------
    def run_once(self, variant: V.Variant, seed: int) -> tuple[torch.Tensor, RunSample, int, Any]:
        kwargs = _call_kwargs(self.pipe, self.spec, variant.steps, seed)
        handle = variant.enable(self.pipe)
        try:
            with torch.inference_mode():
                result, sample, peak = watched(lambda: self.pipe(**kwargs), self.device, self.probe)
            stats = variant.stats(handle)
        finally:
            variant.disable(self.pipe, handle)
        return pipeline_output(result), sample, peak, stats

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

    def rounds(self, bar: tqdm, seeds: tuple[int, ...], into: dict[str, list[RunSample]], budget_s: float,
               keep: bool) -> dict[str, Any]:
        """`repeat` rounds of every live row over `seeds`, the order rotated each round so that machine
        noise hits every row alike; then more rounds while the last one moved a row's median by more
        than `settle_tol` and the next (as long as the last) fits in `budget_s`. `keep`: record outputs,
        peaks and stats (the repeats the table shows). Returns {"rounds", "settled", "moved", "extra_s"}."""
        spec, done, extra_s, last_moved = self.spec, 0, 0.0, None
        while True:
            live = [(v, r) for v, r in self.rows if r.status == "ok"]
            if not live:
                break
            before = noise.medians(into)
            start = self.probe.read().wall_s
            shift = done % len(live)
            for variant, row in live[shift:] + live[:shift]:
                for seed in seeds:
                    try:
                        out, sample, peak, stats = self.run_once(variant, seed)
                    except Exception as err:
                        row.status = f"failed: {type(err).__name__}: {err}"
                        break
                    into.setdefault(row.label, []).append(sample)
                    if keep:
                        self.peaks.setdefault(row.label, []).append(peak)
                        self.outputs.setdefault((row.label, seed), out.detach().to("cpu", torch.float32))
                        row.stats = stats
                    bar.update(1)
            done += 1
            took = self.probe.read().wall_s - start
            if done > spec.repeat:
                extra_s += took
                last_moved = noise.moved(before, noise.medians(into))
                if last_moved < spec.settle_tol:
                    break
            if done >= spec.repeat and (extra_s + took > budget_s or done >= spec.repeat + MAX_EXTRA_ROUNDS):
                break
            if done >= spec.repeat:
                bar.total += len(live) * len(seeds)
        settled = last_moved is not None and last_moved < spec.settle_tol
        self.settle_left = max(0.0, self.settle_left - extra_s)
        return {"rounds": done, "settled": settled, "moved": last_moved, "extra_s": extra_s}

    def calibrate(self, bar: tqdm) -> tuple[dict[str, float], dict[str, Any]]:
        """Timed rounds of every row on the first seed after warm-up (at most half the settle budget),
        to choose the fewer-steps counts: (row medians, the verdict on these runs with the rounds run)."""
        info = self.rounds(bar, self.spec.seeds[:1], self.calibration, self.spec.settle_s / 2, keep=False)
        return noise.medians(self.calibration), {**asdict(noise.judge(self.calibration)), **info}

    def repeats(self, bar: tqdm) -> dict[str, Any]:
        """The timed repeats the table shows: every row over every seed; the verdict on them."""
        info = self.rounds(bar, self.spec.seeds, self.samples, self.settle_left, keep=True)
        return {**asdict(noise.judge(self.samples)), **info}

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
        base_times = [s.seconds for s in self.samples.get("baseline", [])]
        base_median = statistics.median(base_times) if base_times else None
        frame_axis = 1 if type(self.pipe.transformer).__name__.startswith("CogVideoX") else 2
        decoded = self.spec.output_type != "latent"
        for _, row in self.rows:
            samples = self.samples.get(row.label)
            if not samples or row.status != "ok":
                continue
            times = [s.seconds for s in samples]
            median = statistics.median(times)
            row.latency_s = {"median": median, "min": min(times), "max": max(times), "n": len(times)}
            row.spread = noise.spread(times)
            row.disturbed_runs = sum(noise.disturbed(s) for s in samples)
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


def _calibration_file(model: str) -> str | None:
    """A committed sixbit calibration for `model`: the zoo entry's checkpoint folder, or a local pipeline
    directory, holding `sixbit_calibration.json` (what `accel calibrate` writes there)."""
    folder = Path(zoo.__file__).parent / "checkpoints" / model if model in zoo.names() else Path(model)
    path = folder / "sixbit_calibration.json"
    if not path.is_file():
        return None
    return os.path.relpath(path) if path.resolve().is_relative_to(Path.cwd()) else str(path)


def _composable(a: str, b: str) -> bool:
    """Whether methods `a` and `b` change different parts of the model (one patch can hold both)."""
    from accel.method import method_class

    ca, cb = method_class(a).claims, method_class(b).claims
    return bool(ca) and bool(cb) and not (ca & cb)


COMPOSE_WITH = "tdc"  # "auto" composes every method that changes another part than the blocks with this cache


def applicable_methods(pipe: Any) -> list[str]:
    """Every registered method whose `check` accepts `pipe` (`none` included), in registry order."""
    from accel.method import method_class
    from accel.target import resolve_target

    target = resolve_target(pipe)
    found: list[str] = []
    for info in accel.methods():
        method = method_class(info.name)(method_class(info.name).Config())
        try:
            method.check(target)
        except accel.UnsupportedModelError:
            continue
        found.append(info.name)
    return found


def _expand_methods(spec: BenchSpec, pipe: Any) -> list[tuple[str, dict[str, Any] | None]]:
    """The method rows (entry, options): each entry of `spec.methods` with its `method_options`, and
    "auto" replaced by `none`, every registered method that can patch this pipeline, and each of those
    that changes another part of the model than the blocks composed with `tdc` ("pisa+tdc",
    "sixbit+tdc"). An auto row of `sixbit` uses the model's committed calibration file, if any."""
    out: list[tuple[str, dict[str, Any] | None]] = []
    for name in spec.methods:
        if name != "auto":
            out.append((name, spec.method_options.get(name)))
            continue
        found = applicable_methods(pipe)
        pairs = [f"{n}+{COMPOSE_WITH}" for n in found
                 if COMPOSE_WITH in found and n not in ("none", COMPOSE_WITH) and _composable(n, COMPOSE_WITH)]
        calibration = _calibration_file(spec.model)
        for entry in found + pairs:
            options = spec.method_options.get(entry)
            if options is None and calibration and "sixbit" in V.method_parts(entry):
                options = {"calibration": calibration} if entry == "sixbit" else {"sixbit.calibration": calibration}
            out.append((entry, options))
    first: dict[str, dict[str, Any] | None] = {}
    for entry, options in out:  # an entry named twice is one row, with its first options
        first.setdefault(entry, options)
    return sorted(first.items(), key=lambda e: e[0] != "none")  # none first, the others in their order


def quick(spec: BenchSpec) -> BenchSpec:
    """`--quick`: the same rows at half the zoo resolution (a quarter of the tokens), at most 8 steps,
    one repeat, no settling rounds and at most 10 task-accuracy samples: about ten minutes on a 2-core CPU
    for the default model."""
    changes: dict[str, Any] = {"steps": min(spec.steps, 8), "repeat": 1, "accuracy_n": min(spec.accuracy_n, 10),
                               "settle_s": 0.0}
    changes["fewer_steps"] = tuple(k for k in spec.fewer_steps if k < changes["steps"])
    from accel.zoo.families import ENTRIES  # random-weight entries; trained ones keep their size

    if spec.model in ENTRIES and zoo.resizable(spec.model) and spec.height is None and spec.width is None:
        res = zoo.default_resolution(spec.model, spec.size)
        changes["height"], changes["width"] = res["height"] // 2, res["width"] // 2
        if "num_frames" in res and spec.frames is None:
            changes["frames"] = (res["num_frames"] - 1) // 2 + 1
    return replace(spec, **changes)


def run(spec: BenchSpec, probe: Probe | None = None) -> BenchResult:
    """Run the benchmark described by `spec` and return every row. `probe`: where run times and the
    machine's load are read (default: the wall clock, psutil and the load average; tests script one)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if load is not None and spec.device == "cpu" and load >= 1.0:
        logger.warning("accel bench: the 1-minute load average is %.1f before the run; other processes share the "
                       "CPU, so the ratios will be noisy", load)
    bench = _Bench(spec, probe)
    bench.add(V.baseline(spec.steps))
    entries = _expand_methods(spec, bench.pipe)
    if spec.noise_floor:
        bench.add(noise.noise_floor(spec.steps))
    for entry, options in entries:
        variant = V.accel_method(entry, spec.steps, options)
        variant.check(bench.pipe)  # an unsupported model or composition is refused before any run
        bench.add(variant)
    if spec.noise_floor and entries and entries[0][0] == "none":  # the exact rows together: baseline, none, floor
        bench.rows.insert(1, bench.rows.pop(2))
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
    total += (spec.repeat + 1) * n_rows if "fewer-steps" in spec.peers else 0  # calibration, and the rows it adds
    total += 2 * n_rows if spec.measures_accuracy else 0
    calibration: dict[str, Any] = {}
    with tqdm(total=total, desc=f"accel bench {spec.model}", disable=not spec.progress, leave=False) as bar:
        bench.warm_up(bar)
        matched: list[V.Variant] = []
        if "fewer-steps" in spec.peers:
            medians, calibration = bench.calibrate(bar)
            if calibration["reliable"]:
                matched = _fewer_steps(bench, medians)
            else:
                logger.warning("accel bench: the calibration runs were disturbed (%s); the fewer-steps rows are "
                               "not timed to match any row", "; ".join(calibration["reasons"]))
            if not matched and spec.steps > 1:  # no faster row, or no trustworthy times: 60% of the steps
                variant = V.fewer_steps(max(1, round(0.6 * spec.steps)), "")
                if not calibration["reliable"]:
                    variant.note += " (not timed to match: the calibration runs were disturbed)"
                matched = [variant]
        matched_steps = {v.steps for v in matched}
        for variant in matched + [V.fewer_steps(k, "") for k in spec.fewer_steps if k not in matched_steps]:
            bench.add(variant)
        bench.warm_up(bar)
        reliability = bench.repeats(bar)
        bench.profile(bar)
        if spec.measures_accuracy:
            bench.accuracy(bar)
    bench.summarize()
    if not reliability["reliable"]:
        logger.warning("accel bench: unreliable timings (%s); run it alone", "; ".join(reliability["reasons"]))

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
    return BenchResult(spec, env, model, [r for _, r in bench.rows], reliability, calibration)
