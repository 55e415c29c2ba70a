"""`method="none"`: goes through the whole patch machinery and changes no result.

Useful in tests (the machinery itself must be exact) and in benchmarks (its row measures the overhead of
step tracking and hooks).
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import MethodConfig
from .journal import Journal
from .method import Method
from .steps import StepTracker
from .target import PatchTarget


@dataclass(frozen=True)
class NoneConfig(MethodConfig):
    method = "none"


class NoOp(Method):
    name = "none"
    summary = "No acceleration: the patch machinery alone (step tracking, hooks), for tests and overhead."
    Config = NoneConfig
    denoising = False  # runs on anything accel can patch

    def apply(self, target: PatchTarget, journal: Journal, tracker: StepTracker) -> None:
        """Nothing to change: the step tracker that `accel.patch` adds is the whole patch."""
