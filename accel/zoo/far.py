"""diffusers' `AnyFlowFARPipeline` (chunk-wise autoregressive video with a KV cache across chunks) with a
random-weight `AnyFlowFARTransformer3DModel`, built offline.

    pipe = accel.zoo.load("anyflow-far", size="tiny")
    video = pipe(**accel.zoo.far.call_inputs(pipe)).frames   # latents [batch, C, T, H, W]

The pipeline generates the video chunk by chunk (`chunk_partition` latent frames each); within a chunk it
runs `num_inference_steps` flow-map steps whose self-attention reads the cached keys of the earlier chunks
(full resolution for the last `full_chunk_limit - 1`, FAR-compressed before), then writes the finished
chunk into the cache. No text encoder or VAE: `call_inputs` passes prompt embeddings and asks for
latents.

Sizes: "tiny" (2 layers, 2 heads of 16, 64x64 pixels = 16 tokens a frame, chunks [1, 2, 2, 2], 4 steps:
tests) and "bench" (4 layers, 4 heads of 32, 256x256 pixels = 256 tokens a frame, the released
checkpoints' 81-frame chunks [1, 3, 3, 3, 3, 3, 3, 2], 4 steps: speed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

import torch

NAMES = ("anyflow-far",)
TEXT_TOKENS, TEXT_DIM = 8, 32


@dataclass(frozen=True)
class Size:
    layers: int
    heads: int
    head_dim: int
    ffn: int
    pixels: int  # height = width
    chunks: tuple[int, ...]  # latent frames per chunk
    steps: int


SIZES = {
    "tiny": Size(layers=2, heads=2, head_dim=16, ffn=64, pixels=64, chunks=(1, 2, 2, 2), steps=4),
    "bench": Size(layers=4, heads=4, head_dim=32, ffn=256, pixels=256, chunks=(1, 3, 3, 3, 3, 3, 3, 2), steps=4),
}
BUILT: WeakKeyDictionary[Any, tuple[str, str]] = WeakKeyDictionary()


def build_transformer(size: Size) -> Any:
    from diffusers import AnyFlowFARTransformer3DModel

    return AnyFlowFARTransformer3DModel(
        patch_size=(1, 2, 2), compressed_patch_size=(1, 4, 4), full_chunk_limit=3, num_attention_heads=size.heads,
        attention_head_dim=size.head_dim, in_channels=4, out_channels=4, text_dim=TEXT_DIM, freq_dim=32,
        ffn_dim=size.ffn, num_layers=size.layers, rope_max_seq_len=1024, chunk_partition=size.chunks).eval()


def load(name: str = "anyflow-far", size: str = "tiny", seed: int = 0, dtype: torch.dtype = torch.float32) -> Any:
    """The pipeline of a random-weight transformer; the same seed gives the same weights (the global RNG is
    restored)."""
    from diffusers import AnyFlowFARPipeline, FlowMapEulerDiscreteScheduler

    if name not in NAMES:
        raise ValueError(f"Unknown chunk-wise video zoo model {name!r}; choose from {', '.join(NAMES)}.")
    if size not in SIZES:
        raise ValueError(f"Unknown zoo size {size!r} for {name!r}. Valid sizes: {', '.join(SIZES)}.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = build_transformer(SIZES[size]).to(dtype)
    pipe = AnyFlowFARPipeline(tokenizer=None, text_encoder=None, transformer=transformer, vae=None,
                              scheduler=FlowMapEulerDiscreteScheduler())
    pipe.set_progress_bar_config(disable=True)
    BUILT[pipe] = (name, size)
    return pipe


def call_inputs(pipe: Any, batch: int = 1, seed: int = 0, guidance_scale: float = 1.0) -> dict[str, Any]:
    """Arguments for `pipe(**...)` at the entry's size: seeded prompt embeddings (and negative ones under
    guidance > 1), a generator seeded with `seed` (a new one per call of this function), latents out."""
    _, size = BUILT.get(pipe, ("anyflow-far", "tiny"))
    spec = SIZES[size]
    g = torch.Generator().manual_seed(seed)
    embeds = torch.randn(batch, TEXT_TOKENS, TEXT_DIM, generator=g)
    args = {"prompt_embeds": embeds, "height": spec.pixels, "width": spec.pixels,
            "num_frames": 4 * (sum(spec.chunks) - 1) + 1, "chunk_partition": list(spec.chunks),
            "num_inference_steps": spec.steps, "guidance_scale": guidance_scale, "output_type": "latent",
            "generator": torch.Generator().manual_seed(seed)}
    if guidance_scale > 1:
        args["negative_prompt_embeds"] = torch.randn(batch, TEXT_TOKENS, TEXT_DIM, generator=g)
    return args
