"""`accel bench-backbones`: the trained backbones of equal parameter count and equal training budget side by
side on the digits task (`digits-dit`, `digits-dit-p2`, `digits-dico`, `digits-lego`, and LEGO with `lego-skip`).

Per row, in one process: the parameters a forward can read (`digits_backbones.reachable_parameters`), the
sampling latency of one batch of class-conditional images (labels 0..9 cycling, DDIM 20 steps, guidance 4:
the judge's call) as the median of interleaved repeats after a warm-up, images/s and the speed against
each DiT (patch 1 and patch 2), and over `n` samples (seed 0) outside the timed runs the judge's task accuracy and the Fréchet
distance of the samples' judge features to the real digits' (`digits_image.fd`: FID with the digit judge).

`--train-seeds 0,1,2` runs the accuracy comparison across training runs instead (`seed_study`): each backbone
trained once per seed with the shared budget, each judged, the mean and spread per architecture. The budget
is equal optimizer steps, with `--train-budget compute` equal training compute: the first backbone takes
`--train-steps` steps and every other one as many as cost the same forward multiply-accumulates
(`digits_backbones.forward_macs`; training compute as the DiT paper counts it, Gflops x batch x steps x 3,
the batch and the factor being the same for every backbone), or with `--train-budget time` equal wall-clock
training time: on each seed the first backbone takes `--train-steps` steps and every other one trains for as
many seconds as it took, its cosine schedule run over that time (`digits_backbones.lr_factor`).

`--sizes S,B` times the papers' equal-size pairs instead (`size_study`): DiCo-S/B/L/XL against diffusers'
`DiTTransformer2DModel` at DiT-S/B/L/XL-2 on a 256 px image's 4x32x32 latent, with random weights (speed does
not depend on what was learned), one forward per call: the sampling speed of the published architectures,
where the digits entries are these architectures scaled down to a 16x16 latent.

Both timed studies read, per timed call, the share of the CPUs other processes used (`measure.RunSample`) and
end with `noise.judge`'s verdict on the first row's spread and the disturbed calls; an unreliable table is
printed and written to `--out` marked so, but `--doc` is left unchanged (exit status 3) unless
`--publish-unreliable`. An option that would have no effect in the study asked for is refused before any run
(`ACTS`), and so are outputs that could not be written (`report.check_outputs`).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from .measure import MachineProbe, Probe, RunSample

ROWS = ("digits-dit", "digits-dit-p2", "digits-dico", "digits-lego", "digits-lego+lego-skip")


@dataclass
class BackboneRow:
    label: str
    entry: str
    method: str | None = None  # an accel method patched on for this row
    parameters: int = 0
    latency_s: list[float] = field(default_factory=list)
    other_cpu: list[float | None] = field(default_factory=list)  # per timed run (`measure.RunSample`)
    accuracy: float | None = None
    fd: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.latency_s)


def _timed(fn: Callable[[], Any], probe: Probe) -> RunSample:
    """One call of `fn`: its wall time and the share of the CPUs other processes used meanwhile."""
    start = probe.read()
    fn()
    return RunSample.between(start, probe.read(), probe.cpus)


def _verdict(samples: dict[str, list[RunSample]]) -> dict[str, Any]:
    """`noise.judge` on the timed runs (row -> its runs), the first row as the baseline: unreliable when it
    spread too much or other processes used the CPUs during too many runs (no exact no-op row here)."""
    from . import noise

    return asdict(noise.judge(samples, baseline=next(iter(samples)), exact=""))


def run(batch: int = 20, repeat: int = 3, accuracy_n: int = 100, fraction: float = 0.4,
        probe: Probe | None = None) -> dict[str, Any]:
    """Measure every row of `ROWS`; `fraction` is lego-skip's share of skipped steps, `probe` reads the clock
    and the machine's load (default `MachineProbe`)."""
    import accel
    from accel import zoo
    from accel.info import info
    from accel.zoo import digits_backbones, digits_image

    probe = probe or MachineProbe()
    rows = [BackboneRow(label, *label.split("+")) if "+" in label else BackboneRow(label, label) for label in ROWS]
    pipes = {row.entry: zoo.load(row.entry) for row in rows}
    labels = [i % 10 for i in range(batch)]

    def sample(row: BackboneRow) -> RunSample:
        pipe = pipes[row.entry]
        handle = accel.patch(pipe, method=row.method, fraction=fraction) if row.method else None
        try:
            return _timed(lambda: digits_image.sample(pipe, labels, seed=0), probe)
        finally:
            if handle is not None:
                handle.unpatch()

    for row in rows:
        row.parameters = digits_backbones.reachable_parameters(pipes[row.entry].transformer)
        sample(row)  # warm-up
    samples: dict[str, list[RunSample]] = {row.label: [] for row in rows}
    for _ in range(repeat):  # interleaved
        for row in rows:
            samples[row.label].append(sample(row))
    for row in rows:
        row.latency_s = [s.seconds for s in samples[row.label]]
        row.other_cpu = [s.other_cpu for s in samples[row.label]]
        pipe = pipes[row.entry]
        handle = accel.patch(pipe, method=row.method, fraction=fraction) if row.method else None
        try:
            quality = digits_image.fd(pipe, n=accuracy_n, seed=0)
            row.accuracy, row.fd = quality["accuracy"], quality["fd"]
        finally:
            if handle is not None:
                handle.unpatch()
    return {"schema": "accel.bench-backbones/1", "batch": batch, "repeat": repeat, "accuracy_n": accuracy_n,
            "fraction": fraction, "steps": digits_image.STEPS, "guidance": digits_image.GUIDANCE,
            "threads": torch.get_num_threads(), "env": info(), "verdict": _verdict(samples),
            "rows": [{**asdict(row), "median_s": row.median} for row in rows]}


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _verdict_line(result: dict[str, Any]) -> str:
    """The timing verdict above a table (`_verdict`), with the blank line after it."""
    from . import noise

    line = noise.verdict_line(result.get("verdict"))
    return line + "\n\n" if line else ""


