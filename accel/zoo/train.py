"""Reproduces the trained reference models from a seed: `python -m accel.zoo.train <name>`.

Names: "judge" (the digit classifier) and every trained entry of `reference.TRAINED`. Checkpoints go
under accel/zoo/checkpoints/ in fp16; each entry's `reproduce` also prints its evaluation and writes its
sample figure under docs/.
"""

from __future__ import annotations

import argparse
import inspect
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from . import judges, reference


def save_state(model: torch.nn.Module, path: Path) -> None:
    """The model's state dict in fp16 safetensors (floating tensors only are halved)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path))


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, step: int, decay: float = 0.995) -> None:
    """One step of the weights' exponential moving average, with a warm-up (the average starts short)."""
    rate = 1 - min(decay, (1 + step) / (10 + step))
    for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
        pe.lerp_(pm, rate)


def save_grid(images: torch.Tensor, path: str, rows: int) -> None:
    """A small PNG sample grid ([N, 1, H, W] in [-1, 1], N = rows * cols) for the docs."""
    from PIL import Image

    n, _, h, w = images.shape
    cols = n // rows
    grid = images[: rows * cols, 0].reshape(rows, cols, h, w).permute(0, 2, 1, 3).reshape(rows * h, cols * w)
    pixels = ((grid.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    Image.fromarray(pixels, mode="L").save(path, optimize=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", choices=["judge", *reference.TRAINED])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=None, help="wall-clock cap on training")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (entries whose reproduce takes them)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (entries whose reproduce takes them)")
    args = parser.parse_args(argv)
    start = time.time()
    if args.name == "judge":
        torch.set_num_threads(2)
        model = judges.train_judge(seed=args.seed)
        print(f"judge held-out accuracy {judges.held_out_accuracy(model)['accuracy']:.4f}")
        judges.save(model)
    else:
        reproduce = reference.TRAINED[args.name].reproduce
        given = {"minutes": args.minutes, "steps": args.steps, "threads": args.threads}
        options = {k: v for k, v in given.items() if v is not None}
        accepted = inspect.signature(reproduce).parameters
        for key in options:
            if key not in accepted:
                parser.error(f"--{key}: {args.name} does not take it (its options: "
                             f"{', '.join('--' + k for k in accepted if k in given)})")
        reproduce(seed=args.seed, **options)
    print(f"done in {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
