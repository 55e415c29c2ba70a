"""Block-diffusion language models for diffusers' `LLaDA2Pipeline` and `DiffusionGemmaPipeline`, built
offline.

    pipe = accel.zoo.load("llada2", size="tiny")         # LLaDA2Pipeline, model at pipe.model
    out = pipe(**accel.zoo.dllm.call_inputs(pipe))       # out.sequences: [batch, gen_length]
    pipe = accel.zoo.load("diffusion-gemma", size="tiny")  # DiffusionGemmaPipeline

The model is a real transformers `Qwen2ForCausalLM` whose attention is block-causal: a token sees every
token of its own block (bidirectional inside the block) and every earlier block, never a later one, as in
block diffusion (BD3-LM, LLaDA2.x under its own block mask, SDAR). transformers has no such model, so
its mask is a registered attention implementation, `BLOCK_CAUSAL`: transformers' own SDPA attention
with its causal mask OR "same block" (`transformers.masking_utils`), the block size read from
`config.block_length`. Blocks start at position 0, as `LLaDA2Pipeline` aligns them.

"diffusion-gemma" is transformers' `DiffusionGemmaForBlockDiffusion` (a causal encoder that writes the
context into a KV cache, a bidirectional decoder that denoises a canvas of `canvas_length` tokens over it;
sliding and full attention layers, mixture-of-experts MLPs) from a small config, its "processor" the same
word-level tokenizer with a chat template that joins the turns. diffusers 0.42.1's pipeline calls the
decoder's `create_diffusion_decoder_attention_mask(past_key_values=...)`, which transformers 5.24 names
`cache=`: the stock pipeline raises a TypeError. `fix_mask_call(model)` gives the model's decoder (this
instance only) a mask function that takes both names; the zoo applies it, and a user of a real checkpoint
with these versions calls it once.

Sizes: "tiny" (2 layers, width 32, a 40-token prompt: tests) and "bench" (4 layers, width 256, a
2,048-token prompt, 512 tokens generated in blocks of 32: speed). The tokenizer is word-level, built in
code: digits, a few words, and <pad>, <eos>, <mask>, <unk>.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

import torch
import transformers

BLOCK_CAUSAL = "accel_block_causal_sdpa"
NAMES = ("llada2", "diffusion-gemma")
SPECIAL = ("<pad>", "<eos>", "<mask>", "<unk>")
WORDS = ("copy", ":", "=", ".", *map(str, range(10)))


@dataclass(frozen=True)
class Size:
    layers: int
    width: int
    heads: int
    kv_heads: int
    mlp: int
    block_length: int
    prompt_tokens: int  # the prompt `call_inputs` makes
    gen_length: int
    steps: int  # refinement steps per block


SIZES = {
    "tiny": Size(layers=2, width=32, heads=2, kv_heads=1, mlp=64, block_length=8, prompt_tokens=40, gen_length=16,
                 steps=4),
    "bench": Size(layers=4, width=256, heads=4, kv_heads=2, mlp=512, block_length=32, prompt_tokens=2048,
                  gen_length=512, steps=8),
}
BUILT: WeakKeyDictionary[Any, tuple[str, str]] = WeakKeyDictionary()


def register_block_causal() -> str:
    """Registers `BLOCK_CAUSAL` with transformers (once; it only adds a name) and returns it: attention
    as transformers' "sdpa", with the mask causal OR same-block, padding applied after. The mask is never
    skipped for `is_causal=True` (that would be token-causal)."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, or_masks, sdpa_mask

    if BLOCK_CAUSAL in AttentionMaskInterface._global_mapping:
        return BLOCK_CAUSAL

    def block_causal_mask(*args: Any, mask_function: Any = None, config: Any = None, **kwargs: Any) -> Any:
        size = int(config.block_length)

        def same_block(batch: Any, head: Any, q: Any, kv: Any) -> Any:
            return q // size == kv // size

        kwargs["allow_is_causal_skip"] = False
        return sdpa_mask(*args, mask_function=or_masks(mask_function, same_block), config=config, **kwargs)

    AttentionInterface.register(BLOCK_CAUSAL, sdpa_attention_forward)
    AttentionMaskInterface.register(BLOCK_CAUSAL, block_causal_mask)
    return BLOCK_CAUSAL


