"""What each rank runs in tests/parallel (launched by accel.bench.scale_out.launch, one process per rank).

Every rank builds the same tiny zoo pipeline twice: one stays whole (the single-process reference,
computed on every rank alike), the other is sharded with diffusers' own context parallelism
(`enable_parallelism`, gloo on CPU). Each method is patched onto both in turn and the outputs compared.
Sizes are chosen so every rank holds whole tiles of 16 tokens: Flux 64x64 (16 x 16 = 256 image tokens)
with a 32-token prompt, Wan 13 frames (4 x 4 x 4 = 64 video tokens).
"""

from __future__ import annotations

from typing import Any

import torch

import accel
from accel.bench.scale_out import enable
from accel.caches import span_cache
from accel.zoo import inputs

SPARSE = {"dense_steps": 0.0, "tile_size": 16}
METHODS: dict[str, dict[str, Any]] = {
    "none": {},
    "pisa": {"density": 0.25, "dense_layers": 0, **SPARSE},
    "adaspa": {"sparsity": 0.5, "refresh_at": 0.5, **SPARSE},
    "delta-dit": {"warmup": 1, "interval": 2},
    "tdc": {"threshold": 10.0, "warmup": 1, "max_skips": 1},
}
STEPS = 4


def pipeline_inputs(pipe: Any, family: str) -> dict[str, Any]:
    if family == "flux":
        kw = inputs(pipe, steps=STEPS, seed=0, height=64, width=64)  # 16 x 16 = 256 image tokens
        kw["prompt_embeds"] = kw["prompt_embeds"].repeat(1, 4, 1)  # 32 text tokens: 16 per rank
        return kw
    return inputs(pipe, steps=STEPS, seed=0, num_frames=13)  # 4 latent frames of 4 x 4 tokens


def generate(pipe: Any, family: str) -> torch.Tensor:
    with torch.inference_mode():
        return pipe(**pipeline_inputs(pipe, family), return_dict=False)[0].float()


def equality(rank: int, world: int, args: dict[str, Any]) -> dict[str, Any]:
    """Per family and method: max |sharded - single| relative to max |single|, the stats, skip counts."""
    torch.set_num_threads(1)
    mode = args["mode"]
    results: dict[str, Any] = {}
    for family in args["families"]:
        single = accel.zoo.load(family, size="tiny")
        sharded = accel.zoo.load(family, size="tiny")
        enable(sharded.transformer, **{mode: world})
        for method in args["methods"]:
            options = METHODS[method]
            with accel.patch(single, method=method, **options) as h:
                reference = generate(single, family)
                reference_stats = h.stats()[method]
            with accel.patch(sharded, method=method, **options) as h:
                out = generate(sharded, family)
                stats = h.stats()
            error = ((out - reference).abs().max() / reference.abs().max()).item()
            results[f"{family}/{method}"] = {
                "error": error, "stats": _plain(stats[method]), "reference_stats": _plain(reference_stats),
                "parallel": _plain(stats.get("parallel", {})),
            }
    return results


def decisions(rank: int, world: int, args: dict[str, Any]) -> dict[str, Any]:
    """TDC on a sharded Flux whose ranks see different data (rank 1's image tokens scaled, after the
    split): each rank's local statistic differs; the decision taken is recorded per call, with what
    the rank alone would have decided."""
    torch.set_num_threads(1)
    mode = args["mode"]
    pipe = accel.zoo.load("flux", size="tiny")
    enable(pipe.transformer, **{mode: world})
    threshold = args["threshold"]
    record: list[tuple[float, float]] = []
    original = span_cache.relative_change

    def spy(new: Any, old: Any, cp: Any = None) -> float:
        local = original(new, old, None)
        reduced = original(new, old, cp)
        record.append((local, reduced))
        return reduced

    span_cache.relative_change = spy
    block = pipe.transformer.transformer_blocks[0]

    def skew(module: Any, a: tuple, kw: dict) -> None:  # after diffusers' split: this rank's shard only
        if rank == 1:
            kw["hidden_states"] = kw["hidden_states"] * 3.0 + 1.0

    hook = block.register_forward_pre_hook(skew, with_kwargs=True)
    try:
        with accel.patch(pipe, method="tdc", threshold=threshold, warmup=1, max_skips=1) as h:
            generate(pipe, "flux")
            stats = h.stats()["tdc"]
    finally:
        span_cache.relative_change = original
        hook.remove()
    return {"record": record, "skipped": stats["blocks_skipped"], "calls": stats["block_calls"]}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value if isinstance(value, int | float | str | bool | type(None)) else str(value)
