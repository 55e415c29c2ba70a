"""`accel bench-backbones`: the trained backbones of equal parameter count and equal training budget side by
side on the digits task (`digits-dit`, `digits-dit-p2`, `digits-dico`, `digits-lego`, and LEGO with `lego-skip`).

Per row, in one process: the parameters a forward can read (`digits_backbones.reachable_parameters`), the
sampling latency of one batch of class-conditional images (labels 0..9 cycling, DDIM 20 steps, guidance 4:
the judge's call) as the median of interleaved repeats after a warm-up, images/s and the speed against
each DiT (patch 1 and patch 2), and over `n` samples (seed 0) outside the timed runs the judge's task accuracy and the Fréchet
distance of the samples' judge features to the real digits' (`digits_image.fd`: FID with the digit judge).

`--train-seeds 0,1,2` runs the accuracy comparison across training runs instead (`seed_study`): each backbone
trained once per seed with the shared budget, each judged, the mean and spread per architecture. The budget
is equal optimizer steps, or with `--train-budget compute` equal training compute: the first backbone takes
`--train-steps` steps and every other one as many as cost the same forward multiply-accumulates
(`digits_backbones.forward_macs`; training compute as the DiT paper counts it, Gflops x batch x steps x 3,
the batch and the factor being the same for every backbone).

`--sizes S,B` times the papers' equal-size pairs instead (`size_study`): DiCo-S/B/L/XL against diffusers'
`DiTTransformer2DModel` at DiT-S/B/L/XL-2 on a 256 px image's 4x32x32 latent, with random weights (speed does
not depend on what was learned), one forward per call: the sampling speed of the published architectures,
where the digits entries are these architectures scaled down to a 16x16 latent.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

ROWS = ("digits-dit", "digits-dit-p2", "digits-dico", "digits-lego", "digits-lego+lego-skip")


@dataclass
class BackboneRow:
    label: str
    entry: str
    method: str | None = None  # an accel method patched on for this row
    parameters: int = 0
    latency_s: list[float] = field(default_factory=list)
    accuracy: float | None = None
    fd: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.latency_s)


def run(batch: int = 20, repeat: int = 3, accuracy_n: int = 100, fraction: float = 0.4) -> dict[str, Any]:
    """Measure every row of `ROWS`; `fraction` is lego-skip's share of skipped steps."""
    import accel
    from accel import zoo
    from accel.info import info
    from accel.zoo import digits_backbones, digits_image

    rows = [BackboneRow(label, *label.split("+")) if "+" in label else BackboneRow(label, label) for label in ROWS]
    pipes = {row.entry: zoo.load(row.entry) for row in rows}
    labels = [i % 10 for i in range(batch)]

    def sample(row: BackboneRow) -> float:
        pipe = pipes[row.entry]
        handle = accel.patch(pipe, method=row.method, fraction=fraction) if row.method else None
        try:
            start = time.perf_counter()
            digits_image.sample(pipe, labels, seed=0)
            return time.perf_counter() - start
        finally:
            if handle is not None:
                handle.unpatch()

    for row in rows:
        row.parameters = digits_backbones.reachable_parameters(pipes[row.entry].transformer)
        sample(row)  # warm-up
    for _ in range(repeat):  # interleaved
        for row in rows:
            row.latency_s.append(sample(row))
    for row in rows:
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
            "threads": torch.get_num_threads(), "env": info(),
            "rows": [{**asdict(row), "median_s": row.median} for row in rows]}


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


