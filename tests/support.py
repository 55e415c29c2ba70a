"""Test helpers shared across the test folders: object snapshots for exactness checks, test-only methods."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers.hooks import ModelHook

import accel


def _identity(value: Any) -> Any:
    """An attribute's identity; a tensor's type, shape and dtype (models keep per-call tensors as
    attributes, e.g. Qwen2-VL's `rope_deltas`, a new one at every call)."""
    return (type(value), tuple(value.shape), value.dtype) if isinstance(value, torch.Tensor) else id(value)


def snapshot(obj: Any) -> dict[str, Any]:
    """Everything a patch could leave behind: per module, the public instance attributes (name ->
    identity), the attribute names, the torch hooks and the class; for other pipeline components (the
    scheduler) the attribute names and any instance-level `set_timesteps`. Take it after one call of the
    pipeline, which adds run-time attributes of its own."""
    modules = obj.components.values() if hasattr(obj, "components") else [obj]
    out: dict[str, Any] = {"class": type(obj), "dict": sorted(vars(obj))}
    for i, comp in enumerate(modules):
        if isinstance(comp, torch.nn.Module):
            for name, module in comp.named_modules():
                d = vars(module)
                out[f"{i}:{name}"] = (
                    type(module),
                    {k: _identity(v) for k, v in d.items() if not k.startswith("_") or k == "_diffusers_hook"},
                    sorted(k for k in d if k not in ("_parameters", "_buffers", "_modules")),
                    len(module._forward_hooks),
                    len(module._forward_pre_hooks),
                )
        elif comp is not None and hasattr(comp, "__dict__"):
            out[f"{i}:attrs"] = (type(comp), sorted(vars(comp)), id(vars(comp).get("set_timesteps")))
    return out


class _ScaleHook(ModelHook):
    def __init__(self, factor: float, counters: dict) -> None:
        super().__init__()
        self.factor = factor
        self.counters = counters

    def post_forward(self, module, output):
        self.counters["scaled_calls"] = self.counters.get("scaled_calls", 0) + 1
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
            journal.add_model_hook(d.module, _ScaleHook(self.config.factor, self.counters), "test.scale")
            if self.config.fail_after_hook:
                raise RuntimeError("deliberate failure")


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




def assert_refused_before_parameters(monkeypatch: Any, build: Any, kw: dict, error: type, message: str,
                                     owner: str) -> None:
    """`build(**kw)` raises `error` naming `owner` and `message` before any parameter exists; the spy that
    sees parameters being created is first shown to work on `build()` (a valid config)."""
    import pytest

    def no_parameters(self: Any, name: str, param: Any) -> None:
        raise AssertionError(f"parameter {name} created before the config was checked")

    monkeypatch.setattr(torch.nn.Module, "register_parameter", no_parameters)
    with pytest.raises(AssertionError, match="created before"):
        build()  # the spy works: a valid config gets as far as its first parameter
    with pytest.raises(error) as err:
        build(**kw)
    assert message in str(err.value) and owner in str(err.value)
    assert isinstance(err.value, ValueError)  # a wrong type is a TypeError and a ValueError
