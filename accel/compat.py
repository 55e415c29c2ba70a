"""The private parts of diffusers that accel reads, in one place (checked against diffusers 0.42.1).

diffusers' hook machinery is public (`HookRegistry`, `ModelHook`, `StateManager`), but a few of the
things accel needs to undo a patch exactly or to read a block's I/O are not. Each is reached only through
this module; tests/accel/test_compat.py exercises every one on real diffusers objects, so a diffusers
release that renames one fails there, loudly, before anything else breaks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, cast

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import StateManager

HOOK_REGISTRY_ATTR = "_diffusers_hook"  # the instance attribute HookRegistry keeps itself in
STATEFUL_ATTR = "_is_stateful"  # a ModelHook class attribute: diffusers resets such hooks after each call


def registry_of(module: torch.nn.Module) -> HookRegistry | None:
    """The module's own HookRegistry, without creating one."""
    return module.__dict__.get(HOOK_REGISTRY_ATTR)


def drop_registry(module: torch.nn.Module) -> None:
    """Remove the module's (empty) HookRegistry, which diffusers never removes itself."""
    module.__dict__.pop(HOOK_REGISTRY_ATTR, None)


def invalidate_child_registries(root: torch.nn.Module) -> None:
    """Mark stale the child-registry caches diffusers keeps per registry (hooks were added below)."""
    for sub in root.modules():
        registry = registry_of(sub)
        if registry is not None:
            registry.invalidate_child_registries_cache()


def attention_backend(module: torch.nn.Module) -> str | None:
    """The diffusers attention-dispatcher backend `module`'s processor will use right now: the one set on
    it (`set_attention_backend`), else the active one (the `attention_backend` context manager or the
    DIFFUSERS_ATTN_BACKEND default); None for processors that call SDPA themselves (no dispatcher)."""
    processor = getattr(module, "processor", None)
    if processor is None or not hasattr(processor, "_attention_backend"):
        return None
    backend = processor._attention_backend
    if backend is None:
        from diffusers.models.attention_dispatch import _AttentionBackendRegistry

        backend = _AttentionBackendRegistry.get_active_backend()[0]
    return str(getattr(backend, "value", backend))


def keep_outer_wrapper(module: torch.nn.Module, outer: Any, ours: Any, below: Any) -> None:
    """Undo for a diffusers hook that another library wrapped afterwards: `outer` (its wrapper) stays the
    module's `forward` and is pointed at `below` instead of `ours`. accelerate's hooks (model, sequential
    and disk offload; `add_hook_to_module`) call `module._old_forward`; a wrapper of an unknown kind cannot
    be re-pointed, and is dropped with a warning rather than left calling the removed hook."""
    if module.__dict__.get("_old_forward") is ours:
        module.__dict__["forward"] = outer
        module.__dict__["_old_forward"] = below
        return
    logging.getLogger("accel").warning(
        "accel: %s.forward was wrapped by another library after accel's hook, in a way accel cannot re-point; "
        "that wrapper was removed with the hook", type(module).__name__,
    )


def original_forward(hook: ModelHook) -> Callable[..., Any]:
    """The forward a registered hook wraps (what `new_forward` calls to run the module itself)."""
    return cast(Callable[..., Any], hook.fn_ref.original_forward)


def current_context(manager: StateManager) -> Any | None:
    """The `cache_context` diffusers handed this state manager (None outside a context)."""
    return manager._context


def transformer_block_metadata(cls: type) -> Any | None:
    """diffusers' registered I/O metadata of a transformer block class (return indices, argument names),
    or None when the class is not registered."""
    from diffusers.hooks._helpers import TransformerBlockRegistry

    TransformerBlockRegistry._register()
    return TransformerBlockRegistry._registry.get(cls)
