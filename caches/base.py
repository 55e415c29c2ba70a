"""What Δ-DiT and TDC share as accel methods: build spans over a denoiser's blocks, hook them, reset them
every run, and report how many block evaluations were skipped."""

from __future__ import annotations

from typing import Any

from accel import parallel
from accel.adapters import BlockRef
from accel.journal import Journal
from accel.method import Method
from accel.steps import StepTracker
from accel.target import PatchTarget

from .span_cache import Span, attach_spans


class SpanCacheMethod(Method):
    claims = frozenset({"blocks"})
    stats_keys = frozenset({"block_calls", "blocks_skipped", "skip_rate", "nonfinite_residuals"})

    def make_spans(self, blocks: list[BlockRef], tracker: StepTracker, joined: bool = True) -> list[Span]:
        """The spans over `blocks` (in execution order). `joined`: whether consecutive block stacks feed
        each other directly (the adapter's `stacks_joined`); if not, a span must stay inside one stack."""
        raise NotImplementedError

    def apply(self, target: PatchTarget, journal: Journal, tracker: StepTracker) -> None:
        self.spans: list[Span] = []
        self.parallel_setup = parallel.Watched(target, self.name)
        for d in target.denoisers:
            spans = self.make_spans(d.adapter.blocks(d.module), tracker, joined=d.adapter.stacks_joined)
            cp = parallel.of(d.module)  # under context parallelism, decisions are reduced over the ranks
            for span in spans:
                span.cp = cp
            attach_spans(spans, journal, f"accel.{self.name}")
            self.spans += spans

    def needs_step_count(self) -> bool:
        """Cached residuals live across the steps of a run (and Δ-DiT schedules by the step count)."""
        return True

    def end_branch(self, branch: str) -> None:
        for span in self.spans:
            span.end_branch(branch)

    def reset_run(self) -> None:
        super().reset_run()
        self.parallel_setup.check()
        for span in self.spans:
            span.reset()

    def stats(self) -> dict[str, Any]:
        out = dict(self.counters)
        calls = out.get("block_calls", 0)
        out.setdefault("blocks_skipped", 0)
        out["skip_rate"] = out["blocks_skipped"] / calls if calls else 0.0
        return out
