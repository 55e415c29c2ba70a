"""The zoo entries: real diffusers pipeline classes built from small configs, offline.

Every component is randomly initialised (no checkpoint), so the pipelines produce noise, but they run the
exact code paths of the real models. Two sizes per entry:

- "tiny": a 2-step run, VAE decode included, takes about a second on 2 CPU cores (unit tests).
- "bench": realistic token counts (about 4k image/video tokens per sample: 1024x1024 images, 33 frames
  of 256x448 video; head dim 64, 4 heads, 2 layers) so attention is the largest cost of a step, and a
  cheap VAE, as benchmarks mostly stop at `output_type="latent"`. A step takes about a second on 2 cores.

Text encoders and tokenizers are left out; `accel.zoo.inputs` supplies ready prompt embeddings.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import diffusers

SIZES = ("tiny", "bench")

# Which zoo entry built a pipeline (pipeline -> (name, size)), so `inputs` can pick its defaults; weak keys
# so that pipelines can still be freed.
BUILT: weakref.WeakKeyDictionary[Any, tuple[str, str]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Entry:
    """One zoo entry: how to build it and the defaults `inputs` uses for it."""

    name: str
    pipeline: str  # diffusers pipeline class name
    # size -> the pipeline's keyword arguments; a `partial` is a model, built right after seeding
    build: Callable[[str], dict[str, Any]]
    resolution: dict[str, dict[str, int]]  # size -> {"height", "width"[, "num_frames"]}
    text_tokens: dict[str, int]  # size -> prompt embedding length


# Per-size transformer shapes: tiny is as small as the code paths allow; bench uses head dim 64.
_HEADS = {"tiny": (2, 16), "bench": (4, 64)}  # (heads, head dim)
_TEXT_DIM = {"tiny": 32, "bench": 4096}  # T5-like text embedding width
_POOLED_DIM = {"tiny": 32, "bench": 768}  # CLIP-like pooled embedding width
_TEXT_TOKENS = {"tiny": 8, "bench": 64}


def _rope_axes(head_dim: int) -> tuple[int, int, int]:
    """(t, h, w) rotary axes summing to the head dim, split like Flux/HunyuanVideo (1/4 time)."""
    t = head_dim // 4
    h = (head_dim - t) // 2
    return (t, h, head_dim - t - h)


def _image_vae(size: str, latent_channels: int, **extra: Any) -> partial:
    """AutoencoderKL: 2 blocks (2x) for tiny; for bench 4 very thin blocks (8x, like the real VAEs), since
    decoding 1024x1024 images costs seconds on a CPU even so."""
    blocks, width = (2, 8) if size == "tiny" else (4, 4)
    return partial(
        diffusers.AutoencoderKL,
        block_out_channels=(width,) * blocks,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        latent_channels=latent_channels,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=32,
        mid_block_add_attention=size == "tiny",
        **extra,
    )


def _image_res(tiny: int, bench: int) -> dict[str, dict[str, int]]:
    return {"tiny": {"height": tiny, "width": tiny}, "bench": {"height": bench, "width": bench}}


def _video_res(bench_frames: int = 33) -> dict[str, dict[str, int]]:
    # 8x spatial / 4x temporal VAEs and 2x2 patches: tiny 3 x 4 x 4 = 48 tokens, bench 9 x 16 x 28 = 4032
    # at 33 frames (21 x 16 x 28 = 9,408 at 81).
    return {
        "tiny": {"height": 64, "width": 64, "num_frames": 9},
        "bench": {"height": 256, "width": 448, "num_frames": bench_frames},
    }


def build_flux(size: str) -> dict[str, Any]:
    heads, head_dim = _HEADS[size]
    latent = 4 if size == "tiny" else 16
    transformer = partial(
        diffusers.FluxTransformer2DModel,
        patch_size=1,
        in_channels=latent * 4,  # latents are packed 2x2
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=_TEXT_DIM[size],
        pooled_projection_dim=_POOLED_DIM[size],
        guidance_embeds=True,  # FLUX.1-dev style guidance distillation
        axes_dims_rope=_rope_axes(head_dim),
    )
    vae = _image_vae(
        size,
        latent,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return {"transformer": transformer, "vae": vae, "scheduler": scheduler}


def build_sd3(size: str) -> dict[str, Any]:
    heads, head_dim = _HEADS[size]
    latent = 4 if size == "tiny" else 16
    grid = 16 if size == "tiny" else 128  # latent side of the default resolution
    transformer = partial(
        diffusers.SD3Transformer2DModel,
        sample_size=grid,
        patch_size=2,
        in_channels=latent,
        out_channels=latent,
        num_layers=2,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=_TEXT_DIM[size],
        caption_projection_dim=heads * head_dim,
        pooled_projection_dim=_POOLED_DIM[size],
        pos_embed_max_size=grid,  # the cropped position table must cover the latent grid
        dual_attention_layers=(0,),  # SD3.5 style: layer 0 also has image-only self-attention (attn2)
        qk_norm="rms_norm",
    )
    vae = _image_vae(
        size,
        latent,
        scaling_factor=1.5305,
        shift_factor=0.0609,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    return {
        "transformer": transformer,
        "vae": vae,
        "scheduler": diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
    }


def _pixart(size: str, *, sigma: bool) -> dict[str, Any]:
    heads, head_dim = _HEADS[size]
    transformer = partial(
        diffusers.PixArtTransformer2DModel,
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=4,
        out_channels=8,  # learned sigma, split off by the pipeline
        num_layers=2 if size == "tiny" else 4,  # bench: enough blocks for a span cache to have a front and a rear
        cross_attention_dim=heads * head_dim,
        caption_channels=_TEXT_DIM[size],
        sample_size=16 if size == "tiny" else 128,
        patch_size=2,
        interpolation_scale=2 if sigma and size == "bench" else None,
        # No resolution/aspect-ratio micro-conditions (alpha-1024 has them): they need a width divisible by 3.
        use_additional_conditions=False,
    )
    return {
        "transformer": transformer,
        "vae": _image_vae(size, 4),
        "scheduler": diffusers.DPMSolverMultistepScheduler(),
    }


def build_pixart_alpha(size: str) -> dict[str, Any]:
    return _pixart(size, sigma=False)


def build_pixart_sigma(size: str) -> dict[str, Any]:
    return _pixart(size, sigma=True)


DIT_LABELS = {
    0: "tench, Tinca tinca",
    1: "goldfish",
    2: "great white shark",
    3: "tiger shark",
    4: "hammerhead",
    5: "electric ray",
    6: "stingray",
    7: "cock",
    8: "hen",
    9: "ostrich",
}


def build_dit(size: str) -> dict[str, Any]:
    heads, head_dim = _HEADS[size]
    transformer = partial(
        diffusers.DiTTransformer2DModel,
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        sample_size=16 if size == "tiny" else 128,  # DiT has no height/width: the latent side is fixed here
        patch_size=2,
        num_embeds_ada_norm=1000,  # the pipeline's null class is label 1000
    )
    return {
        "transformer": transformer,
        "vae": _image_vae(size, 4),
        "scheduler": diffusers.DDIMScheduler(),
        "id2label": dict(DIT_LABELS),
    }


def keep_labels(pipe: Any) -> None:
    """Writes a DiTPipeline's class names (`pipe.labels`, made from its `id2label`) into its config, so that
    `save_pretrained` keeps them in model_index.json and `from_pretrained` passes them back: diffusers keeps
    them in `pipe.labels` alone, and a reloaded pipeline without them has no class names (`zoo.generate`
    then draws any of DiT's 1,000 label ids, most of which a digits model never learned)."""
    names: dict[str, list[str]] = {}
    for label, index in pipe.labels.items():
        names.setdefault(str(index), []).append(label)
    pipe.register_to_config(id2label={index: ", ".join(labels) for index, labels in names.items()})


def build_wan(size: str) -> dict[str, Any]:
    heads, head_dim = _HEADS[size]
    z_dim = 4 if size == "tiny" else 16
    transformer = partial(
        diffusers.WanTransformer3DModel,
        patch_size=(1, 2, 2),
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=z_dim,  # must equal the VAE's z_dim
        out_channels=z_dim,
        text_dim=_TEXT_DIM[size],
        freq_dim=32 if size == "tiny" else 256,
        ffn_dim=4 * heads * head_dim,
        num_layers=2,
    )
    vae = partial(
        diffusers.AutoencoderKLWan,
        base_dim=8,
        z_dim=z_dim,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],  # 4x in time, 8x in space like Wan 2.1
        latents_mean=[0.0] * z_dim,
        latents_std=[1.0] * z_dim,
    )
    return {
        "transformer": transformer,
        "vae": vae,
        "scheduler": diffusers.FlowMatchEulerDiscreteScheduler(shift=5.0),
    }