# DiT paper, Table 1, at patch 2, as diffusers' `DiTTransformer2DModel` configs; each is the size the DiCo paper
# pairs with its preset of the same letter (DiCo-H has no DiT of its size)
DIT_SIZES: dict[str, dict[str, int]] = {
    "S": {"num_attention_heads": 6, "attention_head_dim": 64, "num_layers": 12},
    "B": {"num_attention_heads": 12, "attention_head_dim": 64, "num_layers": 12},
    "L": {"num_attention_heads": 16, "attention_head_dim": 64, "num_layers": 24},
    "XL": {"num_attention_heads": 16, "attention_head_dim": 72, "num_layers": 28},
}


def size_pair(size: str) -> dict[str, torch.nn.Module]:
    """`{"DiT-<size>/2": ..., "DiCo-<size>": ...}` for 256 px (latent 4x32x32, 1,000 classes, learned sigma),
    eval mode, every parameter drawn from N(0, 0.02) (the zero-initialised gates of both would otherwise make
    every block the identity). Raises `ValueError` naming the sizes for another `size`."""
    from diffusers import DiTTransformer2DModel

    from accel.models import DiCoModel

    if size not in DIT_SIZES:
        raise ValueError(f"size={size!r}; expected one of {', '.join(DIT_SIZES)}")
    dit = DiTTransformer2DModel(in_channels=4, out_channels=8, sample_size=32, patch_size=2,
                                num_embeds_ada_norm=1000, **DIT_SIZES[size])
    pair = {f"DiT-{size}/2": dit, f"DiCo-{size}": DiCoModel.from_preset(f"DiCo-{size}")}
    with torch.no_grad():
        for model in pair.values():
            for param in model.parameters():
                param.normal_(0.0, 0.02)
    return {name: model.eval() for name, model in pair.items()}


