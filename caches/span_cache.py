"""The span-residual cache: the one mechanism under Δ-DiT and TDC.

A span is a run of consecutive transformer blocks. On a step where it is computed, the span stores its
residual (output minus input, for both streams of dual-stream blocks). On a step where its policy says
"skip", every block of the span passes its input through untouched and the last one adds the stored
residual: the span returns `current input + cached residual` without running a single layer.

State is per run and per CFG branch (the tracker's `branch`), so separate cond/uncond calls never mix,
batched CFG and batch > 1 are cached as a whole, and a new call (new step count, new resolution) starts
empty. A stored residual whose shape no longer matches the input is never used.

Storing costs a subtraction (and, for TDC, a reduction) per computed span, so a span only stores when
its method says a skip can still use it (`keeps`): with nothing to skip the cache costs the hooks alone.

Spans may overlap (Δ-DiT's front and rear spans do when more than half the blocks are cached): each
block gets one hook that serves every span holding it. A block passes through when any of its spans is
skipped, and a span that was passed through by another one while computing stores nothing, so a
residual is always that of the whole span, really computed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.hooks import ModelHook

from accel import compat, parallel
from accel.adapters import BlockRef
from accel.adapters.block_io import BlockIO, block_io
from accel.journal import Journal
from accel.steps import StepTracker

Residual = tuple[torch.Tensor, torch.Tensor | None]
logger = logging.getLogger("accel")


@dataclass
class SpanState:
    """One CFG branch's cache for one span, within one run."""

    hidden_in: torch.Tensor | None = None  # inputs of the step being computed, until its residual is stored
    encoder_in: torch.Tensor | None = None
    residual: Residual | None = None
    residual_at: int = -1  # step the residual was computed at
    slope: Residual | None = None  # residual change per step between the last two computes (first order only)
    refreshed_at: int = -1  # step of the last compute
    skips_in_a_row: int = 0
    change: float | None = None  # relative L1 change of the residual between the last two computes


# policy(span, state, step) -> skip this step?
SkipPolicy = Callable[["Span", SpanState, int], bool]
# keeps(state, step) -> may a later step reuse (or compare against) the residual computed at `step`?
KeepPolicy = Callable[[SpanState, int], bool]


def always_keep(state: SpanState, step: int) -> bool:
    return True


def relative_change(new: Residual, old: Residual, cp: parallel.ContextParallel | None = None) -> float:
    """sum |new - old| / sum |old| over both streams (one host sync). Under context parallelism (`cp`) the
    sums run over the whole sequence, every rank's shard (one all-reduce): every rank gets the same
    value, the one a single process gets."""
    num = (new[0] - old[0]).abs().sum()
    den = old[0].abs().sum()
    if new[1] is not None and old[1] is not None:
        w = parallel.stream_weight(cp, "encoder")
        num = num + w * (new[1] - old[1]).abs().sum()
        den = den + w * old[1].abs().sum()
    if cp is None:
        return float(num / den.clamp_min(1e-12))
    num_all, den_all = parallel.sums(cp, [num, den])
    return num_all / max(den_all, 1e-12)


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
        keeps: KeepPolicy = always_keep,
        order: int = 0,
    ) -> None:
        """`order` 0 replays the last residual as stored; 1 extrapolates it along a line through the last
        two computed residuals (at the cost of keeping both)."""
        self.blocks = blocks
        # the denoiser's context-parallel setup (`accel.parallel.of`, set by the method): every
        # data-dependent decision is reduced over its ranks
        self.cp: parallel.ContextParallel | None = None
        self.order = order
        self.tracker = tracker
        self.policy = policy
        self.keeps = keeps
        self.counters = counters
        self.track_change = track_change
        self.name = name or f"{blocks[0].name}..{blocks[-1].name}"
        self.ios: list[BlockIO] = [block_io(b.module) for b in blocks]
        self.layouts: list[int | None] = [None] * len(blocks)  # each block's output layout, seen when computed
        self.states: dict[str, SpanState] = {}
        self.current = SpanState()
        self.skipping = False
        self.storing = False
        self.interrupted = False  # another span passed one of our blocks through while we computed
        self.warned_nonfinite = False

    def __len__(self) -> int:
        return len(self.blocks)

    def reset(self) -> None:
        self.states.clear()
        self.current = SpanState()
        self.skipping = self.storing = self.interrupted = False

    def end_branch(self, branch: str) -> None:
        """Drop the branch's cached residuals (its last step is done)."""
        if self.states.pop(branch, None) is self.current:
            self.current = SpanState()

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
        self.storing = self.interrupted = False
        if self.skipping:
            state.skips_in_a_row += 1
        else:
            state.skips_in_a_row = 0
            state.refreshed_at = step
            self.storing = self.keeps(state, step)
            if self.storing:
                state.hidden_in, state.encoder_in = hidden, encoder
            else:  # nothing can reuse this step's residual, and an older one must never be replayed
                state.residual = state.slope = None
                state.change = None
        self.current = state

    def store(self, output: Any) -> None:
        """At the span's last block, after computing: keep output - input (nothing if interrupted)."""
        state = self.current
        if self.interrupted:  # part of the span was replayed by another span: not this span's residual
            state.residual = state.slope = state.change = None
            state.hidden_in = state.encoder_in = None
            return
        hidden, encoder = self.ios[-1].outputs(output)
        residual = (
            hidden - state.hidden_in,
            encoder - state.encoder_in if encoder is not None and state.encoder_in is not None else None,
        )
        state.hidden_in = state.encoder_in = None
        # never replayed: the steps that would have used it compute instead (on every rank, or on none)
        if not parallel.all_ranks(self.cp, _finite(residual)):
            state.residual = state.slope = state.change = None
            self.counters["nonfinite_residuals"] = self.counters.get("nonfinite_residuals", 0) + 1
            if not self.warned_nonfinite:
                self.warned_nonfinite = True
                logger.warning("accel: span %s computed a residual with NaN/inf; it is not cached (counted in "
                               "stats()['nonfinite_residuals'])", self.name)
            return
        same_shape = state.residual is not None and state.residual[0].shape == residual[0].shape
        if self.track_change and same_shape:
            state.change = relative_change(residual, state.residual, self.cp)
        if self.order == 1:
            state.slope = _slope(residual, state.residual, state.refreshed_at - state.residual_at) if same_shape else None
        state.residual, state.residual_at = residual, state.refreshed_at

    def replay(self, hidden: torch.Tensor, encoder: torch.Tensor | None) -> Residual:
        state = self.current
        dh, de = state.residual
        if state.slope is not None:  # first order: r + (steps since r) * slope
            k = self.tracker.step - state.residual_at
            sh, se = state.slope
            dh = dh + k * sh
            de = de + k * se if de is not None and se is not None else de
        return hidden + dh, (encoder + de if encoder is not None and de is not None else encoder)


