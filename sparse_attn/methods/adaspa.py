"""`method="adaspa"`: adaptive block-sparse attention with an LSE-cached online search (arXiv 2502.21079).

The pattern of a DiT's attention depends on the prompt, layer and head, but barely changes across
denoising steps, so it is searched online, twice per run, and reused in between:

- steps before the warm-up fraction (`dense_steps`) run dense;
- the first sparse step runs the fused search: one dense pass (so that step's output is exact) that
  also returns each row's log-sum-exp and the attention mass of every (query tile, key tile);
  the LSE is cached, the heads' densities are set by their recall (`head_adaptive`), and the mask of
  the top tiles per query tile (text tiles always kept) is stored as bits (`PackedTiles`);
- at `refresh_at` the mass is recomputed from the current q, k and the cached LSE in one pass (no
  softmax normaliser pass) and the index replaced;
- every other step runs the block-sparse kernel on the stored index.

State is per attention module and per CFG branch, and starts empty every run. `search="pooled"` with
`refresh_at=0` and `head_adaptive=False` is the static top-k baseline (pooled scores, chosen once).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from accel import parallel
from accel.config import option

from ..attention import block_sparse_attention
from ..search import dense_attention_with_tile_mass, head_adaptive_density, tile_mass, tiles_from_mass
from ..selection import select_tiles, topk_tiles
from ..tiles import PackedTiles, TileIndex
from .base import RingSequence, SparseAttentionConfig, SparseAttentionMethod

logger = logging.getLogger("accel")


@dataclass(frozen=True)
class AdaSpaConfig(SparseAttentionConfig):
    method = "adaspa"
    dense_layers: int = option(0, "first transformer blocks whose attention is always dense (the paper: none)",
                               low=0)
    sparsity: float = option(0.8, "mean fraction of key tiles skipped per query tile", low=0.0, high=1.0,
                             high_open=True)
    refresh_at: float = option(
        0.6, "fraction of the steps at which the mask is searched again with the cached LSE (0 = never)",
        low=0.0, high=1.0, high_open=True,
    )
    recall_threshold: float = option(0.8, "heads whose recall exceeds this get sparser, as many worst denser",
                                     low=0.0, high=1.0)
    head_adaptive: bool = option(True, "vary the sparsity per head by recall, keeping the mean")
    search: str = option("lse", "tile scores: exact attention mass ('lse') or pooled q.k ('pooled')",
                         choices=("lse", "pooled"))


@dataclass
class SiteState:
    """One attention module's search results for one CFG branch, within one run."""

    shape: tuple[int, ...] = ()  # q's shape at the search: a new shape searches afresh
    lse: torch.Tensor | None = None
    tiles: PackedTiles | None = None  # the mask, 1 bit per (query tile, key tile)
    searched_at: int = -1


