"""`method="pisa"`: piecewise sparse attention (PISA, arXiv 2602.01077) on diffusers DiTs.

Per query tile, the critical key tiles (top-k of the pooled scores at `density`, the text tiles and
the diagonal) are computed exactly; every other key tile still enters the same softmax through a
Taylor expansion around its mean key (`order`): nothing is dropped, which is what separates PISA from
keep-or-drop block sparsity (`order="none"`, kept as the comparison baseline). The kernel is
`sparse_attn.pisa_attention`; this module is the schedule and the plumbing (methods/base.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from accel import parallel
from accel.config import option

from ..attention import block_sparse_attention
from ..pisa import key_moment_sum, pisa_attention, route
from ..selection import topk_tiles
from ..tiles import TileIndex
from .base import RingSequence, SparseAttentionConfig, SparseAttentionMethod

VIDEO_DENSITY, IMAGE_DENSITY = 0.125, 0.15  # the paper's defaults (Wan/HunyuanVideo; FLUX)


@dataclass(frozen=True)
class PISAConfig(SparseAttentionConfig):
    method = "pisa"
    density: float = option(
        0.0,
        "fraction of key tiles computed exactly per query tile; 0 = the paper's: 0.125 video, 0.15 images",
        low=0.0,
        high=1.0,
    )
    order: str = option(
        "hybrid",
        "approximation of the other tiles: first-order 'hybrid', 'zeroth' order, or 'none' (dropped: "
        "plain keep-or-drop block sparsity, for comparison)",
        choices=("hybrid", "zeroth", "none"),
    )
    routing: str = option(
        "pooled", "how critical tiles are chosen: pooled q.k scores, or 'covariance' (images)",
        choices=("pooled", "covariance"),
    )


class PISA(SparseAttentionMethod):
    name = "pisa"
    summary = "Piecewise sparse attention: exact critical tiles, Taylor-approximated rest, one softmax."
    paper = "PISA, arXiv 2602.01077"
    Config = PISAConfig
    exact_options = {"density": 1.0, "dense_steps": 0.0, "dense_layers": 0}  # every key tile exact, everywhere

    def density(self) -> float:
        if self.config.density:
            return self.config.density
        return VIDEO_DENSITY if self.tracker.layout.grid[0] > 1 else IMAGE_DENSITY

    def attend(
        self, slot: tuple, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None,
        sinks: tuple[int, ...],
    ) -> torch.Tensor:
        cfg = self.config
        index = route(q, k, v, self.density(), cfg.tile_size, cfg.routing, sink_tiles=sinks, scale=scale)
        self.record_tiles(index)
        if cfg.order == "none":
            return block_sparse_attention(q, k, v, index, scale=scale)
        return pisa_attention(q, k, v, order=cfg.order, index=index, scale=scale)

    # ---- under ring attention (accel.parallel): the same tiles, the Taylor tail per key shard ----------
    def ring_index(self, slot: tuple, q: torch.Tensor, k: torch.Tensor, scale: float | None, ring: RingSequence,
                   cp: parallel.ContextParallel) -> TileIndex:
        """The single process's routing for this rank's query tiles: top-k of the pooled scores against
        every key tile (pooled keys gathered), plus the sinks and the diagonal."""
        scores = self.pooled_ring_scores(q, k, scale, ring, cp)
        forced = ring.forced(cp.ring_rank, q.device)
        return topk_tiles(scores, self.density(), self.config.tile_size, q.shape[2], ring.full.tokens, forced)

    def attend_ring(self, slot: tuple, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None,
                    ring: RingSequence, cp: parallel.ContextParallel) -> torch.Tensor:
        """Each key shard's partial: its critical tiles exact and (unless order="none") its other tiles
        through the Taylor tail with the whole sequence's first-order moment h̄ (summed over the ring),
        in one softmax whose LSE lets the shards merge into the single process's result."""
        mine = ring.orders[cp.ring_rank]
        qt, kt = mine.apply(q, dim=2), mine.apply(k, dim=2)
        index = self.ring_index(slot, qt, kt, scale, ring, cp)
        self.record_tiles(index)
        order = self.config.order
        moment = None
        if order == "hybrid":
            moment = key_moment_sum(kt, mine.apply(v, dim=2), self.config.tile_size)
            torch.distributed.all_reduce(moment, group=cp.ring_group)
            moment = moment / ring.full.tokens

        def attend(qs: torch.Tensor, ks: torch.Tensor, vs: torch.Tensor,
                   part: TileIndex) -> tuple[torch.Tensor, torch.Tensor]:
            if order == "none":
                return block_sparse_attention(qs, ks, vs, part, scale=scale, return_lse=True)
            return pisa_attention(qs, ks, vs, order=order, index=part, scale=scale, return_lse=True, moment=moment)

        return self.ring_partials(q, k, v, scale, ring, cp, index, attend)
