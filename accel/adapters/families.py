"""The adapters of the model families accel supports, read off the diffusers sources.

Token order in joint attention (checked in diffusers' processors and blocks):
Flux and CogVideoX put text first; SD3 and HunyuanVideo put it last; Wan, PixArt and DiT keep text out of
self-attention (cross-attention instead, or class labels).
"""

from __future__ import annotations

from typing import Any

import torch

from .base import BlockStack, ModelAdapter, TokenLayout


def _as_tuple3(patch: Any) -> tuple[int, int, int]:
    if isinstance(patch, int):
        return (1, patch, patch)
    t = tuple(int(p) for p in patch)
    return t if len(t) == 3 else (1, t[0], t[1])


def _text_len(call: dict[str, Any]) -> int:
    text = call.get("encoder_hidden_states")
    return int(text.shape[1]) if isinstance(text, torch.Tensor) and text.dim() == 3 else 0


def _image_bchw(denoiser: torch.nn.Module, call: dict[str, Any]) -> TokenLayout:
    """[B, C, H, W] latents, square patches (PixArt, DiT, SD3)."""
    x = call["hidden_states"]
    p = int(denoiser.config.patch_size)
    return TokenLayout(grid=(1, x.shape[-2] // p, x.shape[-1] // p))


def _sd3_layout(denoiser: torch.nn.Module, call: dict[str, Any]) -> TokenLayout:
    grid = _image_bchw(denoiser, call).grid
    return TokenLayout(grid=grid, text_tokens=_text_len(call), text_position="last")


def _video_bcfhw(denoiser: torch.nn.Module, call: dict[str, Any], patch: tuple[int, int, int]) -> tuple[int, int, int]:
    x = call["hidden_states"]
    f, h, w = x.shape[-3:]
    pt, ph, pw = patch
    return (-(-f // pt), h // ph, w // pw)


def _wan_layout(denoiser: torch.nn.Module, call: dict[str, Any]) -> TokenLayout:
    return TokenLayout(grid=_video_bcfhw(denoiser, call, _as_tuple3(denoiser.config.patch_size)))


def _hunyuan_layout(denoiser: torch.nn.Module, call: dict[str, Any]) -> TokenLayout:
    cfg = denoiser.config
    grid = _video_bcfhw(denoiser, call, (int(cfg.patch_size_t), int(cfg.patch_size), int(cfg.patch_size)))
    return TokenLayout(grid=grid, text_tokens=_text_len(call), text_position="last")


def _cogvideox_layout(denoiser: torch.nn.Module, call: dict[str, Any]) -> TokenLayout:
    x = call["hidden_states"]  # [B, F, C, H, W]
    cfg = denoiser.config
    pt, p = int(cfg.patch_size_t or 1), int(cfg.patch_size)
    grid = (-(-x.shape[1] // pt), x.shape[-2] // p, x.shape[-1] // p)
    return TokenLayout(grid=grid, text_tokens=_text_len(call), text_position="first")


def _flux_layout(denoiser: torch.nn.Module, call: dict[str, Any]) -> TokenLayout:
    """Flux packs 2x2 latent patches before the transformer; the grid is read from `img_ids`."""
    x = call["hidden_states"]  # [B, S, C]
    tokens = int(x.shape[1])
    ids = call.get("img_ids")
    grid = (1, 1, tokens)
    if isinstance(ids, torch.Tensor):
        ids = ids[0] if ids.dim() == 3 else ids
        rows = int(ids[:, 1].max() - ids[:, 1].min()) + 1
        cols = int(ids[:, 2].max() - ids[:, 2].min()) + 1
        if rows * cols == tokens:
            grid = (1, rows, cols)
    return TokenLayout(grid=grid, text_tokens=_text_len(call), text_position="first")


FLUX = ModelAdapter(
    family="flux",
    title="Flux",
    denoiser_classes=("FluxTransformer2DModel",),
    stacks=(
        BlockStack("transformer_blocks", "dual", joint_attention=("attn",), text_position="first"),
        BlockStack("single_transformer_blocks", "single", joint_attention=("attn",), text_position="first"),
    ),
    cfg="distilled",
    layout=_flux_layout,
    notes="guidance-distilled: one call per step; true CFG (true_cfg_scale > 1) makes cond/uncond calls",
)

WAN = ModelAdapter(
    family="wan",
    title="Wan 2.1/2.2",
    denoiser_classes=("WanTransformer3DModel",),
    stacks=(BlockStack("blocks", "single", self_attention=("attn1",), cross_attention=("attn2",)),),
    cfg="sequential",
    layout=_wan_layout,
    notes="separate cond/uncond calls under cache_context; Wan 2.2 adds transformer_2 for low-noise steps",
)

HUNYUAN_VIDEO = ModelAdapter(
    family="hunyuan-video",
    title="HunyuanVideo",
    denoiser_classes=("HunyuanVideoTransformer3DModel",),
    stacks=(
        BlockStack("transformer_blocks", "dual", joint_attention=("attn",), text_position="last"),
        BlockStack("single_transformer_blocks", "single", joint_attention=("attn",), text_position="last"),
    ),
    cfg="distilled",
    layout=_hunyuan_layout,
    notes="guidance-distilled; true CFG makes cond/uncond calls",
)

PIXART = ModelAdapter(
    family="pixart",
    title="PixArt-alpha/sigma",
    denoiser_classes=("PixArtTransformer2DModel",),
    stacks=(BlockStack("transformer_blocks", "single", self_attention=("attn1",), cross_attention=("attn2",)),),
    cfg="batched",
    layout=_image_bchw,
    notes="batched CFG; the pipeline opens no cache_context",
)

DIT = ModelAdapter(
    family="dit",
    title="DiT",
    denoiser_classes=("DiTTransformer2DModel",),
    stacks=(BlockStack("transformer_blocks", "single", self_attention=("attn1",)),),
    cfg="batched",
    layout=_image_bchw,
    notes="class-conditional, batched CFG; the pipeline opens no cache_context",
)

SD3 = ModelAdapter(
    family="sd3",
    title="Stable Diffusion 3/3.5",
    denoiser_classes=("SD3Transformer2DModel",),
    stacks=(BlockStack(
        "transformer_blocks", "dual", joint_attention=("attn",), self_attention=("attn2",), text_position="last"
    ),),
    cfg="batched",
    layout=_sd3_layout,
    notes="batched CFG; attn2 (SD3.5 dual-attention layers) is image-only self-attention",
)

COGVIDEOX = ModelAdapter(
    family="cogvideox",
    title="CogVideoX",
    denoiser_classes=("CogVideoXTransformer3DModel",),
    stacks=(BlockStack("transformer_blocks", "single", joint_attention=("attn1",), text_position="first"),),
    cfg="batched",
    layout=_cogvideox_layout,
    notes="text and video tokens share one sequence, text first",
)

DICO = ModelAdapter(
    family="dico",
    title="DiCo",
    denoiser_classes=("DiCoModel",),
    stacks=tuple(BlockStack(level, "single") for level in (
        "encoder_level_1", "encoder_level_2", "latent", "decoder_level_2", "decoder_level_1")),
    cfg="batched",
    stacks_joined=False,
    notes="convolutional U-Net (accel.models.DiCoModel): no attention, no tokens; levels at three resolutions "
    "joined by resampling convs, so a block span stays inside one level",
)


def _lego_stacks(denoiser: torch.nn.Module) -> tuple[BlockStack, ...]:
    return tuple(BlockStack(f"model.{k}.blocks", "single") for k in range(len(denoiser.model)))


LEGO = ModelAdapter(
    family="lego",
    title="LEGO",
    denoiser_classes=("LEGOModel",),
    stacks=(),
    stacks_of=_lego_stacks,
    cfg="batched",
    stacks_joined=False,
    notes="brick stack (accel.models.LEGOModel): DiT blocks attend within each brick's regions; bricks are "
    "joined by decoding, re-tiling and re-embedding, so a block span stays inside one brick",
)

FAMILY_ADAPTERS: tuple[ModelAdapter, ...] = (FLUX, WAN, HUNYUAN_VIDEO, PIXART, DIT, SD3, COGVIDEOX, DICO, LEGO)
