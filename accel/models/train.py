"""Train a native backbone, or the DiT baseline, on a reference data set:

    python -m accel.models.train dico|lego|dit|dit-p2 --data digits [--seed 0] [--minutes M] [--steps N]
        [--threads T] [--out DIR] [--overwrite]

The runs are the zoo's trained entries ("digits-dico", "digits-lego", "digits-dit", "digits-dit-p2": one recipe and one
budget, accel/zoo/digits_backbones.py), so this forwards to `python -m accel.zoo.train digits-<backbone>`,
which saves the checkpoint under accel/zoo/checkpoints/ (the sample figure under docs/) and prints the judged
accuracy. Those are the zoo's committed files: writing over them takes `--overwrite`; `--out DIR` writes
the checkpoint and figure under DIR instead.
"""

from __future__ import annotations

import argparse

BACKBONES = ("dico", "lego", "dit", "dit-p2")
DATA = ("digits",)  # the reference data that ships offline (accel/zoo/digits.py)


def zoo_argv(argv: list[str] | None = None) -> list[str]:
    """This command's arguments as `accel.zoo.train`'s: `["digits-dico", "--seed", "0", ...]`."""
    from accel.cli import counting, positive
    from accel.zoo.train import training_seed

    parser = argparse.ArgumentParser(prog="python -m accel.models.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("backbone", choices=BACKBONES)
    parser.add_argument("--data", choices=DATA, default="digits", help="training data (default: digits)")
    parser.add_argument("--seed", type=training_seed, default=0, help="training seed, in [0, 2**63) (default 0)")
    parser.add_argument("--minutes", type=positive("minutes"), default=None, help="wall-clock cap on training (> 0)")
    parser.add_argument("--steps", type=counting(1), default=None,
                        help="optimizer steps (the shared budget by default)")
    parser.add_argument("--threads", type=counting(1), default=None, help="torch threads (2 by default)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write over the zoo's committed checkpoint and sample figure")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="write the checkpoint and sample figure under DIR instead of the zoo")
    args = parser.parse_args(argv)
    out = [f"{args.data}-{args.backbone}", "--seed", str(args.seed)]
    for flag in ("minutes", "steps", "threads", "out"):
        if getattr(args, flag) is not None:
            out += [f"--{flag}", str(getattr(args, flag))]
    return out + (["--overwrite"] if args.overwrite else [])


def main(argv: list[str] | None = None) -> None:
    from accel.zoo.train import main as zoo_main

    zoo_main(zoo_argv(argv))


if __name__ == "__main__":
    main()