def build_hunyuan_video(size: str) -> dict[str, Any]:
    heads, head_dim = _HEADS[size]
    latent = 4 if size == "tiny" else 16
    transformer = partial(
        diffusers.HunyuanVideoTransformer3DModel,
        in_channels=latent,
        out_channels=latent,
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        num_layers=2,
        num_single_layers=2,
        num_refiner_layers=1,
        patch_size=2,
        patch_size_t=1,
        guidance_embeds=True,
        text_embed_dim=_TEXT_DIM[size],
        pooled_projection_dim=_POOLED_DIM[size],
        rope_axes_dim=_rope_axes(head_dim),
    )
    vae = partial(
        diffusers.AutoencoderKLHunyuanVideo,
        latent_channels=latent,
        block_out_channels=(8, 8, 8, 8),  # 4 blocks: 8x spatial, 4x temporal
        layers_per_block=1,
        norm_num_groups=4,
        mid_block_add_attention=size == "tiny",
    )
    return {
        "transformer": transformer,
        "vae": vae,
        "scheduler": diffusers.FlowMatchEulerDiscreteScheduler(shift=7.0),
    }


def build_cogvideox(size: str) -> dict[str, Any]:
    heads, head_dim = _HEADS[size]
    latent = 4 if size == "tiny" else 16
    res = _video_res()[size]
    transformer = partial(
        diffusers.CogVideoXTransformer3DModel,
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=latent,
        out_channels=latent,
        time_embed_dim=heads * head_dim,
        text_embed_dim=_TEXT_DIM[size],
        num_layers=2,
        sample_width=res["width"] // 8,
        sample_height=res["height"] // 8,
        sample_frames=res["num_frames"],
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=_TEXT_TOKENS[size],
        use_rotary_positional_embeddings=True,  # CogVideoX-5b style
    )
    vae = partial(
        diffusers.AutoencoderKLCogVideoX,
        block_out_channels=(8, 8, 8, 8),  # the pipeline reads 8x spatial off the 4 blocks
        latent_channels=latent,
        layers_per_block=1,
        norm_num_groups=4,
        temporal_compression_ratio=4,
        sample_height=res["height"],
        sample_width=res["width"],
    )
    scheduler = diffusers.CogVideoXDDIMScheduler(
        prediction_type="v_prediction",
        timestep_spacing="trailing",
        rescale_betas_zero_snr=True,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
    )
    return {"transformer": transformer, "vae": vae, "scheduler": scheduler}