def tokenizer() -> transformers.PreTrainedTokenizerFast:
    """Word-level, built in code; padding on the left (batched prompts end where generation starts)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate((*SPECIAL, *WORDS))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[^\s]+"), behavior="removed", invert=True)
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", mask_token="<mask>", unk_token="<unk>",
        padding_side="left",
    )


def config(size: Size, vocab: int) -> transformers.Qwen2Config:
    tok = tokenizer()
    cfg = transformers.Qwen2Config(
        vocab_size=vocab, hidden_size=size.width, intermediate_size=size.mlp, num_hidden_layers=size.layers,
        num_attention_heads=size.heads, num_key_value_heads=size.kv_heads, max_position_embeddings=8192,
        tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
    )
    cfg.block_length = size.block_length
    return cfg


def build_model(size: Size) -> transformers.Qwen2ForCausalLM:
    """The block-causal model (random weights from the current RNG), eval mode."""
    register_block_causal()
    cfg = config(size, len(tokenizer()))
    cfg._attn_implementation = BLOCK_CAUSAL
    return transformers.Qwen2ForCausalLM(cfg).eval()


def pipeline(model: transformers.PreTrainedModel, block_length: int) -> Any:
    import diffusers

    pipe = diffusers.LLaDA2Pipeline(model=model, scheduler=diffusers.BlockRefinementScheduler(
        block_length=block_length), tokenizer=tokenizer())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tied_keys(model: torch.nn.Module) -> list[str]:
    """The state-dict keys whose tensor an earlier key already holds (a tied `lm_head`; DiffusionGemma's
    decoder layers and embeddings, which are its encoder's): loading the first key sets both."""
    seen: set[int] = set()
    tied = []
    for key, value in model.state_dict().items():
        if value.data_ptr() in seen:
            tied.append(key)
        seen.add(value.data_ptr())
    return tied


def save_weights(model: torch.nn.Module, path: Any) -> None:
    """fp16 safetensors of a trained entry's weights, each shared tensor once (`tied_keys` left out)."""
    from pathlib import Path

    from safetensors.torch import save_file

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tied = set(tied_keys(model))
    save_file({k: v.half().contiguous() for k, v in model.state_dict().items() if k not in tied}, str(path))


CHAT_TEMPLATE = ("{% for m in messages %}{{ m['content'] }} {% endfor %}"
                 "{% if add_generation_prompt %}={% endif %}")


def build_gemma(size: Size, sliding_window: int = 4096) -> Any:
    """A random-weight `DiffusionGemmaForBlockDiffusion` (canvas = the size's block length; sliding layers
    then one full-attention layer, 4 experts of which 2 active), SDPA attention, eval mode."""
    tok = tokenizer()
    vocab = len(tok)
    text = dict(vocab_size=vocab, hidden_size=size.width, intermediate_size=size.mlp,
                num_hidden_layers=size.layers, num_attention_heads=size.heads, num_key_value_heads=size.kv_heads,
                head_dim=size.width // size.heads, global_head_dim=size.width // size.heads,
                sliding_window=sliding_window, max_position_embeddings=8192, pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id, bos_token_id=None, num_experts=4, top_k_experts=2,
                moe_intermediate_size=size.mlp // 2,
                layer_types=["sliding_attention"] * (size.layers - 1) + ["full_attention"])
    vision = dict(model_type="gemma4_vision", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=2, head_dim=8, position_embedding_size=16)
    cfg = transformers.DiffusionGemmaConfig(text_config=text, vision_config=vision,  # None: the full-size tower
                                            canvas_length=size.block_length, boi_token_id=vocab, eoi_token_id=vocab,
                                            image_token_id=vocab)
    cfg._attn_implementation = "sdpa"
    return fix_mask_call(transformers.DiffusionGemmaForBlockDiffusion(cfg).eval())


def fix_mask_call(model: Any) -> Any:
    """Lets diffusers 0.42.1's `DiffusionGemmaPipeline` call the decoder's mask function of transformers
    5.24 (`past_key_values=` there, `cache=` here): sets, on this model's decoder instance only, a function
    taking either name. Does nothing when the installed versions agree. Returns the model."""
    import inspect

    decoder = model.model.decoder
    make = type(decoder).create_diffusion_decoder_attention_mask
    if "past_key_values" in inspect.signature(make).parameters:
        return model

    def create_diffusion_decoder_attention_mask(*args: Any, past_key_values: Any = None, **kwargs: Any) -> Any:
        if past_key_values is not None:
            kwargs["cache"] = past_key_values
        return make(*args, **kwargs)

    decoder.create_diffusion_decoder_attention_mask = create_diffusion_decoder_attention_mask
    return model


def gemma_pipeline(model: Any) -> Any:
    import diffusers

    tok = tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    pipe = diffusers.DiffusionGemmaPipeline(model=model, scheduler=diffusers.BlockRefinementScheduler(),
                                            processor=tok)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load(name: str = "llada2", size: str = "tiny", seed: int = 0, dtype: torch.dtype = torch.float32) -> Any:
    """The `LLaDA2Pipeline` of a random-weight block-causal model, or the `DiffusionGemmaPipeline` of a
    random-weight DiffusionGemma; the same seed gives the same weights (the global RNG is restored)."""
    if name not in NAMES:
        raise ValueError(f"Unknown block-diffusion zoo model {name!r}; choose from {', '.join(NAMES)}.")
    if size not in SIZES:
        raise ValueError(f"Unknown zoo size {size!r} for {name!r}. Valid sizes: {', '.join(SIZES)}.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "diffusion-gemma":
            pipe = gemma_pipeline(build_gemma(SIZES[size]).to(dtype))
        else:
            pipe = pipeline(build_model(SIZES[size]).to(dtype), SIZES[size].block_length)
    BUILT[pipe] = (name, size)
    return pipe


def call_inputs(pipe: Any, batch: int = 1, seed: int = 0, vary: bool = False) -> dict[str, Any]:
    """Arguments for `pipe(**...)` at the entry's size: random digit prompts of the size's length (with
    `vary`, each row shorter by 3 tokens more than the last: left padding), greedy, editing off,
    `output_type="seq"`. Works for any LLaDA2 pipeline built by this module. For a DiffusionGemma
    pipeline: every step of every canvas runs (no early stop), the random canvases come from a generator
    seeded with `seed` (a new one per call of this function: build the arguments again for a second
    identical run); `vary` is refused (its pipeline does not pad a batch of prompts)."""
    name, size = BUILT.get(pipe, ("llada2", "tiny"))
    spec = SIZES[size]
    g = torch.Generator().manual_seed(seed)
    if type(pipe).__name__ == "DiffusionGemmaPipeline":
        if vary:
            raise ValueError("DiffusionGemmaPipeline does not pad a batch of prompts of different lengths.")
        rows = torch.randint(10, (batch, spec.prompt_tokens), generator=g)
        prompts = [" ".join(str(int(d)) for d in row) for row in rows]
        return {"prompt": prompts if batch > 1 else prompts[0], "gen_length": spec.gen_length,
                "num_inference_steps": spec.steps, "temperature": 0.0, "confidence_threshold": None,
                "eos_early_stop": False, "output_type": "seq", "generator": torch.Generator().manual_seed(seed)}
    words = [str(int(d)) for d in torch.randint(10, (spec.prompt_tokens,), generator=g)]
    prompts = [" ".join(words[: spec.prompt_tokens - (3 * i if vary else 0)]) for i in range(batch)]
    return {"prompt": prompts if batch > 1 else prompts[0], "gen_length": spec.gen_length,
            "block_length": spec.block_length, "num_inference_steps": spec.steps, "threshold": 0.95,
            "editing_threshold": None, "temperature": 0.0, "eos_early_stop": False, "output_type": "seq",
            "use_chat_template": False}
