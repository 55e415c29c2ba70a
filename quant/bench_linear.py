"""`accel bench-linear`: the linear layers of a model's blocks at its real token count, one by one, in each
of sixbit's compute paths against fp32 and bf16: which path brings speed on this device, and which only
memory. Shapes and token counts are read from a real call of the zoo pipeline (one step); every path runs
interleaved, median of `repeat`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import formats


def _shapes(model: str, size: str) -> list[tuple[int, int, int, int]]:
    """(tokens M, in K, out N, calls) per distinct linear shape in the blocks, from one step (a CFG
    pipeline calls each layer once per branch)."""
    import accel
    from accel.zoo import generate

    pipe = accel.zoo.load(model, size=size)
    adapter = accel.adapters.adapter_for(pipe.transformer)
    seen: dict[tuple[int, int, int], int] = {}
    hooks = []
    for ref in adapter.blocks(pipe.transformer):
        for layer in ref.module.modules():
            if isinstance(layer, torch.nn.Linear) and layer.in_features % 16 == 0:
                def record(module: torch.nn.Module, inputs: tuple, output: Any) -> None:
                    x = inputs[0]
                    key = (x.numel() // x.shape[-1], module.in_features, module.out_features)
                    seen[key] = seen.get(key, 0) + 1

                hooks.append(layer.register_forward_hook(record))
    with torch.no_grad():
        generate(pipe, steps=1)
    for h in hooks:
        h.remove()
    return [(m, k, n, count) for (m, k, n), count in sorted(seen.items())]


def _time(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _paths(x: torch.Tensor, w: torch.Tensor) -> dict[str, Callable[[], Any]]:
    """The ways to compute x W^T: fp32, bf16, and sixbit's paths with their weights prepared."""
    nv, i8 = formats.quantize_nvfp4(w), formats.quantize_int8(w)
    x86 = formats.prepack_x86(i8)
    xb, wb = x.bfloat16(), w.bfloat16()
    n = w.shape[0]
    paths: dict[str, Callable[[], Any]] = {
        "fp32": lambda: F.linear(x, w),
        "bf16": lambda: F.linear(xb, wb),
        "int8 _int_mm": lambda: formats.int8_linear(x, i8, None),
        "nvfp4 (dequantized per call)": lambda: formats.nvfp4_linear(x, nv, None),
    }
    if x86 is not None:
        paths["int8 x86 (INT8 weights kept)"] = lambda: formats.int8_linear_x86(x, x86, n, None)
        paths["int8 x86 (cast from NVFP4 per call)"] = lambda: formats.int8_linear_x86(
            x, formats.prepack_x86(formats.int8_from_nvfp4(nv)), n, None)
    return paths


def run(model: str, size: str, repeat: int) -> dict[str, Any]:
    rows = []
    g = torch.Generator().manual_seed(0)
    for m, k, n, count in _shapes(model, size):
        x = torch.randn(m, k, generator=g)
        w = torch.randn(n, k, generator=g) / k**0.5
        paths = _paths(x, w)
        times: dict[str, list[float]] = {name: [] for name in paths}
        for fn in paths.values():
            fn()  # warm-up
        for _ in range(repeat):
            for name, fn in paths.items():
                times[name].append(_time(fn))
        medians = {name: statistics.median(t) for name, t in times.items()}
        rows.append({"tokens": m, "in": k, "out": n, "layers": count,
                     "ms": {name: 1e3 * v for name, v in medians.items()}})
    from accel.info import info

    return {"model": model, "size": size, "repeat": repeat, "device": info()["device"], "rows": rows}


def markdown(result: dict[str, Any], command: str) -> str:
    names = list(result["rows"][0]["ms"]) if result["rows"] else []
    head = (f"Command: `{command}`\n\nmodel `{result['model']}` ({result['size']}), the linear layers of its "
            f"blocks at one call's token count, median of {result['repeat']} interleaved repeats, device: "
            f"{result['device']}\n\n")
    best = "int8 x86 (INT8 weights kept)" if "int8 x86 (INT8 weights kept)" in names else "int8 _int_mm"
    cols = ["tokens x in -> out", "calls per step", *[f"{n} ms" for n in names], f"fp32 / {best}"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in result["rows"]:
        ms = r["ms"]
        lines.append("| " + " | ".join([f"{r['tokens']} x {r['in']} -> {r['out']}", str(r["layers"]),
                                        *[f"{ms[n]:.2f}" for n in names],
                                        f"{ms['fp32'] / ms[best]:.2f}x"]) + " |")
    return head + "\n".join(lines) + "\n"


def _cmd(args: argparse.Namespace) -> int:
    from accel.bench.report import check_outputs, command_line, update_doc

    command, default_key = command_line(args.argv), args.default_doc_key
    check_outputs("bench-linear", doc=args.doc, doc_key=args.doc_key, default_key=default_key)
    result = run(args.model, args.size, args.repeat)
    text = markdown(result, command)
    print(text)
    if args.doc:
        key = args.doc_key or default_key
        update_doc(Path(args.doc), key, f"### {key}\n\n{text}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    from accel.cli import counting

    p = sub.add_parser("bench-linear", help="sixbit's linear-layer paths (int8, NVFP4) against fp32/bf16 on a model's shapes")
    p.add_argument("--model", default="wan", help="zoo name (default wan)")
    p.add_argument("--size", choices=("tiny", "bench"), default="bench")
    p.add_argument("--repeat", type=counting(1), default=10)
    p.add_argument("--doc", default=None)
    p.add_argument("--doc-key", default=None,
                   help="section name in --doc (default: the command line without --doc and --doc-key)")
    p.set_defaults(func=_cmd)
