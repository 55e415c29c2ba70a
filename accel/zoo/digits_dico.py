"""`digits-dico`: DiCo (`accel.models.DiCoModel` in a `DiCoPipeline`) trained on the digits: the DiCo
paper's conv U-Net scaled down, widths 24/48/96 over the 16x16, 8x8 and 4x4 levels, depths 3,3,2,3,3
(838,900 parameters).

One of three entries of equal size and training budget; the recipe, sizes and budget are
`digits_backbones`'.

    pipe = accel.zoo.load("digits-dico")
    accel.zoo.evaluate("digits-dico", pipe, n=100, seed=0)   # {"accuracy": ..., "n": 100}
    python -m accel.zoo.train digits-dico                    # or: python -m accel.models.train dico --data digits
"""

from __future__ import annotations

from typing import Any

import torch

from . import digits_backbones as recipe

KIND = "dico"
NAME = recipe.entry_name(KIND)
CHECKPOINT = recipe.checkpoint(KIND)
STEPS = recipe.STEPS


def load(dtype: torch.dtype = torch.float32) -> Any:
    """The trained pipeline; `recipe.CheckpointMissingError` (naming the command) until it is trained."""
    return recipe.load(KIND, dtype)


def evaluate(pipe: Any, n: int = 100, seed: int = 0, **options: Any) -> dict[str, float]:
    """The digit judge's class accuracy over n samples (`digits_backbones.evaluate`)."""
    return recipe.evaluate(pipe, n=n, seed=seed, **options)


def reproduce(seed: int = 0, minutes: float = recipe.TrainConfig.minutes, steps: int = recipe.TrainConfig.steps,
              threads: int = recipe.TrainConfig.threads) -> None:
    """Train with the shared budget, save the checkpoint, evaluate, write the sample grid."""
    recipe.reproduce(KIND, seed=seed, minutes=minutes, steps=steps, threads=threads)