def size_study(sizes: Sequence[str], batch: int = 20, repeat: int = 3, probe: Probe | None = None) -> dict[str, Any]:
    """Per size of `sizes` (`DIT_SIZES`), DiT-<size>/2 and DiCo-<size> (`size_pair`) side by side: parameters,
    forward MACs per latent (`digits_backbones.model_macs`), and the latency of one no-grad fp32 forward over
    `batch` latents (labels cycling, timestep 500) as the median of `repeat` interleaved calls after a warm-up,
    read by `probe` (default `MachineProbe`). One pair in memory at a time."""
    from accel.info import info
    from accel.zoo.digits_backbones import model_macs

    probe = probe or MachineProbe()
    seed = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, 32, 32, generator=seed)
    t, y = torch.full((batch,), 500), torch.arange(batch) % 1000
    rows: list[dict[str, Any]] = []
    samples: dict[str, list[RunSample]] = {}
    for size in sizes:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            pair = size_pair(size)
        runs: dict[str, list[RunSample]] = {name: [] for name in pair}
        with torch.no_grad():
            for _ in range(repeat + 1):  # the first round is the warm-up
                for name, model in pair.items():
                    runs[name].append(_timed(partial(model, x, timestep=t, class_labels=y), probe))
        for name, model in pair.items():
            timed = runs[name][1:]
            samples[name] = timed
            rows.append({"size": size, "backbone": name, "parameters": sum(p.numel() for p in model.parameters()),
                         "macs": model_macs(model, x[:1], t[:1], y[:1]), "latency_s": [s.seconds for s in timed],
                         "other_cpu": [s.other_cpu for s in timed],
                         "median_s": statistics.median(s.seconds for s in timed)})
        del pair, model  # the loop variable would keep the last model alive while the next pair is built
    return {"schema": "accel.bench-backbones-sizes/1", "sizes": list(sizes), "batch": batch, "repeat": repeat,
            "threads": torch.get_num_threads(), "env": info(), "verdict": _verdict(samples), "rows": rows}


