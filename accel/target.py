"""Resolving what the user passed to `accel.patch` into the pieces methods work on."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import torch

from .adapters import ModelAdapter, adapter_for
from .errors import UnsupportedModelError

logger = logging.getLogger("accel")

# Pipeline components that run the denoising loop (Wan 2.2 adds a second, low-noise transformer).
DENOISER_COMPONENTS = ("transformer", "transformer_2", "unet")


@dataclass(frozen=True)
class Denoiser:
    component: str  # attribute name on the pipeline ("transformer"), or "model" for a bare model
    module: torch.nn.Module
    adapter: ModelAdapter


@dataclass(frozen=True)
class PatchTarget:
    obj: Any  # exactly what the user passed
    kind: Literal["pipeline", "denoiser", "transformers"]
    denoisers: tuple[Denoiser, ...]

    @property
    def pipeline(self) -> Any | None:
        return self.obj if self.kind == "pipeline" else None

    @property
    def adapter(self) -> ModelAdapter:
        return self.denoisers[0].adapter

    @property
    def family(self) -> str:
        return self.adapter.family

    def describe(self) -> str:
        names = ", ".join(f"{d.component}={type(d.module).__name__}" for d in self.denoisers)
        return f"{type(self.obj).__name__} ({names}; family {self.family})"


def _unwrap_compiled(module: Any, where: str) -> Any:
    inner = getattr(module, "_orig_mod", None)
    if isinstance(module, torch.nn.Module) and isinstance(inner, torch.nn.Module):
        logger.warning(
            "accel: %s was wrapped by torch.compile before patching; accel patches the underlying module. "
            "Patch first and compile after (or use compile_repeated_blocks) so compiled code sees the hooks.",
            where,
        )
        return inner
    return module


def _is_pipeline(obj: Any) -> bool:
    from diffusers import DiffusionPipeline

    return isinstance(obj, DiffusionPipeline)


def _is_diffusers_model(obj: Any) -> bool:
    from diffusers import ModelMixin

    return isinstance(obj, ModelMixin)


def _is_transformers_model(obj: Any) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    return isinstance(obj, PreTrainedModel)


def is_vlm(module: Any) -> bool:
    """A transformers vision-language model: its config names an image token."""
    config = getattr(module, "config", None)
    return _is_transformers_model(module) and any(
        isinstance(getattr(config, name, None), int) for name in ("image_token_id", "image_token_index"))


def _denoiser(component: str, module: torch.nn.Module) -> Denoiser:
    adapter = adapter_for(module)
    if adapter is None:
        raise UnsupportedModelError(
            f"accel: {type(module).__name__} ({component}) has no known adapter and no list of repeated "
            "transformer blocks was found by introspection, so no method can be placed on it."
        )
    return Denoiser(component, module, adapter)


def resolve_target(obj: Any) -> PatchTarget:
    """Find the denoiser(s) of a pipeline, or accept a bare diffusers / transformers model."""
    obj = _unwrap_compiled(obj, "the target")
    if _is_pipeline(obj):
        found = []
        for name in DENOISER_COMPONENTS:
            module = getattr(obj, name, None)
            if isinstance(module, torch.nn.Module):
                found.append(_denoiser(name, _unwrap_compiled(module, f"pipe.{name}")))
        model = getattr(obj, "model", None)  # block-diffusion language pipelines (LLaDA2Pipeline) hold it there
        if not found and _is_transformers_model(model):
            found.append(_denoiser("model", _unwrap_compiled(model, "pipe.model")))
        if not found:
            raise UnsupportedModelError(
                f"accel: {type(obj).__name__} has no denoiser component (looked for "
                f"{', '.join(DENOISER_COMPONENTS)} and a transformers model at `model`)."
            )
        return PatchTarget(obj, "pipeline", tuple(found))
    if _is_diffusers_model(obj):
        return PatchTarget(obj, "denoiser", (_denoiser("model", obj),))
    if _is_transformers_model(obj):
        return PatchTarget(obj, "transformers", (_denoiser("model", obj),))
    held = getattr(obj, "model", None)  # a holder such as a transformers pipeline
    if not isinstance(obj, torch.nn.Module) and isinstance(held, torch.nn.Module) and _is_transformers_model(held):
        return PatchTarget(obj, "transformers", (_denoiser("model", held),))
    raise UnsupportedModelError(
        f"accel: cannot patch a {type(obj).__module__}.{type(obj).__name__}; the target must be a diffusers "
        "pipeline, a diffusers model (the denoiser), a transformers model, or an object holding one at `.model`."
    )
