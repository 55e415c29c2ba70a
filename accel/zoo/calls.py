"""Ready call arguments for the supported pipelines: seeded prompt embeddings instead of text encoders.

The guidance defaults mirror the real pipelines, because acceleration methods care how CFG is run:
PixArt, DiT, SD3 and CogVideoX batch cond+uncond into one transformer call per step; Wan makes two calls
(under `cache_context("cond")`/`("uncond")`); Flux and HunyuanVideo are guidance-distilled (one call), and
`true_cfg=True` turns on their two-call true CFG.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .families import BUILT, ENTRIES

# diffusers pipeline class name -> family (how its inputs look).
FAMILIES = {
    "FluxPipeline": "flux",
    "WanPipeline": "wan",
    "HunyuanVideoPipeline": "hunyuan-video",
    "PixArtAlphaPipeline": "pixart",
    "PixArtSigmaPipeline": "pixart",
    "DiTPipeline": "dit",
    "StableDiffusion3Pipeline": "sd3",
    "CogVideoXPipeline": "cogvideox",
}
VIDEO = ("wan", "hunyuan-video", "cogvideox")
# The real pipelines' default guidance: the CFG scale, or the distilled-guidance value for Flux/HunyuanVideo.
GUIDANCE = {"flux": 3.5, "wan": 5.0, "hunyuan-video": 6.0, "pixart": 4.5, "dit": 4.0, "sd3": 7.0, "cogvideox": 6.0}
TRUE_CFG = ("flux", "hunyuan-video")  # families with an optional separate-call true CFG
TRUE_CFG_SCALE = 4.0
_OTHER_TEXT_TOKENS = 64  # prompt length for pipelines the zoo did not build


def family_of(pipe: Any) -> str:
    """The family of a pipeline, from its class (or a base class)."""
    for cls in type(pipe).__mro__:
        if cls.__name__ in FAMILIES:
            return FAMILIES[cls.__name__]
    raise ValueError(
        f"accel.zoo.inputs does not know {type(pipe).__name__}; supported pipelines: {', '.join(FAMILIES)}."
    )


def inputs(
    pipe: Any,
    *,
    steps: int = 2,
    seed: int = 0,
    height: int | None = None,
    width: int | None = None,
    num_frames: int | None = None,
    batch_size: int = 1,
    guidance_scale: float | None = None,
    true_cfg: bool = False,
    output_type: str = "latent",
) -> dict[str, Any]:
    """Keyword arguments for `pipe(**kwargs)`: seeded prompt embeddings, generator, steps and sizes.

    `guidance_scale` sets the family's guidance (the CFG scale; for Flux/HunyuanVideo the distilled-guidance
    value, or the true-CFG scale when `true_cfg=True`); 1.0 turns CFG off. DiT cannot stop at the latents,
    so for `output_type="latent"` it is asked for "pt" images (`generate` still returns its latents).
    """
    family = family_of(pipe)
    if true_cfg and family not in TRUE_CFG:
        raise ValueError(f"true_cfg=True is for {' and '.join(TRUE_CFG)}; {family} runs its own CFG already.")
    built = BUILT.get(pipe)
    defaults = ENTRIES[built[0]].resolution[built[1]] if built else {}
    size = {"height": height, "width": width}
    if family in VIDEO:
        size["num_frames"] = num_frames
    if family == "dit":
        _check_dit_size(pipe, height, width)
        size = {}  # DiTPipeline takes no size: the transformer's sample_size fixes it
    for key, value in size.items():
        if value is None:
            if key not in defaults:
                raise ValueError(
                    f"{type(pipe).__name__} was not built by accel.zoo: pass {key}= to accel.zoo.inputs."
                )
            size[key] = defaults[key]
    text_tokens = ENTRIES[built[0]].text_tokens[built[1]] if built else _OTHER_TEXT_TOKENS

    transformer = pipe.transformer
    cfg = transformer.config
    g = torch.Generator().manual_seed(seed)
    dtype, device = transformer.dtype, transformer.device

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    def mask() -> torch.Tensor:
        # Like a tokenizer's mask: the prompt's tokens, then padding (here the last quarter).
        m = torch.ones(batch_size, text_tokens, dtype=torch.long)
        m[:, text_tokens - text_tokens // 4 :] = 0
        return m.to(device)

    b, n = batch_size, text_tokens
    scale = GUIDANCE[family] if guidance_scale is None else float(guidance_scale)
    kw: dict[str, Any] = {}
    if family == "flux":
        kw |= {"prompt_embeds": randn(b, n, cfg.joint_attention_dim),
               "pooled_prompt_embeds": randn(b, cfg.pooled_projection_dim)}
        if true_cfg:
            kw |= {"negative_prompt_embeds": randn(b, n, cfg.joint_attention_dim),
                   "negative_pooled_prompt_embeds": randn(b, cfg.pooled_projection_dim),
                   "true_cfg_scale": scale, "guidance_scale": GUIDANCE[family]}
        else:
            kw["guidance_scale"] = scale
    elif family == "hunyuan-video":
        kw |= {"prompt_embeds": randn(b, n, cfg.text_embed_dim),
               "pooled_prompt_embeds": randn(b, cfg.pooled_projection_dim), "prompt_attention_mask": mask()}
        if true_cfg:
            kw |= {"negative_prompt_embeds": randn(b, n, cfg.text_embed_dim),
                   "negative_pooled_prompt_embeds": randn(b, cfg.pooled_projection_dim),
                   "negative_prompt_attention_mask": mask(), "true_cfg_scale": scale,
                   "guidance_scale": GUIDANCE[family]}
        else:
            kw["guidance_scale"] = scale
    elif family == "dit":
        ids = sorted(set(pipe.labels.values())) or list(range(cfg.num_embeds_ada_norm))
        picks = torch.randint(len(ids), (b,), generator=g).tolist()
        kw |= {"class_labels": [ids[i] for i in picks], "guidance_scale": scale}
    else:
        text_dim = {"wan": "text_dim", "pixart": "caption_channels", "sd3": "joint_attention_dim",
                    "cogvideox": "text_embed_dim"}[family]
        if family == "cogvideox" and not cfg.use_rotary_positional_embeddings:
            n = cfg.max_text_seq_length  # its sincos table spans exactly this many text tokens
        kw |= {"prompt_embeds": randn(b, n, cfg[text_dim]), "guidance_scale": scale}
        if family == "sd3":
            kw["pooled_prompt_embeds"] = randn(b, cfg.pooled_projection_dim)
        if family == "pixart":
            kw |= {"prompt_attention_mask": mask(), "negative_prompt": None,  # its default "" clashes with embeds
                   "use_resolution_binning": False, "clean_caption": False}
        if scale > 1.0:  # the pipelines run CFG only above 1
            kw["negative_prompt_embeds"] = randn(b, n, cfg[text_dim])
            if family == "sd3":
                kw["negative_pooled_prompt_embeds"] = randn(b, cfg.pooled_projection_dim)
            if family == "pixart":
                kw["negative_prompt_attention_mask"] = mask()

    kw |= size
    kw |= {
        "num_inference_steps": steps,
        "generator": torch.Generator().manual_seed(seed),
        "output_type": "pt" if family == "dit" and output_type == "latent" else output_type,
    }
    return kw


def _check_dit_size(pipe: Any, height: int | None, width: int | None) -> None:
    scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    side = pipe.transformer.config.sample_size * scale
    if (height or side) != side or (width or side) != side:
        raise ValueError(f"DiT makes {side}x{side} images only (its transformer's sample_size); got {height}x{width}.")


class _LatentsReached(Exception):
    """Stops a DiT call where its VAE receives the latents: DiT has no `output_type="latent"`."""


def generate(pipe: Any, **options: Any) -> torch.Tensor:
    """Runs `pipe(**inputs(pipe, **options))` without autograd and returns the output as a tensor.

    Latents for `output_type="latent"` (DiT's are taken where its VAE would decode them, and the decode is
    skipped), else the images/frames as a float tensor.
    """
    kwargs = inputs(pipe, **options)
    if family_of(pipe) != "dit" or options.get("output_type", "latent") != "latent":
        with torch.inference_mode():
            return _as_tensor(pipe(**kwargs, return_dict=False)[0])

    vae = pipe.vae
    first = vae.post_quant_conv if vae.post_quant_conv is not None else vae.decoder
    captured: list[torch.Tensor] = []

    def stop(_module: torch.nn.Module, args: tuple) -> None:
        captured.append(args[0])
        raise _LatentsReached

    handle = first.register_forward_pre_hook(stop)
    try:
        with torch.inference_mode():
            pipe(**kwargs, return_dict=False)
    except _LatentsReached:
        pass
    finally:
        handle.remove()
    return captured[0] * vae.config.scaling_factor  # the pipeline divided by it before decoding


def _as_tensor(out: Any) -> torch.Tensor:
    """Tensor, numpy array or (nested) list of PIL images -> float tensor."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, np.ndarray):
        return torch.from_numpy(out).float()
    if isinstance(out, list | tuple):
        return torch.stack([_as_tensor(o) for o in out])
    return torch.from_numpy(np.asarray(out, dtype=np.float32) / 255.0)  # a PIL image
