"""Pieces the native backbones share: timestep embeddings, class-label handling and timestep broadcasting.

Nothing here is specific to one paper; each function names where its formula comes from.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def sinusoidal_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10_000.0) -> torch.Tensor:
    """GLIDE/DiT timestep embedding: `[cos(t * f_i), sin(t * f_i)]` with `f_i = max_period**(-i / (dim/2))`.

    `t`: [B] (any real dtype) -> [B, dim] float32. The convention of DiT's `TimestepEmbedder` (Peebles & Xie,
    arXiv 2212.09748, code), which DiCo reuses; cos first.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def edm_positional_embedding(t: torch.Tensor, dim: int = 256, max_positions: float = 10_000.0) -> torch.Tensor:
    """EDM's `PositionalEmbedding` (Karras et al., arXiv 2206.00364, code; `endpoint=False`):
    `[cos(t * f_i), sin(t * f_i)]` with `f_i = (1/max_positions)**(i / (dim/2))`. `t`: [B] -> [B, dim] float32.

    Numerically the same frequencies as `sinusoidal_embedding`; kept separate because LEGO feeds it
    EDM's c_noise = ln(sigma)/4 rather than a DDPM step index.
    """
    half = dim // 2
    freqs = (1.0 / max_positions) ** (torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepMLP(nn.Module):
    """Frequency embedding -> Linear -> SiLU -> Linear (DiT's `TimestepEmbedder.mlp`, also LEGO's)."""

    def __init__(self, hidden_size: int, frequency_dim: int = 256) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, frequencies: torch.Tensor) -> torch.Tensor:
        """[B, frequency_dim] float32 -> [B, hidden_size] in the weights' dtype."""
        return self.mlp(frequencies.to(self.mlp[0].weight.dtype))


def batch_timesteps(timestep: Any, batch: int, device: torch.device) -> torch.Tensor:
    """A python number, a 0-d tensor, or a [B] / [1] tensor -> a [batch] tensor on `device`.

    Raises `ValueError` for `None` or a tensor of another length (the error names the shapes).
    """
    if timestep is None:
        raise ValueError("timestep is required (a number, a 0-d tensor or a tensor of shape [batch])")
    t = timestep if isinstance(timestep, torch.Tensor) else torch.tensor(timestep)
    t = t.to(device).reshape(-1)
    if t.numel() == 1:
        return t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"timestep has {t.numel()} values for a batch of {batch}; give one, or one per sample")
    return t


def class_ids(class_labels: Any, batch: int, num_classes: int, device: torch.device) -> torch.Tensor:
    """Class labels as int64 [batch]; every id >= `num_classes` becomes `num_classes`, the null class of
    classifier-free guidance (diffusers' `DiTPipeline` hard-codes 1000 as its null id, so a model with
    fewer classes maps it here). `None` means all-null (unconditional).

    Raises `ValueError` for a negative id, a float tensor or a wrong length.
    """
    if class_labels is None:
        return torch.full((batch,), num_classes, dtype=torch.long, device=device)
    y = class_labels if isinstance(class_labels, torch.Tensor) else torch.tensor(class_labels)
    if y.is_floating_point() or y.is_complex():
        raise ValueError(f"class_labels must be integer class ids; got dtype {y.dtype}")
    y = y.to(device=device, dtype=torch.long).reshape(-1)
    if y.numel() == 1 and batch > 1:
        y = y.expand(batch)
    if y.numel() != batch:
        raise ValueError(f"class_labels has {y.numel()} ids for a batch of {batch}")
    if bool((y < 0).any()):
        raise ValueError(f"class_labels must be >= 0; got {y.tolist()}")
    return y.clamp(max=num_classes)


def drop_labels(y: torch.Tensor, num_classes: int, prob: float, training: bool) -> torch.Tensor:
    """Classifier-free-guidance label dropout during training (DiT's `LabelEmbedder.token_drop`): each
    label becomes the null id `num_classes` with probability `prob`. The identity outside training."""
    if not training or prob <= 0:
        return y
    drop = torch.rand(y.shape[0], device=y.device) < prob
    return torch.where(drop, torch.full_like(y, num_classes), y)
