"""`accel bench-backbones`: the trained backbones of equal parameter count and equal training budget side by
side on the digits task (`digits-dit`, `digits-dico`, `digits-lego`, and LEGO with `lego-skip`).

Per row, in one process: the parameters a forward can read (`digits_backbones.reachable_parameters`), the
sampling latency of one batch of class-conditional images (labels 0..9 cycling, DDIM 20 steps, guidance 4:
the judge's call) as the median of interleaved repeats after a warm-up, images/s and the speed against
the DiT, and the judge's task accuracy over `n` samples (seed 0) outside the timed runs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

ROWS = ("digits-dit", "digits-dico", "digits-lego", "digits-lego+lego-skip")


@dataclass
class BackboneRow:
    label: str
    entry: str
    method: str | None = None  # an accel method patched on for this row
    parameters: int = 0
    latency_s: list[float] = field(default_factory=list)
    accuracy: float | None = None

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
            row.accuracy = zoo.evaluate(row.entry, pipe, n=accuracy_n, seed=0)["accuracy"]
        finally:
            if handle is not None:
                handle.unpatch()
    return {"schema": "accel.bench-backbones/1", "batch": batch, "repeat": repeat, "accuracy_n": accuracy_n,
            "fraction": fraction, "steps": digits_image.STEPS, "guidance": digits_image.GUIDANCE,
            "threads": torch.get_num_threads(), "env": info(),
            "rows": [{**asdict(row), "median_s": row.median} for row in rows]}


def markdown(result: dict[str, Any], command: str | None = None) -> str:
    rows = {r["label"]: r for r in result["rows"]}
    dit, lego = rows["digits-dit"], rows["digits-lego"]
    head = f"Command: `{command}`\n\n" if command else ""
    head += (f"one batch of {result['batch']} images (labels cycling 0..9), DDIM {result['steps']} steps, guidance "
             f"{result['guidance']}, median of {result['repeat']} interleaved repeats; task accuracy: the digits "
             f"judge over {result['accuracy_n']} samples (seed 0); lego-skip at fraction {result['fraction']}; "
             f"fp32, device: {result['env']['device']}\n\n")
    cols = ["row", "parameters", "latency s (median [min-max])", "images/s", "speed vs DiT", "time vs LEGO",
            "task accuracy %"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in result["rows"]:
        s = r["latency_s"]
        lines.append("| " + " | ".join([
            r["label"], f"{r['parameters']:,}", f"{r['median_s']:.3f} [{min(s):.3f}-{max(s):.3f}]",
            f"{result['batch'] / r['median_s']:.1f}", f"{dit['median_s'] / r['median_s']:.2f}x",
            f"{100 * (r['median_s'] / lego['median_s'] - 1):+.0f}%" if r["entry"] == "digits-lego" else "-",
            f"{100 * r['accuracy']:.1f}"]) + " |")
    return head + "\n".join(lines) + "\n"


def _cmd(args: argparse.Namespace) -> int:
    import json
    import shlex

    from accel.bench.report import update_doc
    from accel.method import method_class

    method_class("lego-skip").Config.from_options(fraction=args.fraction)  # a bad value: refused before any run
    command = "accel " + " ".join(shlex.quote(a) for a in args.argv)
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


def add_parser(sub: argparse._SubParsersAction) -> None:
    from accel.cli import counting

    p = sub.add_parser("bench-backbones", help="the trained DiT, DiCo and LEGO (and lego-skip) of equal parameter "
                       "count side by side on the digits task: sampling speed and task accuracy")
    p.add_argument("--batch", type=counting(1), default=20, help="images per timed call (default 20)")
    p.add_argument("--repeat", type=counting(1), default=3, help="interleaved timed repeats (default 3)")
    p.add_argument("--accuracy-n", type=counting(1), default=100, help="judged samples per row (default 100)")
    p.add_argument("--fraction", type=float, default=0.4, help="lego-skip's share of skipped steps (default 0.4)")
    p.add_argument("--out", default=None, help="a directory for results.json and results.md")
    p.add_argument("--doc", default=None)
    p.add_argument("--doc-key", default=None)
    p.set_defaults(func=_cmd)
