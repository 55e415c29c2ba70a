"""Where the parts of a transformers 5.x VLM are that visual-token pruning works on, in one structure.

    LlavaForConditionalGeneration            (the user's model, `model`)
      .model: LlavaModel                     `inner`: receives input_ids, merges image features
        .language_model: LlamaModel          `language_model`: embeddings in, decoder layers, norm
          .layers[i]: LlamaDecoderLayer      `layers`
          .rotary_emb                        `rotary`: position ids -> (cos, sin)

LLaVA, LLaVA-NeXT, LLaVA-OneVision, Qwen2-VL and Qwen2.5-VL all have this shape in transformers 5.x;
the language model only ever sees embeddings, so the visual positions are read one level up, from the
inner model's `input_ids` (the config's image and video token ids).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from accel.errors import UnsupportedModelError

SUPPORTED = (
    "LlavaForConditionalGeneration",
    "LlavaNextForConditionalGeneration",
    "LlavaOnevisionForConditionalGeneration",
    "Qwen2VLForConditionalGeneration",
    "Qwen2_5_VLForConditionalGeneration",
)


@dataclass(frozen=True)
class VLMLayout:
    model: torch.nn.Module
    inner: torch.nn.Module
    language_model: torch.nn.Module
    layers: torch.nn.ModuleList
    rotary: torch.nn.Module
    visual_token_ids: tuple[int, ...]  # input ids that mark image (and video) tokens
    mrope: bool  # 3-D rotary positions (Qwen2-VL)

    @property
    def depth(self) -> int:
        return len(self.layers)

    @property
    def text_config(self) -> Any:
        return self.language_model.config


def _token_ids(config: Any) -> tuple[int, ...]:
    ids = []
    for name in ("image_token_id", "video_token_id"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            ids.append(value)
    return tuple(ids)


def vlm_layout(model: Any, method: str) -> VLMLayout:
    """The layout of `model`, a supported VLM; `UnsupportedModelError` naming what is supported otherwise."""
    names = {cls.__name__ for cls in type(model).__mro__}
    if not names & set(SUPPORTED):
        raise UnsupportedModelError(
            f"accel: method {method!r} prunes visual tokens inside the language model of a VLM; "
            f"{type(model).__name__} is not one it supports: {', '.join(SUPPORTED)}."
        )
    inner = model.model
    lm = inner.language_model
    layers, rotary = getattr(lm, "layers", None), getattr(lm, "rotary_emb", None)
    attn = getattr(layers[0], "self_attn", None) if layers else None
    parts = ("q_proj", "k_proj")
    if rotary is None or attn is None or not all(hasattr(attn, p) for p in parts) or not hasattr(
            layers[0], "input_layernorm"):
        raise UnsupportedModelError(
            f"accel: method {method!r}: the language model {type(lm).__name__} of {type(model).__name__} lacks "
            "the parts ranking needs (layers[i].input_layernorm, self_attn.q_proj/k_proj, rotary_emb)."
        )
    ids = _token_ids(model.config)
    if not ids:
        raise UnsupportedModelError(f"accel: method {method!r}: {type(model).__name__}'s config names no image token id.")
    mrope = "Qwen2VL" in type(model).__name__ or "Qwen2_5_VL" in type(model).__name__
    return VLMLayout(model, inner, lm, layers, rotary, ids, mrope)
