"""Train a native backbone, or the DiT baseline, on a reference data set:

    python -m accel.models.train dico|lego|dit|dit-p2 --data digits [--seed 0] [--minutes M] [--steps N] [--threads T]

The runs are the zoo's trained entries ("digits-dico", "digits-lego", "digits-dit", "digits-dit-p2": one recipe and one
budget, accel/zoo/digits_backbones.py), so this forwards to `python -m accel.zoo.train digits-<backbone>`,
which saves the checkpoint under accel/zoo/checkpoints/ and prints the judged accuracy.
"""

from __future__ import annotations

import argparse

BACKBONES = ("dico", "lego", "dit", "dit-p2")
DATA = ("digits",)  # the reference data that ships offline (accel/zoo/digits.py)


def zoo_argv(argv: list[str] | None = None) -> list[str]:
    """This command's arguments as `accel.zoo.train`'s: `["digits-dico", "--seed", "0", ...]`."""
    parser = argparse.ArgumentParser(prog="python -m accel.models.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("backbone", choices=BACKBONES)
    parser.add_argument("--data", choices=DATA, default="digits", help="training data (default: digits)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=None, help="wall-clock cap on training")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (the shared budget by default)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (2 by default)")
    args = parser.parse_args(argv)
    out = [f"{args.data}-{args.backbone}", "--seed", str(args.seed)]
    for flag in ("minutes", "steps", "threads"):
        if getattr(args, flag) is not None:
            out += [f"--{flag}", str(getattr(args, flag))]
    return out


def main(argv: list[str] | None = None) -> None:
    from accel.zoo.train import main as zoo_main

    zoo_main(zoo_argv(argv))


if __name__ == "__main__":
    main()
