"""`digits-image`: a class-conditional DiT (real `DiTPipeline`) trained here on real digits.

    pipe = accel.zoo.load("digits-image")
    images = pipe(class_labels=[3, 7], num_inference_steps=20, guidance_scale=4.0,
                  generator=torch.Generator().manual_seed(0), output_type="pt").images
    accel.zoo.evaluate("digits-image", pipe, n=100, seed=0)   # {"accuracy": ..., "n": 100}
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import torch
import torch.nn.functional as F
from diffusers import ModelMixin  # by name in this module: diffusers' loader looks the base class up here
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput

from . import digits, judges
from .families import keep_labels

NAME = "digits-image"
CHECKPOINT = Path(__file__).parent / "checkpoints" / NAME / "transformer.safetensors"
STEPS, GUIDANCE = 20, 4.0


class PixelShuffleVAE(ModelMixin, ConfigMixin):
    """A lossless, weight-free "VAE": 2x2 space-to-depth, so a 32x32 digit is a 4x16x16 latent
    (256 tokens at patch size 1) and DiTPipeline's decode path runs unchanged."""

    @register_to_config
    def __init__(self, factor: int = 2, scaling_factor: float = 1.0, block_out_channels: tuple = (1, 1)) -> None:
        # block_out_channels: only its length is read (by zoo.calls) for the 2x spatial factor.
        super().__init__()
        self.post_quant_conv = None  # zoo.generate captures DiT latents at the decoder's input
        self.decoder = torch.nn.PixelShuffle(factor)
        self.register_buffer("_device_anchor", torch.zeros(1), persistent=False)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> PixelShuffleVAE:
        """Weight-free, so its saved folder holds config.json alone (`save_pretrained` writes no weights file,
        which ModelMixin's loader would ask for): rebuilt from that config; loading options are ignored."""
        path = Path(pretrained_model_name_or_path) / (kwargs.get("subfolder") or "")
        return cls.from_config(cls.load_config(path))

    def encode_pixels(self, images: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(images, self.config.factor)

    def decode(self, z: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple:
        sample = self.decoder(z)
        return DecoderOutput(sample=sample) if return_dict else (sample,)


def digits_image_transformer(patch_size: int = 1) -> diffusers.DiTTransformer2DModel:
    """DiT over a 16x16x4 latent, 4 layers of width 96; label 1000 is CFG's null. Patch 1 (this entry's):
    256 tokens; patch 2 (`digits-dit-p2`): 64 tokens."""
    return diffusers.DiTTransformer2DModel(
        num_attention_heads=3,
        attention_head_dim=32,
        in_channels=4,
        out_channels=4,
        num_layers=4,
        sample_size=16,
        patch_size=patch_size,
        num_embeds_ada_norm=1000,
    )


def scheduler() -> diffusers.DDIMScheduler:
    return diffusers.DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False, set_alpha_to_one=True
    )


def load(dtype: torch.dtype = torch.float32) -> diffusers.DiTPipeline:
    """The trained pipeline from the committed checkpoint (fp16 storage, cast to `dtype`)."""
    from safetensors.torch import load_file

    transformer = digits_image_transformer()
    transformer.load_state_dict({k: v.float() for k, v in load_file(str(CHECKPOINT)).items()})
    return pipeline(transformer if dtype == torch.float32 else transformer.to(dtype))


def pipeline(transformer: diffusers.DiTTransformer2DModel) -> diffusers.DiTPipeline:
    """A DiTPipeline around a digits DiT (eval mode): the weight-free VAE, the DDIM scheduler and the ten
    digits as class names, kept in its config through save/load (`families.keep_labels`)."""
    pipe = diffusers.DiTPipeline(transformer=transformer.eval(), vae=PixelShuffleVAE(), scheduler=scheduler(),
                                 id2label={i: str(i) for i in range(10)})
    keep_labels(pipe)
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


def evaluate(pipe: Any, n: int = 100, seed: int = 0, **options: Any) -> dict[str, float]:
    """Task accuracy of a (possibly accel-patched) pipeline: the judge's class accuracy over n samples,
    labels cycling 0..9, deterministic for a seed. `options`: steps, guidance, batch (see `sample`).
    Raises `ValueError` for n or steps that are not positive integers."""
    judge, images, labels = _judged_samples("evaluate", pipe, n, seed, options)
    return {"accuracy": judges.accuracy(judge, images, labels), "n": n}


def fd(pipe: Any, n: int = 500, seed: int = 0, **options: Any) -> dict[str, float]:
    """How close the samples' distribution is to the real digits': the Fréchet distance between the judge's
    features of n samples (labels cycling 0..9, as `evaluate`) and of the train split's 1,438 real digits
    (`judges.frechet_distance`: FID with the digit judge as feature extractor; lower is better, 0 for the
    data itself up to sampling error). Returns {"fd", "accuracy", "n"} from the same samples; raises as
    `evaluate` does."""
    judge, images, labels = _judged_samples("fd", pipe, n, seed, options, least=2)  # a covariance needs two
    real = judges.features(judge, digits.load("train").images)
    return {"fd": judges.frechet_distance(judges.features(judge, images), real),
            "accuracy": judges.accuracy(judge, images, labels), "n": n}


def _judged_samples(caller: str, pipe: Any, n: int, seed: int, options: dict[str, Any],
                    least: int = 1) -> tuple[judges.DigitJudge, torch.Tensor, torch.Tensor]:
    """The judge, n samples of labels cycling 0..9 and those labels; n (>= `least`) and steps checked first."""
    for name, value, low in (("n", n, least), ("steps", options.get("steps", STEPS), 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{caller}: {name}={value!r}; expected an integer >= {low}")
    labels = [i % 10 for i in range(n)]
    return judges.load(), sample(pipe, labels, seed=seed, **options), torch.tensor(labels)


def training_latents() -> tuple[torch.Tensor, torch.Tensor]:
    """The train split as latents [N, 4, 16, 16] (through `PixelShuffleVAE`) and labels [N]."""
    data = digits.load("train")
    return PixelShuffleVAE().encode_pixels(data.images), data.labels


def noisy_batch(latents: torch.Tensor, labels: torch.Tensor, alphas_cumprod: torch.Tensor,
                batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One DDPM training batch from the global RNG: (x_t, t, labels, noise), with `batch` examples drawn
    with replacement, t uniform over the schedule and x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise."""
    idx = torch.randint(len(latents), (batch,))
    x0, y = latents[idx], labels[idx]
    t = torch.randint(0, len(alphas_cumprod), (batch,))
    noise = torch.randn_like(x0)
    a = alphas_cumprod[t].view(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise, t, y, noise


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    steps: int = 20000
    batch: int = 32
    lr: float = 1e-3
    minutes: float = 20.0  # wall-clock cap; the checkpoint is saved whenever it stops
    threads: int = 1


def train(cfg: TrainConfig = TrainConfig()) -> torch.nn.Module:
    """Epsilon prediction on pixel-unshuffled digits; the model's own label dropout (p=0.1, train mode)
    teaches the null class that classifier-free guidance needs. Keeps an EMA of the weights."""
    from .train import update_ema

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    latents, labels = training_latents()
    model = digits_image_transformer().train()
    ema = digits_image_transformer().eval()
    ema.load_state_dict(model.state_dict())
    abar = scheduler().alphas_cumprod
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    start = time.time()
    for step in range(cfg.steps):
        xt, t, y, noise = noisy_batch(latents, labels, abar, cfg.batch)
        pred = model(xt, timestep=t, class_labels=y).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        update_ema(ema, model, step)
        if step % 100 == 0:
            print(f"step {step} loss {loss.item():.4f} {time.time() - start:.0f}s", flush=True)
        if time.time() - start > cfg.minutes * 60:
            print(f"time cap reached at step {step}", flush=True)
            break
    return ema


def reproduce(seed: int = 0, minutes: float = TrainConfig.minutes, steps: int = TrainConfig.steps) -> None:
    """`python -m accel.zoo.train digits-image`: train, save the checkpoint, evaluate, write the sample grid."""
    from .train import save_grid, save_state

    save_state(train(TrainConfig(seed=seed, steps=steps, minutes=minutes)), CHECKPOINT)
    pipe = load()
    print("evaluate", evaluate(pipe, n=100, seed=0))
    labels = [c for _ in range(4) for c in range(10)]  # 4 rows of 0..9
    save_grid(sample(pipe, labels, seed=1), "docs/digits-image-samples.png", rows=4)
