"""Δ-DiT (Chen et al., arXiv 2406.01125): a stage-adaptive block-span residual cache.

Front blocks shape the outline, rear blocks the details. So in early steps (before the boundary) the
REAR span is cached and the front computed; from the boundary on the FRONT span is cached and the rear
computed. Within a stage the cached span is refreshed every `interval` steps and replays
`current input + stored residual` in between. Warm-up steps compute everything. The schedule is static:
whether a step skips is known from the step index alone.

No official code exists; defaults follow the paper where it states them (b = 12 of 20 steps, i.e. a
boundary at 0.6) and are otherwise chosen here (see `DeltaDiTConfig`). The span size scales with the
stack: three quarters of the blocks (`default_cached_blocks`), so the two spans overlap in the middle.
On the trained digits-image DiT (4 blocks, 20 steps) caching 3 blocks at interval 2 skips as many block
evaluations as caching 2 at interval 4 with 33 dB instead of 25 dB PSNR to the exact model: a wide span
refreshed often beats a narrow one refreshed rarely (docs/benchmarks.md has the bench rows).

On denoisers whose block stacks are not joined directly (DiCo's U-Net levels, LEGO's bricks; the
adapter's `stacks_joined`), the front and rear blocks are cached one span per stack, all on the stage's
schedule: the resampling or re-tiling between stacks still runs, and every replayed residual has the
shape of the stack it was computed in.
"""

from __future__ import annotations

from dataclasses import dataclass

from accel.adapters import BlockRef
from accel.config import MethodConfig, option
from accel.errors import InvalidOptionError
from accel.steps import StepTracker
from accel.target import PatchTarget

from .base import SpanCacheMethod
from .span_cache import Span, SpanState, split_by_stack


@dataclass(frozen=True)
class DeltaDiTConfig(MethodConfig):
    method = "delta-dit"
    interval: int = option(3, "refresh the cached span every N steps (1 = never reuse: exact)", low=1)
    cached_blocks: int = option(
        0, "blocks in each cached span; 0 = three quarters of the denoiser's blocks (1 to all but one)", low=0
    )
    boundary: float = option(
        0.6,
        "fraction of the steps after which the front span is cached instead of the rear",
        low=0.0,
        high=1.0,
    )
    warmup: int = option(2, "first steps computed in full", low=0)


def default_cached_blocks(blocks: int) -> int:
    """Three quarters of a stack of `blocks`, rounded down, at least 1 and leaving at least 1 computed:
    4 -> 3, 28 (PixArt, DiT-XL) -> 21, 57 (Flux) -> 42; a 2-block stack caches 1."""
    return max(1, min(blocks - 1, (3 * blocks) // 4))


class DeltaDiT(SpanCacheMethod):
    name = "delta-dit"
    summary = "Stage-adaptive block-span residual cache: rear blocks cached early, front blocks late."
    paper = "Δ-DiT, arXiv 2406.01125"
    Config = DeltaDiTConfig
    exact_options = {"interval": 1}  # every span recomputed at every step

    def check(self, target: PatchTarget) -> None:
        super().check(target)
        for d in target.denoisers:
            n = len(d.adapter.blocks(d.module))
            if self.config.cached_blocks > n - 1:
                raise InvalidOptionError(
                    f"delta-dit: option cached_blocks={self.config.cached_blocks} is out of range for "
                    f"{type(d.module).__name__} with {n} blocks; expected a value in [0, {n - 1}] (0 = three quarters)."
                )

    def skips(self, stage: str, step: int, refreshed_at: int, num_steps: int) -> bool:
        """The static schedule: does the `stage` span ("front" or "rear") replay its residual at `step`,
        given its last compute at `refreshed_at`?"""
        cfg = self.config
        if step < cfg.warmup or step >= num_steps:
            return False
        current = "rear" if step < round(cfg.boundary * num_steps) else "front"
        return current == stage and step - refreshed_at < cfg.interval

    def make_spans(self, blocks: list[BlockRef], tracker: StepTracker, joined: bool = True) -> list[Span]:
        n = self.config.cached_blocks or default_cached_blocks(len(blocks))

        def policy(stage: str):
            def skip(span: Span, state: SpanState, step: int) -> bool:
                return self.skips(stage, step, state.refreshed_at, tracker.num_steps)

            return skip

        def keeps(stage: str):
            # A residual is replayed only by the steps right after its compute, so it is worth storing
            # only when the next step skips (never with interval 1, after the span's stage or at the end).
            def keep(state: SpanState, step: int) -> bool:
                return self.skips(stage, step + 1, step, tracker.num_steps)

            return keep

        spans = []
        for stage, chosen in (("front", blocks[:n]), ("rear", blocks[-n:])):
            # Where stacks are not joined (DiCo's U-Net levels, LEGO's bricks: resampling or re-tiling in
            # between), the stage's blocks are cached as one span per stack, all on the stage's schedule.
            runs = [chosen] if joined else split_by_stack(chosen)
            for run in runs:
                name = stage if len(runs) == 1 else f"{stage}@{run[0].stack}"
                spans.append(Span(run, tracker, policy(stage), self.counters, name=name, keeps=keeps(stage)))
        return spans
