"""What this machine offers accel: versions, the device, and which attention paths can run here."""

from __future__ import annotations

import importlib
import importlib.util
import platform
import shutil
from pathlib import Path
from typing import Any

import torch


def _version(module: str) -> str | None:
    try:
        return importlib.import_module(module).__version__
    except Exception:
        return None


def attention_paths() -> dict[str, str]:
    """Each attention path accel can use, and whether it is usable here (with the reason when not)."""
    cuda = torch.cuda.is_available()
    has_triton = importlib.util.find_spec("triton") is not None
    paths = {"sdpa": "yes"}
    if not has_triton:
        paths["triton (GPU)"] = "no: triton is not installed"
        paths["triton interpreter"] = "no: triton is not installed"
    else:
        paths["triton (GPU)"] = "yes" if cuda else "no: no CUDA device"
        paths["triton interpreter"] = "yes (TRITON_INTERPRET=1, for tests; slow)"
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401

        if cuda:
            paths["flex_attention"] = "yes (compiled)"
        elif shutil.which("cc") or shutil.which("gcc"):
            paths["flex_attention"] = "yes (compiled for CPU with the C++ compiler)"
        else:
            paths["flex_attention"] = "eager only: no C++ compiler for the CPU backend"
    except ImportError:
        paths["flex_attention"] = "no: needs torch >= 2.5"
    if importlib.util.find_spec("xformers") is None:
        paths["xformers"] = "no: not installed (pip install 'hf-accel[gpu]')"
    else:
        paths["xformers"] = "yes" if cuda else "installed, but its kernels need CUDA"
    return paths


def device_name() -> str:
    """The device benchmarks run on, as their tables name it: the GPU, or the CPU with its model and vector
    extensions (the CPU kernel is register-tiled for AVX-512; on AVX2 it is several times slower)."""
    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}"
    name = f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    try:
        model = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                     if ln.startswith("model name"))
    except (OSError, StopIteration):
        return name
    return f"{name} ({model}, {torch.backends.cpu.get_cpu_capability()})"


def info() -> dict[str, Any]:
    from . import __version__

    return {
        "accel": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": _version("diffusers"),
        "transformers": _version("transformers"),
        "triton": _version("triton"),
        "device": device_name(),
        "attention": attention_paths(),
    }
