"""The span-residual cache: the one mechanism under Δ-DiT and TDC.

A span is a run of consecutive transformer blocks. On a step where it is computed, the span stores its
residual (output minus input, for both streams of dual-stream blocks). On a step where its policy says
"skip", every block of the span passes its input through untouched and the last one adds the stored
residual: the span returns `current input + cached residual` without running a single layer.

State is per run and per CFG branch (the tracker's `branch`), so separate cond/uncond calls never mix,
batched CFG and batch > 1 are cached as a whole, and a new call (new step count, new resolution) starts
empty. A stored residual whose shape no longer matches the input is never used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.hooks import ModelHook

from accel.adapters import BlockRef
from accel.adapters.block_io import BlockIO, block_io
from accel.journal import Journal
from accel.steps import StepTracker

Residual = tuple[torch.Tensor, torch.Tensor | None]


@dataclass
class SpanState:
    """One CFG branch's cache for one span, within one run."""

    hidden_in: torch.Tensor | None = None  # inputs of the step being computed, until its residual is stored
    encoder_in: torch.Tensor | None = None
    residual: Residual | None = None
    refreshed_at: int = -1  # step of the last compute
    skips_in_a_row: int = 0
    change: float | None = None  # relative L1 change of the residual between the last two computes


# policy(span, state, step) -> skip this step?
SkipPolicy = Callable[["Span", SpanState, int], bool]


def relative_change(new: Residual, old: Residual) -> float:
    """sum |new - old| / sum |old| over both streams (one host sync)."""
    num = (new[0] - old[0]).abs().sum()
    den = old[0].abs().sum()
    if new[1] is not None and old[1] is not None:
        num = num + (new[1] - old[1]).abs().sum()
        den = den + old[1].abs().sum()
    return float(num / den.clamp_min(1e-12))


class Span:
    """Consecutive blocks that are computed, or replayed from their residual, together."""

    def __init__(
        self,
        blocks: list[BlockRef],
        tracker: StepTracker,
        policy: SkipPolicy,
        counters: dict[str, Any],
        track_change: bool = False,
        name: str = "",
    ) -> None:
        self.blocks = blocks
        self.tracker = tracker
        self.policy = policy
        self.counters = counters
        self.track_change = track_change
        self.name = name or f"{blocks[0].name}..{blocks[-1].name}"
        self.ios: list[BlockIO] = [block_io(b.module) for b in blocks]
        self.layouts: list[int | None] = [None] * len(
            blocks
        )  # each block's output layout, seen when computed
        self.states: dict[str, SpanState] = {}
        self.current = SpanState()
        self.skipping = False

    def __len__(self) -> int:
        return len(self.blocks)

    def reset(self) -> None:
        self.states.clear()
        self.current = SpanState()
        self.skipping = False

    def attach(self, journal: Journal, hook_name: str) -> None:
        for i, ref in enumerate(self.blocks):
            journal.add_model_hook(ref.module, SpanBlockHook(self, i), hook_name)

    # ---- called by the hooks ---------------------------------------------------------------
    def begin(self, block: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        """At the span's first block: decide whether this call skips the whole span."""
        step = self.tracker.step
        state = self.states.setdefault(self.tracker.branch, SpanState())
        hidden, encoder = self.ios[0].inputs(block, args, kwargs)
        usable = (
            state.residual is not None
            and state.residual[0].shape == hidden.shape
            and (encoder is None or state.residual[1] is None or state.residual[1].shape == encoder.shape)
            and all(layout is not None for layout in self.layouts)
        )
        self.skipping = self.policy(self, state, step) and usable  # policy first: it may refuse to run
        if self.skipping:
            state.skips_in_a_row += 1
            self.counters["blocks_skipped"] = self.counters.get("blocks_skipped", 0) + len(self)
        else:
            state.hidden_in, state.encoder_in = hidden, encoder
            state.skips_in_a_row = 0
            state.refreshed_at = step
        self.counters["block_calls"] = self.counters.get("block_calls", 0) + len(self)
        self.current = state

    def store(self, output: Any) -> None:
        """At the span's last block, after computing: keep output - input."""
        state = self.current
        hidden, encoder = self.ios[-1].outputs(output)
        residual = (
            hidden - state.hidden_in,
            encoder - state.encoder_in if encoder is not None and state.encoder_in is not None else None,
        )
        if self.track_change and state.residual is not None and state.residual[0].shape == residual[0].shape:
            state.change = relative_change(residual, state.residual)
        state.residual = residual
        state.hidden_in = state.encoder_in = None

    def replay(self, hidden: torch.Tensor, encoder: torch.Tensor | None) -> Residual:
        dh, de = self.current.residual
        return hidden + dh, (encoder + de if encoder is not None and de is not None else encoder)


class SpanBlockHook(ModelHook):
    """On each block of a span: compute normally, or pass through / replay when the span is skipped."""

    def __init__(self, span: Span, index: int) -> None:
        super().__init__()
        self.span = span
        self.index = index
        self.last = index == len(span) - 1

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        span, i = self.span, self.index
        if i == 0:
            span.begin(module, args, kwargs)
        if span.skipping:
            hidden, encoder = span.ios[i].inputs(module, args, kwargs)
            if self.last:
                hidden, encoder = span.replay(hidden, encoder)
            return span.ios[i].pack(span.layouts[i], hidden, encoder)
        output = self.fn_ref.original_forward(*args, **kwargs)
        span.layouts[i] = BlockIO.layout(output)
        if self.last:
            span.store(output)
        return output
