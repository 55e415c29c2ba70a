"""The trained reference entries: a registry of small models trained here on real digits.

Random weights have none of the redundancy across steps, layers and tokens that training-free
acceleration exploits, so quality numbers are measured on these instead. Each entry lives in its own
module (model, sampling, task-accuracy evaluation, training) and registers here:

    accel.zoo.load("digits-image")                      # offline, from the committed checkpoint
    accel.zoo.evaluate("digits-image", pipe, n=100)     # {"accuracy": ..., "n": 100, ...}
    python -m accel.zoo.train digits-image --overwrite  # reproduce the checkpoint from a seed
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch


@dataclass(frozen=True)
class TrainedEntry:
    """One trained entry. `evaluate(model, n=..., seed=..., steps=...)` returns at least
    {"accuracy": float in [0, 1], "n": int} for a (possibly accel-patched) pipeline or model;
    `reproduce(seed=..., minutes=...)` retrains it and rewrites its checkpoint and docs figure."""

    name: str
    load: Callable[[torch.dtype], Any]
    evaluate: Callable[..., dict[str, float]]
    reproduce: Callable[..., None]
    steps: int | None  # the sampling steps its figures use (None: not a diffusion model)


class _Trained(Mapping[str, TrainedEntry]):
    """name -> TrainedEntry; an entry's module (model, sampling, evaluation, training) is imported only
    when that entry is used, so `import accel.zoo` stays light."""

    MODULES = {"digits-image": "digits_image", "digits-video": "digits_video", "digits-vqa": "digits_vqa",
               "digits-copy": "digits_copy", "digits-copy-gemma": "digits_copy_gemma",
               # the backbone comparison: one recipe, an entry per kind ("digits-<kind>")
               "digits-dico": "digits_backbones", "digits-lego": "digits_backbones", "digits-dit": "digits_backbones",
               "digits-dit-p2": "digits_backbones"}

    def __getitem__(self, name: str) -> TrainedEntry:
        module = importlib.import_module(f"{__package__}.{self.MODULES[name]}")
        if self.MODULES[name] == "digits_backbones":
            kind = name.removeprefix("digits-")
            return TrainedEntry(name, partial(module.load, kind), module.evaluate, partial(module.reproduce, kind),
                                module.STEPS)
        return TrainedEntry(module.NAME, module.load, module.evaluate, module.reproduce, getattr(module, "STEPS", None))

    def __contains__(self, name: object) -> bool:
        return name in self.MODULES

    def __iter__(self) -> Iterator[str]:
        return iter(self.MODULES)

    def __len__(self) -> int:
        return len(self.MODULES)


TRAINED = _Trained()


def _entry(name: str) -> TrainedEntry:
    if name not in TRAINED:
        raise ValueError(f"No trained reference model {name!r}; trained entries: {', '.join(TRAINED)}.")
    return TRAINED[name]


def load(name: str, dtype: torch.dtype = torch.float32) -> Any:
    """The trained pipeline (or model) `name` from its committed checkpoint, cast to `dtype`."""
    return _entry(name).load(dtype)


def evaluate(name: str, model: Any, n: int = 100, seed: int = 0, **options: Any) -> dict[str, float]:
    """Task accuracy of `model` (the loaded entry, possibly patched by accel), deterministic for a seed."""
    return _entry(name).evaluate(model, n=n, seed=seed, **options)
