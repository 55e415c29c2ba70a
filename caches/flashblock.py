"""FlashBlock (Chen, Cai, Zhuang, arXiv 2602.05305): reuse of block-external attention in block diffusion,
on top of an exact prefix KV cache.

Block diffusion generates a sequence block after block; within a block it runs several refinement steps,
each a forward of the model over the window (prefix + active block). Under block-causal attention a
finished block never changes and never sees later tokens, so:

- **Prefix KV cache** (exact): each finished block is computed once into a transformers `DynamicCache`;
  each refinement step feeds only the active block (plus, at a block's first step, the block that just
  finished). diffusers' `LLaDA2Pipeline` recomputes the whole window at every step; this changes no
  token (tested) and needs no change to the pipeline: the model's forward is wrapped per instance.
- **FlashBlock**: the attention of the active block's queries splits into the part over the prefix keys
  ("block-external", `A_out` with its log-sum-exp `L_out`) and the part over the block's own keys
  (`A_in`, `L_in`); the paper observes that `A_out` barely changes across a block's steps. At a block's
  first step (and every `refresh` steps) both parts are computed and `(A_out, L_out)` stored per layer;
  at the other steps only the internal part is computed and merged:
  `o = (e^L_out A_out + e^L_in A_in) / (e^L_out + e^L_in)` (sparse_attn/merge.py). `refresh=1`
  recomputes everything at every step: the plain dense call, exact.

The model must be block-causal as the pipeline calls it (the prefix cache would be wrong otherwise):
`check` runs it on three random blocks and refuses unless the first two blocks' logits are unchanged
when the third changes; a call with another `block_length` is probed again before it runs.

diffusers' `DiffusionGemmaPipeline` keeps its own KV cache of the context (a causal encoder writes it
once per canvas) and denoises a canvas of `canvas_length` tokens over it with a bidirectional decoder:
the canvas' queries attend to the cached context (external) and to the canvas (internal). FlashBlock
computes the external part at a canvas' first step and reuses it at its other steps (corrector sweeps
included); `prefix_cache` is the pipeline's own there.

diffusers' `AnyFlowFARPipeline` generates a video chunk by chunk, each chunk in a few flow-map steps
whose self-attention reads the cached keys of the earlier chunks (external) and the chunk's own
(internal, with the zero keys the processor pads the chunk with to a multiple of 128: the stock
attention counts them, so the split keeps them inside). Its processor runs PyTorch's flex attention,
which returns no LSE (and on a CPU is unfused): during the chunk's steps the patched layers run SDPA
(`refresh=1`: the same attention by another kernel, equal to the stock output within the dtype's rounding) or
the split; the cache-writing passes stay on flex. Facts and what the pipelines do:
../shared/research/caching.md section 1.2.

Stats: `prefix_tokens_fed` / `window_tokens` (the tokens the model ran against the tokens the pipeline
passed; LLaDA2), `external_reuses`, `external_refreshes`, `attention_saved` (the share of the attention's
query-key products that reuse skipped), `cache_MB` (the largest prefix KV cache of the call; LLaDA2),
`stored_MB` (the largest external attention held for reuse, all layers), `path` (the attention kernel
that ran), all for the last pipeline call. Time: each routed attention call is an
`accel::attention` range for torch.profiler, which `accel bench` sums.
"""

from __future__ import annotations

import logging
import math
import sys
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

from accel.config import MethodConfig, option
from accel.errors import InvalidOptionError, UnsupportedInputError, UnsupportedModelError
from accel.journal import Journal
from accel.method import Method
from accel.sparse_attn.merge import merge_attention
from accel.sparse_attn.methods.sdpa_route import SDPACall, SDPARoute
from accel.steps import StepTracker
from accel.target import PatchTarget

logger = logging.getLogger("accel")

PIPELINES = ("LLaDA2Pipeline", "DiffusionGemmaPipeline", "AnyFlowFARPipeline")
CANVAS = "DiffusionGemmaPipeline"  # a pipeline that caches the context itself and denoises a canvas over it
CHUNKS = "AnyFlowFARPipeline"  # chunk-wise video: a KV cache of the finished chunks, a few steps per chunk


@dataclass(frozen=True)
class FlashBlockConfig(MethodConfig):
    method = "flashblock"
    refresh: int = option(0, "recompute the block-external attention every this many refinement steps of a "
                          "block; 1 = at every step (exact, the prefix cache alone), 0 = only at the block's "
                          "first step (the paper's)", low=0)
    prefix_cache: bool = option(True, "compute each finished block once into a KV cache and feed only the "
                                "active block (exact under block-causal attention)")
    layers: str = option("all", "the layers that reuse their external attention: 'all' or comma-separated "
                         "indices ('0,1,5'); the others recompute it at every step")


