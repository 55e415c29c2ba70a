"""TDC, the Temporal Delta Cache of 6Bit-Diffusion (Su et al., arXiv 2603.18742): skip single blocks
whose residual is stable over time.

Each block is its own span. When a block is computed, the relative L1 change between its residual and
its previous computed residual is recorded (one reduction per computed block). At the next step the block
is skipped, replaying `current input + stored residual`, if that change is below `threshold`; after
`max_skips` skips in a row it is computed again. With `order=1` a skipped block extrapolates its residual
along the line through its last two computed ones (as TaylorSeer does for features), which on the trained
digits-video model keeps the same skips about 5 dB closer to the exact output. The paper's code is not
public: the stability test is our reconstruction of its abstract (residual between a block's input and
output is temporally consistent), documented in ../shared/research/caching.md section 1.3.

Protected end blocks (as cache-dit's DBPrune keeps) scale with the stack (`default_protected_blocks`):
a tenth at each end, so deep video DiTs (Wan 30-40 blocks) keep 3-4 at each end always computed while
a shallow stack protects none. On the trained 4-block digits-video model, protecting one block at each
end halves what can be skipped (at most two of four blocks), which caps TDC below 1.5x.
"""

from __future__ import annotations

from dataclasses import dataclass

from accel.adapters import BlockRef
from accel.config import MethodConfig, option
from accel.errors import InvalidOptionError
from accel.steps import StepTracker
from accel.target import PatchTarget

from .base import SpanCacheMethod
from .span_cache import Span, SpanState


@dataclass(frozen=True)
class TDCConfig(MethodConfig):
    method = "tdc"
    threshold: float = option(
        0.1, "skip a block while its residual changed less than this (relative L1); 0 = never skip", low=0.0
    )
    max_skips: int = option(2, "most consecutive skips of a block before a forced refresh", low=1)
    order: int = option(
        0, "0: a skipped block replays its last residual; 1: extrapolates it linearly from its last two "
        "computed residuals (TaylorSeer-style; keeps two residuals per block)", low=0, high=1,
    )
    warmup: int = option(2, "first steps computed in full", low=0)
    protected_blocks: int = option(
        -1, "blocks at each end of the stack always computed; -1 = a tenth of the stack (none under 10 blocks)",
        low=-1,
    )


def default_protected_blocks(blocks: int) -> int:
    """A tenth of a stack of `blocks` at each end, rounded down: 4 -> 0, 28 -> 2, 40 -> 4, 57 -> 5."""
    return blocks // 10


class TDC(SpanCacheMethod):
    name = "tdc"
    summary = "Temporal delta cache: skip single blocks whose input-to-output residual is stable over steps."
    paper = "6Bit-Diffusion, arXiv 2603.18742"
    Config = TDCConfig
    exact_options = {"threshold": 0.0}  # no residual is ever stable enough to skip

    def protected(self, blocks: int) -> int:
        p = self.config.protected_blocks
        return p if p >= 0 else default_protected_blocks(blocks)

    def check(self, target: PatchTarget) -> None:
        super().check(target)
        for d in target.denoisers:
            n = len(d.adapter.blocks(d.module))
            if 2 * self.protected(n) >= n:
                raise InvalidOptionError(
                    f"tdc: option protected_blocks={self.config.protected_blocks} leaves no block to cache in "
                    f"{type(d.module).__name__} with {n} blocks; expected -1 (auto) or a value in "
                    f"[0, {(n - 1) // 2}]."
                )

    def make_spans(self, blocks: list[BlockRef], tracker: StepTracker, joined: bool = True) -> list[Span]:
        cfg = self.config  # single-block spans: valid whether or not the stacks are joined

        def skip(span: Span, state: SpanState, step: int) -> bool:
            return (
                step >= cfg.warmup
                and state.change is not None
                and state.change < cfg.threshold
                and state.skips_in_a_row < cfg.max_skips
            )

        def keep(state: SpanState, step: int) -> bool:
            # The residual feeds the next step's stability test: useless when no step can skip (threshold
            # 0) or none follows (the last step).
            last = tracker.num_steps is not None and step >= tracker.num_steps - 1
            return cfg.threshold > 0 and not last

        p = self.protected(len(blocks))
        cached = blocks[p : len(blocks) - p]
        return [Span([b], tracker, skip, self.counters, track_change=True, keeps=keep, order=cfg.order)
                for b in cached]