class AdaSpa(SparseAttentionMethod):
    name = "adaspa"
    summary = "Adaptive block-sparse attention: exact block-mass search, LSE cached, head-adaptive density."
    paper = "AdaSpa, arXiv 2502.21079"
    Config = AdaSpaConfig
    exact_options = {"sparsity": 0.0, "dense_steps": 0.0, "dense_layers": 0}  # every key tile kept, everywhere
    stats_keys = SparseAttentionMethod.stats_keys | {"searches", "refreshes", "mask_bytes", "mask_vs_byte_mask",
                                                     "nonfinite_lse"}

    def needs_step_count(self) -> bool:
        """The searched mask lives across the steps of a run (and the refresh is a fraction of them)."""
        return True

    def reset_run(self) -> None:
        super().reset_run()
        self.states: dict[tuple, SiteState] = {}

    def end_branch(self, branch: str) -> None:
        """The cached LSEs and masks of the branch (slots are (site, branch[, batch element]))."""
        for slot in [slot for slot in self.states if slot[1] == branch]:
            del self.states[slot]

    def attend(
        self, slot: tuple, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None,
        sinks: tuple[int, ...],
    ) -> torch.Tensor:
        cfg = self.config
        step = self.tracker.step
        state = self.states.setdefault(slot, SiteState())
        if state.tiles is None or state.shape != tuple(q.shape):
            state.shape = tuple(q.shape)
            return self._search(state, q, k, v, scale, sinks, step)
        refresh = round(cfg.refresh_at * self.tracker.num_steps) if cfg.refresh_at else -1
        if step >= refresh > state.searched_at:
            self._refresh(state, q, k, scale, sinks, step)
        index = state.tiles.unpack()
        self.record_tiles(index)
        return block_sparse_attention(q, k, v, index, scale=scale)

    def _search(self, state: SiteState, q, k, v, scale, sinks, step: int) -> torch.Tensor:  # noqa: ANN001
        """The first sparse step: dense output, LSE and tile mass in one pass; store the index."""
        cfg = self.config
        self.count("searches")
        if cfg.search == "pooled":
            index = select_tiles(q, k, 1.0 - cfg.sparsity, cfg.tile_size, sink_tiles=sinks, scale=scale)
            self._store(state, index, step)
            self.record_tiles(index)
            return block_sparse_attention(q, k, v, index, scale=scale)
        out, lse, mass = dense_attention_with_tile_mass(q, k, v, cfg.tile_size, scale)
        if torch.isnan(lse).any() or (lse == float("inf")).any():
            # a NaN/inf LSE would poison every refresh it feeds: cache nothing, search again next step
            if "nonfinite_lse" not in self.counters:
                logger.warning("accel: adaspa met a NaN/inf log-sum-exp (non-finite q/k); nothing was cached "
                               "for that layer, the step ran dense; counted in stats()['nonfinite_lse']")
            self.count("nonfinite_lse")
            state.tiles, state.lse = None, None
            return out
        state.lse = lse
        self._select(state, mass, sinks, q.shape[2], k.shape[2], step)
        return out

    def _refresh(self, state: SiteState, q, k, scale, sinks, step: int) -> None:  # noqa: ANN001
        """A later search step: the mass from the current q, k and the cached LSE, one pass."""
        self.count("refreshes")
        cfg = self.config
        if cfg.search == "pooled":
            self._store(state, select_tiles(q, k, 1.0 - cfg.sparsity, cfg.tile_size, sink_tiles=sinks, scale=scale),
                        step)
            return
        self._select(state, tile_mass(q, k, state.lse, cfg.tile_size, scale), sinks, q.shape[2], k.shape[2], step)

    def _select(self, state: SiteState, mass: torch.Tensor, sinks, q_len: int, kv_len: int, step: int) -> None:  # noqa: ANN001
        cfg = self.config
        density: float | torch.Tensor = 1.0 - cfg.sparsity
        if cfg.head_adaptive:
            # under Ulysses this rank holds some heads: the recall of every head decides (all-gathered)
            density = head_adaptive_density(mass, density, cfg.recall_threshold, sink_tiles=sinks,
                                            reduce=parallel.recall_reduce(self.cp))
            if self.cp is not None and self.cp.ulysses > 1:
                heads = mass.shape[1]
                rank = self.cp.rank % self.cp.ulysses
                density = density[:, rank * heads:(rank + 1) * heads]
        self._store(state, tiles_from_mass(mass, density, cfg.tile_size, q_len, kv_len, sink_tiles=sinks), step)

    # ---- under ring attention (accel.parallel) -------------------------------------------------------
    def attend_ring(self, slot: tuple, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None,
                    ring: RingSequence, cp: parallel.ContextParallel) -> torch.Tensor:
        """The single process's schedule on this rank's query tiles: the search step runs exact ring
        attention, keeps the merged LSE and computes the tile mass against every key shard (keys
        gathered from the ring at search and refresh steps only); recall sums are reduced over the ring,
        so every rank gives its heads the same densities; other steps run block-sparse partials per shard."""
        cfg = self.config
        step = self.tracker.step
        state = self.states.setdefault(slot, SiteState())
        mine = ring.orders[cp.ring_rank]
        qt, kt = mine.apply(q, dim=2), mine.apply(k, dim=2)
        forced = ring.forced(cp.ring_rank, q.device)

        def sparse(qs: torch.Tensor, ks: torch.Tensor, vs: torch.Tensor,
                   part: TileIndex) -> tuple[torch.Tensor, torch.Tensor]:
            return block_sparse_attention(qs, ks, vs, part, scale=scale, return_lse=True)

        if state.tiles is None or state.shape != tuple(q.shape):
            state.shape = tuple(q.shape)
            self.count("searches")
            if cfg.search == "pooled":
                index = topk_tiles(self.pooled_ring_scores(qt, kt, scale, ring, cp), 1.0 - cfg.sparsity,
                                   cfg.tile_size, qt.shape[2], ring.full.tokens, forced)
                self._store(state, index, step)
                self.record_tiles(index)
                return self.ring_partials(q, k, v, scale, ring, cp, index, sparse)
            out, lse = parallel.ring_attention(
                cp, q, k, v, scale, lambda j, qs, ks, vs: parallel.dense_shard(j, qs, ks, vs, scale), return_lse=True)
            state.lse = mine.apply(lse, dim=2)
            self._select_ring(state, self._ring_mass(qt, k, state.lse, scale, ring, cp), forced, qt.shape[2],
                              ring, step)
            return out
        refresh = round(cfg.refresh_at * self.tracker.num_steps) if cfg.refresh_at else -1
        if step >= refresh > state.searched_at:
            self.count("refreshes")
            if cfg.search == "pooled":
                self._store(state, topk_tiles(self.pooled_ring_scores(qt, kt, scale, ring, cp), 1.0 - cfg.sparsity,
                                              cfg.tile_size, qt.shape[2], ring.full.tokens, forced), step)
            else:
                self._select_ring(state, self._ring_mass(qt, k, state.lse, scale, ring, cp), forced, qt.shape[2],
                                  ring, step)
        index = state.tiles.unpack()
        self.record_tiles(index)
        return self.ring_partials(q, k, v, scale, ring, cp, index, sparse)

    def _ring_mass(self, qt: torch.Tensor, k: torch.Tensor, lse: torch.Tensor | None, scale: float | None,
                   ring: RingSequence, cp: parallel.ContextParallel) -> torch.Tensor:
        """[B, H, n_local, N]: the tile mass of this rank's query tiles against every key shard's tiles,
        from the whole sequence's LSE (so it is the single process's mass)."""
        assert lse is not None
        mass = qt.new_zeros(*qt.shape[:2], qt.shape[2] // ring.tile, ring.num_tiles, dtype=torch.float32)
        for j, kj in enumerate(parallel.gather_ring(cp, k)):
            part = tile_mass(qt, ring.orders[j].apply(kj, dim=2), lse, self.config.tile_size, scale)
            mass[..., ring.tiles[j].to(mass.device)] = part
        return mass

    def _select_ring(self, state: SiteState, mass: torch.Tensor, forced: torch.Tensor, q_len: int,
                     ring: RingSequence, step: int) -> None:
        cfg = self.config
        density: float | torch.Tensor = 1.0 - cfg.sparsity
        if cfg.head_adaptive:
            density = head_adaptive_density(mass, density, cfg.recall_threshold, forced=forced,
                                            reduce=parallel.recall_reduce(self.cp))
        self._store(state, tiles_from_mass(mass, density, cfg.tile_size, q_len, ring.full.tokens, forced=forced),
                    step)

    def _store(self, state: SiteState, index: TileIndex, step: int) -> None:
        state.tiles = index.pack()
        state.searched_at = step
        self.count("mask_bytes", state.tiles.nbytes)
        self.count("byte_mask_bytes", index.counts.numel() * index.num_kv_tiles)  # one byte per tile pair

    def stats(self) -> dict:
        out = super().stats()
        byte_mask = out.pop("byte_mask_bytes", 0)
        out["mask_vs_byte_mask"] = out.get("mask_bytes", 0) / byte_mask if byte_mask else None
        return out
