"""Choosing the key blocks: shared by the sparse methods (PISA, AdaSpa, FlashBlock, ...).

The cheap, common recipe: average queries and keys over each block, score every (query block, key
block) pair by the pooled dot product, and keep the top-k key blocks per (batch, head, query block),
k = max(1, ceil(density * Nk)). Some blocks are kept whatever their score ("forced"): attention sinks
such as the text tokens of a joint image+text sequence, and the diagonal block (a token's own
neighbourhood). Forced blocks come on top of the k. The result is the block index of
sparse_attn/blocks.py, ids ascending.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from .blocks import BlockSize, block_sizes, num_blocks


def pool_blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """Mean of x [B, H, S, D] over each block of `block` tokens -> [B, H, N, D] in fp32. A partial last
    block is averaged over its real tokens only."""
    B, H, S, D = x.shape
    n = num_blocks(S, block)
    sums = torch.nn.functional.pad(x.float(), (0, 0, 0, n * block - S)).view(B, H, n, block, D).sum(dim=3)
    counts = torch.full((n,), float(block), device=x.device)
    counts[-1] = S - (n - 1) * block
    return sums / counts.view(1, 1, n, 1)


def block_scores(
    q: torch.Tensor, k: torch.Tensor, block_size: BlockSize = 64, scale: float | None = None
) -> torch.Tensor:
    """Pooled scores [B, H, Nq, Nk] = scale * mean(q block) . mean(k block), fp32."""
    q_block, kv_block = block_sizes(block_size)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return pool_blocks(q, q_block) @ pool_blocks(k, kv_block).transpose(-1, -2) * scale


def text_blocks(text_len: int, seq_len: int, block: int, text_first: bool) -> list[int]:
    """The key blocks holding the `text_len` text tokens of a joint sequence of `seq_len` tokens, the text
    at its start (`text_first`) or its end."""
    if text_len <= 0:
        return []
    start, stop = (0, text_len) if text_first else (seq_len - text_len, seq_len)
    return list(range(start // block, num_blocks(stop, block)))


def forced_blocks(
    q_blocks: int,
    kv_blocks: int,
    sink_blocks: Iterable[int] = (),
    diagonal: bool = False,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Boolean [Nq, Nk]: the blocks every query block keeps. `sink_blocks` are key block ids (negative
    ids count from the end); `diagonal` keeps, for query block i, key block i * Nk // Nq (block i in
    self-attention)."""
    forced = torch.zeros(q_blocks, kv_blocks, dtype=torch.bool, device=device)
    sinks = sorted({s % kv_blocks for s in sink_blocks})
    if sinks:
        forced[:, sinks] = True
    if diagonal:
        rows = torch.arange(q_blocks, device=device)
        forced[rows, rows * kv_blocks // q_blocks] = True
    return forced


def topk_blocks(
    scores: torch.Tensor, density: float, forced: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(kv_num_blocks, kv_indices) keeping, per row of scores [B, H, Nq, Nk], the forced blocks
    ([Nq, Nk] bool) plus the k = max(1, ceil(density * Nk)) best others (at most Nk in all)."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must lie in (0, 1]; got {density}")
    B, H, nq, nk = scores.shape
    k = max(1, math.ceil(density * nk))
    if forced is None:
        forced = torch.zeros(nq, nk, dtype=torch.bool, device=scores.device)
    n_forced = forced.sum(dim=-1)
    count = (n_forced + k).clamp(max=nk).to(torch.int32).expand(B, H, nq)
    width = min(nk, k + int(n_forced.max()))
    # forced blocks score +inf, so topk takes them first
    ranked = scores.float().masked_fill(forced, float("inf")).topk(width, dim=-1).indices
    used = torch.arange(width, device=scores.device) < count.unsqueeze(-1)
    ids = torch.where(used, ranked, nk).sort(dim=-1).values  # ascending, unused (= nk) last
    return count.contiguous(), torch.where(ids == nk, 0, ids).to(torch.int32)


def select_blocks(
    q: torch.Tensor,
    k: torch.Tensor,
    density: float,
    block_size: BlockSize = 64,
    sink_blocks: Iterable[int] = (),
    diagonal: bool = True,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The block index for q [B, H, Sq, D], k [B, H, Skv, D]: top-k pooled scores at `density`, plus the
    sink blocks and (by default) the diagonal."""
    q_block, kv_block = block_sizes(block_size)
    scores = block_scores(q, k, block_size, scale)
    forced = forced_blocks(
        num_blocks(q.shape[2], q_block), num_blocks(k.shape[2], kv_block), sink_blocks, diagonal, q.device
    )
    return topk_blocks(scores, density, forced)


def random_blocks(
    batch: int,
    heads: int,
    q_blocks: int,
    kv_blocks: int,
    density: float,
    forced: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random index at `density` (same count rule as `topk_blocks`), for benchmarks and tests."""
    scores = torch.rand(batch, heads, q_blocks, kv_blocks, generator=generator).to(device)
    return topk_blocks(scores, density, None if forced is None else forced.to(device))
