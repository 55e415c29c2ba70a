"""The errors accel raises. Every one is raised before any weight or module is touched."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class AccelError(ValueError):
    """Base class: a request accel cannot honour, explained in the message."""


class UnknownMethodError(AccelError):
    """`method=` names no registered method."""


class InvalidOptionError(AccelError):
    """A method option is unknown, of the wrong type, or out of its allowed range."""


class UnsupportedModelError(AccelError):
    """The target is not a model this method (or accel) knows how to patch."""


class IncompatibleMethodsError(AccelError):
    """Two methods in one composition would fight over the same part of the model."""


class AlreadyPatchedError(AccelError):
    """The target (or one of its denoisers) already carries an accel patch."""


class PatchedCopyError(AccelError, TypeError):
    """`copy.deepcopy` of a patched object: its hooks would still point at the original's state."""


class ConcurrentUseError(AccelError, RuntimeError):
    """A patched denoiser was called from a second thread while a run of another thread is in progress."""


class UnsupportedInputError(AccelError, RuntimeError):
    """A call asks for something the patch in force cannot honour (raised before the model runs)."""


class StepCountUnknownError(AccelError, RuntimeError):
    """A method that keeps state across the steps of a run met a denoiser call whose run length nobody
    told accel (a hand-written loop: no diffusers pipeline call drives the denoiser)."""

    def __init__(self, methods: Iterable[str]) -> None:
        names = ", ".join(methods)
        super().__init__(
            f"accel: {names} keeps state across the steps of a run and needs the run's step count, but the "
            "denoiser was called outside any diffusers pipeline: call handle.reset(num_steps=N) (accel.Patch.reset) "
            "before a hand-written loop of N steps; accel then starts a new run after every N steps."
        )


def closest(word: str, choices: Iterable[str]) -> str:
    """A ' Did you mean ...?' suffix, or '' when nothing is close."""
    choices = list(choices)
    same = [c for c in choices if isinstance(word, str) and c.lower() == word.lower()]  # "PISA" for "pisa"
    match = same or difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    return f" Did you mean {match[0]!r}?" if match else ""
