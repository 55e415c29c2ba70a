"""`digits-lego`: LEGO (`accel.models.LEGOModel` in a `LEGOPipeline`) trained on the digits, every brick
supervised: a progressive-growth stack, regions 2 -> 8 -> 16, patches 1, 4, 1, depths 1, 1, 3 at width 88
(804,040 trainable parameters). Skipping the top brick (`accel.patch(pipe, method="lego-skip")`) saves
about 73% of a forward.

One of three entries of equal size and training budget; the recipe, sizes and budget are
`digits_backbones`'.

    pipe = accel.zoo.load("digits-lego")
    accel.zoo.evaluate("digits-lego", pipe, n=100, seed=0)   # {"accuracy": ..., "n": 100}
    python -m accel.zoo.train digits-lego                    # or: python -m accel.models.train lego --data digits
"""

from __future__ import annotations

from typing import Any

import torch

from . import digits_backbones as recipe

KIND = "lego"
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
