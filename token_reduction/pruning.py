"""Visual-token pruning inside a VLM's language model: torch forward hooks on the real transformers modules.

A schedule is a list of `Drop`s: before decoder layer k, rank the visual tokens with the weights of layer
`rank_layer` and keep `keep` of the prompt's visual tokens (text tokens always stay, kept tokens stay in
order). The hooks, all per instance and undone by the patch's journal:

- on the inner VLM model (`LlavaModel`, `Qwen2VLModel`...), before it runs: read which input ids are
  visual tokens, and refuse what cannot be honoured (a `StaticCache`, compiled decoding, `labels`);
- on the language model, before it runs: is this a prefill (empty cache: rank and drop) or a step on a
  cache this pruner shortened (decode: every stage's layers get masks and positions for their own
  shorter cache), or neither (pass through);
- on the rotary embedding, after it runs: the position ids and (cos, sin) of the call;
- on every decoder layer, before it runs: at a drop layer, rank, gather the kept tokens and rebuild the
  causal mask (`masking_utils.create_causal_mask(layer_idx=k)`) and rotary embedding for the shorter
  sequence; at every later layer, hand it those instead of the full-length ones the model's loop passes.

Prefill only drops; decoding runs on the per-layer shortened `DynamicCache` (each layer keeps the tokens
it saw). Positions, `positions="compact"` (the official PyramidDrop code): a kept token's rotary position
moves down by the tokens dropped before it, and decode positions by all dropped tokens of that stage;
`"keep"`: original positions (FastV's HF port). A batch whose samples keep different counts (LLaVA-NeXT's
per-image token counts) is padded at the front with masked slots.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import masking_utils
from transformers.cache_utils import DynamicCache

from accel.errors import UnsupportedInputError
from accel.journal import Journal

from .flops import layer_flops
from .ranking import attention_row
from .vlm import VLMLayout


@dataclass(frozen=True)
class Drop:
    layer: int  # drop before this decoder layer runs
    rank_layer: int  # whose weights (and input) rank the tokens: `layer` (PyramidDrop) or `layer - 1` (FastV)
    keep: float  # fraction of the prompt's visual tokens kept from this layer on


@dataclass
class Stage:
    """The tokens that the layers from `layer` on see, as chosen in the prefill."""

    layer: int
    index: torch.Tensor  # [B, L] long: positions in the prefill sequence (front padding slots: 0)
    mask: torch.Tensor  # [B, L] long: 1 for a real kept token, 0 for the prompt's padding or a filler slot
    filler: torch.Tensor  # [B, L] bool: slots in front that only even out the samples' lengths
    shift: torch.Tensor  # [B] long: prompt tokens dropped so far (compact positions move down by it)


@dataclass
class Prefill:
    """One prefill and what its decode steps need: the cache it filled and its stages."""

    cache: Any  # weakref to the cache object, or None (no cache)
    length: int
    stages: list[Stage] = field(default_factory=list)


@dataclass
class Call:
    """One language-model call: what the layers are handed instead of the model's full-length arguments."""

    prefill: Prefill
    decoding: bool
    mask2d: torch.Tensor  # [B, S] long, the call's padding mask (all ones when the model got none)
    positions: torch.Tensor | None = None  # the call's rotary position ids, [B, S] or [3, B, S]
    rotary: tuple[torch.Tensor, torch.Tensor] | None = None
    visual: torch.Tensor | None = None  # [B, S] bool (prefill)
    query: torch.Tensor | None = None  # [B] long: the ranking row (prefill)
    stage: Stage | None = None  # the stage in force (prefill: the latest drop; decode: by layer)
    swapped: dict[str, Any] = field(default_factory=dict)  # kwargs handed to the layers of `stage`
    masks: dict[str, Any] = field(default_factory=dict)  # the stage's causal mask per attention type
    stashed: dict[int, tuple[torch.Tensor, tuple]] = field(default_factory=dict)  # rank layer -> (input, rotary)


def _binder(fn: Callable) -> Callable[[tuple, dict], dict[str, Any]]:
    sig = inspect.signature(fn)

    def bind(args: tuple, kwargs: dict) -> dict[str, Any]:
        return dict(sig.bind_partial(*args, **kwargs).arguments)

    return bind


