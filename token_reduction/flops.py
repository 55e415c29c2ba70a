"""Analytic prefill cost of a pruning schedule against the unpruned model.

FLOPs per decoder layer follow FastV (arXiv 2403.06764, section 4.2), which PyramidDrop reuses:
`4 n d^2 + 2 n^2 d + 2 n d m` for n tokens, hidden size d and MLP size m (projections, attention, MLP;
multiply-adds counted once). KV-cache bytes are `2 n kv_dim bytes` per layer: the pruned layers keep
the tokens they saw, so later stages hold shorter caches for the rest of the generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PrefillCost:
    """`flops` and `kv_bytes` of the schedule, `dense_*` of the unpruned model, and their ratios."""

    tokens_per_layer: tuple[int, ...]
    visual_per_layer: tuple[int, ...]
    flops: float
    dense_flops: float
    kv_bytes: int
    dense_kv_bytes: int

    @property
    def flops_ratio(self) -> float:
        return self.flops / self.dense_flops

    @property
    def kv_bytes_saved(self) -> int:
        return self.dense_kv_bytes - self.kv_bytes

    @property
    def average_visual_tokens(self) -> float:
        """The visual tokens each layer sees, averaged over the layers (the budget papers compare at)."""
        return sum(self.visual_per_layer) / len(self.visual_per_layer)


def layer_flops(n: int, hidden: int, intermediate: int) -> float:
    """FastV's per-layer prefill FLOPs for n tokens."""
    return 4 * n * hidden**2 + 2 * n**2 * hidden + 2 * n * hidden * intermediate


def visual_tokens_per_layer(layers: int, visual_tokens: int, drops: Sequence[tuple[int, float]]) -> list[int]:
    """The visual tokens each layer sees: all before the first drop; from drop layer k on,
    `int(visual_tokens * keep)` (the official floor), where `drops` = [(k, keep), ...] ascending in k."""
    counts, current, pending = [], visual_tokens, list(drops)
    for i in range(layers):
        while pending and pending[0][0] <= i:
            current = min(current, int(visual_tokens * pending.pop(0)[1]))
        counts.append(current)
    return counts


def prefill_flops(*, layers: int, hidden: int, intermediate: int, text_tokens: int, visual_tokens: int,
                  drops: Sequence[tuple[int, float]], kv_dim: int | None = None, bytes_per_value: int = 2
                  ) -> PrefillCost:
    """The prefill cost of dropping visual tokens before the layers in `drops` ([(layer, kept fraction of
    the prompt's visual tokens)], e.g. PyramidDrop's default on 32 layers: [(8, 0.5), (16, 0.25), (24,
    0.125)]) against the unpruned model. `kv_dim` = kv heads x head dim (default `hidden`);
    `bytes_per_value` 2 for fp16/bf16 caches. Raises ValueError on counts below zero or a drop outside
    [1, layers - 1].

    LLaVA-1.5-7B (32 layers, d 4096, m 11008, 576 visual + 60 text tokens) at PyramidDrop's default:
    flops_ratio 0.52 (the paper reports 1.78 of 3.82 TFLOPs, 0.47, from a slightly different count)."""
    for name, value in (("layers", layers), ("hidden", hidden), ("intermediate", intermediate),
                        ("text_tokens", text_tokens), ("visual_tokens", visual_tokens)):
        if value < 0 or (name in ("layers", "hidden") and value == 0):
            raise ValueError(f"prefill_flops: {name}={value} must be positive")
    for layer, keep in drops:
        if not 1 <= layer < layers or not 0.0 <= keep <= 1.0:
            raise ValueError(f"prefill_flops: drop ({layer}, {keep}) needs a layer in [1, {layers - 1}] and a "
                             "kept fraction in [0, 1]")
    visual = visual_tokens_per_layer(layers, visual_tokens, sorted(drops))
    tokens = tuple(text_tokens + v for v in visual)
    full = text_tokens + visual_tokens
    per_token = 2 * (kv_dim or hidden) * bytes_per_value
    return PrefillCost(
        tokens_per_layer=tokens,
        visual_per_layer=tuple(visual),
        flops=sum(layer_flops(n, hidden, intermediate) for n in tokens),
        dense_flops=layers * layer_flops(full, hidden, intermediate),
        kv_bytes=sum(tokens) * per_token,
        dense_kv_bytes=layers * full * per_token,
    )
