"""accel.quant: 6Bit-Diffusion's mixed precision (NVFP4 weights, NVFP4 or INT8 activations routed per layer
and step) as `accel.patch(pipe, method="sixbit")`.

    formats.py    the number formats: packed NVFP4 and INT8 weights, their linear layers
    sixbit.py     the method: routing by the predictor, originals off the device, save/load
    calibrate.py  `accel calibrate`: fitting the predictor

`accel.quant.save(handle, directory)` writes the packed weights; `method="sixbit", weights=directory`
loads them without quantizing again.
"""

from __future__ import annotations

from typing import Any


def save(patched: Any, directory: str) -> Any:
    """See `accel.quant.sixbit.save`."""
    from .sixbit import save as _save

    return _save(patched, directory)


__all__ = ["save"]
