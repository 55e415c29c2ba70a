"""Reproduces the trained reference models from a seed: `python -m accel.zoo.train <name> --overwrite`.

Names: "judge" (the digit classifier) and every trained entry of `reference.TRAINED`. Checkpoints go
under accel/zoo/checkpoints/ in fp16; each entry's `reproduce` also prints its evaluation and writes its
sample figure under docs/ (of the working directory: run it from the repository's root). Writing over a
committed checkpoint or figure takes `--overwrite`, refused before any training without it. The backbone
entries (digits-dico, digits-lego, digits-dit, digits-dit-p2) also take `--out DIR`: the checkpoint goes to
DIR/<name>/transformer.safetensors and the figure to DIR/docs/<name>-samples.png, the zoo left as it is.
"""

from __future__ import annotations

import argparse
import inspect
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from . import judges, reference

CHECKPOINTS = Path(__file__).parent / "checkpoints"  # the zoo's committed checkpoints, one folder per entry
# the entries whose `reproduce` also writes docs/<name>-samples.png, relative to the working directory
FIGURES = ("digits-image", "digits-video", "digits-vqa", "digits-dico", "digits-lego", "digits-dit", "digits-dit-p2")
SEED_LIMIT = 2**63


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


def training_seed(text: str) -> int:
    """An argparse type: an integer seed in [0, 2**63)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"{value} is out of range; expected an integer seed in [0, 2**63)")
    return value


def written(name: str, out: Path | None = None) -> list[Path]:
    """The files `name`'s reproduction would write over, of those there now: its checkpoint folder's weights
    and its docs figure; under `out` instead of the zoo and the working directory when given."""
    if out is not None:
        folder, figure = out / name, out / "docs" / f"{name}-samples.png"
    else:
        folder = judges.CHECKPOINT.parent if name == "judge" else CHECKPOINTS / name
        figure = Path("docs") / f"{name}-samples.png"
    found = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    return found + ([figure] if name in FIGURES and figure.exists() else [])


def main(argv: list[str] | None = None) -> None:
    from accel.cli import counting, positive

    parser = argparse.ArgumentParser(prog="python -m accel.zoo.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=["judge", *reference.TRAINED])
    parser.add_argument("--seed", type=training_seed, default=0, help="training seed, in [0, 2**63) (default 0)")
    parser.add_argument("--minutes", type=positive("minutes"), default=None,
                        help="wall-clock cap on training (> 0)")
    parser.add_argument("--steps", type=counting(1), default=None,
                        help="optimizer steps (entries whose reproduce takes them)")
    parser.add_argument("--threads", type=counting(1), default=None,
                        help="torch threads (entries whose reproduce takes them)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write over the checkpoint and docs figure already there (the zoo's committed entry)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="write the checkpoint and figure under DIR instead (the entries whose reproduce "
                        "takes it: digits-dico, digits-lego, digits-dit, digits-dit-p2)")
    args = parser.parse_args(argv)
    given = {"minutes": args.minutes, "steps": args.steps, "threads": args.threads, "out": args.out}
    options = {k: v for k, v in given.items() if v is not None}
    reproduce = None if args.name == "judge" else reference.TRAINED[args.name].reproduce
    accepted = inspect.signature(reproduce).parameters if reproduce else {}
    takes = ["--seed", *(f"--{k}" for k in given if k in accepted)]
    for key in options:
        if key not in accepted:
            parser.error(f"argument --{key}: {args.name} does not take it (its options: {', '.join(takes)})")
    if args.out is not None:
        from accel.bench.report import can_write_dir

        if not all(can_write_dir(p) for p in (args.out / args.name, args.out / "docs")):
            parser.error(f"argument --out: {str(args.out)!r} is, or lies under, a file, or cannot be written")
    elif args.name in FIGURES and not Path("docs").is_dir():
        parser.error(f"{args.name} writes its sample figure to docs/{args.name}-samples.png, and the working "
                     f"directory ({Path.cwd()}) has no docs/ folder: run it from the repository's root"
                     + (", or give --out DIR" if "out" in accepted else ""))
    there = written(args.name, args.out)
    if there and not args.overwrite:
        where = f"under --out {args.out}" if args.out else "the zoo's committed entry"
        elsewhere = ", or --out DIR to write elsewhere" if "out" in accepted and not args.out else ""
        parser.error(f"{args.name}: this run would overwrite {', '.join(map(str, there))} ({where}); pass "
                     f"--overwrite to replace them{elsewhere}")
    start = time.time()
    if reproduce is None:
        torch.set_num_threads(2)
        model = judges.train_judge(seed=args.seed)
        print(f"judge held-out accuracy {judges.held_out_accuracy(model)['accuracy']:.4f}")
        judges.save(model)
    else:
        reproduce(seed=args.seed, **options)
    print(f"done in {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