@dataclass
class LayerState:
    """One layer's stored external attention of the active block: the block's key (its window length in
    LLaDA2, its context length in DiffusionGemma, its chunk index in AnyFlow-FAR), the block's calls so far,
    and (out [b, H, B, D], lse [b, H, B])."""

    key: int = -1
    calls: int = 0
    out: torch.Tensor | None = None
    lse: torch.Tensor | None = None


@dataclass
class RunState:
    """What one pipeline call builds up: the prefix KV cache and the ids it holds."""

    cache: Any = None
    cached_ids: torch.Tensor | None = None
    layers: dict[int, LayerState] = field(default_factory=dict)


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor | None,
                       scale: float) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Attention of q [b, H, Sq, D] over k, v [b, H, Sk, D] (heads already matched) with a boolean `keep`
    mask broadcastable to [b, H, Sq, Sk] (None: every key), returning (out in q's dtype, lse [b, H, Sq]
    fp32, path). A row that keeps no key gives out 0 and lse -inf. On a CPU this is PyTorch's fused flash
    kernel for the CPU (`_scaled_dot_product_flash_attention_for_cpu`, which returns the LSE); elsewhere
    the math in fp32."""
    if q.device.type == "cpu" and q.dtype in (torch.float32, torch.bfloat16, torch.float16):
        bias = None
        if keep is not None:
            bias = torch.zeros(keep.shape, dtype=q.dtype, device=q.device).masked_fill(~keep, float("-inf"))
            bias = bias.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, attn_mask=bias,
                                                                              scale=scale)
        lse = lse.float()
        if keep is not None:  # a fully masked row: the kernel's output there is not defined
            empty = ~keep.any(-1).expand(lse.shape)
            if bool(empty.any()):
                out = out.masked_fill(empty.unsqueeze(-1), 0.0)
                lse = lse.masked_fill(empty, float("-inf"))
        return out, lse, "cpu-flash"
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if keep is not None:
        scores = scores.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    weights = torch.exp(scores - torch.where(torch.isinf(lse), 0.0, lse).unsqueeze(-1))
    return torch.matmul(weights, v.float()).to(q.dtype), lse, "torch-math"


class _native_backend:
    """While entered, `processor` (an AnyFlow causal processor, this instance only) dispatches its attention
    to diffusers' native backend (torch's SDPA, where `SDPARoute` sees it) instead of flex."""

    NAMES = ("_attention_backend", "_SUPPORTED_BACKENDS")

    def __init__(self, processor: Any) -> None:
        self.processor = processor
        self.saved = {name: vars(processor)[name] for name in self.NAMES if name in vars(processor)}

    def __enter__(self) -> None:
        self.processor._attention_backend = "native"
        self.processor._SUPPORTED_BACKENDS = ("native",)

    def __exit__(self, *exc: Any) -> None:
        for name in self.NAMES:
            if name in self.saved:
                setattr(self.processor, name, self.saved[name])
            else:
                vars(self.processor).pop(name, None)


def _pipeline_frame(pipe: Any) -> Any:
    """The frame of `pipe.__call__` on this thread's stack, or None."""
    frame = sys._getframe(2)
    for _ in range(64):
        if frame is None:
            return None
        if frame.f_code.co_name == "__call__" and frame.f_locals.get("self") is pipe:
            return frame
        frame = frame.f_back
    return None


