"""TDC, the Temporal Delta Cache of 6Bit-Diffusion (Su et al., arXiv 2603.18742): skip single blocks
whose residual is stable over time.

Each block is its own span. When a block is computed, the relative L1 change between its residual and
its previous computed residual is recorded (one reduction per computed block). At the next step the block
is skipped, replaying `current input + stored residual`, if that change is below `threshold`; after
`max_skips` skips in a row it is computed again. The paper's code is not public: the stability test is
our reconstruction of its abstract (residual between a block's input and output is temporally
consistent), documented in ../shared/research/caching.md section 1.3.
"""

from __future__ import annotations

from dataclasses import dataclass

from accel.adapters import BlockRef
from accel.config import MethodConfig, option
from accel.method import register_method
from accel.steps import StepTracker

from .base import SpanCacheMethod
from .span_cache import Span, SpanState


@dataclass(frozen=True)
class TDCConfig(MethodConfig):
    method = "tdc"
    threshold: float = option(
        0.1, "skip a block while its residual changed less than this (relative L1)", low=0.0, low_open=True
    )
    max_skips: int = option(2, "most consecutive skips of a block before a forced refresh", low=1)
    warmup: int = option(2, "first steps computed in full", low=0)
    protected_blocks: int = option(1, "blocks at each end of the stack that are always computed", low=0)


@register_method
class TDC(SpanCacheMethod):
    name = "tdc"
    summary = "Temporal delta cache: skip single blocks whose input-to-output residual is stable over steps."
    paper = "6Bit-Diffusion, arXiv 2603.18742"
    Config = TDCConfig

    def make_spans(self, blocks: list[BlockRef], tracker: StepTracker) -> list[Span]:
        cfg = self.config

        def skip(span: Span, state: SpanState, step: int) -> bool:
            return (
                step >= cfg.warmup
                and state.change is not None
                and state.change < cfg.threshold
                and state.skips_in_a_row < cfg.max_skips
            )

        p = cfg.protected_blocks
        cached = blocks[p : len(blocks) - p]
        return [Span([b], tracker, skip, self.counters, track_change=True) for b in cached]
