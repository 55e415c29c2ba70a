"""`accel bench-attn`: block-sparse attention against dense SDPA, FlexAttention and xformers, one run.

For every (sequence length, head dim): dense SDPA (the baseline), dense xformers (when installed, CUDA),
and for every density the sparse rows on one shared tile index: each accel path that can run here (the
one `block_sparse_attention` picks by default is marked), PISA (`pisa_attention` on the same index, its
default path: the same exact tiles plus the approximated rest, so its time next to the block-sparse
row is PISA's overhead) and compiled FlexAttention with the same blocks as a `BlockMask`. PISA rows note
their relative L2 error against dense SDPA next to the plain block-sparse one. Repeats are interleaved (row after row, then again) so drifting clocks or a busy
neighbour hit all rows alike; the table reports medians and speedup = dense SDPA median / row median.
The first call of each row is timed apart ("first s": FlexAttention's compile, Triton's autotune).
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .attention import block_sparse_attention, choose_path
from .paths import Kernel
from .pisa import ORDERS, pisa_attention
from .selection import random_tiles, select_tiles

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Row:
    seq_len: int
    head_dim: int
    density: float | None  # None: dense
    name: str
    times_s: list[float] = field(default_factory=list)
    first_s: float | None = None
    note: str = ""
    max_diff: float | None = None  # vs the default accel path at the same density

    @property
    def median_s(self) -> float | None:
        return statistics.median(self.times_s) if self.times_s else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - start


def _flex() -> Callable[..., torch.Tensor] | str:
    try:
        from torch.nn.attention.flex_attention import flex_attention
    except ImportError as exc:
        return f"unavailable: {exc}"
    return torch.compile(flex_attention, dynamic=False)


def _xformers(device: torch.device) -> Callable[..., torch.Tensor] | str:
    if device.type != "cuda":
        return "skipped: xformers kernels need CUDA"
    try:
        import xformers.ops as xops
    except ImportError:
        return "skipped: xformers not installed"
    return lambda q, k, v: xops.memory_efficient_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    ).transpose(1, 2)


def _accel_paths(q: torch.Tensor) -> tuple[str, list[str]]:
    """The default path here and every path worth timing on this device."""
    default = choose_path(q, "auto")
    candidates = [Kernel.TRITON if q.device.type == "cuda" else Kernel.CPU, Kernel.TORCH]
    runnable = []
    for name in candidates:
        try:
            choose_path(q, name)
            runnable.append(name)
        except RuntimeError:
            pass
    return str(default.kernel), [str(k) for k in runnable]


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    flex = _flex() if "flex" in args.backends else None
    xformers = _xformers(device) if "xformers" in args.backends else None
    gen = torch.Generator().manual_seed(args.seed)
    rows: list[Row] = []
    for seq_len in args.seq_lens:
        for head_dim in args.head_dims:
            shape = (args.batch, args.heads, seq_len, head_dim)
            q, k, v = (torch.randn(shape, generator=gen).to(device=device, dtype=dtype) for _ in range(3))
            calls: list[tuple[Row, Callable[[], Any]]] = [
                (Row(seq_len, head_dim, None, "dense sdpa"), lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v))
            ]
            if isinstance(xformers, str):
                rows.append(Row(seq_len, head_dim, None, "dense xformers", note=xformers))
            elif xformers is not None:
                calls.append((Row(seq_len, head_dim, None, "dense xformers"), lambda q=q, k=k, v=v: xformers(q, k, v)))
            default, accel_paths = _accel_paths(q)
            for density in args.densities:
                if args.selection == "topk":
                    index = select_tiles(q, k, density, args.tile_size, diagonal=False)
                else:
                    index = random_tiles(args.batch, args.heads, seq_len, seq_len, args.tile_size, density,
                                         generator=gen, device=device)
                for name in accel_paths:
                    label = f"accel {name}" + (" (default)" if name == default else "")
                    calls.append((Row(seq_len, head_dim, density, label), lambda index=index, name=name, q=q, k=k, v=v:
                                  block_sparse_attention(q, k, v, index, backend=name)))
                for order in args.pisa:
                    calls.append((Row(seq_len, head_dim, density, f"pisa {order}"), lambda index=index, order=order,
                                  q=q, k=k, v=v: pisa_attention(q, k, v, order=order, index=index)))
                if isinstance(flex, str):
                    rows.append(Row(seq_len, head_dim, density, "flex_attention (compiled)", note=flex))
                elif flex is not None:
                    mask = index.to_block_mask()
                    calls.append((Row(seq_len, head_dim, density, "flex_attention (compiled)"),
                                  lambda mask=mask, q=q, k=k, v=v: flex(q, k, v, block_mask=mask)))
            rows += _measure(calls, device, args, default)
            del q, k, v
    return {
        "command": "accel " + " ".join(shlex.quote(a) for a in getattr(args, "argv", [])),
        "device": _device_name(device),
        "torch": torch.__version__,
        "config": {key: getattr(args, key) for key in (
            "batch", "heads", "tile_size", "dtype", "selection", "repeat", "warmup", "seed")},
        "cpu_kernel": _cpu_kernel_info(device),
        "rows": [dict(asdict(r), median_s=r.median_s) for r in rows],
    }


def _measure(calls: list[tuple[Row, Callable[[], Any]]], device: torch.device, args: argparse.Namespace,
             default: str) -> list[Row]:
    """First call (compile/tune) apart, `warmup` more untimed, then `repeat` interleaved rounds."""
    outputs: dict[int, torch.Tensor] = {}
    live = []
    for i, (row, fn) in enumerate(calls):
        try:
            out, row.first_s = _timed(fn, device)
            for _ in range(args.warmup):
                fn()
        except Exception as exc:  # a backend failing must not hide the others' numbers
            row.note = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
            continue
        outputs[i] = out.float()
        live.append(i)
    for _ in range(args.repeat):
        for i in live:
            row, fn = calls[i]
            row.times_s.append(_timed(fn, device)[1])
    # accuracy: each sparse row against the default accel path on the same index; PISA rows (another
    # function of the same index) against dense SDPA, next to the default block-sparse path's error
    for i in live:
        row = calls[i][0]
        if row.name.startswith("pisa "):
            row.note = _pisa_note(i, outputs, calls)
            continue
        ref = next((j for j in live if calls[j][0].density == row.density and calls[j][0].density is not None
                    and calls[j][0].name.endswith("(default)")), None)
        if ref is not None and ref != i:
            row.max_diff = float((outputs[i] - outputs[ref]).abs().max())
    return [row for row, _ in calls]


def _pisa_note(i: int, outputs: dict[int, torch.Tensor], calls: list[tuple[Row, Callable[[], Any]]]) -> str:
    """'rel. L2 err vs dense: PISA / block-sparse' for a PISA row (dense SDPA is the first call)."""
    dense = outputs.get(0)
    if dense is None or calls[0][0].name != "dense sdpa":
        return ""
    sparse = next((j for j in outputs if calls[j][0].density == calls[i][0].density
                   and calls[j][0].name.endswith("(default)")), None)

    def err(j: int) -> str:
        return f"{float((outputs[j] - dense).norm() / dense.norm()):.1e}"

    return f"rel. L2 err vs dense: {err(i)}" + ("" if sparse is None else f" (block-sparse {err(sparse)})")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    from accel.info import device_name

    return device_name()


def _cpu_kernel_info(device: torch.device) -> dict[str, object]:
    if device.type != "cpu":
        return {}
    from . import cpu_kernel

    return cpu_kernel.build_info()


def markdown(result: dict[str, Any]) -> str:
    c = result["config"]
    head = (
        f"Command: `{result['command']}`\n\n"
        f"device: {result['device']}; torch {result['torch']}; {c['dtype']}, B={c['batch']}, H={c['heads']}, "
        f"tile {c['tile_size']}, {c['selection']} tiles; median of {c['repeat']} interleaved repeats\n\n"
    )
    cols = ["S", "D", "density", "row", "median ms", "min-max ms", "speedup vs dense SDPA", "first call s",
            "max abs diff vs default", "note"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    dense = {(r["seq_len"], r["head_dim"]): r["median_s"] for r in result["rows"] if r["name"] == "dense sdpa"}
    for r in result["rows"]:
        med = r["median_s"]
        base = dense.get((r["seq_len"], r["head_dim"]))
        cells = [
            str(r["seq_len"]), str(r["head_dim"]), "1 (dense)" if r["density"] is None else f"{r['density']:g}",
            r["name"],
            "-" if med is None else f"{1e3 * med:.1f}",
            "-" if not r["times_s"] else f"{1e3 * min(r['times_s']):.1f}-{1e3 * max(r['times_s']):.1f}",
            "-" if med is None or not base else f"{base / med:.2f}x",
            "-" if r["first_s"] is None else f"{r['first_s']:.2f}",
            "-" if r["max_diff"] is None else f"{r['max_diff']:.1e}",
            r["note"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def _ints(text: str) -> list[int]:
    """Comma-separated positive integers (sequence lengths, head dims)."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers >= 1")
    return values


