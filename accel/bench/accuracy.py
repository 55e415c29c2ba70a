"""Task accuracy of a benchmark row: PSNR against the exact model says how far a method drifts, not
whether the output still does its job. For the trained reference entries (`accel.zoo.reference.TRAINED`)
the entry's own judge answers that, so every bench row and demo run on them gets an accuracy.

Nothing here names an entry: whatever registers in `TRAINED` is evaluated the same way.
"""

from __future__ import annotations

from typing import Any


def has_task(model: str) -> bool:
    """Whether `model` (a zoo name or a path) is a trained reference entry with a task-accuracy judge."""
    from accel.zoo.reference import TRAINED

    return model in TRAINED


def task_accuracy(model: str, pipe: Any, n: int, seed: int, steps: int | None) -> float:
    """Accuracy in [0, 1] of `pipe` (patched or not) on `model`'s task over `n` samples, sampled with
    `steps` denoising steps where the entry is a diffusion model (its `steps` is not None)."""
    from accel.zoo.reference import TRAINED, evaluate

    if n < 1:
        raise ValueError(f"task accuracy: n={n}; expected at least 1 sample")
    options = {"steps": steps} if TRAINED[model].steps is not None and steps is not None else {}
    return float(evaluate(model, pipe, n=n, seed=seed, **options)["accuracy"])