def size_markdown(result: dict[str, Any], command: str | None = None) -> str:
    """One row per model; each DiCo's speed against the DiT of its size."""
    head = f"Command: `{command}`\n\n" if command else ""
    head += (f"one forward over {_plural(result['batch'], 'latent')} of 4x32x32 (a 256 px image with the SD VAE; labels cycling, "
             f"timestep 500), no grad, fp32, random weights; median of {result['repeat']} interleaved calls after a "
             "warm-up; forward GMACs per latent by FlopCounterMode with attention on SDPA's math kernel; "
             f"device: {result['env']['device']}\n\n")
    cols = ["size", "backbone", "parameters", "forward GMACs", "latency s (median [min-max])", "images/s",
            "speed vs DiT"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    dit = {r["size"]: r["median_s"] for r in result["rows"] if r["backbone"].startswith("DiT")}
    for r in result["rows"]:
        s = r["latency_s"]
        lines.append("| " + " | ".join([
            r["size"], r["backbone"], f"{r['parameters']:,}", f"{r['macs'] / 1e9:.2f}",
            f"{r['median_s']:.3f} [{min(s):.3f}-{max(s):.3f}]", f"{result['batch'] / r['median_s']:.1f}",
            f"{dit[r['size']] / r['median_s']:.2f}x"]) + " |")
    return head + _verdict_line(result) + "\n".join(lines) + "\n"


BUDGETS = ("steps", "compute", "time")
UNBOUNDED_STEPS = 10**9  # the step budget of a run bounded by time alone


def budget_steps(steps: int, macs: dict[str, int], budget: str = "steps") -> dict[str, int]:
    """Optimizer steps per backbone of `macs` (kind -> forward MACs per sample, `forward_macs`; the first is
    the reference): `steps` for all with budget "steps"; with "compute", `steps` for the reference and for
    each other the count whose MACs x steps equal the reference's, rounded to the nearest step; with "time",
    `steps` for the reference and `UNBOUNDED_STEPS` for the others (their time cap ends them). Raises
    `ValueError` for another budget."""
    if budget not in BUDGETS:
        raise ValueError(f"budget={budget!r}; expected one of {', '.join(BUDGETS)}")
    reference = next(iter(macs))
    if budget == "time":
        return {k: steps if k == reference else UNBOUNDED_STEPS for k in macs}
    return {k: steps if budget == "steps" else max(1, round(steps * macs[reference] / m)) for k, m in macs.items()}


def seed_study(seeds: Sequence[int], kinds: Sequence[str] = ("dit", "dico"), steps: int | None = None,
               accuracy_n: int = 500, lr: float | dict[str, float] | None = None, budget: str = "steps",
               log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Task accuracy across training runs: every backbone of `kinds` trained once per seed with the entries'
    shared recipe (`digits_backbones.TrainConfig(seed=seed)`, `steps` optimizer steps, default the
    entries' budget, for every kind or, with `budget="compute"`, for the first and equal forward MACs for
    the others, or with `budget="time"` for the first and for the others the seconds the first took on the
    same seed (`budget_steps`); `lr` the peak learning rate, one for all or one per kind, default the
    recipe's), its EMA weights rounded through the fp16 checkpoint format exactly as the committed entries are, then
    judged over `accuracy_n` samples (seed 0, the table's samples). Seeds run in turn, every kind within a
    seed. Nothing committed is written. Returns per run the kind, seed, rate, steps, forward MACs per sample,
    training seconds, the share of the CPUs other processes used while it trained, and accuracy."""
    import tempfile

    from accel.info import info
    from accel.zoo import digits_backbones as bb
    from accel.zoo import judges

    cfg = bb.TrainConfig() if steps is None else bb.TrainConfig(steps=steps)
    macs = {k: bb.forward_macs(k) for k in kinds}
    per_kind = budget_steps(cfg.steps, macs, budget)
    runs: list[dict[str, Any]] = []
    probe = MachineProbe()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            reference_s: float | None = None  # the first kind's training seconds on this seed
            for kind in kinds:
                rate = lr.get(kind, cfg.lr) if isinstance(lr, dict) else lr or cfg.lr
                settings = {**asdict(cfg), "seed": seed, "lr": rate, "steps": per_kind[kind]}
                timed = budget == "time" and reference_s is not None
                if timed:
                    settings["minutes"] = reference_s / 60
                start = probe.read()
                run = bb.train(kind, bb.TrainConfig(**settings), log=None)
                load = RunSample.between(start, probe.read(), probe.cpus)
                reference_s = reference_s or run.seconds
                path = Path(tmp) / f"{kind}-{seed}.safetensors"
                bb.save(run.ema, path)
                with torch.random.fork_rng(devices=[]):
                    pipe = bb.pipeline(kind, bb.load_weights(bb.build(kind), path))
                accuracy = bb.evaluate(pipe, n=accuracy_n, seed=0)["accuracy"]
                capped = run.capped and not timed  # a timed run ends at its cap by design
                runs.append({"kind": kind, "seed": seed, "lr": rate, "steps": run.steps, "macs": macs[kind],
                             "capped": capped, "train_s": run.seconds, "other_cpu": load.other_cpu,
                             "accuracy": accuracy})
                if log:
                    log(f"{bb.entry_name(kind)} seed {seed} lr {rate:g}: {_plural(run.steps, 'step')} in {run.seconds:.0f}s"
                        f"{' (time cap)' if capped else ''}, accuracy {100 * accuracy:.1f}%")
    return {"schema": "accel.bench-backbones-seeds/1", "seeds": list(seeds), "kinds": list(kinds),
            "steps": cfg.steps, "budget": budget, "accuracy_n": accuracy_n, "threads": cfg.threads, "env": info(), "runs": runs,
            "judge_held_out": judges.held_out_accuracy()}


def seed_markdown(result: dict[str, Any], command: str | None = None) -> str:
    """One row per architecture: accuracy per training seed, mean and sample standard deviation; then each
    architecture's mean difference to the first one's with its standard error."""
    seeds, kinds = result["seeds"], result["kinds"]
    acc = {k: [100 * r["accuracy"] for r in result["runs"] if r["kind"] == k] for k in kinds}
    head = f"Command: `{command}`\n\n" if command else ""
    if result.get("budget") == "compute":
        budget = (f"at equal training compute (digits-{kinds[0]} {_plural(result['steps'], 'step')}, every other backbone as "
                  "many as cost the same forward multiply-accumulates)")
    elif result.get("budget") == "time":
        budget = (f"at equal training time (digits-{kinds[0]} {_plural(result['steps'], 'step')}, every other backbone "
                  "for as many seconds as it took on the same seed, its schedule over that time)")
    else:
        budget = f"({_plural(result['steps'], 'step')})"
    head += (f"each backbone trained once per seed with the shared recipe {budget} on {result['threads']} "
             "threads at the row's peak learning rate, fp16 EMA weights, judged over "
             f"{_plural(result['accuracy_n'], 'sample')} (seed 0); device: {result['env']['device']}\n\n")
    shares = [r["other_cpu"] for r in result["runs"] if r.get("other_cpu") is not None]
    if shares:
        head += (f"Other processes used {100 * statistics.mean(shares):.0f}% of the CPUs on average while a backbone "
                 f"trained (at most {100 * max(shares):.0f}% during one run).\n\n")
    if "judge_held_out" in result:
        real = result["judge_held_out"]
        head += (f"The judge itself on the {real['n']} real held-out digits: {100 * real['accuracy']:.1f}% "
                 "(samples scoring above it are read more surely than real digits: there the accuracy is "
                 "saturated).\n\n")
    cols = ["backbone", "peak lr", "steps", "forward MMACs", *(f"seed {s} %" for s in seeds), "mean %", "sd",
            "train s (mean)"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for k in kinds:
        secs = [r["train_s"] for r in result["runs"] if r["kind"] == k]
        sd = f"{statistics.stdev(acc[k]):.2f}" if len(acc[k]) > 1 else "-"
        runs = [r for r in result["runs"] if r["kind"] == k]
        first = runs[0]
        macs = f"{first['macs'] / 1e6:.1f}" if "macs" in first else "-"
        steps = "/".join(str(n) for n in sorted({r["steps"] for r in runs}))  # every seed's count
        steps += " (time cap)" if any(r.get("capped") for r in runs) else ""
        cells = [f"digits-{k}", f"{first.get('lr', 1e-3):g}", steps, macs,
                 *(f"{a:.1f}" for a in acc[k]), f"{statistics.mean(acc[k]):.2f}", sd, f"{statistics.mean(secs):.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    base = kinds[0]
    notes = []
    for k in kinds[1:]:
        diff = statistics.mean(acc[k]) - statistics.mean(acc[base])
        se = (f" (standard error {sum(statistics.variance(acc[x]) / len(acc[x]) for x in (k, base)) ** 0.5:.2f})"
              if min(len(acc[k]), len(acc[base])) > 1 else " (one seed: no standard error)")
        notes.append(f"digits-{k} minus digits-{base}: {diff:+.2f} points{se}")
    return head + "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def markdown(result: dict[str, Any], command: str | None = None) -> str:
    rows = {r["label"]: r for r in result["rows"]}
    dits, lego = [rows["digits-dit"], rows["digits-dit-p2"]], rows["digits-lego"]
    head = f"Command: `{command}`\n\n" if command else ""
    head += (f"one batch of {_plural(result['batch'], 'image')} (labels 0, 1, 2, ... cycling through 0..9), DDIM {result['steps']} steps, guidance "
             f"{result['guidance']}, median of {result['repeat']} interleaved repeats; task accuracy: the digits "
             f"judge over {result['accuracy_n']} samples (seed 0); FD: the Fréchet distance of those samples' judge "
             "features to the 1,438 real training digits' (FID with the digit judge; lower is closer to the data); "
             f"lego-skip at fraction {result['fraction']}; "
             f"fp32, device: {result['env']['device']}\n\n")
    cols = ["row", "parameters", "latency s (median [min-max])", "images/s", "speed vs DiT", "speed vs DiT-p2",
            "time vs LEGO",
            "task accuracy %", "FD"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in result["rows"]:
        s = r["latency_s"]
        lines.append("| " + " | ".join([
            r["label"], f"{r['parameters']:,}", f"{r['median_s']:.3f} [{min(s):.3f}-{max(s):.3f}]",
            f"{result['batch'] / r['median_s']:.1f}", *(f"{d['median_s'] / r['median_s']:.2f}x" for d in dits),
            f"{100 * (r['median_s'] / lego['median_s'] - 1):+.0f}%" if r["entry"] == "digits-lego" else "-",
            f"{100 * r['accuracy']:.1f}", f"{r['fd']:.1f}" if r.get("fd") is not None else "-"]) + " |")
    return head + _verdict_line(result) + "\n".join(lines) + "\n"


def _cmd(args: argparse.Namespace) -> int:
    import json
    import sys

    from accel.bench.report import check_outputs, command_line, update_doc

    _check_options(args)
    command, default_key = command_line(args.argv), args.default_doc_key
    check_outputs("bench-backbones", args.out, args.doc, args.doc_key, ("results.json", "results.md"),
                  default_key=default_key)
    if args.sizes is not None:
        result = size_study(args.sizes, args.batch, args.repeat)
        text = size_markdown(result, command)
    elif args.train_seeds is not None:
        result = seed_study(args.train_seeds, args.train_kinds, args.train_steps, args.accuracy_n, args.train_lr,
                            args.train_budget)
        text = seed_markdown(result, command)
    else:
        result = run(args.batch, args.repeat, args.accuracy_n, args.fraction)
        text = markdown(result, command)
    result["command"] = command
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
        (out / "results.md").write_text(text)
    if not args.doc:
        return 0
    if not (result.get("verdict", {}).get("reliable", True) or args.publish_unreliable):  # caught, not published
        print(f"accel bench-backbones: unreliable timings; {args.doc} left unchanged (run it alone, or pass "
              "--publish-unreliable)", file=sys.stderr)
        return 3
    key = args.doc_key or default_key
    update_doc(Path(args.doc), key, f"### {key}\n\n{text}")
    return 0


# Each study's options with their defaults, and where they act: "rows" the committed digits checkpoints timed
# and judged (the default study), "seeds" the training runs (--train-seeds), "sizes" the papers' sizes (--sizes)
DEFAULTS: dict[str, Any] = {"batch": 20, "repeat": 3, "accuracy_n": 100, "fraction": 0.4, "train_steps": None,
                            "train_lr": None, "train_budget": "steps", "train_kinds": ("dit", "dico")}
ACTS = {"batch": ("rows", "sizes"), "repeat": ("rows", "sizes"), "accuracy_n": ("rows", "seeds"),
        "fraction": ("rows",), "train_steps": ("seeds",), "train_lr": ("seeds",), "train_budget": ("seeds",),
        "train_kinds": ("seeds",), "publish_unreliable": ("rows", "sizes")}
STUDIES = {"rows": "the digits rows (the default study: the committed checkpoints timed and judged)",
           "seeds": "--train-seeds (the training runs)", "sizes": "--sizes (the papers' sizes, untrained)"}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_options(args: argparse.Namespace) -> None:
    """Refuse, before any run, an option that would have no effect in the study asked for (`ACTS`), both
    studies at once, a bad lego-skip fraction, fewer than 2 judged samples for the rows (the Fréchet distance
    needs a covariance), a compute budget with one backbone, and a rate for a backbone not trained."""
    from accel.errors import InvalidOptionError
    from accel.method import method_class

    def refuse(message: str) -> None:
        raise InvalidOptionError(f"bench-backbones: {message}")

    if args.sizes is not None and args.train_seeds is not None:
        refuse("--sizes and --train-seeds are two different studies; give one of them")
    study = "sizes" if args.sizes is not None else "seeds" if args.train_seeds is not None else "rows"
    given = {token.split("=", 1)[0] for token in getattr(args, "argv", []) if token.startswith("--")}  # abbreviations are off
    ignored = [name for name, studies in ACTS.items() if study not in studies and _flag(name) in given]
    if ignored:
        flags = {name: _flag(name) for name in ignored}
        where = "; ".join(f"{flag} acts only with {' or '.join(STUDIES[s].split(' (')[0] for s in ACTS[name])}"
                          for name, flag in flags.items())
        refuse(f"{', '.join(flags.values())} {'has' if len(flags) == 1 else 'have'} no effect with {STUDIES[study]}: "
               f"{where}")
    if args.publish_unreliable and not args.doc:
        refuse("--publish-unreliable acts only with --doc (it writes a disturbed run's table there)")
    if study == "rows":
        try:
            method_class("lego-skip").Config.from_options(fraction=args.fraction)
        except ValueError as err:
            refuse(f"--fraction={args.fraction}: {str(err).removeprefix('lego-skip: ')}")
        if args.accuracy_n < 2:
            refuse(f"--accuracy-n={args.accuracy_n}: the digits rows need at least 2 judged samples (the Fréchet "
                   "distance takes their covariance); 1 is allowed only with --train-seeds")
    if args.train_budget != "steps" and len(args.train_kinds) < 2:
        refuse(f"--train-budget {args.train_budget} matches other backbones to the first's {args.train_budget}; "
               f"--train-kinds={','.join(args.train_kinds)} trains only one")
    if isinstance(args.train_lr, dict) and set(args.train_lr) - set(args.train_kinds):
        extra = ", ".join(sorted(set(args.train_lr) - set(args.train_kinds)))
        refuse(f"--train-lr gives a rate for {extra}, which --train-kinds ({','.join(args.train_kinds)}) does not "
               "train")


def seed_list(text: str) -> list[int]:
    """"0,1,2" -> [0, 1, 2]: distinct integers that seed torch's generator, [0, 2**63)."""
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0 or max(seeds) >= 2**63 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected distinct integers in [0, 2**63) "
                                         "separated by commas, e.g. 0,1,2")
    return seeds


def learning_rates(text: str) -> float | dict[str, float]:
    """"2e-3" (every backbone) or "dit=2e-3,dico=4e-3" (per backbone; the others keep the recipe's)."""
    from accel.zoo.digits_backbones import KINDS

    def rate(part: str) -> float:
        try:
            value = float(part)
        except ValueError:
            value = float("nan")
        if not 0 < value < 1:
            raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a learning rate in (0, 1), e.g. 1e-3, "
                                             "or one per backbone, e.g. dit=2e-3,dico=4e-3")
        return value

    if "=" not in text:
        return rate(text)
    pairs = [[side.strip() for side in part.split("=", 1)] for part in text.split(",")]
    if any(len(p) != 2 or p[0] not in KINDS for p in pairs) or len({p[0] for p in pairs}) != len(pairs):
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected kind=rate pairs of {', '.join(KINDS)}, "
                                         "e.g. dit=2e-3,dico=4e-3")
    return {k: rate(v) for k, v in pairs}


def size_list(text: str) -> list[str]:
    """"S,B" -> ["S", "B"]: distinct sizes of `DIT_SIZES`."""
    sizes = [part.strip() for part in text.split(",")]
    if not sizes or any(s not in DIT_SIZES for s in sizes) or len(set(sizes)) != len(sizes):
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected distinct sizes of {', '.join(DIT_SIZES)} "
                                         "separated by commas, e.g. S,B")
    return sizes


