"""Shared test helpers: object snapshots for exactness checks, and test-only methods."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch
from diffusers.hooks import ModelHook

import accel
from accel.method import _REGISTRY


def snapshot(obj: Any) -> dict[str, Any]:
    """Everything a patch could leave behind: per module, the instance attributes (name -> identity),
    the hooks, and the class; plus the scheduler's instance attributes for a pipeline."""
    modules = obj.components.values() if hasattr(obj, "components") else [obj]
    out: dict[str, Any] = {"class": type(obj), "dict": sorted(vars(obj))}
    for i, comp in enumerate(modules):
        if isinstance(comp, torch.nn.Module):
            for name, module in comp.named_modules():
                d = vars(module)
                out[f"{i}:{name}"] = (
                    type(module),
                    {k: id(v) for k, v in d.items() if not k.startswith("_") or k == "_diffusers_hook"},
                    sorted(k for k in d if k not in ("_parameters", "_buffers", "_modules")),
                    len(module._forward_hooks),
                    len(module._forward_pre_hooks),
                )
        elif comp is not None:
            out[f"{i}:attrs"] = (type(comp), {k: id(v) for k, v in vars(comp).items()})
    return out


class _ScaleHook(ModelHook):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def post_forward(self, module, output):
        if isinstance(output, tuple):
            return (output[0] * self.factor, *output[1:])
        output.sample = output.sample * self.factor
        return output


@dataclass(frozen=True)
class ScaleConfig(accel.MethodConfig):
    method = "test-scale"
    factor: float = accel.option(0.5, "multiplies the denoiser output", low=0.0, high=2.0, low_open=True)
    mode: str = accel.option("post", "where to scale", choices=("post", "pre"))
    fail_after_hook: bool = accel.option(False, "raise after registering a hook (atomicity test)")


class ScaleOutput(accel.Method):
    """Test-only: scales the denoiser output, so a leftover hook changes results visibly."""

    name = "test-scale"
    summary = "test only"
    claims = frozenset({"blocks"})
    Config = ScaleConfig

    def apply(self, target, journal, tracker):
        for d in target.denoisers:
            journal.add_model_hook(d.module, _ScaleHook(self.config.factor), "test.scale")
            if self.config.fail_after_hook:
                raise RuntimeError("deliberate failure")
        self.counters["hooks"] = len(target.denoisers)


@dataclass(frozen=True)
class ClaimConfig(accel.MethodConfig):
    method = "test-claims-blocks"


class ClaimsBlocks(accel.Method):
    name = "test-claims-blocks"
    summary = "test only: claims the blocks, does nothing"
    claims = frozenset({"blocks"})
    Config = ClaimConfig

    def apply(self, target, journal, tracker):
        pass


@dataclass(frozen=True)
class WanOnlyConfig(accel.MethodConfig):
    method = "test-wan-only"


class WanOnly(accel.Method):
    name = "test-wan-only"
    summary = "test only: supports the wan family alone and needs its token layout"
    families = ("wan",)
    needs_layout = True
    Config = WanOnlyConfig

    def apply(self, target, journal, tracker):
        pass


@pytest.fixture
def test_methods():
    """Registers the test-only methods for one test and removes them afterwards."""
    added = [ScaleOutput, ClaimsBlocks, WanOnly]
    for cls in added:
        accel.register_method(cls)
    yield
    for cls in added:
        _REGISTRY.pop(cls.name, None)


@pytest.fixture
def tiny():
    """Builds (fresh) tiny zoo pipelines: tiny("pixart-alpha")."""

    def build(name: str, seed: int = 0):
        return accel.zoo.load(name, size="tiny", seed=seed)

    return build
