"""How much one query row attends to each token, computed with a decoder layer's own weights.

PyramidDrop ranks the visual tokens before layer k with layer k's input norm, q/k projections and rotary
embedding (official code `pdrop_rank_drop`); FastV ranks them by the attention of the layer before the
drop. Both are the same computation, made here without `output_attentions` (so it runs under SDPA,
FlashAttention or eager): one query row per sample, scaled dot products against every key, the causal and
padding mask, softmax in fp32 over the whole row, the mean over heads (grouped-query keys repeated).
"""

from __future__ import annotations

import sys

import torch


def _rotate(attn: torch.nn.Module, q: torch.Tensor, k: torch.Tensor, cos_q: torch.Tensor, sin_q: torch.Tensor,
            cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's own `apply_rotary_pos_emb` (from the attention module's source module)."""
    apply = sys.modules[type(attn).__module__].apply_rotary_pos_emb
    q, _ = apply(q, q, cos_q, sin_q)
    _, k = apply(k, k, cos, sin)
    return q, k


@torch.no_grad()
def attention_row(layer: torch.nn.Module, hidden: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                  query: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """The attention probabilities of one query row per sample, averaged over heads: [B, S] fp32.

    `layer`: a decoder layer with `input_layernorm` and `self_attn.{q_proj,k_proj}` (Llama/Qwen2 style);
    `hidden` [B, S, d] its input; `position_embeddings` the (cos, sin) [B|1, S, head_dim] of those S
    tokens; `query` [B] long, the row of each sample that asks; `key_mask` [B, S] bool, the keys that
    exist (padding False). Keys after the query row are masked (causal)."""
    attn = layer.self_attn
    x = layer.input_layernorm(hidden)
    B, S, _ = x.shape
    head_dim = int(attn.head_dim)
    rows = query.view(B, 1, 1)
    x_q = x.gather(1, rows.expand(B, 1, x.shape[-1]))
    q = attn.q_proj(x_q).view(B, 1, -1, head_dim).transpose(1, 2)  # [B, H, 1, hd]
    k = attn.k_proj(x).view(B, S, -1, head_dim).transpose(1, 2)  # [B, KV, S, hd]
    cos, sin = (t.expand(B, S, t.shape[-1]) for t in position_embeddings)
    cos_q, sin_q = (t.gather(1, rows.expand(B, 1, t.shape[-1])) for t in (cos, sin))
    q, k = _rotate(attn, q, k, cos_q, sin_q, cos, sin)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # grouped-query attention
    scale = float(getattr(attn, "scaling", head_dim**-0.5))
    scores = (q.float() @ k.float().transpose(-1, -2)).squeeze(2) * scale  # [B, H, S]
    allowed = key_mask & (torch.arange(S, device=x.device)[None, :] <= query[:, None])
    scores = scores.masked_fill(~allowed[:, None, :], float("-inf"))
    return torch.softmax(scores, dim=-1).mean(dim=1)
