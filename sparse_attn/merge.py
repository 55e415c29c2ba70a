"""Combining partial attentions: attention over key sets A and B (disjoint) from the results over each.

With o_X = softmax over X, times v, and lse_X = log sum_{k in X} exp(scale q.k):
    lse = log(exp(lse_A) + exp(lse_B)),   o = exp(lse_A - lse) o_A + exp(lse_B - lse) o_B.
This is exact (up to rounding), which lets a method add a second pass (other keys, another kernel, a
cached part) to a block-sparse result. A side that attended nothing (lse = -inf) gets weight 0; if both
did, the merged row is 0 with lse = -inf, the same convention as `block_sparse_attention`.
"""

from __future__ import annotations

import torch


def merge_attention(
    o1: torch.Tensor, lse1: torch.Tensor, o2: torch.Tensor, lse2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse) of attention over the union of the two key sets. Outputs of any layout, each LSE shaped
    like its output without the last (head-dim) axis: [B, H, S] for [B, H, S, D], [B, S, H] for the bshd
    layout. Computed in fp32; out comes back in o1's dtype, lse in fp32."""
    if o1.shape != o2.shape or lse1.shape != lse2.shape or lse1.shape != o1.shape[:-1]:
        raise ValueError(
            f"shapes do not fit: o {tuple(o1.shape)} / {tuple(o2.shape)}, lse {tuple(lse1.shape)} / {tuple(lse2.shape)}"
        )
    lse1, lse2 = lse1.float(), lse2.float()
    lse = torch.logaddexp(lse1, lse2)  # -inf only where both are -inf
    ref = torch.where(lse == float("-inf"), 0.0, lse)
    w1 = torch.exp(lse1 - ref).unsqueeze(-1)  # exp(-inf) = 0 for a side without keys
    w2 = torch.exp(lse2 - ref).unsqueeze(-1)
    out = w1 * o1.float() + w2 * o2.float()
    return out.to(o1.dtype), lse
