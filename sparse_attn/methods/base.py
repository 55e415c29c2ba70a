"""What the sparse-attention methods (PISA, AdaSpa) share as accel methods.

One hook per attention module over image/video tokens (self-attention, or joint attention with the
text); cross-attention to text is left alone. The hook lets the module's own processor run and routes
its SDPA call (sdpa_route.py) here, where the sequence is put in tile order: image/video tokens
reordered into 2-D/3-D tiles of the latent grid (sparse_attn/reorder.py) and the text tokens moved
to the end, where their tiles are always kept ("sink" tiles). The method computes attention on
that order; the output is put back in the model's order. A schedule keeps the first steps and the
first layers dense, as both papers do.

A boolean key-padding mask over the text (HunyuanVideo's padded prompt) is honoured by leaving the
padded keys out, one batch element at a time. Calls the kernels cannot serve (another kind of mask, a
sequence that does not match the token layout) run dense, are counted in `stats()["fallbacks"]` with
the reason, and are logged once. `stats()["kernel"]` names the kernel and precision of the last sparse
call; where "auto" could not use the kernel it wanted (a Triton build error), `stats()["kernel_fallback"]`
gives the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.hooks import ModelHook

from accel import compat, parallel
from accel.adapters import AttentionSite, TokenLayout
from accel.config import MethodConfig, option
from accel.errors import InvalidOptionError, UnsupportedModelError
from accel.journal import Journal
from accel.method import Method
from accel.steps import StepTracker
from accel.target import PatchTarget

from .. import paths
from ..reorder import TokenOrder, tile_order
from ..selection import forced_tiles, pool_tiles, text_tiles
from ..tiles import TILE_SIZES, TileIndex
from .sdpa_route import SDPACall, SDPARoute

logger = logging.getLogger("accel")

# Tiles of exactly `tile_size` tokens: (height, width) for images, (frames, height, width) for video.
IMAGE_TILES = {16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16)}
VIDEO_TILES = {16: (1, 4, 4), 32: (2, 4, 4), 64: (4, 4, 4), 128: (4, 4, 8)}
FAMILIES = ("flux", "wan", "hunyuan-video", "pixart", "dit", "sd3", "cogvideox")
# diffusers attention-dispatcher backends that end in torch's scaled_dot_product_attention, the call these
# methods replace; the others (flex, flash-attn, sage, xformers...) compute attention their own way
SDPA_BACKENDS = ("native", "_native_cudnn", "_native_efficient", "_native_flash", "_native_math")


@dataclass(frozen=True)
class SparseAttentionConfig(MethodConfig):
    """Options every sparse-attention method has. Subclasses add their own after these."""

    tile_size: int = option(64, "tokens per query and key tile (the kernels' unit of sparsity)", choices=TILE_SIZES)
    dense_steps: float = option(
        0.2, "fraction of each run's first steps computed with dense attention", low=0.0, high=1.0, high_open=True
    )
    dense_layers: int = option(1, "first transformer blocks whose attention is always dense", low=0)
    first_frame_sink: bool | str = option(
        "auto", "every query tile also keeps the key tiles of the first latent frame, laid out in tiles of its "
        "own; 'auto': on for image-to-video pipelines that give the image as a clean first latent frame "
        "(expand_timesteps, the Wan 2.2 TI2V layout), whose frames copy it", choices=("auto", True, False),
    )


@dataclass(frozen=True)
class TiledSequence:
    """How one attention call's sequence is laid out for the kernels: the token permutation (tiles,
    text last) and the key tiles every query tile keeps (text; with `first_frame_sink`, the first
    latent frame)."""

    order: TokenOrder
    sink_tiles: tuple[int, ...]
    tokens: int
    text_tokens: int


def tiled_sequence(layout: TokenLayout, kind: str, text_position: str, tile: int, device: torch.device,
                   first_frame_sink: bool = False) -> TiledSequence:
    """The tile order of a self-attention ("self": image tokens only) or joint-attention sequence."""
    text = layout.text_tokens if kind == "joint" and text_position != "none" else 0
    frames, height, width = layout.grid
    frame = height * width
    if frames == 1:
        image = tile_order((height, width), IMAGE_TILES[tile]).perm
    elif first_frame_sink and VIDEO_TILES[tile][0] > 1:  # frame 0 in image tiles, so its tiles hold it alone
        rest = tile_order((frames - 1, height, width), VIDEO_TILES[tile]).perm + frame
        image = torch.cat([tile_order((height, width), IMAGE_TILES[tile]).perm, rest])
    else:
        image = tile_order(layout.grid, VIDEO_TILES[tile]).perm
    # text goes last, so that image tiles stay aligned
    text_first = text_position == "first"
    perm = torch.cat([image + (text if text_first else 0),
                      torch.arange(text, device="cpu") + (0 if text_first else image.numel())])
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.numel(), device="cpu")
    tokens = perm.numel()
    sinks = tuple(text_tiles(text, tokens, tile, text_first=False))
    if first_frame_sink and frames > 1:  # video tokens are frame-major: frame 0 is the first height * width
        first = torch.arange(frame, device="cpu") + (text if text_first else 0)
        sinks += tuple(sorted(set((inverse[first] // tile).tolist()) - set(sinks)))
    return TiledSequence(TokenOrder(perm.to(device), inverse.to(device)), sinks, tokens, text)


def segments(layout: TokenLayout, kind: str, text_position: str) -> list[int]:
    """The lengths of the parts of an attention call's sequence in model order ([text, image], [image,
    text] or [image]): what diffusers' context parallelism splits over the ranks, part by part."""
    text = layout.text_tokens if kind == "joint" and text_position != "none" else 0
    if not text:
        return [layout.image_tokens]
    return [text, layout.image_tokens] if text_position == "first" else [layout.image_tokens, text]


