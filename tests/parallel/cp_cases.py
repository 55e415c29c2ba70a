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
    "sixbit": {},
}
STEPS = 3


def pipeline_inputs(pipe: Any, family: str) -> dict[str, Any]:
    if family == "flux":
        kw = inputs(pipe, steps=STEPS, seed=0, height=64, width=64)  # 16 x 16 = 256 image tokens
        kw["prompt_embeds"] = kw["prompt_embeds"].repeat(1, 4, 1)  # 32 text tokens: 16 per rank
        return kw
    return inputs(pipe, steps=STEPS, seed=0, num_frames=13)  # 4 latent frames of 4 x 4 tokens


def generate(pipe: Any, family: str) -> torch.Tensor:
    with torch.inference_mode():
        return pipe(**pipeline_inputs(pipe, family), return_dict=False)[0].float()


def suite(rank: int, world: int, args: dict[str, Any]) -> dict[str, Any]:
    """Everything tests/parallel checks, in one launch (process start-up and imports cost seconds)."""
    out: dict[str, Any] = {}
    for mode in args["modes"]:
        out[mode] = equality(rank, world, {**args, "mode": mode})
        out[f"{mode}/decisions"] = decisions(rank, world, {"mode": mode, "threshold": args["threshold"]})
    out["statistic"] = statistic(rank, world, args)
    out["misaligned"] = misaligned(rank, world, args)
    return out


def statistic(rank: int, world: int, args: dict[str, Any]) -> dict[str, Any]:
    """TDC's statistic on residuals that differ per rank, with and without the reduction over the ranks:
    rank 0's shard barely changed (0.01), rank 1's a lot (1.0); a single process sees both halves."""
    from accel import parallel

    pipe = accel.zoo.load("flux", size="tiny")
    enable(pipe.transformer, ulysses=world)
    cp = parallel.of(pipe.transformer)
    old = torch.ones(1, 8, 4)
    new = old * (1.01 if rank == 0 else 2.0)
    return {"local": span_cache.relative_change((new, None), (old, None)),
            "reduced": span_cache.relative_change((new, None), (old, None), cp)}


def misaligned(rank: int, world: int, args: dict[str, Any]) -> str:
    """PISA under ring where a tile would span two ranks (8 prompt tokens: 4 per rank, tiles of 16)."""
    pipe = accel.zoo.load("flux", size="tiny")
    enable(pipe.transformer, ring=world)
    try:
        with accel.patch(pipe, method="pisa", **METHODS["pisa"]):
            with torch.inference_mode():
                pipe(**inputs(pipe, steps=2, seed=0), return_dict=False)
    except accel.UnsupportedModelError as err:
        return str(err)
    return "no error"


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
            if method == "sixbit" and family != "flux":  # one family is enough for the router (and costly)
                continue
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

    calls = iter(range(1000))

    def skew(module: Any, a: tuple, kw: dict) -> Any:  # after diffusers' split: this rank's shard only
        if rank == 1:  # fresh noise at every step: rank 1's residuals change far more than rank 0's
            noise = torch.randn(kw["hidden_states"].shape, generator=torch.Generator().manual_seed(next(calls)))
            kw["hidden_states"] = kw["hidden_states"] + 3.0 * noise
        return a, kw

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


def stall(rank: int, world: int, args: dict[str, Any]) -> None:
    """Rank 0 waits in a collective that rank 1 never joins (as a rank that skipped a block would)."""
    import time

    import torch.distributed as dist

    if rank == 0:
        dist.all_reduce(torch.ones(1))
    else:
        time.sleep(600)


def fail(rank: int, world: int, args: dict[str, Any]) -> None:
    raise ValueError(f"rank {rank} fails on purpose")
