"""Ready call arguments for the supported pipelines: seeded prompt embeddings instead of text encoders.

The guidance defaults mirror the real pipelines, because acceleration methods care how CFG is run:
PixArt, DiT, SD3 and CogVideoX batch cond+uncond into one transformer call per step; Wan makes two calls
(under `cache_context("cond")`/`("uncond")`); Flux and HunyuanVideo are guidance-distilled (one call), and
`true_cfg=True` turns on their two-call true CFG.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .families import BUILT, ENTRIES

# diffusers pipeline class name -> family (how its inputs look).
FAMILIES = {
    "FluxPipeline": "flux",
    "WanPipeline": "wan",
    "WanImageToVideoPipeline": "wan",
    "HunyuanVideoPipeline": "hunyuan-video",
    "PixArtAlphaPipeline": "pixart",
    "PixArtSigmaPipeline": "pixart",
    "DiTPipeline": "dit",
    "StableDiffusion3Pipeline": "sd3",
    "CogVideoXPipeline": "cogvideox",
    "DiCoPipeline": "dico",  # accel.models' native backbones (backbones.py)
    "LEGOPipeline": "lego",
}
VIDEO = ("wan", "hunyuan-video", "cogvideox")
# The real pipelines' default guidance: the CFG scale, or the distilled-guidance value for Flux/HunyuanVideo.
GUIDANCE = {
    "flux": 3.5,
    "wan": 5.0,
    "hunyuan-video": 6.0,
    "pixart": 4.5,
    "dit": 4.0,
    "sd3": 7.0,
    "cogvideox": 6.0,
    "dico": 4.0,
    "lego": 4.0,
}
TRUE_CFG = ("flux", "hunyuan-video")  # families with an optional separate-call true CFG
TRUE_CFG_SCALE = 4.0
_OTHER_TEXT_TOKENS = 64  # prompt length for pipelines the zoo did not build
# Trained entries that bring their own call arguments (real class prompts, trained sizes):
# pipeline -> fn(pipe, batch_size=, seed=, guidance_scale=, height=, width=, num_frames=) -> kwargs.
OWN_INPUTS: weakref.WeakKeyDictionary[Any, Callable[..., dict[str, Any]]] = weakref.WeakKeyDictionary()


def family_of(pipe: Any) -> str:
    """The family of a pipeline, from its class (or a base class)."""
    for cls in type(pipe).__mro__:
        if cls.__name__ in FAMILIES:
            return FAMILIES[cls.__name__]
    if isinstance(pipe, torch.nn.Module):
        raise ValueError(f"accel.zoo.inputs takes a pipeline; {type(pipe).__name__} is a model (a pipeline's "
                         "transformer?). Load the pipeline's folder, not its transformer/ subfolder.")
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

    Sizes default to the zoo entry's and must be given for other pipelines. `guidance_scale` sets the
    family's guidance (the CFG scale; for Flux/HunyuanVideo the distilled-guidance value, or the true-CFG
    scale when `true_cfg=True`); 1.0 turns CFG off. DiT cannot stop at the latents, so for
    `output_type="latent"` it is asked for "pt" images (`generate` still returns its latents).
    """
    family = family_of(pipe)
    if true_cfg and family not in TRUE_CFG:
        raise ValueError(f"true_cfg=True is for {' and '.join(TRUE_CFG)}; {family} runs its own CFG already.")
    built = BUILT.get(pipe)
    text_tokens = ENTRIES[built[0]].text_tokens[built[1]] if built else _OTHER_TEXT_TOKENS
    embeds = _Embeds(pipe.transformer, batch_size, text_tokens, seed)
    scale = GUIDANCE[family] if guidance_scale is None else float(guidance_scale)
    if pipe in OWN_INPUTS:
        kw = OWN_INPUTS[pipe](pipe, batch_size=batch_size, seed=seed, guidance_scale=guidance_scale,
                              height=height, width=width, num_frames=num_frames)
    elif family in ("dico", "lego"):
        from . import backbones

        kw = backbones.call_inputs(pipe, embeds.g, batch_size, scale, height, width)
    elif family == "dit":
        _check_dit_size(pipe, height, width)
        kw = _dit(pipe, embeds, scale)
    else:
        kw = _PROMPTS[family](pipe.transformer.config, embeds, scale, true_cfg)
        kw |= _sizes(pipe, family, built, height=height, width=width, num_frames=num_frames)
    kw |= {
        "num_inference_steps": steps,
        "generator": torch.Generator().manual_seed(seed),
        "output_type": "pt" if family == "dit" and output_type == "latent" else output_type,
    }
    return kw


def _sizes(pipe: Any, family: str, built: tuple[str, str] | None, **given: int | None) -> dict[str, int]:
    """height/width (and num_frames for video): as given, else the zoo entry's defaults."""
    defaults = ENTRIES[built[0]].resolution[built[1]] if built else {}
    if family not in VIDEO:
        del given["num_frames"]
    out = {}
    for key, value in given.items():
        if value is None and key not in defaults:
            raise ValueError(
                f"{type(pipe).__name__} was not built by accel.zoo: pass {key}= to accel.zoo.inputs."
            )
        out[key] = defaults[key] if value is None else value
    return out