def _macs(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> int:
    """Multiply-accumulates of one forward (FlopCounterMode's FLOPs / 2, attention on SDPA's math kernel)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x, timestep=t, class_labels=y)
    return counter.get_total_flops() // 2


def size_study(sizes: Sequence[str], batch: int = 20, repeat: int = 3) -> dict[str, Any]:
    """Per size of `sizes` (`DIT_SIZES`), DiT-<size>/2 and DiCo-<size> (`size_pair`) side by side: parameters,
    forward MACs per latent, and the latency of one no-grad fp32 forward over `batch` latents (labels cycling,
    timestep 500) as the median of `repeat` interleaved calls after a warm-up. One pair in memory at a time."""
    from accel.info import info

    seed = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, 32, 32, generator=seed)
    t, y = torch.full((batch,), 500), torch.arange(batch) % 1000
    rows: list[dict[str, Any]] = []
    for size in sizes:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            pair = size_pair(size)
        latency: dict[str, list[float]] = {name: [] for name in pair}
        with torch.no_grad():
            for _ in range(repeat + 1):  # the first round is the warm-up
                for name, model in pair.items():
                    start = time.perf_counter()
                    model(x, timestep=t, class_labels=y)
                    latency[name].append(time.perf_counter() - start)
        for name, model in pair.items():
            rows.append({"size": size, "backbone": name, "parameters": sum(p.numel() for p in model.parameters()),
                         "macs": _macs(model, x[:1], t[:1], y[:1]), "latency_s": latency[name][1:],
                         "median_s": statistics.median(latency[name][1:])})
        del pair, model  # the loop variable would keep the last model alive while the next pair is built
    return {"schema": "accel.bench-backbones-sizes/1", "sizes": list(sizes), "batch": batch, "repeat": repeat,
            "threads": torch.get_num_threads(), "env": info(), "rows": rows}


def size_markdown(result: dict[str, Any], command: str | None = None) -> str:
    """One row per model; each DiCo's speed against the DiT of its size."""
    head = f"Command: `{command}`\n\n" if command else ""
    head += (f"one forward over {result['batch']} latents of 4x32x32 (a 256 px image with the SD VAE; labels cycling, "
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
    return head + "\n".join(lines) + "\n"


BUDGETS = ("steps", "compute")


def budget_steps(steps: int, macs: dict[str, int], budget: str = "steps") -> dict[str, int]:
    """Optimizer steps per backbone of `macs` (kind -> forward MACs per sample, `forward_macs`; the first is
    the reference): `steps` for all with budget "steps"; with "compute", `steps` for the reference and for
    each other the count whose MACs x steps equal the reference's, rounded to the nearest step. Raises
    `ValueError` for another budget."""
    if budget not in BUDGETS:
        raise ValueError(f"budget={budget!r}; expected one of {', '.join(BUDGETS)}")
    reference = macs[next(iter(macs))]
    return {k: steps if budget == "steps" else max(1, round(steps * reference / m)) for k, m in macs.items()}


def seed_study(seeds: Sequence[int], kinds: Sequence[str] = ("dit", "dico"), steps: int | None = None,
               accuracy_n: int = 500, lr: float | dict[str, float] | None = None, budget: str = "steps",
               log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Task accuracy across training runs: every backbone of `kinds` trained once per seed with the entries'
    shared recipe (`digits_backbones.TrainConfig(seed=seed)`, `steps` optimizer steps, default the
    entries' budget, for every kind or, with `budget="compute"`, for the first and equal forward MACs for
    the others (`budget_steps`); `lr` the peak learning rate, one for all or one per kind, default the
    recipe's), its EMA weights rounded through the fp16 checkpoint format exactly as the committed entries are, then
    judged over `accuracy_n` samples (seed 0, the table's samples). Nothing committed is written. Returns
    per run the kind, seed, rate, steps, forward MACs per sample, training seconds and accuracy."""
    import tempfile

    from accel.info import info
    from accel.zoo import digits_backbones as bb
    from accel.zoo import judges

    cfg = bb.TrainConfig() if steps is None else bb.TrainConfig(steps=steps)
    macs = {k: bb.forward_macs(k) for k in kinds}
    per_kind = budget_steps(cfg.steps, macs, budget)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            for seed in seeds:
                rate = lr.get(kind, cfg.lr) if isinstance(lr, dict) else lr or cfg.lr
                run = bb.train(kind, bb.TrainConfig(**{**asdict(cfg), "seed": seed, "lr": rate,
                                                       "steps": per_kind[kind]}), log=None)
                path = Path(tmp) / f"{kind}-{seed}.safetensors"
                bb.save(run.ema, path)
                with torch.random.fork_rng(devices=[]):
                    pipe = bb.pipeline(kind, bb.load_weights(bb.build(kind), path))
                accuracy = bb.evaluate(pipe, n=accuracy_n, seed=0)["accuracy"]
                runs.append({"kind": kind, "seed": seed, "lr": rate, "steps": run.steps, "macs": macs[kind],
                             "capped": run.capped, "train_s": run.seconds, "accuracy": accuracy})
                if log:
                    log(f"{bb.entry_name(kind)} seed {seed} lr {rate:g}: {run.steps} steps in {run.seconds:.0f}s"
                        f"{' (time cap)' if run.capped else ''}, accuracy {100 * accuracy:.1f}%")
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
        budget = (f"at equal training compute (digits-{kinds[0]} {result['steps']} steps, every other backbone as "
                  "many as cost the same forward multiply-accumulates)")
    else:
        budget = f"({result['steps']} steps)"
    head += (f"each backbone trained once per seed with the shared recipe {budget} on {result['threads']} "
             "threads at the row's peak learning rate, fp16 EMA weights, judged over "
             f"{result['accuracy_n']} samples (seed 0); device: {result['env']['device']}\n\n")
    if "judge_held_out" in result:
        real = result["judge_held_out"]
        head += (f"The judge itself on the {real['n']} real held-out digits: {100 * real['accuracy']:.1f}% "
                 "(samples scoring above it are read more surely than real digits: the accuracy is saturated).\n\n")
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
    head += (f"one batch of {result['batch']} images (labels cycling 0..9), DDIM {result['steps']} steps, guidance "
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
    return head + "\n".join(lines) + "\n"


def _cmd(args: argparse.Namespace) -> int:
    import json
    import shlex

    from accel.bench.report import bad_doc_key, update_doc
    from accel.errors import InvalidOptionError
    from accel.method import method_class

    method_class("lego-skip").Config.from_options(fraction=args.fraction)  # a bad value: refused before any run
    command = "accel " + " ".join(shlex.quote(a) for a in args.argv)
    _check_training_options(args)
    if args.out and not _can_be_dir(Path(args.out)):
        raise InvalidOptionError(f"bench-backbones: --out={args.out!r} is or lies under a file; expected a directory "
                                 "(made if missing)")
    if args.doc and (Path(args.doc).is_dir() or not Path(args.doc).parent.is_dir()):
        raise InvalidOptionError(f"bench-backbones: --doc={args.doc!r}: expected a markdown file (made if missing) "
                                 "in an existing directory")
    if args.doc_key is not None and not args.doc_key.strip():
        raise InvalidOptionError(f"bench-backbones: --doc-key={args.doc_key!r} is empty; expected the section's key, "
                                 "or no --doc-key for the command as the key")
    if args.doc_key and bad_doc_key(args.doc_key):
        raise InvalidOptionError(f"bench-backbones: --doc-key={args.doc_key!r} {bad_doc_key(args.doc_key)}")
    if args.doc_key and not args.doc:
        raise InvalidOptionError(f"bench-backbones: --doc-key={args.doc_key!r} acts only with --doc")
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
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
        (out / "results.md").write_text(text)
    if args.doc:
        key = args.doc_key or command
        update_doc(Path(args.doc), key, f"### {key}\n\n{text}")
    return 0


def _can_be_dir(path: Path) -> bool:
    """Whether `path` is a directory or could be made one: no part of it is an existing file."""
    return not any(p.exists() and not p.is_dir() for p in (path, *path.parents))


TIMING_DEFAULTS = {"batch": 20, "repeat": 3, "fraction": 0.4}  # the timed table's options (not the training runs')


def _check_training_options(args: argparse.Namespace) -> None:
    """--train-* options act only with --train-seeds, the timing options only without it, and a per-backbone
    rate only for a backbone trained."""
    from accel.errors import InvalidOptionError

    given = [f"--{name.replace('_', '-')}" for name in ("train_steps", "train_lr") if getattr(args, name) is not None]
    if args.train_budget != "steps":
        given.append("--train-budget")
    if args.train_kinds != ("dit", "dico"):
        given.append("--train-kinds")
    if args.train_seeds is None and given:
        raise InvalidOptionError(f"bench-backbones: {', '.join(given)} acts only with --train-seeds (the training "
                                 "runs); without it the committed checkpoints are timed")
    timing = [f"--{name}" for name, default in TIMING_DEFAULTS.items() if getattr(args, name) != default]
    if args.train_seeds is not None and timing:
        raise InvalidOptionError(f"bench-backbones: {', '.join(timing)} times the committed checkpoints; with "
                                 "--train-seeds (the training runs) it has no effect")
    if args.sizes is not None:
        other = [f"--{name.replace('_', '-')}" for name, default in (("train_seeds", None), ("accuracy_n", 100),
                                                                    ("fraction", TIMING_DEFAULTS["fraction"]))
                 if getattr(args, name) != default]
        if other:
            raise InvalidOptionError(f"bench-backbones: {', '.join(other)} has no effect with --sizes (which times "
                                     "untrained models of the papers' sizes); give one or the other")
    if args.train_budget == "compute" and len(args.train_kinds) < 2:
        raise InvalidOptionError(f"bench-backbones: --train-budget compute matches other backbones to the first's "
                                 f"compute; --train-kinds={','.join(args.train_kinds)} trains only one")
    if isinstance(args.train_lr, dict) and set(args.train_lr) - set(args.train_kinds):
        extra = ", ".join(sorted(set(args.train_lr) - set(args.train_kinds)))
        raise InvalidOptionError(f"bench-backbones: --train-lr gives a rate for {extra}, which --train-kinds "
                                 f"({','.join(args.train_kinds)}) does not train")


def seed_list(text: str) -> list[int]:
    """"0,1,2" -> [0, 1, 2]: distinct non-negative integers."""
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--train-seeds={text!r}: expected distinct non-negative integers "
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
            raise argparse.ArgumentTypeError(f"--train-lr={text!r}: expected a learning rate in (0, 1), e.g. 1e-3, "
                                             "or one per backbone, e.g. dit=2e-3,dico=4e-3")
        return value

    if "=" not in text:
        return rate(text)
    pairs = [[side.strip() for side in part.split("=", 1)] for part in text.split(",")]
    if any(len(p) != 2 or p[0] not in KINDS for p in pairs) or len({p[0] for p in pairs}) != len(pairs):
        raise argparse.ArgumentTypeError(f"--train-lr={text!r}: expected kind=rate pairs of {', '.join(KINDS)}, "
                                         "e.g. dit=2e-3,dico=4e-3")
    return {k: rate(v) for k, v in pairs}


def size_list(text: str) -> list[str]:
    """"S,B" -> ["S", "B"]: distinct sizes of `DIT_SIZES`."""
    sizes = [part.strip() for part in text.split(",")]
    if not sizes or any(s not in DIT_SIZES for s in sizes) or len(set(sizes)) != len(sizes):
        raise argparse.ArgumentTypeError(f"--sizes={text!r}: expected distinct sizes of {', '.join(DIT_SIZES)} "
                                         "separated by commas, e.g. S,B")
    return sizes


def kind_list(text: str) -> tuple[str, ...]:
    """"dit,dico" -> ("dit", "dico"): distinct backbones of `digits_backbones.KINDS`."""
    from accel.zoo.digits_backbones import KINDS

    kinds = tuple(part.strip() for part in text.split(","))
    if not kinds or any(k not in KINDS for k in kinds) or len(set(kinds)) != len(kinds):
        raise argparse.ArgumentTypeError(f"--train-kinds={text!r}: expected distinct names of {', '.join(KINDS)} "
                                         "separated by commas, e.g. dit,dico")
    return kinds


def add_parser(sub: argparse._SubParsersAction) -> None:
    from accel.cli import counting

    p = sub.add_parser("bench-backbones", help="the trained DiT, DiCo and LEGO (and lego-skip) of equal parameter "
                       "count side by side on the digits task: sampling speed and task accuracy")
    p.add_argument("--batch", type=counting(1), default=TIMING_DEFAULTS["batch"],
                   help=f"images per timed call (default {TIMING_DEFAULTS['batch']})")
    p.add_argument("--repeat", type=counting(1), default=TIMING_DEFAULTS["repeat"],
                   help=f"interleaved timed repeats (default {TIMING_DEFAULTS['repeat']})")
    p.add_argument("--accuracy-n", type=counting(1), default=100,
                   help="judged samples per row, or per training run with --train-seeds (default 100)")
    p.add_argument("--fraction", type=float, default=TIMING_DEFAULTS["fraction"],
                   help=f"lego-skip's share of skipped steps (default {TIMING_DEFAULTS['fraction']})")
    p.add_argument("--train-seeds", type=seed_list, default=None, metavar="0,1,2",
                   help="instead of the timed rows: train each of --train-kinds once per seed (at 1,200 steps the "
                   "DiT takes 5-7 minutes, DiCo 1.5-3, on 2 threads alone) and compare their accuracy across the runs")
    p.add_argument("--train-steps", type=counting(1), default=None,
                   help="optimizer steps per training run with --train-seeds (default: the entries' budget, 1200)")
    p.add_argument("--train-kinds", type=kind_list, default=("dit", "dico"), metavar="dit,dico",
                   help="the backbones trained with --train-seeds (default dit,dico; the first is the reference)")
    p.add_argument("--train-budget", choices=BUDGETS, default="steps",
                   help="with --train-seeds: 'steps', every backbone --train-steps optimizer steps (default), or "
                   "'compute', the first backbone --train-steps steps and every other one as many as cost the same "
                   "forward multiply-accumulates")
    p.add_argument("--train-lr", type=learning_rates, default=None, metavar="RATE|dit=RATE,dico=RATE",
                   help="peak learning rate of the --train-seeds runs, for all or per backbone (default: the "
                   "entries' recipe, 1e-3)")
    p.add_argument("--sizes", type=size_list, default=None, metavar="S,B",
                   help="instead of the digits rows: time DiCo against the DiT of each size at the papers' "
                   "configs on a 256 px latent, with random weights (S: about 4 s per forward of 20 on 2 "
                   "threads, B: about 4x that; L and XL take minutes)")
    p.add_argument("--out", default=None, help="a directory for results.json and results.md")
    p.add_argument("--doc", default=None, help="a markdown file to write the table into, in a section marked by "
                   "--doc-key (replaced in place when the key is there, appended otherwise)")
    p.add_argument("--doc-key", default=None, help="the section's key and heading in --doc (default: the command)")
    p.set_defaults(func=_cmd)
