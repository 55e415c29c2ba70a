"""Choosing the key tiles: shared by the sparse methods (PISA, AdaSpa, FlashBlock, ...).

The cheap, common recipe: average queries and keys over each tile, score every (query tile, key tile)
pair by the pooled dot product, and keep the top-k key tiles per (batch, head, query tile),
k = max(1, ceil(density * Nk)). Some tiles are kept whatever their score ("forced"): attention sinks
such as the text tokens of a joint image+text sequence, and the diagonal tile (a token's own
neighbourhood). Forced tiles come on top of the k. The result is a `TileIndex` (sparse_attn/tiles.py),
ids ascending.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from .tiles import TileIndex, TileSize, num_tiles, tile_sizes


def pool_tiles(x: torch.Tensor, tile: int) -> torch.Tensor:
    """Mean of x [B, H, S, D] over each tile of `tile` tokens -> [B, H, N, D] in fp32. A partial last
    tile is averaged over its real tokens only."""
    B, H, S, D = x.shape
    n = num_tiles(S, tile)
    sums = torch.nn.functional.pad(x.float(), (0, 0, 0, n * tile - S)).view(B, H, n, tile, D).sum(dim=3)
    counts = torch.full((n,), float(tile), dtype=torch.float32, device=x.device)
    counts[-1] = S - (n - 1) * tile
    return sums / counts.view(1, 1, n, 1)


def pooled_scores(
    q: torch.Tensor, k: torch.Tensor, tile_size: TileSize = 64, scale: float | None = None
) -> torch.Tensor:
    """Pooled scores [B, H, Nq, Nk] = scale * mean(q tile) . mean(k tile), fp32."""
    q_tile, kv_tile = tile_sizes(tile_size)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return pool_tiles(q, q_tile) @ pool_tiles(k, kv_tile).transpose(-1, -2) * scale


def text_tiles(text_len: int, seq_len: int, tile: int, text_first: bool) -> list[int]:
    """The key tiles holding the `text_len` text tokens of a joint sequence of `seq_len` tokens, the text
    at its start (`text_first`) or its end."""
    if text_len <= 0:
        return []
    start, stop = (0, text_len) if text_first else (seq_len - text_len, seq_len)
    return list(range(start // tile, num_tiles(stop, tile)))


def forced_tiles(
    q_tiles: int,
    kv_tiles: int,
    sink_tiles: Iterable[int] = (),
    diagonal: bool = False,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Boolean [Nq, Nk]: the tiles every query tile keeps. `sink_tiles` are key tile ids (negative ids
    count from the end); `diagonal` keeps, for query tile i, key tile i * Nk // Nq (tile i in
    self-attention)."""
    forced = torch.zeros(q_tiles, kv_tiles, dtype=torch.bool, device=device)
    sinks = sorted({s % kv_tiles for s in sink_tiles})
    if sinks:
        forced[:, sinks] = True
    if diagonal:
        rows = torch.arange(q_tiles, device=device)
        forced[rows, rows * kv_tiles // q_tiles] = True
    return forced


def topk_tiles(
    scores: torch.Tensor,
    density: float,
    tile_size: TileSize,
    q_len: int,
    kv_len: int,
    forced: torch.Tensor | None = None,
) -> TileIndex:
    """The index keeping, per row of scores [B, H, Nq, Nk], the forced tiles ([Nq, Nk] bool) plus the
    k = max(1, ceil(density * Nk)) best others (at most Nk in all), for q_len / kv_len tokens."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must lie in (0, 1]; got {density}")
    B, H, nq, nk = scores.shape
    k = max(1, math.ceil(density * nk))
    if forced is None:
        forced = torch.zeros(nq, nk, dtype=torch.bool, device=scores.device)
    n_forced = forced.sum(dim=-1)
    count = (n_forced + k).clamp(max=nk).to(torch.int32).expand(B, H, nq)
    width = min(nk, k + int(n_forced.max()))
    # forced tiles score +inf, so topk takes them first
    ranked = scores.float().masked_fill(forced, float("inf")).topk(width, dim=-1).indices
    used = torch.arange(width, device=scores.device) < count.unsqueeze(-1)
    ids = torch.where(used, ranked, nk).sort(dim=-1).values  # ascending, unused (= nk) last
    q_tile, kv_tile = tile_sizes(tile_size)
    return TileIndex(count.contiguous(), torch.where(ids == nk, 0, ids).to(torch.int32), q_tile, kv_tile, q_len,
                     kv_len)


def select_tiles(
    q: torch.Tensor,
    k: torch.Tensor,
    density: float,
    tile_size: TileSize = 64,
    sink_tiles: Iterable[int] = (),
    diagonal: bool = True,
    scale: float | None = None,
) -> TileIndex:
    """The index for q [B, H, Sq, D], k [B, H, Skv, D]: top-k pooled scores at `density`, plus the sink
    tiles and (by default) the diagonal."""
    q_tile, kv_tile = tile_sizes(tile_size)
    scores = pooled_scores(q, k, tile_size, scale)
    forced = forced_tiles(num_tiles(q.shape[2], q_tile), num_tiles(k.shape[2], kv_tile), sink_tiles, diagonal,
                          q.device)
    return topk_tiles(scores, density, tile_size, q.shape[2], k.shape[2], forced)


def random_tiles(
    batch: int,
    heads: int,
    q_len: int,
    kv_len: int,
    tile_size: TileSize,
    density: float,
    forced: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> TileIndex:
    """A random index at `density` (same count rule as `topk_tiles`), for benchmarks and tests."""
    q_tile, kv_tile = tile_sizes(tile_size)
    scores = torch.rand(batch, heads, num_tiles(q_len, q_tile), num_tiles(kv_len, kv_tile), generator=generator,
                        dtype=torch.float32, device="cpu").to(device)
    return topk_tiles(scores, density, tile_size, q_len, kv_len, None if forced is None else forced.to(device))