class FlashBlock(Method):
    name = "flashblock"
    summary = ("Block diffusion: an exact prefix KV cache, and the block-external attention computed once per "
               "block and merged by log-sum-exp (FlashBlock).")
    paper = "FlashBlock, arXiv 2602.05305"
    claims = frozenset({"forward", "attention"})
    denoising = False  # block diffusion and chunk-wise video: its own pipeline check below
    Config = FlashBlockConfig
    exact_options = {"refresh": 1}
    exact_atol = 1e-6  # bit-exact on the language pipelines; AnyFlow-FAR's steps run SDPA instead of flex
    stats_keys = frozenset({"prefix_tokens_fed", "window_tokens", "external_reuses", "external_refreshes",
                            "attention_saved", "cache_MB", "stored_MB", "path", "block_length", "calls"})
    kept_between_calls = frozenset({"_causal"})  # the block-causality probe's verdict per block length
    _run: RunState | None = None  # the pipeline call's state (see `_start_run`)
    _block = 0  # the active block's length while the pipeline's own step runs (-1: the query's), else 0
    _key = -1  # which block of the run (LayerState.key)

    # ---- checks, before anything changes --------------------------------------------------------------

    def _chosen_layers(self, n: int) -> frozenset[int]:
        spec = self.config.layers.strip()
        if spec == "all":
            return frozenset(range(n))
        try:
            chosen = frozenset(int(part) for part in spec.split(","))
        except ValueError:
            chosen = frozenset({-1})
        if not chosen or min(chosen) < 0 or max(chosen) >= n:
            raise InvalidOptionError(f"flashblock: option layers={self.config.layers!r} must be 'all' or "
                                     f"comma-separated layer indices in [0, {n - 1}].")
        return chosen

    def check(self, target: PatchTarget) -> None:
        super().check(target)
        pipe = target.pipeline
        if pipe is None or type(pipe).__name__ not in PIPELINES:
            raise UnsupportedModelError(
                f"accel: method 'flashblock' patches a block-diffusion pipeline ({', '.join(PIPELINES)}); got "
                f"{target.describe()}.")
        model = target.denoisers[0].module
        kind = type(pipe).__name__
        self._chosen_layers(len(self._attention_layers(model, kind)))  # raises when it cannot be routed
        self._causal: dict[int, bool] = {}
        if kind in (CANVAS, CHUNKS):
            if not self.config.prefix_cache:
                raise InvalidOptionError(
                    f"flashblock: option prefix_cache=False is not available on {kind}, which keeps its own KV "
                    "cache of the finished context; allowed there: True.")
            return  # the steps of a block read a context fixed during the block: reuse needs no probe
        block = int(pipe.scheduler.config.block_length)
        if not self._block_causal(model, block):
            raise UnsupportedModelError(self._not_block_causal(model, block))

    @staticmethod
    def _attention_layers(model: torch.nn.Module, kind: str) -> list[torch.nn.Module]:
        """The attention modules of the layers that run the refinement steps (`model.model.layers`, or the
        decoder's: `model.model.decoder.layers`), checked to run through `F.scaled_dot_product_attention`;
        AnyFlow-FAR: the blocks' self-attention (`attn1`) with its causal KV-cache processor."""
        if kind == CHUNKS:
            layers = [block.attn1 for block in getattr(model, "blocks", [])]
            kinds = {type(getattr(m, "processor", None)).__name__ for m in layers}
            if not layers or kinds != {"AnyFlowCausalAttnProcessor"}:
                raise UnsupportedModelError(
                    f"accel: method 'flashblock' splits the self-attention of {type(model).__name__} where its "
                    f"AnyFlowCausalAttnProcessor reads the KV cache; found processors {sorted(kinds)}.")
            return layers
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        impl = getattr(model.config, "_attn_implementation", None)
        if ALL_ATTENTION_FUNCTIONS.get(impl) is not sdpa_attention_forward:
            raise UnsupportedModelError(
                f"accel: method 'flashblock' splits the attention of {type(model).__name__} where it calls "
                f"torch's scaled_dot_product_attention; its attention implementation {impl!r} does not. Load "
                "it with attn_implementation='sdpa' (or an implementation registered with transformers' sdpa "
                "attention function).")
        inner = getattr(model, "model", model)
        inner = getattr(inner, "decoder", inner)
        layers = [m.self_attn for m in getattr(inner, "layers", []) if hasattr(m, "self_attn")]
        if not layers:
            raise UnsupportedModelError(f"accel: method 'flashblock' found no decoder layers (`model.layers[i]"
                                        f".self_attn`) in {type(model).__name__}.")
        return layers

    def _block_causal(self, model: torch.nn.Module, block: int) -> bool:
        """Whether changing one block leaves every earlier block's logits unchanged, checked for the second
        and the third of three blocks as the pipeline calls the model (all-ones attention mask, positions
        0..3B-1); a model whose own blocks are longer than `block` fails at the second. Cached per size."""
        if block not in self._causal:
            device = next(model.parameters()).device
            g = torch.Generator().manual_seed(0)
            vocab = int(model.config.vocab_size)
            ids = torch.randint(vocab, (1, 3 * block), generator=g).to(device)
            mask = torch.ones_like(ids)
            positions = torch.arange(3 * block, device=device).unsqueeze(0)
            forward = self._original_forward(model)
            causal = True
            with torch.no_grad():
                logits = forward(input_ids=ids, attention_mask=mask, position_ids=positions).logits.float()
                for j in (1, 2):
                    other = ids.clone()
                    other[:, j * block : (j + 1) * block] = torch.randint(vocab, (1, block), generator=g).to(device)
                    changed = forward(input_ids=other, attention_mask=mask, position_ids=positions).logits.float()
                    causal &= bool(torch.allclose(changed[:, : j * block], logits[:, : j * block], rtol=1e-5,
                                                  atol=1e-6))
            self._causal[block] = causal
        return self._causal[block]

    @staticmethod
    def _not_block_causal(model: torch.nn.Module, block: int) -> str:
        return (f"accel: method 'flashblock' needs a block-causal model (a token never sees a later block), and "
                f"{type(model).__name__} is not at block length {block}: the logits of earlier blocks changed "
                "when only a later block changed, so a prefix KV cache would give other tokens. "
                "(LLaDA2Pipeline passes a 2-D attention mask; a model that turns it into a bidirectional one is "
                "not block-causal.)")

    def _original_forward(self, model: torch.nn.Module) -> Any:
        original = getattr(self, "_forward", None)
        return original if original is not None else model.forward

    # ---- patching -------------------------------------------------------------------------------------

    def apply(self, target: PatchTarget, journal: Journal, tracker: StepTracker) -> None:
        self.pipe = weakref.ref(target.pipeline)
        model = target.denoisers[0].module
        self.model = model
        self._forward = model.forward
        kind = type(target.pipeline).__name__
        attention = self._attention_layers(model, kind)
        reuse = self._chosen_layers(len(attention))
        self._run, self._run_key = None, None
        wrap = {CANVAS: self._wrapped_canvas_forward, CHUNKS: self._wrapped_chunk_forward}
        journal.set_attr(model, "forward", wrap.get(kind, self._wrapped_forward))
        for i, module in enumerate(attention):
            journal.set_attr(module, "forward", self._wrapped_attention(module, i, i in reuse, kind == CHUNKS))

    def needs_step_count(self) -> bool:
        return False  # its state follows the pipeline call (the run) and the window, not step numbers

    def reset_run(self) -> None:
        """Nothing: the tracker's runs follow the scheduler's step count, which one block-diffusion call can
        exceed (editing post-steps). This method's run is the pipeline call (its attention mask, see
        `_wrapped_forward`), which resets the counters and state when it changes; the state goes when the
        call returns."""

    def _release(self) -> None:
        self._run, self._run_key = None, None

    def _count(self, key: str, n: float = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    def _start_run(self, key: Any) -> RunState:
        """The state of the pipeline call that `key` (an object the call creates and drops) stands for: new
        (counters cleared) when the key is new, released when the key is collected."""
        if self._run is None or self._run_key is None or self._run_key() is not key:
            self.counters.clear()
            self._run = RunState()
            self._run_key = weakref.ref(key)
            weakref.finalize(key, self._release_if, weakref.ref(self._run))  # nothing held after the call
        return self._run

    def _wrapped_canvas_forward(self, *args: Any, **kwargs: Any) -> Any:
        """DiffusionGemma: marks the pipeline's own denoising calls of a canvas (the canvas, its length and
        the context's length from the pipeline's frame); the model runs as it is."""
        forward = self._forward
        pipe = self.pipe()
        frame = _pipeline_frame(pipe) if pipe is not None else None
        canvas = kwargs.get("decoder_input_ids")  # the pipeline's own call: its canvas, by identity
        if (frame is None or args or canvas is None or canvas is not frame.f_locals.get("canvas")
                or not isinstance(frame.f_locals.get("canvas_length"), int)
                or frame.f_locals.get("past_key_values") is None):
            self._block = 0  # not a denoising call of the pipeline (e.g. a callback's): the model as it is
            return forward(*args, **kwargs)
        if getattr(frame.f_locals["past_key_values"], "is_compileable", False) and self.config.refresh != 1:
            raise UnsupportedInputError(
                "accel: method 'flashblock' reuses the canvas' attention to the cached context; with "
                "cache_implementation='static' the decoder's keys are the whole static buffer (context, canvas, "
                "then unused slots), which its split does not follow. Call with the default dynamic cache, or "
                "patch with refresh=1 (exact).")
        # the run: the pipeline's cache, one per call
        return self._step(frame.f_locals["past_key_values"], frame.f_locals["canvas_length"],
                          int(frame.f_locals["cur_len"]), forward, kwargs)

    def _wrapped_chunk_forward(self, *args: Any, **kwargs: Any) -> Any:
        """AnyFlow-FAR: marks the pipeline's own denoising calls of a chunk (they read the KV cache; the
        cache-writing call does not), the chunk's index from the pipeline's frame; the model runs as it is."""
        forward = self._forward
        pipe = self.pipe()
        frame = _pipeline_frame(pipe) if pipe is not None else None
        if (frame is None or args or kwargs.get("hidden_states") is None
                or kwargs["hidden_states"] is not frame.f_locals.get("latent_model_input")):
            self._block = 0  # not a denoising step of the pipeline (its cache writes, a callback's call)
            return forward(*args, **kwargs)
        cache = kwargs.get("kv_cache")
        if cache is None:
            raise UnsupportedInputError(
                f"accel: method 'flashblock' reuses the attention of a chunk's steps over {CHUNKS}'s KV cache; "
                "this call runs without it (use_kv_cache=False). Call with use_kv_cache=True (the default).")
        # the run: the pipeline's cache tensors, one set per call; the block: the chunk (its query length)
        return self._step(next(iter(cache.values()))["full_cache"], -1, int(frame.f_locals["chunk_idx"]), forward,
                          kwargs)

    def _step(self, run_key: Any, block: int, key: int, forward: Any, kwargs: dict[str, Any]) -> Any:
        """One of the pipeline's own denoising calls of a block: `forward(**kwargs)` with the run, the block's
        length (-1: its query length) and its key set for the routed attention."""
        self._start_run(run_key)
        self._block, self._key = block, key
        self._count("calls")
        try:
            return forward(**kwargs)
        finally:
            self._block = 0

    def _wrapped_forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                         position_ids: torch.Tensor | None = None, **kwargs: Any) -> Any:
        forward = self._forward
        pipe = self.pipe()
        frame = _pipeline_frame(pipe) if pipe is not None else None
        if (frame is None or input_ids is None or input_ids is not frame.f_locals.get("block_x")
                or attention_mask is None or position_ids is None or kwargs
                or not isinstance(frame.f_locals.get("block_length"), int)):
            self._block = 0  # not the pipeline's own refinement call (e.g. a callback's): the model as it is
            return forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
        block = frame.f_locals["block_length"]
        if not self._block_causal(self.model, block):
            raise UnsupportedInputError(self._not_block_causal(self.model, block))
        window = input_ids.shape[1]
        # the run: the pipeline's whole attention mask, of which each step's mask is a view
        run = self._start_run(attention_mask._base if attention_mask._base is not None else attention_mask)
        self._block, self._key = block, window
        self._count("calls")
        self._count("window_tokens", window * input_ids.shape[0])
        done = window - block  # the finished prefix, final under block-causal attention
        held = 0 if run.cached_ids is None else run.cached_ids.shape[1]
        if held > done or (held and not torch.equal(input_ids[:, :held], run.cached_ids)):
            run.cache, run.cached_ids, run.layers, held = None, None, {}, 0  # a callback edited the prefix
        if not self.config.prefix_cache:
            run.cached_ids = input_ids[:, :done].clone()
            self._count("prefix_tokens_fed", window * input_ids.shape[0])
            return forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        from transformers import DynamicCache

        if held == 0:
            run.cache = DynamicCache(config=self.model.config)
        self._count("prefix_tokens_fed", (window - held) * input_ids.shape[0])
        out = forward(input_ids=input_ids[:, held:], attention_mask=attention_mask,
                      position_ids=position_ids[:, held:], cache=run.cache, use_cache=True, logits_to_keep=block)
        run.cache.crop(-block)  # keep the finished prefix only: the active block changes at the next step
        run.cached_ids = input_ids[:, :done].clone()
        size = sum(t.numel() * t.element_size() for layer in run.cache.layers for t in (layer.keys, layer.values)
                   if isinstance(t, torch.Tensor)) / 2**20
        self.counters["cache_MB"] = max(self.counters.get("cache_MB", 0.0), round(size, 3))
        return out

    def _release_if(self, run: Any) -> None:
        if self._run is not None and self._run is run():
            self._release()

    def _wrapped_attention(self, module: torch.nn.Module, index: int, reuse: bool, flex: bool) -> Any:
        forward = module.forward

        def attention(*args: Any, **kwargs: Any) -> Any:
            if not self._block or self._run is None or (flex and kwargs.get("attention_mask") is not None):
                return forward(*args, **kwargs)
            state = self._run.layers.setdefault(index, LayerState())
            with SDPARoute(lambda call: self._attention(call, state, reuse)):
                if not flex:
                    return forward(*args, **kwargs)
                if "path" not in self.counters:
                    logger.info("accel: flashblock runs the chunk steps' self-attention of %s through SDPA, not "
                                "flex (which returns no LSE)", type(self.model).__name__)
                    self.counters["path"] = "sdpa"
                with _native_backend(module.processor):
                    return forward(*args, **kwargs)

        return attention

    def _attention(self, call: SDPACall, state: LayerState, reuse: bool) -> torch.Tensor:
        """One layer's attention at a refinement step: the active block's (last B) query rows as external
        (stored or recomputed) merged with internal; rows before them (a finishing block, or the whole
        prefix without the prefix cache) densely."""
        with torch.profiler.record_function("accel::attention"):
            return self._split_attention(call, state, reuse)

    def _split_attention(self, call: SDPACall, state: LayerState, reuse: bool) -> torch.Tensor:
        q, k, v = call.query, call.key, call.value
        sq, sk = q.shape[2], k.shape[2]
        block = self._block if self._block > 0 else sq
        self.counters["block_length"] = block
        self._count("_pairs", sq * sk)
        if state.key != self._key:  # a new block: its first step
            state.key, state.calls, state.out, state.lse = self._key, 0, None, None
        refresh = self.config.refresh
        fresh = state.out is None or not reuse or refresh == 1 or (refresh > 1 and state.calls % refresh == 0)
        state.calls += 1
        if sk <= block or sq < block or call.dropout_p:  # no prefix keys (a first block), or not a step's shape
            state.out = state.lse = None
            return call.dense()
        if fresh and (refresh == 1 or not reuse):
            self._count("external_refreshes")
            return call.dense()
        groups = q.shape[1] // k.shape[1]  # grouped-query attention: one key head per query head

        def keys(part: slice) -> tuple[torch.Tensor, torch.Tensor]:
            kp, vp = k[:, :, part], v[:, :, part]
            return (kp.repeat_interleave(groups, 1), vp.repeat_interleave(groups, 1)) if groups > 1 else (kp, vp)

        mask = call.attn_mask
        if call.is_causal:  # transformers' SDPA path for a plain causal mask: the same, written out
            mask = torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(sk - sq)[None, None]
        rows = None if mask is None else mask[:, :, sq - block:]
        if rows is not None and rows.dtype != torch.bool:
            rows = rows == 0  # an additive mask: 0 where attended
        if rows is not None and bool(rows.all()):
            rows = None  # nothing masked (no padding): the kernels' unmasked path
        scale = call.scale if call.scale is not None else 1.0 / math.sqrt(q.shape[-1])
        qa = q[:, :, sq - block:]
        external, internal = slice(0, sk - block), slice(sk - block, sk)
        if fresh:
            state.out, state.lse, path = attention_with_lse(qa, *keys(external),
                                                            None if rows is None else rows[..., external], scale)
            self._count("external_refreshes")
            if self._run is not None:
                held = sum(t.numel() * t.element_size() for layer in self._run.layers.values()
                           for t in (layer.out, layer.lse) if t is not None) / 2**20
                self.counters["stored_MB"] = max(self.counters.get("stored_MB", 0.0), round(held, 3))
        else:
            self._count("external_reuses")
            self._count("_pairs_saved", block * (sk - block))
        out_int, lse_int, path = attention_with_lse(qa, *keys(internal), None if rows is None else rows[..., internal],
                                                    scale)
        assert state.out is not None and state.lse is not None
        active, _ = merge_attention(state.out, state.lse, out_int, lse_int)
        if path != self.counters.get("path"):
            logger.info("accel: flashblock attention runs %s (%s)", path, q.dtype)
            self.counters["path"] = path
        if sq > block:  # the rows before the active block: exact, as the model asked
            before = SDPACall(q[:, :, : sq - block], call.key, call.value,
                              None if mask is None else mask[:, :, : sq - block],
                              0.0, False, call.scale, call.enable_gqa).dense()
            active = torch.cat([before, active.to(before.dtype)], dim=2)
        return active.to(q.dtype)

    def stats(self) -> dict[str, Any]:
        out = {k: v for k, v in self.counters.items() if not k.startswith("_")}
        if self.counters.get("_pairs"):
            out["attention_saved"] = round(self.counters.get("_pairs_saved", 0) / self.counters["_pairs"], 4)
        return out