class _Embeds:
    """Seeded stand-ins for text-encoder outputs, on the transformer's device and dtype."""

    def __init__(self, transformer: torch.nn.Module, batch: int, tokens: int, seed: int) -> None:
        self.batch, self.tokens = batch, tokens
        self.device, self.dtype = transformer.device, transformer.dtype
        self.g = torch.Generator().manual_seed(seed)

    def text(self, dim: int, tokens: int | None = None) -> torch.Tensor:
        shape = (self.batch, tokens or self.tokens, dim)
        return torch.randn(shape, generator=self.g).to(device=self.device, dtype=self.dtype)

    def pooled(self, dim: int) -> torch.Tensor:
        return torch.randn((self.batch, dim), generator=self.g).to(device=self.device, dtype=self.dtype)

    def mask(self) -> torch.Tensor:
        """Like a tokenizer's attention mask: the prompt's tokens, then padding (the last quarter)."""
        m = torch.ones(self.batch, self.tokens, dtype=torch.long)
        m[:, self.tokens - self.tokens // 4 :] = 0
        return m.to(self.device)


def _flux(cfg: Any, e: _Embeds, scale: float, true_cfg: bool) -> dict[str, Any]:
    kw = {
        "prompt_embeds": e.text(cfg.joint_attention_dim),
        "pooled_prompt_embeds": e.pooled(cfg.pooled_projection_dim),
    }
    if not true_cfg:
        return kw | {"guidance_scale": scale}
    return kw | {
        "negative_prompt_embeds": e.text(cfg.joint_attention_dim),
        "negative_pooled_prompt_embeds": e.pooled(cfg.pooled_projection_dim),
        "true_cfg_scale": scale,
        "guidance_scale": GUIDANCE["flux"],
    }


def _hunyuan(cfg: Any, e: _Embeds, scale: float, true_cfg: bool) -> dict[str, Any]:
    kw = {
        "prompt_embeds": e.text(cfg.text_embed_dim),
        "pooled_prompt_embeds": e.pooled(cfg.pooled_projection_dim),
        "prompt_attention_mask": e.mask(),  # required with prompt_embeds: the pipeline does not make one
    }
    if not true_cfg:
        return kw | {"guidance_scale": scale}
    return kw | {
        "negative_prompt_embeds": e.text(cfg.text_embed_dim),
        "negative_pooled_prompt_embeds": e.pooled(cfg.pooled_projection_dim),
        "negative_prompt_attention_mask": e.mask(),
        "true_cfg_scale": scale,
        "guidance_scale": GUIDANCE["hunyuan-video"],
    }


def _wan(cfg: Any, e: _Embeds, scale: float, true_cfg: bool) -> dict[str, Any]:
    kw = {"prompt_embeds": e.text(cfg.text_dim), "guidance_scale": scale}
    if scale > 1.0:  # the pipelines run CFG only above 1
        kw["negative_prompt_embeds"] = e.text(cfg.text_dim)
    return kw


def _cogvideox(cfg: Any, e: _Embeds, scale: float, true_cfg: bool) -> dict[str, Any]:
    # Without rotary embeddings its sincos table spans exactly max_text_seq_length text tokens.
    tokens = None if cfg.use_rotary_positional_embeddings else cfg.max_text_seq_length
    kw = {"prompt_embeds": e.text(cfg.text_embed_dim, tokens), "guidance_scale": scale}
    if scale > 1.0:
        kw["negative_prompt_embeds"] = e.text(cfg.text_embed_dim, tokens)
    return kw


def _pixart(cfg: Any, e: _Embeds, scale: float, true_cfg: bool) -> dict[str, Any]:
    kw = {
        "prompt_embeds": e.text(cfg.caption_channels),
        "prompt_attention_mask": e.mask(),
        "negative_prompt": None,  # its default "" may not be passed along with negative_prompt_embeds
        "use_resolution_binning": False,  # binning would snap small sizes to its 256-1024 px table
        "clean_caption": False,
        "guidance_scale": scale,
    }
    if scale > 1.0:
        kw |= {
            "negative_prompt_embeds": e.text(cfg.caption_channels),
            "negative_prompt_attention_mask": e.mask(),
        }
    return kw


def _sd3(cfg: Any, e: _Embeds, scale: float, true_cfg: bool) -> dict[str, Any]:
    kw = {
        "prompt_embeds": e.text(cfg.joint_attention_dim),
        "pooled_prompt_embeds": e.pooled(cfg.pooled_projection_dim),
        "guidance_scale": scale,
    }
    if scale > 1.0:
        kw |= {
            "negative_prompt_embeds": e.text(cfg.joint_attention_dim),
            "negative_pooled_prompt_embeds": e.pooled(cfg.pooled_projection_dim),
        }
    return kw


def _dit(pipe: Any, e: _Embeds, scale: float) -> dict[str, Any]:
    """Class labels: from the pipeline's id2label when it has one, else any of the transformer's classes."""
    ids = sorted(set(pipe.labels.values())) or list(range(pipe.transformer.config.num_embeds_ada_norm))
    picks = torch.randint(len(ids), (e.batch,), generator=e.g).tolist()
    return {"class_labels": [ids[i] for i in picks], "guidance_scale": scale}


_PROMPTS = {
    "flux": _flux,
    "hunyuan-video": _hunyuan,
    "wan": _wan,
    "cogvideox": _cogvideox,
    "pixart": _pixart,
    "sd3": _sd3,
}


def _check_dit_size(pipe: Any, height: int | None, width: int | None) -> None:
    scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    side = pipe.transformer.config.sample_size * scale
    if (height or side) != side or (width or side) != side:
        raise ValueError(
            f"DiT makes {side}x{side} images only (its transformer's sample_size); got {height}x{width}."
        )


class _LatentsReached(Exception):
    """Stops a DiT call where its VAE receives the latents: DiT has no `output_type="latent"`."""


def generate(pipe: Any, **options: Any) -> torch.Tensor:
    """Runs `pipe(**inputs(pipe, **options))` without autograd and returns the output as a tensor.

    Latents for `output_type="latent"`, as the pipeline returns them (Flux: packed, [B, tokens, 4 * C];
    CogVideoX: [B, F, C, H, W]; DiT's are taken where its VAE would decode them, and the decode is
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