def gathered(order: TiledSequence, parts: list[int], world: int) -> TiledSequence:
    """The same tiles over the sequence as Ulysses' all-to-all hands it to each rank: the ranks' local
    sequences one after the other (`accel.parallel.gathered_positions`)."""
    where = torch.empty(order.tokens, dtype=torch.int64)
    where[parallel.gathered_positions(parts, world)] = torch.arange(order.tokens)
    perm = where[order.order.perm.cpu()]
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.numel())
    device = order.order.perm.device
    return TiledSequence(TokenOrder(perm.to(device), inverse.to(device)), order.sink_tiles, order.tokens,
                         order.text_tokens)


# (q, k, v of one key shard, tile-ordered; the index of the shard's tiles) -> (out, lse)
ShardAttend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, TileIndex], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class RingSequence:
    """Under ring attention: the whole sequence's tiles (`full`), and for each ring rank the global ids of
    the tiles it holds (`tiles`) and its local tokens in their tile order (`orders`). Every tile lies on
    one rank: a rank's queries are whole query tiles of the single-process run, its keys whole key tiles."""

    full: TiledSequence
    orders: tuple[TokenOrder, ...]
    tiles: tuple[torch.Tensor, ...]
    tile: int

    @property
    def num_tiles(self) -> int:
        return -(-self.full.tokens // self.tile)

    def forced(self, rank: int, device: torch.device) -> torch.Tensor:
        """[tiles of `rank`, all tiles] bool: the sink tiles and the diagonal, as the single process forces them."""
        n = self.num_tiles
        return forced_tiles(n, n, self.full.sink_tiles, True, device)[self.tiles[rank].to(device)]

    def shard_index(self, index: TileIndex, shard: int) -> TileIndex:
        """The part of `index` (this rank's query tiles over every key tile) on the keys of ring rank `shard`."""
        dense = index.to_dense()[..., self.tiles[shard].to(index.device)]
        return TileIndex.from_dense(dense, self.tile, index.q_len, self.orders[shard].perm.numel())

    def gather_tiles(self, local: torch.Tensor, parallel_setup: parallel.ContextParallel) -> torch.Tensor:
        """[B, H, N, X]: per-tile rows [B, H, n_local, X] of every ring rank (pooled keys, cheap), in global
        tile order."""
        parts = parallel.gather_ring(parallel_setup, local)
        out = local.new_empty(*local.shape[:2], self.num_tiles, local.shape[-1])
        for rank, part in enumerate(parts):
            out[:, :, self.tiles[rank].to(local.device)] = part
        return out


def ring_sequence(order: TiledSequence, parts: list[int], world: int, tile: int) -> RingSequence | str:
    """The ring layout of `order`, or why the tiles do not fall whole on the ranks."""
    tokens = order.tokens
    local = tokens // world
    if local % tile:
        return (f"{local} tokens per rank, not a multiple of tile_size={tile} (every rank must hold whole "
                "tiles)")
    where = torch.empty(tokens, dtype=torch.int64)
    where[parallel.gathered_positions(parts, world)] = torch.arange(tokens)
    placed = where[order.order.perm.cpu()].view(-1, tile)  # [tiles, tile]: rank-major gathered positions
    owner = placed // local
    if not bool((owner == owner[:, :1]).all()):
        return (f"a tile of tile_size={tile} spans two ranks (the sequence's parts {parts} split over {world} "
                "ranks); choose sizes whose per-rank parts are whole tiles")
    owner = owner[:, 0]
    device = order.order.perm.device
    orders, tiles = [], []
    for rank in range(world):
        ids = (owner == rank).nonzero().squeeze(1)
        perm = (placed[ids] - rank * local).reshape(-1)
        inverse = torch.empty_like(perm)
        inverse[perm] = torch.arange(perm.numel())
        orders.append(TokenOrder(perm.to(device), inverse.to(device)))
        tiles.append(ids)
    return RingSequence(order, tuple(orders), tuple(tiles), tile)


def gives_first_frame(pipeline: Any) -> bool:
    """Whether a pipeline passes its image as the clean first latent frame of the video (Wan 2.2 TI2V:
    `WanImageToVideoPipeline` with `expand_timesteps`): every later frame copies from those tokens."""
    config = getattr(pipeline, "config", None)
    return "ImageToVideo" in type(pipeline).__name__ and bool(getattr(config, "expand_timesteps", False))


class SparseSiteHook(ModelHook):
    """On one attention module: runs its own forward, with the SDPA call inside routed to the method."""

    def __init__(self, method: SparseAttentionMethod, site: AttentionSite, layer: int,
                 cp: parallel.ContextParallel | None = None) -> None:
        super().__init__()
        self.method = method
        self.site = site
        self.layer = layer
        self.cp = cp  # the denoiser's context parallelism (accel.parallel), or None

    @torch.compiler.disable  # the routed attention runs eagerly between compiled graphs (see docs/guarantees.md)
    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        if self.cp is not None and self.cp.ring > 1:  # the processor's SDPA call on the local shard, routed
            with parallel.processors_unaware(module), SDPARoute(lambda call: self.method.route_ring(self, call)):
                return compat.original_forward(self)(*args, **kwargs)
        if not self.method.sparse_now(self.layer):
            self.method.count("dense_calls")
            return compat.original_forward(self)(*args, **kwargs)
        routed = []

        def route(call: SDPACall) -> torch.Tensor:
            routed.append(True)
            return self.method.route(self, call)

        with SDPARoute(route):
            out = compat.original_forward(self)(*args, **kwargs)
        if not routed:  # the processor computed attention without SDPA: another backend, in force now
            self.method.note_fallback(f"attention backend {compat.attention_backend(module)!r} (not SDPA)")
        return out


class SparseAttentionMethod(Method):
    """Base of PISA and AdaSpa: hooks, schedule, token order, fallbacks, stats.

    Subclasses implement `attend(slot, q, k, v, scale, sinks)` on tile-ordered `[B, H, S, D]` inputs
    and report the tiles they kept with `record_tiles`.
    """

    families = FAMILIES
    needs_layout = True
    claims = frozenset({"attention"})
    Config = SparseAttentionConfig
    # every tile kept: the kernels' fp32 sums differ from SDPA's in the last bits, which a run of steps
    # carries into latents of magnitude up to ~1e3 (tiny PixArt): fp32 rounding, relative to the magnitude
    # (the CPU kernel's summation order depends on the machine's vector width: 1.3e-4 at 3.4 with AVX2,
    # 3.1e-4 beside a largest latent of 730 with AVX-512)
    exact_atol, exact_rtol = 1e-5, 1e-4
    # the token permutation per layout (O(S) int64 each), and its per-rank parts under ring attention
    kept_between_calls = frozenset({"_orders", "_rings"})
    stats_keys = frozenset({"sparse_calls", "dense_calls", "density", "kernel", "kernel_fallback", "fallbacks",
                            "sink", "parallel"})

    def check(self, target: PatchTarget) -> None:
        """Also refuses attention modules whose diffusers backend does not end in SDPA (the call this method
        replaces): the method would never run."""
        super().check(target)
        for d in target.denoisers:
            blocks = len(d.adapter.blocks(d.module))
            if self.config.dense_layers >= blocks:
                raise InvalidOptionError(
                    f"{self.name}: option dense_layers={self.config.dense_layers} leaves no sparse layer in "
                    f"{type(d.module).__name__} with {blocks} blocks; expected a value in [0, {blocks - 1}]."
                )
            for site in d.adapter.attention_sites(d.module):
                backend = compat.attention_backend(site.module)
                if site.kind in ("self", "joint") and backend is not None and backend not in SDPA_BACKENDS:
                    raise UnsupportedModelError(
                        f"{self.name}: {type(d.module).__name__} uses the attention backend {backend!r} (set on it "
                        f"with set_attention_backend, or the process-wide default, which diffusers' "
                        f"set_attention_backend on any model also sets), which does not call torch's "
                        f"scaled_dot_product_attention, "
                        f"the call {self.name} replaces; allowed backends: {', '.join(SDPA_BACKENDS)}. Call "
                        f"{type(d.module).__name__}.set_attention_backend('native') before patching."
                    )

    def apply(self, target: PatchTarget, journal: Journal, tracker: StepTracker) -> None:
        self.tracker = tracker
        sink = self.config.first_frame_sink
        self.first_frame_sink = gives_first_frame(target.pipeline) if sink == "auto" else sink
        self._orders: dict[tuple, TiledSequence] = {}
        self._warned: set[str] = set()
        self.hooks: list[SparseSiteHook] = []
        self._rings: dict[tuple, RingSequence | str] = {}
        # the context parallelism of the denoisers (one setup per pipeline in practice), for statistics
        # that a method reduces over the ranks (AdaSpa's head-adaptive recall)
        self.parallel_setup = parallel.Watched(target, self.name)
        self.cp = self.parallel_setup.first()
        for d in target.denoisers:
            layers = {id(b.module): i for i, b in enumerate(d.adapter.blocks(d.module))}
            cp = parallel.of(d.module)
            for site in d.adapter.attention_sites(d.module):
                if site.kind in ("self", "joint") or (cp is not None and cp.ring > 1):
                    hook = SparseSiteHook(self, site, layers[id(site.block.module)], cp)
                    journal.add_model_hook(site.module, hook, f"accel.{self.name}")
                    self.hooks.append(hook)

    def reset_run(self) -> None:
        super().reset_run()
        self.parallel_setup.check()

    # ---- schedule ----------------------------------------------------------------------------
    def needs_step_count(self) -> bool:
        """The dense warm-up is a fraction of the run's steps."""
        return self.config.dense_steps > 0

    def dense_step_count(self) -> int:
        if self.config.dense_steps == 0:
            return 0
        return round(self.config.dense_steps * self.tracker.num_steps)

    def sparse_now(self, layer: int) -> bool:
        return layer >= self.config.dense_layers and self.tracker.step >= self.dense_step_count()

    # ---- one routed call ---------------------------------------------------------------------
    def route(self, hook: SparseSiteHook, call: SDPACall) -> torch.Tensor:
        reason = call.unsupported()
        layout = self.tracker.layout
        if reason is None:
            order = self._tiled_sequence(layout, hook.site, call.query.device, hook.cp)
            if call.query.shape[2] != order.tokens or call.key.shape[2] != order.tokens:
                reason = (
                    f"a sequence of {call.query.shape[2]} query / {call.key.shape[2]} key tokens where the "
                    f"layout (grid {layout.grid}, {layout.text_tokens} text tokens) gives {order.tokens}"
                )
        if reason is not None:
            return self._fallback(reason, call)
        # on CUDA the reorder's copy also pads rows to 16 elements, for the Triton kernels' vector loads
        align = 16 if call.query.is_cuda else 1
        q, k, v = (order.order.apply(x, dim=2, align=align) for x in (call.query, call.key, call.value))
        kept = call.kept_keys()
        slot = (id(hook), self.tracker.branch)
        with paths.capture() as seen:
            if kept is None:
                out = self.attend(slot, q, k, v, call.scale, order.sink_tiles)
            else:
                kept = order.order.apply(kept, dim=1)
                if not kept[:, : order.tokens - order.text_tokens].all():
                    return self._fallback("a key-padding mask over image tokens", call)
                out = torch.cat([self._attend_kept(slot, b, q, k, v, call.scale, kept[b], order)
                                 for b in range(len(q))])
        self.count("sparse_calls")
        if seen:  # the path of this call's attention (the last, if a search ran before it)
            self.counters["kernel"] = f"{seen[-1].kernel} ({seen[-1].precision})"
            if seen[-1].note:  # a fallback from the kernel "auto" wanted, with its reason
                self.counters["kernel_fallback"] = seen[-1].note
        return order.order.restore(out, dim=2).to(call.query.dtype)

    def _attend_kept(
        self, slot: tuple, b: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None,
        kept: torch.Tensor, order: TiledSequence,
    ) -> torch.Tensor:
        """Batch element b without its padded text tokens (they sit at the end, in the text). Their own
        query rows, which nothing ever attends, are left at zero."""
        keys = kept.nonzero().squeeze(1)
        text = order.text_tokens - (order.tokens - keys.numel())
        sinks = tuple(text_tiles(text, keys.numel(), self.config.tile_size, text_first=False))
        q_b, k_b, v_b = (x[b : b + 1].index_select(2, keys) for x in (q, k, v))
        out = q.new_zeros(1, *q.shape[1:])
        out[:, :, keys] = self.attend((*slot, b), q_b, k_b, v_b, scale, sinks).to(q.dtype)
        return out

    def attend(
        self, slot: tuple, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None,
        sinks: tuple[int, ...],
    ) -> torch.Tensor:
        """Attention on tile-ordered q, k, v `[B, H, S, D]`; `slot` names the (module, CFG branch[, batch
        element]) for state kept across steps."""
        raise NotImplementedError

    def _tiled_sequence(self, layout: TokenLayout, site: AttentionSite, device: torch.device,
                        cp: parallel.ContextParallel | None = None) -> TiledSequence:
        """The tile order of the call's sequence; under Ulysses (`cp`), of the sequence as the all-to-all
        gathers it (each rank's shard of every part, rank after rank)."""
        cfg = self.config
        world = cp.world if cp is not None else 1
        key = (layout, site.kind, site.text_position, cfg.tile_size, device, world)
        if key not in self._orders:
            order = tiled_sequence(layout, site.kind, site.text_position, cfg.tile_size, device,
                                   self.first_frame_sink)
            if world > 1:
                parts = segments(layout, site.kind, site.text_position)
                parallel.check_split(parts, world, f"{site.name}'s sequence")
                order = gathered(order, parts, world)
            self._orders[key] = order
        return self._orders[key]

    # ---- ring attention (accel.parallel) -----------------------------------------------------------
    def route_ring(self, hook: SparseSiteHook, call: SDPACall) -> torch.Tensor:
        """One attention call under ring parallelism, on this rank's shard of the sequence: diffusers'
        ring attention with accel's forward op, block-sparse (`attend_ring`) where the schedule says so,
        else exact (dense tiles, with the LSE the ring merge needs)."""
        cp = hook.cp
        assert cp is not None
        reason = call.unsupported() or ("an attention mask" if call.attn_mask is not None else None)
        if reason is not None:
            raise UnsupportedModelError(f"{self.name}: {reason} is not supported under ring attention")
        site = hook.site
        if site.kind == "cross":  # not a site of the method: exact, as ring attention needs it
            return self._dense_ring(call, cp)
        if not self.sparse_now(hook.layer):
            self.count("dense_calls")
            return self._dense_ring(call, cp)
        ring = self._ring_sequence(self.tracker.layout, site, call.query.device, cp)
        if isinstance(ring, str):
            raise UnsupportedModelError(f"{self.name} under ring attention ({cp.describe()}) at {site.name}: {ring}")
        local = ring.orders[cp.ring_rank].perm.numel()
        if call.query.shape[2] != local or call.key.shape[2] != local:
            self.note_fallback(f"a ring shard of {call.query.shape[2]} tokens where the layout gives {local}")
            return self._dense_ring(call, cp)
        slot = (id(hook), self.tracker.branch)
        with paths.capture() as seen:
            out = self.attend_ring(slot, call.query, call.key, call.value, call.scale, ring, cp)
        self.count("sparse_calls")
        if seen:
            self.counters["kernel"] = f"{seen[-1].kernel} ({seen[-1].precision})"
        self.counters["parallel"] = f"ring={cp.ring}"
        return out

    def _dense_ring(self, call: SDPACall, cp: parallel.ContextParallel) -> torch.Tensor:
        def shard(_: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return parallel.dense_shard(_, q, k, v, call.scale)

        return parallel.ring_attention(cp, call.query, call.key, call.value, call.scale, shard)

    def _ring_sequence(self, layout: TokenLayout, site: AttentionSite, device: torch.device,
                       cp: parallel.ContextParallel) -> RingSequence | str:
        key = (layout, site.kind, site.text_position, self.config.tile_size, device, cp.ring)
        if key not in self._rings:
            parts = segments(layout, site.kind, site.text_position)
            parallel.check_split(parts, cp.ring, f"{site.name}'s sequence")
            order = tiled_sequence(layout, site.kind, site.text_position, self.config.tile_size, device,
                                   self.first_frame_sink)
            self._rings[key] = ring_sequence(order, parts, cp.ring, self.config.tile_size)
        return self._rings[key]

    def attend_ring(self, slot: tuple, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None,
                    ring: RingSequence, cp: parallel.ContextParallel) -> torch.Tensor:
        """This rank's queries over every rank's keys, [B, H, S_local, D] in the model's order: the
        method's tiles over the whole key sequence for this rank's query tiles, split by key shard, each
        shard's partial computed with its LSE and merged by diffusers' ring (`ring_partials`)."""
        raise NotImplementedError

    def ring_partials(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None,
                      ring: RingSequence, cp: parallel.ContextParallel, index: TileIndex | None,
                      attend: ShardAttend | None = None) -> torch.Tensor:
        """diffusers' ring over the key shards: on each, `attend(q, k, v, index part)` -> (out, lse) on the
        tile-ordered shard (every tile exact when `index` is None)."""
        mine = ring.orders[cp.ring_rank]

        def shard(j: int, q_: torch.Tensor, k_: torch.Tensor, v_: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            theirs = ring.orders[j]
            qt, kt, vt = mine.apply(q_, dim=2), theirs.apply(k_, dim=2), theirs.apply(v_, dim=2)
            if index is None or attend is None:
                out, lse = parallel.dense_shard(j, qt, kt, vt, scale)
            else:
                out, lse = attend(qt, kt, vt, ring.shard_index(index, j))
            return mine.restore(out, dim=2), mine.restore(lse, dim=2)

        return parallel.ring_attention(cp, q, k, v, scale, shard)

    def pooled_ring_scores(self, q: torch.Tensor, k: torch.Tensor, scale: float | None, ring: RingSequence,
                           cp: parallel.ContextParallel) -> torch.Tensor:
        """[B, H, n_local, N] pooled scores of this rank's query tiles against every key tile (the pooled
        keys gathered from the ring: one small all-gather)."""
        tile = self.config.tile_size
        keys = ring.gather_tiles(pool_tiles(k, tile), cp)
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        return pool_tiles(q, tile) @ keys.transpose(-1, -2) * scale

    def _fallback(self, reason: str, call: SDPACall) -> torch.Tensor:
        self.note_fallback(reason)
        return call.dense()

    def note_fallback(self, reason: str) -> None:
        """Count a call that ran dense, by reason, and log each reason once."""
        fallbacks = self.counters.setdefault("fallbacks", {})
        fallbacks[reason] = fallbacks.get(reason, 0) + 1
        if reason not in self._warned:
            self._warned.add(reason)
            logger.warning("accel %s: dense attention for %s (counted in stats()['fallbacks'])", self.name, reason)

    # ---- bookkeeping -------------------------------------------------------------------------
    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def record_tiles(self, index: TileIndex) -> None:
        """Count the key tiles kept (for the mean density in `stats()`). The count stays a tensor on the
        index's device until `stats()` reads it: no host sync per call."""
        self.counters["kept_tiles"] = self.counters.get("kept_tiles", 0) + index.counts.sum(dtype=torch.int64)
        self.count("total_tiles", index.counts.numel() * index.num_kv_tiles)

    def stats(self) -> dict[str, Any]:
        out = dict(self.counters)
        for key in ("sparse_calls", "dense_calls"):
            out.setdefault(key, 0)
        total = out.pop("total_tiles", 0)
        kept = int(out.pop("kept_tiles", 0))  # the one host sync, when stats are read
        out["density"] = kept / total if total else None
        if self.first_frame_sink:
            out["sink"] = "first-frame"
        return out
