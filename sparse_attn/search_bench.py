"""What AdaSpa's tile search costs next to plain dense attention, measured side by side in one run.

Rows per sequence length: dense SDPA (the baseline), the fused search (`dense_attention_with_tile_mass`:
dense output + LSE + tile mass), SDPA followed by a refresh (the two-pass alternative), and the refresh
alone (`tile_mass` from a cached LSE, what later search steps pay). Repeats are interleaved (every row,
then again) and the table gives medians and the ratio to dense SDPA of the same length.

    python -m sparse_attn.search_bench --seq 4096 16384 --head-dim 64 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .paths import capture
from .search import dense_attention_with_tile_mass, tile_mass

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def bench_search(
    seq_lens: list[int], head_dim: int = 64, heads: int = 1, tile_size: int = 64, dtype: str = "fp32",
    device: str = "cpu", repeats: int = 3,
) -> list[dict]:
    """One dict per (sequence length, row): median seconds and ratio to dense SDPA."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}; got {dtype!r}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1; got {repeats}")
    dev = torch.device(device)
    results = []
    for S in seq_lens:
        g = torch.Generator().manual_seed(S)
        q, k, v = (torch.randn(1, heads, S, head_dim, generator=g).to(dev, DTYPES[dtype]) for _ in range(3))
        with torch.inference_mode():
            _, lse, _ = dense_attention_with_tile_mass(q, k, v, tile_size)
            rows: dict[str, Callable[[], object]] = {
                "dense SDPA": lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v),
                "fused search (dense + LSE + mass)": lambda q=q, k=k, v=v: dense_attention_with_tile_mass(
                    q, k, v, tile_size),
                "SDPA, then refresh (two passes)": lambda q=q, k=k, v=v, lse=lse: (
                    F.scaled_dot_product_attention(q, k, v), tile_mass(q, k, lse, tile_size)),
                "refresh search (mass from cached LSE)": lambda q=q, k=k, lse=lse: tile_mass(q, k, lse, tile_size),
            }
            times: dict[str, list[float]] = {name: [] for name in rows}
            for fn in rows.values():  # warm-up (Triton autotune, allocator)
                fn()
            for _ in range(repeats):
                for name, fn in rows.items():
                    times[name].append(_timed(fn, dev))
        base = statistics.median(times["dense SDPA"])
        for name, ts in times.items():
            med = statistics.median(ts)
            results.append({"seq_len": S, "row": name, "median_s": med, "vs_dense": med / base})
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--tile-size", type=int, default=64, choices=(16, 32, 64, 128))
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with capture() as seen:
        results = bench_search(args.seq, args.head_dim, args.heads, args.tile_size, args.dtype, args.device,
                               args.repeats)
    print(f"search path: {seen[-1] if seen else None}; torch threads: {torch.get_num_threads()}; "
          f"heads {args.heads}, head dim {args.head_dim}, tile {args.tile_size}, {args.dtype}")
    print("| tokens | row | median s | x dense SDPA |\n|---|---|---|---|")
    for r in results:
        print(f"| {r['seq_len']} | {r['row']} | {r['median_s']:.4f} | {r['vs_dense']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