ENTRIES: dict[str, Entry] = {
    e.name: e
    for e in (
        Entry("flux", "FluxPipeline", build_flux, _image_res(32, 1024), _TEXT_TOKENS),
        # Wan's own default clip length (81 frames), at a reduced resolution: 9,408 video tokens, so the
        # bench sits in the long-sequence regime that sparse attention is for (real 480p Wan: 32,760).
        Entry("wan", "WanPipeline", build_wan, _video_res(bench_frames=81), _TEXT_TOKENS),
        Entry("hunyuan-video", "HunyuanVideoPipeline", build_hunyuan_video, _video_res(), _TEXT_TOKENS),
        Entry("pixart-alpha", "PixArtAlphaPipeline", build_pixart_alpha, _image_res(32, 1024), _TEXT_TOKENS),
        Entry("pixart-sigma", "PixArtSigmaPipeline", build_pixart_sigma, _image_res(32, 1024), _TEXT_TOKENS),
        Entry("dit", "DiTPipeline", build_dit, _image_res(32, 1024), _TEXT_TOKENS),
        Entry("sd3", "StableDiffusion3Pipeline", build_sd3, _image_res(32, 1024), _TEXT_TOKENS),
        Entry("cogvideox", "CogVideoXPipeline", build_cogvideox, _video_res(), _TEXT_TOKENS),
    )
}

# Pipeline components the zoo leaves out: the caller passes prompt embeddings instead.
TEXT_COMPONENTS = (
    "text_encoder",
    "text_encoder_2",
    "text_encoder_3",
    "tokenizer",
    "tokenizer_2",
    "tokenizer_3",
)
