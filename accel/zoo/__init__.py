"""An offline model zoo: real diffusers pipelines and transformers VLMs with small random weights, for tests
and benchmarks.

    pipe = accel.zoo.load("wan", size="tiny")
    latents = accel.zoo.generate(pipe, steps=2)          # or pipe(**accel.zoo.inputs(pipe))

    model = accel.zoo.load("qwen2-vl", size="tiny")      # a VLM (vlm.py): its processor at model.processor
    x = accel.zoo.vlm_inputs(model, batch=2, vary=True)  # the processor's BatchFeature: model(**x), generate(**x)
    accel.zoo.image_token_ids(model)                     # the input ids that mark visual tokens

Nothing is downloaded: every component is built from a config and seeded; the pipelines' text encoders are
left out (`inputs` supplies prompt embeddings), the VLMs' tokenizers and processors are built in code. This
package imports nothing else from `accel`.
"""

from __future__ import annotations

import difflib
import inspect
from functools import partial
from typing import Any

import diffusers
import torch

from .calls import family_of, generate, inputs
from .families import BUILT, ENTRIES, SIZES, TEXT_COMPONENTS, keep_labels
from .reference import TRAINED, evaluate
from .vlm import NAMES as VLM_NAMES
from .vlm import image_token_ids, vlm_inputs

DLLM_NAMES = ("llada2", "diffusion-gemma")  # block-diffusion language pipelines (dllm.py), loaded on demand
CHUNK_NAMES = ("anyflow-far",)  # chunk-wise autoregressive video pipelines with a KV cache (far.py)
BACKBONE_NAMES = ("dico", "lego")  # accel.models' native backbones in their own pipelines (backbones.py)
TEXT_TRAINED = ("digits-copy", "digits-copy-gemma")  # trained block-diffusion language pipelines

__all__ = ["built_from", "is_text", "is_vlm", "default_resolution", "evaluate", "family_of", "generate", "image_token_ids", "inputs", "load",
           "names", "resizable", "vlm_inputs"]


def names() -> list[str]:
    """The zoo entry names, in a stable order (random-weight pipelines, VLMs, block-diffusion language
    pipelines, chunk-wise video pipelines and native backbones, then trained ones)."""
    return [*ENTRIES, *VLM_NAMES, *DLLM_NAMES, *CHUNK_NAMES, *BACKBONE_NAMES, *TRAINED]


def is_vlm(name: str) -> bool:
    """Whether the entry is a transformers VLM (the random-weight families and the trained digits-vqa)
    rather than a diffusers pipeline."""
    return name in VLM_NAMES or name == "digits-vqa"


def is_text(name: str) -> bool:
    """Whether the entry is a block-diffusion language pipeline (`LLaDA2Pipeline`: "llada2", the trained
    "digits-copy"; `DiffusionGemmaPipeline`: "diffusion-gemma", the trained "digits-copy-gemma"), which
    generates tokens rather than images or videos."""
    return name in DLLM_NAMES or name in TEXT_TRAINED


def _check(name: str, size: str) -> None:
    if name not in ENTRIES:
        valid = names()
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        if name in VLM_NAMES:
            hint = " It is a VLM: load it with accel.zoo.load; it has no default resolution."
        raise ValueError(f"Unknown zoo model {name!r}.{hint} Valid names: {', '.join(valid)}.")
    if size not in SIZES:
        raise ValueError(f"Unknown zoo size {size!r} for {name!r}. Valid sizes: {', '.join(SIZES)}.")


def default_resolution(name: str, size: str = "tiny") -> dict[str, int]:
    """height and width (and num_frames for video entries) that the entry is sized for."""
    _check(name, size)
    return dict(ENTRIES[name].resolution[size])


def resizable(name: str) -> bool:
    """Whether the entry's pipeline takes a height and width (DiT's has a fixed sample size)."""
    _check(name, "tiny")
    call = getattr(diffusers, ENTRIES[name].pipeline).__call__
    return "height" in inspect.signature(call).parameters


def load(name: str, size: str = "tiny", seed: int = 0, dtype: torch.dtype = torch.float32) -> Any:
    """Builds the zoo pipeline `name` with deterministic weights: the same seed gives bit-identical weights.

    The global torch RNG is restored afterwards, so loading does not disturb the caller's randomness.
    VLM entries (`vlm.NAMES`, e.g. "llava-next") return the transformers model in eval() with its processor
    at `model.processor` (see `vlm.load`); "llada2" a diffusers `LLaDA2Pipeline` of a block-causal
    transformers model (`dllm.load`), "diffusion-gemma" its `DiffusionGemmaPipeline`; "anyflow-far" an
    `AnyFlowFARPipeline` (`far.load`). Trained entries (`TRAINED`, e.g. "digits-image") load their
    committed checkpoint; seed is ignored, and so is size once checked.

    Raises `ValueError` naming the valid sizes for a `size` not in `SIZES` ("tiny", "bench"), for every
    entry (trained ones included), before anything is built or loaded.
    """
    if size not in SIZES:
        raise ValueError(f"Unknown zoo size {size!r} for {name!r}. Valid sizes: {', '.join(SIZES)}.")
    if name in TRAINED:
        from . import reference

        return reference.load(name, dtype=dtype)
    if name in VLM_NAMES:
        from . import vlm

        return vlm.load(name, size=size, seed=seed, dtype=dtype)
    if name in DLLM_NAMES:
        from . import dllm

        return dllm.load(name, size=size, seed=seed, dtype=dtype)
    if name in CHUNK_NAMES:
        from . import far

        return far.load(name, size=size, seed=seed, dtype=dtype)
    if name in BACKBONE_NAMES:
        from . import backbones

        return backbones.load(name, size=size, seed=seed, dtype=dtype)
    _check(name, size)
    entry = ENTRIES[name]
    cls = getattr(diffusers, entry.pipeline)
    with torch.random.fork_rng(devices=[]):
        components = {}
        for key, value in entry.build(size).items():
            if isinstance(value, partial):
                # A model: seed right before it, so its weights depend on `seed` only. eval() as
                # from_pretrained leaves it: no dropout (DiT would drop class labels at random).
                torch.manual_seed(seed)
                value = value().eval()
            components[key] = value
    params = inspect.signature(cls.__init__).parameters
    components.update({k: None for k in TEXT_COMPONENTS if k in params})
    if dtype != torch.float32:
        for value in components.values():
            if isinstance(value, diffusers.ModelMixin):
                _cast(value, dtype)
    pipe = cls(**components)
    if "id2label" in components:
        keep_labels(pipe)
    pipe.set_progress_bar_config(disable=True)
    BUILT[pipe] = (name, size)
    return pipe


def _cast(model: diffusers.ModelMixin, dtype: torch.dtype) -> None:
    """Casts like `from_pretrained(torch_dtype=...)`: weights named after the model's
    `_keep_in_fp32_modules` (e.g. Wan's norms and `scale_shift_table`) stay float32."""
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    torch.nn.Module.to(model, dtype=dtype)  # ModelMixin.to would warn about the fp32 modules
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if keep.intersection(name.split(".")) and tensor.is_floating_point():
            tensor.data = tensor.data.float()


def built_from(pipe: Any) -> tuple[str, str] | None:
    """(name, size) of the zoo entry that built `pipe` (a pipeline or a VLM), or None for any other object."""
    from . import backbones, dllm, far, vlm

    return (BUILT.get(pipe) or vlm.built_from(pipe) or dllm.BUILT.get(pipe) or far.BUILT.get(pipe)
            or backbones.BUILT.get(pipe))