def kind_list(text: str) -> tuple[str, ...]:
    """"dit,dico" -> ("dit", "dico"): distinct backbones of `digits_backbones.KINDS`."""
    from accel.zoo.digits_backbones import KINDS

    kinds = tuple(part.strip() for part in text.split(","))
    if not kinds or any(k not in KINDS for k in kinds) or len(set(kinds)) != len(kinds):
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected distinct names of {', '.join(KINDS)} "
                                         "separated by commas, e.g. dit,dico")
    return kinds


def add_parser(sub: argparse._SubParsersAction) -> None:
    from accel.cli import counting

    p = sub.add_parser(
        "bench-backbones", help="DiT, DiCo and LEGO side by side: the trained digits entries (speed, task accuracy), "
        "their training runs across seeds (--train-seeds), or the papers' sizes (--sizes)",
        description="One of three studies. Default: the committed digits checkpoints of equal parameter count "
        "(digits-dit, digits-dit-p2, digits-dico, digits-lego, and LEGO with lego-skip), timed side by side and "
        "judged by the digits judge. --train-seeds: each backbone trained once per seed, task accuracy across "
        "the runs. --sizes: DiCo against diffusers' DiT at the papers' sizes, timed with random weights. Each "
        "option below says which study it acts in; one that would have no effect is refused. The table is "
        "printed, and written only where --out and --doc say.", allow_abbrev=False)
    p.add_argument("--batch", type=counting(1), default=DEFAULTS["batch"],
                   help=f"digits rows and --sizes: images (latents) per timed call (default {DEFAULTS['batch']})")
    p.add_argument("--repeat", type=counting(1), default=DEFAULTS["repeat"],
                   help=f"digits rows and --sizes: interleaved timed repeats (default {DEFAULTS['repeat']})")
    p.add_argument("--accuracy-n", type=counting(1), default=DEFAULTS["accuracy_n"],
                   help="digits rows (at least 2) and --train-seeds: judged samples per row or per training run "
                   f"(default {DEFAULTS['accuracy_n']})")
    p.add_argument("--fraction", type=float, default=DEFAULTS["fraction"],
                   help=f"digits rows: lego-skip's share of skipped steps (default {DEFAULTS['fraction']})")
    p.add_argument("--train-seeds", type=seed_list, default=None, metavar="0,1,2",
                   help="instead of the timed rows: train each of --train-kinds once per seed (at 1,200 steps the "
                   "DiT takes 5-7 minutes, DiCo 1.5-3, on 2 threads alone) and compare their accuracy across the runs")
    p.add_argument("--train-steps", type=counting(1), default=None,
                   help="optimizer steps per training run with --train-seeds (default: the entries' budget, 1200)")
    p.add_argument("--train-kinds", type=kind_list, default=DEFAULTS["train_kinds"], metavar="dit,dico",
                   help="the backbones trained with --train-seeds, of dit, dit-p2, dico, lego (default dit,dico; "
                   "the first is the reference)")
    p.add_argument("--train-budget", choices=BUDGETS, default=DEFAULTS["train_budget"],
                   help="with --train-seeds: 'steps', every backbone --train-steps optimizer steps (default); "
                   "'compute', the first backbone --train-steps steps and every other one as many as cost the same "
                   "forward multiply-accumulates; or 'time', the first backbone --train-steps steps and every other "
                   "one for as many seconds as that took on the same seed (run it alone)")
    p.add_argument("--train-lr", type=learning_rates, default=None, metavar="RATE|dit=RATE,dico=RATE",
                   help="peak learning rate of the --train-seeds runs, for all or per backbone (default: the "
                   "entries' recipe, 1e-3)")
    p.add_argument("--sizes", type=size_list, default=None, metavar="S,B,L,XL",
                   help="instead of the digits rows: time DiCo against the DiT of each size at the papers' "
                   "configs on a 256 px latent, with random weights (a DiT forward of 8 latents on 2 CPU "
                   "threads, measured: S about 1 s, B 2.5 s, L 9.5 s, XL 12 s)")
    p.add_argument("--out", default=None, help="a directory for results.json and results.md (default: none, the "
                   "table is only printed)")
    p.add_argument("--doc", default=None, help="a markdown file to write the table into, in a section marked by "
                   "--doc-key (replaced in place when the key is there, appended otherwise); left unchanged, with "
                   "exit status 3, when the timings are unreliable (other processes disturbed the timed runs, or the "
                   "first row's runs spread over 10%%)")
    p.add_argument("--doc-key", default=None, help="the section's key and heading in --doc (default: the command "
                   "line without the options that say where results go)")
    p.add_argument("--publish-unreliable", action="store_true",
                   help="digits rows and --sizes, with --doc: write --doc even when the timings are unreliable "
                   "(the table says so)")
    p.set_defaults(func=_cmd)
