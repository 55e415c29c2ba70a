"""Δ-DiT (Chen et al., arXiv 2406.01125): a stage-adaptive block-span residual cache.

Front blocks shape the outline, rear blocks the details. So in early steps (before the boundary) the
REAR span is cached and the front computed; from the boundary on the FRONT span is cached and the rear
computed. Within a stage the cached span is refreshed every `interval` steps and replays
`current input + stored residual` in between. Warm-up steps compute everything. The schedule is static:
whether a step skips is known from the step index alone.

No official code exists; defaults follow the paper where it states them (b = 12 of 20 steps, i.e. a
boundary at 0.6) and are otherwise chosen here (see `DeltaDiTConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass

from accel.adapters import BlockRef
from accel.config import MethodConfig, option
from accel.errors import InvalidOptionError
from accel.method import register_method
from accel.steps import StepTracker
from accel.target import PatchTarget

from .base import SpanCacheMethod
from .span_cache import Span, SpanState


@dataclass(frozen=True)
class DeltaDiTConfig(MethodConfig):
    method = "delta-dit"
    interval: int = option(3, "refresh the cached span every N steps (1 = never reuse: exact)", low=1)
    cached_blocks: int = option(0, "blocks in the cached span; 0 = half of the denoiser's blocks", low=0)
    boundary: float = option(
        0.6,
        "fraction of the steps after which the front span is cached instead of the rear",
        low=0.0,
        high=1.0,
    )
    warmup: int = option(2, "first steps computed in full", low=0)


@register_method
class DeltaDiT(SpanCacheMethod):
    name = "delta-dit"
    summary = "Stage-adaptive block-span residual cache: rear blocks cached early, front blocks late."
    paper = "Δ-DiT, arXiv 2406.01125"
    Config = DeltaDiTConfig

    def check(self, target: PatchTarget) -> None:
        super().check(target)
        for d in target.denoisers:
            n = len(d.adapter.blocks(d.module))
            if self.config.cached_blocks > n - 1:
                raise InvalidOptionError(
                    f"delta-dit: option cached_blocks={self.config.cached_blocks} is out of range for "
                    f"{type(d.module).__name__} with {n} blocks; expected a value in [0, {n - 1}] (0 = half)."
                )

    def make_spans(self, blocks: list[BlockRef], tracker: StepTracker) -> list[Span]:
        cfg = self.config
        n = cfg.cached_blocks or max(1, len(blocks) // 2)

        def policy(stage: str):
            def skip(span: Span, state: SpanState, step: int) -> bool:
                if tracker.num_steps is None:
                    raise RuntimeError(
                        "delta-dit: the step count of this run is unknown (the denoiser was called outside a "
                        "pipeline); call handle.reset(num_steps=N) before a hand-written loop."
                    )
                if step < cfg.warmup:
                    return False
                current = "rear" if step < round(cfg.boundary * tracker.num_steps) else "front"
                return current == stage and step - state.refreshed_at < cfg.interval

            return skip

        front = Span(blocks[:n], tracker, policy("front"), self.counters, name="front")
        rear = Span(blocks[-n:], tracker, policy("rear"), self.counters, name="rear")
        return [front, rear]
