"""Route the SDPA call inside one attention module to a sparse implementation, leaving the rest intact.

diffusers' attention processors differ per model (projections, QK norms, RoPE, where the text tokens
go), but they all end in one `torch.nn.functional.scaled_dot_product_attention` call: directly (PixArt,
DiT, SD3, CogVideoX) or through the attention dispatcher's native backend (Flux, Wan, HunyuanVideo). A
`TorchFunctionMode` entered around one module's forward catches exactly that call, in the processor's
own `[B, H, S, D]` layout, after RoPE: the model's code runs unchanged and nothing global is touched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


@dataclass
class SDPACall:
    """The arguments of one intercepted `scaled_dot_product_attention` call, by name."""

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    attn_mask: torch.Tensor | None = None
    dropout_p: float = 0.0
    is_causal: bool = False
    scale: float | None = None
    enable_gqa: bool = False

    @classmethod
    def bind(cls, args: tuple, kwargs: dict[str, Any]) -> SDPACall:
        return cls(**dict(zip(_SDPA_ARGS, args, strict=False)), **kwargs)

    def dense(self) -> torch.Tensor:
        """The call as the model made it."""
        return F.scaled_dot_product_attention(
            self.query, self.key, self.value, attn_mask=self.attn_mask, dropout_p=self.dropout_p,
            is_causal=self.is_causal, scale=self.scale, enable_gqa=self.enable_gqa,
        )

    def unsupported(self) -> str | None:
        """Why a block-sparse kernel cannot stand in for this call, or None when it can."""
        if self.is_causal:
            return "causal attention"
        if self.dropout_p:
            return "attention dropout"
        if self.query.shape[1] != self.key.shape[1]:
            return "grouped-query attention"
        mask = self.attn_mask
        if mask is not None and (mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[1:3] != (1, 1)):
            return "an attention mask other than a boolean key-padding mask"
        return None

    def kept_keys(self) -> torch.Tensor | None:
        """[B, Skv] bool: the keys a boolean key-padding mask `[B, 1, 1, Skv]` lets through (HunyuanVideo
        masks its padded prompt tokens this way), or None when every key is attended."""
        mask = self.attn_mask
        if mask is None or bool(mask.all()):
            return None
        return mask[:, 0, 0, :].expand(self.key.shape[0], -1)


class SDPARoute(TorchFunctionMode):
    """While active (in this thread), `scaled_dot_product_attention(...)` calls `handler(SDPACall)`."""

    def __init__(self, handler: Callable[[SDPACall], torch.Tensor]) -> None:
        super().__init__()
        self.handler = handler

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return self.handler(SDPACall.bind(args, kwargs))
        return func(*args, **kwargs)