def _densities(text: str) -> list[float]:
    """Comma-separated kept fractions in (0, 1]."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers in (0, 1]") from None
    if not values or not all(0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers in (0, 1]")
    return values


def _names(allowed: tuple[str, ...]):  # noqa: ANN202
    """An argparse type: comma-separated names among `allowed` ('' for none)."""
    def parse(text: str) -> list[str]:
        names = [x.strip() for x in text.split(",") if x.strip()]
        unknown = [n for n in names if n not in allowed]
        if unknown:
            raise argparse.ArgumentTypeError(f"{', '.join(unknown)}: expected some of {', '.join(allowed)}")
        return names

    return parse


def _cmd(args: argparse.Namespace) -> int:
    from accel.bench.report import check_outputs

    check_outputs("bench-attn", args.out, args.doc, args.doc_key, ("bench-attn.json", "bench-attn.md"),
                  default_key=args.default_doc_key)
    result = run(args)
    text = markdown(result)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench-attn.json").write_text(json.dumps(result, indent=2))
    (out / "bench-attn.md").write_text(text)
    print(f"wrote {out / 'bench-attn.json'}, {out / 'bench-attn.md'}")
    if args.doc:  # the generated table into the docs (accel's report helper; only the CLI needs it)
        from accel.bench.report import update_doc

        update_doc(Path(args.doc), args.doc_key or args.default_doc_key, "### Block-sparse attention and PISA (accel bench-attn)\n\n" + text)
    return 0


def add_bench_attn_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `bench-attn` on the `accel` command's subparsers."""
    from accel.cli import _device, counting

    p = subparsers.add_parser("bench-attn", help="block-sparse attention vs dense SDPA, FlexAttention, xformers")
    p.add_argument("--seq-lens", type=_ints, default=[4096, 16384], help="comma-separated (default 4096,16384)")
    p.add_argument("--doc", default=None, help="also write the table into this markdown file (docs/benchmarks.md)")
    p.add_argument("--doc-key", default=None, help="section name in --doc (default bench-attn)")
    p.add_argument("--head-dims", type=_ints, default=[64], help="comma-separated (default 64)")
    p.add_argument("--densities", type=_densities, default=[0.125, 0.5], help="kept fraction of key tiles")
    p.add_argument("--batch", type=counting(1), default=1)
    p.add_argument("--heads", type=counting(1), default=2)
    p.add_argument("--tile-size", type=int, default=64, choices=(16, 32, 64, 128))
    p.add_argument("--selection", choices=("random", "topk"), default="random",
                   help="random tiles, or top-k of pooled q.k scores (same index for every sparse row)")
    p.add_argument("--backends", type=_names(("flex", "xformers")), default=["flex", "xformers"],
                   help="peers besides dense SDPA: flex, xformers (default both)")
    p.add_argument("--pisa", type=_names(tuple(ORDERS)), default=["hybrid"],
                   help=f"PISA rows, orders among {ORDERS} (default hybrid; '' for none)")
    p.add_argument("--device", type=_device, default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    p.add_argument("--repeat", type=counting(1), default=5, help="timed rounds (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per row after the first (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench-results", help="directory for bench-attn.json and bench-attn.md")
    p.set_defaults(func=_cmd)
    return p
