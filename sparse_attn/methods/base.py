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
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.hooks import ModelHook

from accel import compat
from accel.adapters import AttentionSite, TokenLayout
from accel.config import MethodConfig, option
from accel.errors import InvalidOptionError, UnsupportedModelError
from accel.journal import Journal
from accel.method import Method
from accel.steps import StepTracker
from accel.target import PatchTarget

from .. import paths
from ..reorder import TokenOrder, tile_order
from ..selection import text_tiles
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


def gives_first_frame(pipeline: Any) -> bool:
    """Whether a pipeline passes its image as the clean first latent frame of the video (Wan 2.2 TI2V:
    `WanImageToVideoPipeline` with `expand_timesteps`): every later frame copies from those tokens."""
    config = getattr(pipeline, "config", None)
    return "ImageToVideo" in type(pipeline).__name__ and bool(getattr(config, "expand_timesteps", False))


class SparseSiteHook(ModelHook):
    """On one attention module: runs its own forward, with the SDPA call inside routed to the method."""

    def __init__(self, method: SparseAttentionMethod, site: AttentionSite, layer: int) -> None:
        super().__init__()
        self.method = method
        self.site = site
        self.layer = layer

    @torch.compiler.disable  # the routed attention runs eagerly between compiled graphs (see docs/guarantees.md)
    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
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
    kept_between_calls = frozenset({"_orders"})  # the token permutation per layout (O(S) int64 each)
    stats_keys = frozenset({"sparse_calls", "dense_calls", "density", "kernel", "kernel_fallback", "fallbacks",
                            "sink"})

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
        for d in target.denoisers:
            layers = {id(b.module): i for i, b in enumerate(d.adapter.blocks(d.module))}
            for site in d.adapter.attention_sites(d.module):
                if site.kind in ("self", "joint"):
                    hook = SparseSiteHook(self, site, layers[id(site.block.module)])
                    journal.add_model_hook(site.module, hook, f"accel.{self.name}")
                    self.hooks.append(hook)

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
            order = self._tiled_sequence(layout, hook.site, call.query.device)
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

    def _tiled_sequence(self, layout: TokenLayout, site: AttentionSite, device: torch.device) -> TiledSequence:
        cfg = self.config
        key = (layout, site.kind, site.text_position, cfg.tile_size, device)
        if key not in self._orders:
            self._orders[key] = tiled_sequence(layout, site.kind, site.text_position, cfg.tile_size, device,
                                               self.first_frame_sink)
        return self._orders[key]

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