def split_by_stack(blocks: list[BlockRef]) -> list[list[BlockRef]]:
    """Consecutive blocks grouped into runs that each lie inside one block stack, in order."""
    runs: list[list[BlockRef]] = []
    for ref in blocks:
        if runs and runs[-1][-1].stack == ref.stack and runs[-1][-1].index + 1 == ref.index:
            runs[-1].append(ref)
        else:
            runs.append([ref])
    return runs


def attach_spans(spans: list[Span], journal: Journal, hook_name: str) -> None:
    """One hook per block, serving every span that holds the block (in the order of `spans`)."""
    members: dict[int, tuple[torch.nn.Module, list[tuple[Span, int]]]] = {}
    for span in spans:
        for i, ref in enumerate(span.blocks):
            members.setdefault(id(ref.module), (ref.module, []))[1].append((span, i))
    for module, spans_of_block in members.values():
        journal.add_model_hook(module, SpanBlockHook(spans_of_block), hook_name)


class SpanBlockHook(ModelHook):
    """On a block: compute normally, or pass through (replaying at a span's last block) when a span
    holding it is skipped; after computing, store the residual of each span that ends here."""

    def __init__(self, spans: list[tuple[Span, int]]) -> None:
        super().__init__()
        self.spans = spans  # (span, index of this block in the span)

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        replayed = self.before(module, args, kwargs)
        if replayed is not None:
            return replayed
        output = compat.original_forward(self)(*args, **kwargs)
        self.after(output)
        return output

    # The decisions and the cache bookkeeping run eagerly, outside compiled graphs: under torch.compile the
    # block itself is compiled once per path (computed or replayed), never once per step.
    @torch.compiler.disable
    def before(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> Any | None:
        """Decide for every span that starts here; when one holding this block is skipped, the block's
        output without running it (its input, plus the residual of each span that ends here)."""
        # under context parallelism: the rank's shard, as the block sees it (a split hook may sit inside)
        args, kwargs = parallel.split_inputs(module, args, kwargs)
        for span, i in self.spans:
            if i == 0:
                span.begin(module, args, kwargs)
        skipped = [(span, i) for span, i in self.spans if span.skipping]
        counters = self.spans[0][0].counters  # counted per block, so overlapping spans count once
        counters["block_calls"] = counters.get("block_calls", 0) + 1
        if not skipped:
            return None
        counters["blocks_skipped"] = counters.get("blocks_skipped", 0) + 1
        span, i = skipped[0]
        hidden, encoder = span.ios[i].inputs(module, args, kwargs)
        for other, j in skipped:
            if j == len(other) - 1:
                hidden, encoder = other.replay(hidden, encoder)
        for other, j in self.spans:
            if not other.skipping:
                other.interrupted = True
                if j == len(other) - 1 and other.storing:
                    other.store(None)  # drops the residual: the span did not really run
        return span.ios[i].pack(span.layouts[i], hidden, encoder)

    @torch.compiler.disable
    def after(self, output: Any) -> None:
        """After computing: note the output's layout, and store the residual of each span ending here."""
        layout = BlockIO.layout(output)
        for span, i in self.spans:
            span.layouts[i] = layout
            if i == len(span) - 1 and span.storing:
                span.store(output)


def _finite(residual: Residual) -> bool:
    """Whether both streams are free of NaN/inf (one host sync)."""
    flags = [torch.isfinite(part).all() for part in residual if part is not None]
    return bool(torch.stack(flags).all())


def _slope(new: Residual, old: Residual, steps: int) -> Residual | None:
    """(new - old) / steps for both streams; None when the two were not computed at different steps."""
    if steps <= 0:
        return None
    (nh, ne), (oh, oe) = new, old
    return (nh - oh) / steps, ((ne - oe) / steps if ne is not None and oe is not None else None)
