"""`accel bench-attn-quality`: the error of sparse attention on attention inputs captured from a real run.

`accel bench-attn` times the kernels on random inputs; their accuracy only means something on the
inputs a trained model produces, where attention has structure. This runs a trained reference model
once with every sparse-eligible attention call routed through PISA at density 1 (exact dense
attention), records q, k, v in the methods' block order (2-D/3-D tiles, text last) at a few steps, and
scores each approximation against dense attention at the same density, on the same calls:

- keep-or-drop: the routed top-k blocks (plus text and diagonal) exactly, the rest dropped;
- PISA zeroth order and hybrid: the same blocks exactly, the rest through the Taylor expansion;
- mass top-k: AdaSpa's exact block-mass search (an oracle for keep-or-drop's selection), rest dropped.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import accel
from accel.sparse_attn import block_sparse_attention
from accel.sparse_attn.pisa import relative_errors
from accel.sparse_attn.search import dense_attention_with_tile_mass, tiles_from_mass

ROWS = ("keep_or_drop", "zeroth", "hybrid", "mass_top_k")
LABELS = {
    "keep_or_drop": "keep-or-drop (same blocks, rest dropped)",
    "zeroth": "PISA zeroth order",
    "hybrid": "PISA hybrid (first order)",
    "mass_top_k": "exact-mass top-k (AdaSpa search), rest dropped",
}


@dataclass
class CapturedCall:
    """One attention call of the run, in block order."""

    step: int
    layer: int
    branch: str
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    sinks: tuple[int, ...]


def capture(pipe: Any, steps: int, at: tuple[float, ...], tile_size: int, seed: int = 0) -> list[CapturedCall]:
    """q, k, v of every sparse-eligible attention call at the steps `round(f * steps)` for f in `at`."""
    wanted = {min(steps - 1, round(f * steps)) for f in at}
    calls: list[CapturedCall] = []
    with accel.patch(pipe, method="pisa", density=1.0, dense_steps=0.0, dense_layers=0, tile_size=tile_size) as h:
        method = h.methods[0]
        layers = {id(hook): hook.layer for hook in method.hooks}
        exact = method.attend

        def record(slot: tuple, q, k, v, scale, sinks):  # noqa: ANN001, ANN202
            if method.tracker.step in wanted:
                calls.append(CapturedCall(method.tracker.step, layers[slot[0]], slot[1], q.clone(), k.clone(),
                                          v.clone(), sinks))
            return exact(slot, q, k, v, scale, sinks)

        method.attend = record  # this patch's own method object, dropped with it
        accel.zoo.generate(pipe, steps=steps, seed=seed)
    return calls


def mass_top_k_error(call: CapturedCall, density: float, tile_size: int) -> float:
    dense, _, mass = dense_attention_with_tile_mass(call.q, call.k, call.v, tile_size)
    index = tiles_from_mass(mass, density, tile_size, call.q.shape[2], call.k.shape[2], sink_tiles=call.sinks)
    out = block_sparse_attention(call.q, call.k, call.v, index)
    reference = F.scaled_dot_product_attention(call.q.double(), call.k.double(), call.v.double())
    return float((out.double() - reference).norm() / reference.norm())


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads or torch.get_num_threads())
    pipe = accel.zoo.load(args.model)
    start = time.perf_counter()
    calls = capture(pipe, args.steps, tuple(args.at), args.tile_size, args.seed)
    if not calls:
        from accel.errors import AccelError

        raise AccelError(f"--model {args.model}: no attention call PISA can take was captured (a convolutional "
                         "backbone such as DiCo has none)")
    errors: dict[float, dict[str, list[float]]] = {}
    for density in args.density:
        per_row: dict[str, list[float]] = {name: [] for name in ROWS}
        for call in calls:
            errs = relative_errors(call.q, call.k, call.v, density, args.tile_size, call.sinks, args.routing)
            for name, err in errs.items():
                per_row[name].append(err)
            per_row["mass_top_k"].append(mass_top_k_error(call, density, args.tile_size))
        errors[density] = per_row
    first = calls[0] if calls else None
    return {
        "schema": "accel.bench-attn-quality/1",
        "command": "accel " + " ".join(shlex.quote(a) for a in args.argv) if getattr(args, "argv", None) else None,
        "model": args.model,
        "steps": args.steps,
        "captured_steps": sorted({c.step for c in calls}),
        "calls": len(calls),
        "shape": None if first is None else list(first.q.shape),
        "tile_size": args.tile_size,
        "routing": args.routing,
        "seconds": time.perf_counter() - start,
        "errors": {str(d): rows for d, rows in errors.items()},
    }


def markdown(result: dict[str, Any]) -> str:
    head = (
        f"Command: `{result['command']}`\n\n"
        f"{result['model']}, {result['steps']} steps; {result['calls']} attention calls captured at steps "
        f"{result['captured_steps']}, q/k/v {result['shape']} (B, H, S, D), block {result['tile_size']}, {result['routing']} routing. "
        "Relative L2 error against dense attention (float64), mean (and max) over the calls.\n\n"
    )
    lines = ["| density | approximation | mean rel. L2 error | max | vs keep-or-drop |", "|---|---|---|---|---|"]
    for density, rows in result["errors"].items():
        base = statistics.fmean(rows["keep_or_drop"]) if rows["keep_or_drop"] else None
        for name in ROWS:
            values = rows[name]
            if not values:
                continue
            mean = statistics.fmean(values)
            ratio = f"{mean / base:.2f}x" if base else "-"
            lines.append(f"| {density} | {LABELS[name]} | {mean:.2e} | {max(values):.2e} | {ratio} |")
    return head + "\n".join(lines) + "\n"


def _cmd(args: argparse.Namespace) -> int:
    from accel import zoo
    from accel.errors import AccelError

    from .report import check_outputs, update_doc

    trained = [n for n in zoo.TRAINED if not (zoo.is_vlm(n) or zoo.is_text(n) or n in zoo.CHUNK_NAMES)]
    if args.model not in trained:  # random weights' attention has no structure to measure against
        raise AccelError(f"--model {args.model}: expected a trained image or video entry of the zoo "
                         f"({', '.join(trained)})")

    check_outputs("bench-attn-quality", args.out, args.doc, args.doc_key,
                  ("attention_quality.json", "attention_quality.md"), default_key=args.default_doc_key)
    result = run(args)
    text = markdown(result)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "attention_quality.json").write_text(json.dumps(result, indent=2))
    (out / "attention_quality.md").write_text(text)
    if args.doc:
        update_doc(Path(args.doc), args.doc_key or args.default_doc_key, text)
    return 0


def _fractions(low_open: bool) -> Any:
    """An argparse type: comma-separated numbers in [0, 1] (`low_open`: in (0, 1]), named in the error."""
    allowed = "(0, 1]" if low_open else "[0, 1]"

    def parse(text: str) -> list[float]:
        try:
            values = [float(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers in {allowed}") from None
        if not values or any(not (0 < v <= 1 if low_open else 0 <= v <= 1) for v in values):
            raise argparse.ArgumentTypeError(f"{text!r}: every value must be in {allowed}")
        return values

    return parse


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from accel.cli import counting

    p = sub.add_parser("bench-attn-quality", help="sparse attention error on inputs captured from a trained model")
    p.add_argument("--model", default="digits-video", help="trained zoo entry (default digits-video)")
    p.add_argument("--steps", type=counting(1), default=20, help="denoising steps of the captured run (default 20)")
    p.add_argument("--at", type=_fractions(False), default=[0.3, 0.6, 0.9],
                   help="fractions of the run at which calls are captured, in [0, 1] (default 0.3,0.6,0.9)")
    p.add_argument("--density", type=_fractions(True), default=[0.125],
                   help="densities, comma-separated, in (0, 1] (default 0.125)")
    p.add_argument("--tile-size", type=int, default=64, choices=(16, 32, 64, 128))
    p.add_argument("--routing", choices=("pooled", "covariance"), default="pooled",
                   help="how the exact blocks are chosen (PISA's option; keep-or-drop uses the same blocks)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=counting(0), default=0, help="CPU threads (default 0: torch's own count)")
    p.add_argument("--out", default="bench-results")
    p.add_argument("--doc", default=None, help="also write the table into this markdown file")
    p.add_argument("--doc-key", default=None)
    p.set_defaults(func=_cmd)
    return p