class Pruner:
    """The hooks of one patched VLM and the state of its current prefill (see the module docstring)."""

    def __init__(self, layout: VLMLayout, drops: list[Drop], positions: str, counters: dict[str, Any],
                 method: str) -> None:
        self.layout = layout
        self.drops = sorted(drops, key=lambda d: d.layer)
        self.compact = positions == "compact"
        self.counters = counters
        self.method = method
        self.pending_ids: torch.Tensor | None = None  # the inner model's input_ids, for the LM call inside it
        self.prompt_length: int | None = None  # set by generate(): the prompt, whatever else follows
        self.prefill: Prefill | None = None  # kept between calls: the decode steps of a generation need it
        self.call: Call | None = None

    # ---- installing -----------------------------------------------------------------------------------

    def install(self, journal: Journal) -> None:
        lay = self.layout
        bind_model = _binder(type(lay.model).forward)
        bind_inner = _binder(type(lay.inner).forward)

        def model_pre(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            if bind_model((module, *args), kwargs).get("labels") is not None:
                raise UnsupportedInputError(f"accel: {self.method} is for inference: a forward with labels "
                                            "would score a pruned sequence; unpatch for training or loss evaluation.")
        bind_lm = _binder(type(lay.language_model).forward)

        def inner_pre(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            self.before_inner(bind_inner((module, *args), kwargs))

        def lm_pre(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            self.before_language_model(bind_lm((module, *args), kwargs))

        def lm_post(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            call, self.call = self.call, None
            if call is not None and not call.decoding and output is not None:
                self._count(call)

        def rotary_post(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if self.call is not None and self.call.rotary is None:
                ids = args[1] if len(args) > 1 else kwargs.get("position_ids")
                self.call.positions, self.call.rotary = ids, output

        compiler_off = torch.compiler.disable
        journal.add_torch_hook(lay.model.register_forward_pre_hook(compiler_off(model_pre), with_kwargs=True))
        journal.add_torch_hook(lay.inner.register_forward_pre_hook(compiler_off(inner_pre), with_kwargs=True))
        journal.add_torch_hook(lay.language_model.register_forward_pre_hook(compiler_off(lm_pre), with_kwargs=True))
        journal.add_torch_hook(lay.language_model.register_forward_hook(
            compiler_off(lm_post), with_kwargs=True, always_call=True))
        journal.add_torch_hook(lay.rotary.register_forward_hook(compiler_off(rotary_post), with_kwargs=True))
        for i, layer in enumerate(lay.layers):
            journal.add_torch_hook(layer.register_forward_pre_hook(
                compiler_off(self._layer_hook(i)), with_kwargs=True))
        self._wrap_generate(journal)

    def _wrap_generate(self, journal: Journal) -> None:
        """Within `generate()`, the ranking row is the prompt's last token even when a call (generation
        without a cache) also carries the tokens generated so far."""
        model = self.layout.model
        generate = model.generate

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            ids = kwargs.get("input_ids", args[0] if args and isinstance(args[0], torch.Tensor) else None)
            outer = self.prompt_length
            self.prompt_length = int(ids.shape[-1]) if isinstance(ids, torch.Tensor) else None
            try:
                return generate(*args, **kwargs)
            finally:
                self.prompt_length = outer

        journal.set_attr(model, "generate", wrapped)

    # ---- per call -------------------------------------------------------------------------------------

    def before_inner(self, call: dict[str, Any]) -> None:
        cache = call.get("cache")
        if cache is not None and not isinstance(cache, DynamicCache):
            raise UnsupportedInputError(
                f"accel: {self.method} shortens each layer's cache by its own amount, which a "
                f"{type(cache).__name__} cannot hold; generate with the default DynamicCache (no "
                "cache_implementation='static', no compiled decoding).")
        self.pending_ids = call.get("input_ids")

    def before_language_model(self, call: dict[str, Any]) -> None:
        ids, self.pending_ids = self.pending_ids, None
        self.call = None
        embeds = call.get("inputs_embeds")
        if embeds is None:
            return  # the language model called on its own, with input ids: not a VLM call
        cache = call.get("cache")
        B, S = embeds.shape[:2]
        mask2d = self._mask2d(call.get("attention_mask"), B, S, cache, embeds.device)
        past = cache.get_seq_length() if cache is not None else 0
        if past == 0:  # a prefill: rank and drop
            if ids is None or ids.shape != (B, S):
                raise UnsupportedInputError(
                    f"accel: {self.method} finds the visual tokens by their input ids; this call gave the model "
                    "inputs_embeds without input_ids. Pass input_ids (and pixel values) as the processor makes them.")
            self.prefill = Prefill(weakref.ref(cache) if cache is not None else None, S)
            prompt = min(self.prompt_length or S, S)
            visual = torch.isin(ids, torch.tensor(self.layout.visual_token_ids, device=ids.device))
            visual[:, prompt:] = False  # generated tokens are text, whatever their id
            real = mask2d[:, :prompt].bool()
            if not bool(real.any(dim=1).all()):
                return  # a prompt of padding only: nothing to rank with
            query = prompt - 1 - real.flip(1).int().argmax(dim=1)  # last real prompt token per sample
            self.call = Call(self.prefill, False, mask2d, visual=visual, query=query)
            self.counters.clear()  # stats() describe the latest prefill (and the decode steps after it)
            self.counters.update(visual_tokens=int(visual.sum()), decode_calls=0)
        elif (self.prefill is not None and self.prefill.stages and self.prefill.cache is not None
              and self.prefill.cache() is cache):
            self.call = Call(self.prefill, True, mask2d)
            self.counters["decode_calls"] = self.counters.get("decode_calls", 0) + 1

    def _mask2d(self, mask: Any, B: int, S: int, cache: Any, device: torch.device) -> torch.Tensor:
        """The call's 2-D padding mask [B, past + S] as long."""
        past = cache.get_seq_length() if cache is not None else 0
        if mask is None:
            return torch.ones(B, past + S, dtype=torch.long, device=device)
        if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
            raise UnsupportedInputError(
                f"accel: {self.method} needs the 2-D padding attention_mask (or none); this call passed "
                f"{'a dict' if isinstance(mask, dict) else f'a {mask.dim()}-D tensor'} of prepared masks.")
        return mask.long()

    def _count(self, call: Call) -> None:
        """stats() of a finished prefill: the FastV/PyramidDrop FLOPs ratio and the KV-cache bytes saved,
        from the tokens each layer really saw (averaged over the batch)."""
        cfg = self.layout.text_config
        full = call.mask2d.sum(dim=1).double().mean().item()
        tokens, stages = [], list(call.prefill.stages)
        n = full
        for i in range(self.layout.depth):
            while stages and stages[0].layer <= i:
                n = stages.pop(0).mask.sum(dim=1).double().mean().item()
            tokens.append(n)
        d, m = int(cfg.hidden_size), int(cfg.intermediate_size)
        ratio = sum(layer_flops(t, d, m) for t in tokens) / (len(tokens) * layer_flops(full, d, m))
        head_dim = getattr(cfg, "head_dim", None) or d // int(cfg.num_attention_heads)
        kv_dim = int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads) * int(head_dim)
        element = self.layout.layers[0].self_attn.k_proj.weight.element_size()
        batch = call.mask2d.shape[0]
        saved = sum(full - t for t in tokens) * batch * 2 * kv_dim * element
        self.counters.update(flops_ratio=round(ratio, 4), kv_cache_MB_saved=round(saved / 2**20, 3),
                             tokens_per_layer=[round(t, 1) for t in tokens])

    # ---- decoder layers -------------------------------------------------------------------------------

    def _layer_hook(self, i: int) -> Callable:
        drop = next((d for d in self.drops if d.layer == i), None)
        stashes = any(d.rank_layer == i and d.layer != i for d in self.drops)
        layer = self.layout.layers[i]

        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            call = self.call
            if call is None:
                return None
            hidden = args[0] if args else kwargs["hidden_states"]
            if not call.decoding:
                if stashes:
                    call.stashed[i] = (hidden, kwargs["position_embeddings"] if call.stage is None
                                       else call.swapped["position_embeddings"])
                if drop is not None:
                    hidden = self._drop(call, drop, hidden, kwargs)
            else:
                self._decode_stage(call, i, hidden)
            if call.stage is None:
                return None
            kwargs = {**kwargs, **call.swapped, "attention_mask": self._mask(call, layer, hidden, kwargs)}
            kwargs.pop("hidden_states", None)
            return (hidden, *args[1:]), kwargs

        return hook

    def _mask(self, call: Call, layer: torch.nn.Module, hidden: torch.Tensor, kwargs: dict) -> Any:
        """The causal mask for `layer` over the stage's tokens, made by transformers' own mask function for
        the layer's attention type, sized against the layer's own cache (`layer_idx`)."""
        kind = getattr(layer, "attention_type", "full_attention")
        if kind not in call.masks:
            stage = call.stage
            assert stage is not None
            mask2d = stage.mask if not call.decoding else torch.cat(
                [stage.mask, call.mask2d[:, call.prefill.length:]], dim=1)
            make = (masking_utils.create_sliding_window_causal_mask if kind == "sliding_attention"
                    else masking_utils.create_causal_mask)
            cache = kwargs.get("cache")
            call.masks[kind] = make(config=self.layout.text_config, inputs_embeds=hidden,
                                     attention_mask=mask2d.to(hidden.device), cache=cache,
                                     position_ids=None, layer_idx=stage.layer)
        return call.masks[kind]

    def _drop(self, call: Call, drop: Drop, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
        """Rank the visual tokens still present, keep `drop.keep` of the prompt's, gather them."""
        B, dev = hidden.shape[0], hidden.device
        stage = call.stage
        index = stage.index if stage is not None else torch.arange(hidden.shape[1], device=dev).expand(B, -1)
        mask = stage.mask if stage is not None else call.mask2d
        filler = stage.filler if stage is not None else torch.zeros_like(mask, dtype=torch.bool)
        assert call.visual is not None and call.query is not None
        visual = call.visual.gather(1, index) & mask.bool()
        current = kwargs["position_embeddings"] if stage is None else call.swapped["position_embeddings"]
        rank_input, rotary = call.stashed.pop(drop.rank_layer, (hidden, current))
        query = call.query if stage is None else self._slot_of(index, mask, call.query)
        probs = attention_row(self.layout.layers[drop.rank_layer], rank_input, rotary, query, mask.bool())
        total = call.visual.sum(dim=1)  # the prompt's visual tokens per sample
        # the official floor, but never the whole image: a sample with visual tokens keeps at least one
        keep = torch.minimum((total.double() * drop.keep).long().clamp(min=1), visual.sum(dim=1))
        rows = []
        for b in range(B):
            kept = ~visual[b] & ~filler[b]  # text and padding stay (padding masked, where it was)
            if keep[b] > 0:
                kept[probs[b].masked_fill(~visual[b], float("-inf")).topk(int(keep[b])).indices] = True
            rows.append(kept.nonzero().squeeze(1))  # ascending: kept tokens stay in order
        L = max(len(r) for r in rows)
        front = torch.tensor([L - len(r) for r in rows], device=dev)
        slot = torch.stack([torch.cat([r.new_zeros(L - len(r)), r]) for r in rows])  # shorter rows: slots in front
        padded = torch.arange(L, device=dev)[None, :] < front[:, None]
        call.stage = Stage(drop.layer, index.gather(1, slot).masked_fill(padded, 0),
                           mask.gather(1, slot).masked_fill(padded, 0), padded, total - keep)
        call.prefill.stages.append(call.stage)
        hidden = hidden.gather(1, slot[..., None].expand(-1, -1, hidden.shape[-1]))
        call.masks = {}
        call.swapped = {"position_ids": None,
                        "position_embeddings": self._stage_rotary(call, call.stage, hidden)}
        self.counters.setdefault("kept_visual", []).append(int(keep.sum()))
        return hidden

    @staticmethod
    def _slot_of(index: torch.Tensor, mask: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Where prefill position `query[b]` sits in the stage's index (it is text: always kept)."""
        return ((index == query[:, None]) & mask.bool()).int().argmax(dim=1)

    def _stage_rotary(self, call: Call, stage: Stage, hidden: torch.Tensor) -> tuple:
        """(cos, sin) of the stage's tokens: their own positions ("keep"), or moved down by the tokens
        dropped before each one ("compact")."""
        assert call.positions is not None
        B, L = stage.index.shape
        positions = call.positions.expand(*call.positions.shape[:-2], B, call.positions.shape[-1]) \
            if call.positions.dim() == 3 else call.positions.expand(B, -1)
        index = stage.index.to(positions.device)
        kept = positions.gather(-1, index.expand(*positions.shape[:-2], B, L))
        if self.compact:
            order = (~stage.filler).long().cumsum(dim=1).to(index.device) - 1  # rank among the real slots
            kept = kept - (index - order).clamp(min=0)  # minus the prefill tokens dropped before it
        return self.layout.rotary(hidden, kept)  # the model's own module (the hook records only its first call)

    def _decode_stage(self, call: Call, i: int, hidden: torch.Tensor) -> None:
        """At the first layer of each stage in a decode step: its mask and (compact) rotary embedding."""
        stage = next((s for s in reversed(call.prefill.stages) if s.layer <= i), None)
        if stage is call.stage:
            return
        call.stage, call.swapped, call.masks = stage, {}, {}
        if stage is None or not self.compact:
            return
        assert call.positions is not None
        shift = stage.shift.to(call.positions.device)
        positions = call.positions - (shift[None, :, None] if call.positions.dim() == 3 else shift[:, None])
        call.swapped["position_embeddings"] = self.layout.rotary(hidden, positions)
