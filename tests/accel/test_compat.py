"""Every private part of diffusers that accel reads (accel/compat.py), on real diffusers objects: a
diffusers release that renames one fails here first, naming it."""

from __future__ import annotations

import torch
from diffusers import FluxTransformer2DModel
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager
from diffusers.models.transformers.transformer_flux import FluxTransformerBlock

from accel import compat


class _Wrap(ModelHook):
    def new_forward(self, module, *args, **kwargs):  # noqa: ANN001, ANN202
        return compat.original_forward(self)(*args, **kwargs) + 1


def test_hook_registry_attribute_and_child_cache():
    parent = torch.nn.Sequential(torch.nn.Linear(2, 2))
    child = parent[0]
    assert compat.registry_of(child) is None
    registry = HookRegistry.check_if_exists_or_initialize(child)
    assert compat.registry_of(child) is registry, f"diffusers no longer keeps its registry in {compat.HOOK_REGISTRY_ATTR}"
    registry.register_hook(_Wrap(), "wrap")
    x = torch.ones(1, 2)
    assert torch.equal(child(x), torch.nn.functional.linear(x, child.weight, child.bias) + 1)  # original_forward
    HookRegistry.check_if_exists_or_initialize(parent)
    compat.invalidate_child_registries(parent)  # diffusers' public invalidation, on every registry below
    registry.remove_hook("wrap", recurse=False)
    compat.drop_registry(child)
    assert compat.registry_of(child) is None


def test_state_manager_context_and_stateful_flag():
    manager = StateManager(BaseState)
    assert compat.current_context(manager) is None
    manager.set_context("cond")
    assert compat.current_context(manager) == "cond"
    assert hasattr(ModelHook, compat.STATEFUL_ATTR), "diffusers renamed the stateful-hook flag"


def test_transformer_block_metadata():
    meta = compat.transformer_block_metadata(FluxTransformerBlock)
    assert meta is not None and meta.return_hidden_states_index is not None
    assert compat.transformer_block_metadata(FluxTransformer2DModel) is None
