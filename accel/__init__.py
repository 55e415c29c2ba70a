"""accel: training-free inference acceleration for diffusers pipelines and transformers VLMs.

    pipe = accel.zoo.load("pixart-alpha")          # or any diffusers pipeline you have locally
    handle = accel.patch(pipe, method="none")      # one line; see accel.methods()
    images = pipe(...)
    handle.stats(); accel.unpatch(pipe)
"""

from __future__ import annotations

from . import zoo
from .config import MethodConfig, option
from .errors import (
    AccelError,
    AlreadyPatchedError,
    IncompatibleMethodsError,
    InvalidOptionError,
    UnknownMethodError,
    UnsupportedModelError,
)
from .method import Method, MethodInfo, methods, register_method
from .patching import Patch, patch, patch_of, unpatch
from .zoo.local import load

__version__ = "0.1.0"

__all__ = [
    "AccelError",
    "AlreadyPatchedError",
    "IncompatibleMethodsError",
    "InvalidOptionError",
    "Method",
    "MethodConfig",
    "MethodInfo",
    "Patch",
    "UnknownMethodError",
    "UnsupportedModelError",
    "load",
    "methods",
    "option",
    "patch",
    "patch_of",
    "register_method",
    "unpatch",
    "zoo",
]
