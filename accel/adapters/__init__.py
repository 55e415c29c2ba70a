"""Model adapters: one place that knows, per model family, where the blocks and attention modules are."""

from __future__ import annotations

import torch

from .base import AttentionSite, BlockRef, BlockStack, ModelAdapter, TokenLayout
from .families import FAMILY_ADAPTERS
from .generic import generic_adapter

__all__ = [
    "AttentionSite",
    "BlockRef",
    "BlockStack",
    "FAMILY_ADAPTERS",
    "ModelAdapter",
    "TokenLayout",
    "adapter_for",
    "family_names",
]


def family_names() -> list[str]:
    return [a.family for a in FAMILY_ADAPTERS]


def adapter_for(denoiser: torch.nn.Module) -> ModelAdapter | None:
    """The family adapter for `denoiser`, else the generic one, else None."""
    for adapter in FAMILY_ADAPTERS:
        if adapter.matches(denoiser):
            return adapter
    return generic_adapter(denoiser)
