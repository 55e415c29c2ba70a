"""accel: training-free inference acceleration for diffusers pipelines and transformers VLMs.

    pipe = accel.zoo.load("pixart-alpha")          # or any diffusers pipeline you have locally
    handle = accel.patch(pipe, method="none")      # one line; see accel.methods()
    images = pipe(...)
    handle.stats(); accel.unpatch(pipe)
"""

from __future__ import annotations

from typing import Any

from .config import MethodConfig, option
from .errors import (
    AccelError,
    AlreadyPatchedError,
    ConcurrentUseError,
    IncompatibleMethodsError,
    InvalidOptionError,
    PatchedCopyError,
    StepCountUnknownError,
    UnknownMethodError,
    UnsupportedModelError,
)
from .method import Method, MethodInfo, methods, register_method
from .patching import Patch, patch, patch_of, unpatch

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """`accel.zoo`, `accel.tune`, `accel.load` and `accel.load_config` are imported on first use: `import accel` loads no model code."""
    if name in ("zoo", "tune"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    if name == "load":
        from .zoo.local import load

        return load
    if name == "load_config":  # a configuration written by `accel tune`, for accel.patch(pipe, method=...)
        from .tune.config import load_config

        return load_config
    raise AttributeError(f"module 'accel' has no attribute {name!r}")

__all__ = [
    "AccelError",
    "AlreadyPatchedError",
    "ConcurrentUseError",
    "IncompatibleMethodsError",
    "InvalidOptionError",
    "Method",
    "MethodConfig",
    "MethodInfo",
    "Patch",
    "PatchedCopyError",
    "StepCountUnknownError",
    "UnknownMethodError",
    "UnsupportedModelError",
    "load",
    "load_config",
    "methods",
    "option",
    "patch",
    "patch_of",
    "register_method",
    "tune",
    "unpatch",
    "zoo",
]
