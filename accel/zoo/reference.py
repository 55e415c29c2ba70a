"""Trained reference entries: real diffusers pipelines with weights trained here on real digits.

Random weights have none of the redundancy across steps, layers and tokens that training-free
acceleration exploits, so quality numbers are measured on these instead.

    pipe = accel.zoo.load("digits-image")
    images = pipe(class_labels=[3, 7], num_inference_steps=20, guidance_scale=4.0,
                  generator=torch.Generator().manual_seed(0), output_type="pt").images
    accel.zoo.evaluate("digits-image", pipe, n=100, seed=0)   # {"accuracy": ..., "n": 100}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import diffusers
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput

from . import judges

CHECKPOINTS = Path(__file__).parent / "checkpoints"
TRAINED = ("digits-image",)
LABELS = {str(i): i for i in range(10)}
STEPS, GUIDANCE = 20, 4.0


class PixelShuffleVAE(diffusers.ModelMixin, ConfigMixin):
    """A lossless, weight-free "VAE": 2x2 space-to-depth, so a 32x32 digit is a 4x16x16 latent
    (256 tokens at patch size 1) and DiTPipeline's decode path runs unchanged."""

    @register_to_config
    def __init__(self, factor: int = 2, scaling_factor: float = 1.0, block_out_channels: tuple = (1, 1)) -> None:
        # block_out_channels: only its length is read (by zoo.calls) for the 2x spatial factor.
        super().__init__()
        self.post_quant_conv = None  # zoo.generate captures DiT latents at the decoder's input
        self.decoder = torch.nn.PixelShuffle(factor)
        self.register_buffer("_device_anchor", torch.zeros(1), persistent=False)

    def encode_pixels(self, images: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(images, self.config.factor)

    def decode(self, z: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple:
        sample = self.decoder(z)
        return DecoderOutput(sample=sample) if return_dict else (sample,)


def digits_image_transformer() -> diffusers.DiTTransformer2DModel:
    """DiT over a 16x16x4 latent, patch 1: 256 tokens, 4 layers of width 96; label 1000 is CFG's null."""
    return diffusers.DiTTransformer2DModel(
        num_attention_heads=3,
        attention_head_dim=32,
        in_channels=4,
        out_channels=4,
        num_layers=4,
        sample_size=16,
        patch_size=1,
        num_embeds_ada_norm=1000,
    )


def scheduler() -> diffusers.DDIMScheduler:
    return diffusers.DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False, set_alpha_to_one=True
    )


def checkpoint(name: str) -> Path:
    return CHECKPOINTS / name / "transformer.safetensors"


def load(name: str, dtype: torch.dtype = torch.float32) -> diffusers.DiTPipeline:
    """The trained pipeline `name`, from the committed checkpoint (fp16 storage, cast to `dtype`)."""
    from safetensors.torch import load_file

    if name != "digits-image":
        raise ValueError(f"No trained checkpoint for {name!r}; trained entries: {', '.join(TRAINED)}.")
    transformer = digits_image_transformer()
    transformer.load_state_dict({k: v.float() for k, v in load_file(str(checkpoint(name))).items()})
    transformer = (transformer if dtype == torch.float32 else transformer.to(dtype)).eval()
    pipe = diffusers.DiTPipeline(
        transformer=transformer, vae=PixelShuffleVAE(), scheduler=scheduler(), id2label={i: str(i) for i in range(10)}
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe: Any, labels: list[int], seed: int = 0, steps: int = STEPS, guidance: float = GUIDANCE,
           batch: int = 50) -> torch.Tensor:
    """Images in [-1, 1], [N, 1, 32, 32], for the class `labels`; deterministic for a seed."""
    out = []
    for i in range(0, len(labels), batch):
        g = torch.Generator().manual_seed(seed + i)
        with torch.no_grad():
            x = pipe(class_labels=labels[i : i + batch], num_inference_steps=steps, guidance_scale=guidance,
                     generator=g, output_type="pt").images
        out.append(torch.as_tensor(x).float())
    imgs = torch.cat(out)
    if imgs.shape[-1] in (1, 3) and imgs.shape[1] not in (1, 3):  # numpy-style NHWC
        imgs = imgs.permute(0, 3, 1, 2)
    return imgs[:, :1] * 2 - 1


def evaluate(name: str, pipe: Any, n: int = 100, seed: int = 0, **options: Any) -> dict[str, float]:
    """Task accuracy of a (possibly accel-patched) pipeline: the judge's class accuracy over n samples,
    labels cycling 0..9, deterministic for a seed."""
    if name != "digits-image":
        raise ValueError(f"No evaluation for {name!r}; trained entries: {', '.join(TRAINED)}.")
    labels = [i % 10 for i in range(n)]
    images = sample(pipe, labels, seed=seed, **options)
    judge = judges.load()
    return {"accuracy": judges.accuracy(judge, images, torch.tensor(labels)), "n": n}
