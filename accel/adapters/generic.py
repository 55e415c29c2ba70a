"""The fallback adapter: finds the block lists of an unknown denoiser by introspection.

It knows where the blocks are, which is enough for block caching, but not the token layout, so methods
that work on attention over image tokens (sparse attention, token reordering) refuse it and say so.
"""

from __future__ import annotations

import torch

from .base import BlockStack, ModelAdapter

# The ModuleList names diffusers' own hooks, cache-dit and transformers agree on.
KNOWN_STACK_NAMES = (
    "transformer_blocks",
    "single_transformer_blocks",
    "double_stream_blocks",
    "single_stream_blocks",
    "blocks",
    "layers",
    "temporal_transformer_blocks",
)


def _uniform_lists(module: torch.nn.Module) -> dict[str, torch.nn.ModuleList]:
    """Every ModuleList under `module` whose entries all share one class, by qualified name."""
    found = {}
    for name, child in module.named_modules():
        if isinstance(child, torch.nn.ModuleList) and len(child) > 0:
            if len({type(m) for m in child}) == 1:
                found[name] = child
    return found


def _cross_attention_attrs(block: torch.nn.Module) -> tuple[str, ...]:
    return tuple(n for n, m in block.named_children() if getattr(m, "is_cross_attention", False))


def generic_adapter(denoiser: torch.nn.Module) -> ModelAdapter | None:
    """An adapter for `denoiser` from its structure, or None when no block list can be found."""
    lists = _uniform_lists(denoiser)
    names = [n for n in lists if n.rsplit(".", 1)[-1] in KNOWN_STACK_NAMES]
    if not names and lists:
        names = [max(lists, key=lambda n: len(lists[n]))]  # the longest list of repeated blocks
    if not names:
        return None
    stacks = tuple(
        BlockStack(name, "single", cross_attention=_cross_attention_attrs(denoiser.get_submodule(name)[0]))
        for name in names
    )
    return ModelAdapter(
        family="generic",
        title=f"generic ({type(denoiser).__name__})",
        denoiser_classes=(type(denoiser).__name__,),
        stacks=stacks,
        cfg="none",
        layout=None,
        generic=True,
        notes="found by introspection: block lists only; no token layout, so attention methods need a real adapter",
    )
