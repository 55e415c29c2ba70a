"""Reproduces the trained reference models from a seed: `python -m accel.zoo.train <name>`.

Names: "judge" (the digit classifier) and "digits-image" (DiT, DDPM epsilon objective matching the
pipeline's DDIM scheduler). Checkpoints go under accel/zoo/checkpoints/ in fp16.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch
from safetensors.torch import save_file

from . import digits, judges, reference


@dataclass(frozen=True)
class ImageTrainConfig:
    seed: int = 0
    steps: int = 20000
    batch: int = 32
    lr: float = 1e-3
    minutes: float = 20.0  # wall-clock cap; the checkpoint is saved whenever it stops
    threads: int = 1


def train_digits_image(cfg: ImageTrainConfig = ImageTrainConfig()) -> torch.nn.Module:
    """Epsilon prediction on pixel-unshuffled digits; the model's own label dropout (p=0.1, train mode)
    teaches the null class that classifier-free guidance needs. Keeps an EMA of the weights."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    data = digits.load("train")
    vae = reference.PixelShuffleVAE()
    latents = vae.encode_pixels(data.images)
    model = reference.digits_image_transformer().train()
    ema = reference.digits_image_transformer().eval()
    ema.load_state_dict(model.state_dict())
    sched = reference.scheduler()
    abar = sched.alphas_cumprod
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    start = time.time()
    for step in range(cfg.steps):
        idx = torch.randint(len(latents), (cfg.batch,))
        x0, y = latents[idx], data.labels[idx]
        t = torch.randint(0, sched.config.num_train_timesteps, (cfg.batch,))
        noise = torch.randn_like(x0)
        a = abar[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = model(xt, timestep=t, class_labels=y).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(0.995, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1 - decay)
        if step % 100 == 0:
            print(f"step {step} loss {loss.item():.4f} {time.time() - start:.0f}s", flush=True)
        if time.time() - start > cfg.minutes * 60:
            print(f"time cap reached at step {step}", flush=True)
            break
    return ema


def save_transformer(model: torch.nn.Module, name: str) -> None:
    path = reference.checkpoint(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, str(path))


def save_grid(images: torch.Tensor, path: str, rows: int) -> None:
    """A small PNG sample grid ([N, 1, H, W] in [-1, 1], N = rows * cols) for the docs."""
    from PIL import Image

    n, _, h, w = images.shape
    cols = n // rows
    grid = images[: rows * cols, 0].reshape(rows, cols, h, w).permute(0, 2, 1, 3).reshape(rows * h, cols * w)
    pixels = ((grid.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    Image.fromarray(pixels, mode="L").save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", choices=["judge", "digits-image"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=ImageTrainConfig.steps)
    parser.add_argument("--minutes", type=float, default=ImageTrainConfig.minutes)
    args = parser.parse_args()
    start = time.time()
    if args.name == "judge":
        torch.set_num_threads(2)
        model = judges.train_judge(seed=args.seed)
        test = digits.load("test")
        print(f"judge held-out accuracy {judges.accuracy(model, test.images, test.labels):.4f}")
        judges.save(model)
    else:
        model = train_digits_image(ImageTrainConfig(seed=args.seed, steps=args.steps, minutes=args.minutes))
        save_transformer(model, args.name)
        pipe = reference.load(args.name)
        print("evaluate", reference.evaluate(args.name, pipe, n=100, seed=0))
        labels = [c for _ in range(4) for c in range(10)]  # 4 rows of 0..9
        save_grid(reference.sample(pipe, labels, seed=1), "docs/digits-image-samples.png", rows=4)
    print(f"done in {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
