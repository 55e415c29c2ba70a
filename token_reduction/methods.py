"""PyramidDrop and FastV as accel methods: schedules of visual-token drops run by one `Pruner`.

- PyramidDrop (Xing et al., arXiv 2410.17247, CVPR 2025 as "Conical Visual Concentration"): the language
  model is split into stages at 1/4, 1/2 and 3/4 of its depth; before each boundary layer k the visual
  tokens are ranked by the attention of the last instruction token, computed with layer k's own norm,
  q/k projections and rotary embedding, and `keep_ratio` of them stays (1, 0.5, 0.25, 0.125 of the
  prompt's visual tokens over the four stages: 576 -> 288 -> 144 -> 72 on LLaVA-1.5).
Positions default to "keep" (each kept token keeps its rotary position, as FastV's HF port and the
research notes' recommendation): on the trained digits-vqa model, closing the gaps ("compact", the
official PyramidDrop code) costs PyramidDrop and FastV 20-60 points of accuracy more than "keep"
(docs/benchmarks.md), since the text then sits at other distances from the image than in training.

- FastV (Chen et al., ECCV 2024, arXiv 2403.06764): one drop before layer K, ranked by the attention of
  layer K-1 (its weights on its own input), keeping `keep_ratio` (the paper's K=2, R=50%).

Facts, defaults and the transformers 5.x traps: ../shared/research/pruning_quant.md section 1.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import torch

from accel.config import MethodConfig, option
from accel.errors import InvalidOptionError, UnsupportedModelError
from accel.journal import Journal
from accel.method import Method
from accel.steps import StepTracker
from accel.target import PatchTarget

from .pruning import Drop, Pruner
from .vlm import SUPPORTED, VLMLayout, vlm_layout

POSITIONS = ("keep", "compact")
QUERIES = ("last-instruction",)


@dataclass(frozen=True)
class PyramidDropConfig(MethodConfig):
    method = "pyramid-drop"
    stages: tuple[float, ...] = option(
        (0.25, 0.5, 0.75), "stage boundaries as fractions of the language model's depth (the drop happens "
        "before layer round(f * depth): 8/16/24 of 32 layers); ascending, each in (0, 1)")
    keep_ratio: float = option(0.5, "fraction of the visual tokens each boundary keeps (lambda)", low=0.0,
                               high=1.0, low_open=True)
    query: str = option("last-instruction", "the ranking query row: the prompt's last token", choices=QUERIES)
    positions: str = option("keep", "rotary positions after a drop: 'keep' keeps each token's original position; "
                            "'compact' closes the gaps (the official code; not for 3-D M-RoPE positions)",
                            choices=POSITIONS)

    def __post_init__(self) -> None:
        super().__post_init__()
        stages = self.stages
        numbers_only = isinstance(stages, tuple | list) and all(
            isinstance(f, numbers.Real) and not isinstance(f, bool) for f in stages)
        if numbers_only:  # a list, numpy or torch scalars: stored as a tuple of Python floats
            stages = tuple(float(f) for f in stages)
            object.__setattr__(self, "stages", stages)
        ok = (numbers_only and len(stages) > 0 and all(0 < f < 1 for f in stages)
              and all(a < b for a, b in zip(stages, stages[1:], strict=False)))
        if not ok:
            raise InvalidOptionError(f"pyramid-drop: option stages={self.stages!r} is not allowed; expected a "
                                     "non-empty ascending tuple of fractions in (0, 1), e.g. (0.25, 0.5, 0.75).")


@dataclass(frozen=True)
class FastVConfig(MethodConfig):
    method = "fastv"
    layer: int = option(2, "K: drop before layer K, ranked by the attention of layer K-1", low=1)
    keep_ratio: float = option(0.5, "fraction of the visual tokens kept (1 - R)", low=0.0, high=1.0, low_open=True)
    positions: str = option("keep", "rotary positions after the drop: 'keep' (FastV's) or 'compact'",
                            choices=POSITIONS)


class TokenPruningMethod(Method):
    """What PyramidDrop and FastV share: a schedule of drops, one `Pruner` per patched VLM."""

    families = ("llava", "llava-next", "llava-onevision", "qwen2-vl", "qwen2.5-vl")  # shown by `accel methods`;
    # `check` resolves the model itself (vlm.py), not through the diffusion adapters
    claims = frozenset({"tokens"})
    denoising = False
    # stats() describe the latest prefill and the decode steps on its cache: visual_tokens and kept_visual
    # (one entry per drop) are summed over the batch; tokens_per_layer is the per-sample mean of the real
    # tokens each layer saw; flops_ratio follows from it (FastV's formula); kv_cache_MB_saved for the batch
    stats_keys = frozenset({"decode_calls", "visual_tokens", "kept_visual", "flops_ratio", "kv_cache_MB_saved",
                            "tokens_per_layer"})
    kept_between_calls = frozenset({"pruner"})  # holds the last prefill's stages for its decode steps
    exact_options = {"keep_ratio": 1.0}  # every visual token kept

    def schedule(self, depth: int) -> list[Drop]:
        raise NotImplementedError

    def check(self, target: PatchTarget) -> None:
        if target.kind != "transformers":
            raise UnsupportedModelError(f"accel: method {self.name!r} prunes visual tokens in a VLM "
                                        f"({', '.join(SUPPORTED)}); {type(target.obj).__name__} is not one.")
        layout = vlm_layout(target.denoisers[0].module, self.name)
        self.schedule(layout.depth)  # raises on a schedule the depth cannot hold
        if layout.mrope and self.config.positions == "compact":
            raise InvalidOptionError(
                f"{self.name}: option positions='compact' is not allowed for {type(layout.model).__name__}: its "
                "3-D rotary positions (M-RoPE) give an image fewer positions than tokens, so closing the gaps by "
                "the tokens dropped would move text before the image; expected 'keep'.")

    def apply(self, target: PatchTarget, journal: Journal, tracker: StepTracker) -> None:
        layout: VLMLayout = vlm_layout(target.denoisers[0].module, self.name)
        self.pruner = Pruner(layout, self.schedule(layout.depth), self.config.positions, self.counters,
                             self.name)
        self.pruner.install(journal)

    def reset_run(self) -> None:
        """Counters describe the latest prefill and its decode steps; the pruner resets them itself."""

    def output_positions(self) -> torch.Tensor | None:
        """Where the rows of the last prefill's output come from: [B, L] long, each output position's index
        in the input sequence (-1 for a slot that only evens out the samples' lengths), or None when
        nothing was dropped. The output is shorter than the input: with right padding, find a sample's
        last real token with this map rather than `attention_mask.sum(1) - 1`."""
        prefill = self.pruner.prefill
        if prefill is None or not prefill.stages:
            return None
        stage = prefill.stages[-1]
        return stage.index.masked_fill(stage.filler, -1)

    def stats(self) -> dict[str, Any]:
        return dict(self.counters)


class PyramidDrop(TokenPruningMethod):
    name = "pyramid-drop"
    summary = "PyramidDrop: drop visual tokens stage by stage inside a VLM's language model, ranked by the last instruction token."
    paper = "PyramidDrop, arXiv 2410.17247 (CVPR 2025)"
    Config = PyramidDropConfig

    def schedule(self, depth: int) -> list[Drop]:
        layers = [round(f * depth) for f in self.config.stages]
        if any(not 1 <= k < depth for k in layers) or len(set(layers)) != len(layers):
            raise InvalidOptionError(
                f"pyramid-drop: option stages={self.config.stages!r} gives drop layers {layers} for a language "
                f"model of {depth} layers; they must be distinct and in [1, {depth - 1}].")
        ratio = self.config.keep_ratio
        return [Drop(k, k, ratio ** (s + 1)) for s, k in enumerate(layers)]


class FastV(TokenPruningMethod):
    name = "fastv"
    summary = "FastV: one drop of visual tokens after layer K-1 of a VLM's language model, by that layer's attention."
    paper = "FastV, arXiv 2403.06764 (ECCV 2024)"
    Config = FastVConfig

    def schedule(self, depth: int) -> list[Drop]:
        k = self.config.layer
        if not 1 <= k < depth:
            raise InvalidOptionError(f"fastv: option layer={k} is out of range for a language model of {depth} "
                                     f"layers; expected a value in [1, {depth - 1}].")
        return [Drop(k, k - 1, self.config.keep_ratio)]
