"""The portable path: plain PyTorch ops (gather the selected key tiles, batched matmul, softmax).

Used where neither the Triton kernel (GPU) nor the C++ kernel (CPU, needs a compiler) is available, as
the differentiable path (the kernels are forward-only), and as a second implementation in the tests. It
computes in fp32 like the kernels, but is several times slower than the C++ kernel on CPU: gathering
the keys of every query tile moves as many bytes as the sparsity saves. Query tiles are processed in
chunks that bound the temporary memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .tiles import TileIndex

CHUNK_ELEMENTS = 1 << 22  # scores per chunk (16 MiB of fp32)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: TileIndex,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [B, H, Sq, D] in q's dtype, lse [B, H, Sq] fp32); the index is expanded to [B, H, ...]."""
    counts, indices, q_tile, kv_tile = index.counts, index.indices, index.q_tile, index.kv_tile
    B, H, Sq, D = q.shape
    Skv = k.shape[2]
    nq, nk = -(-Sq // q_tile), -(-Skv // kv_tile)
    width = indices.shape[-1]
    device = q.device

    qb = F.pad(q.float() * scale, (0, 0, 0, nq * q_tile - Sq)).reshape(B * H * nq, q_tile, D)
    kb = F.pad(k.float(), (0, 0, 0, nk * kv_tile - Skv)).reshape(B * H * nk, kv_tile, D)
    vb = F.pad(v.float(), (0, 0, 0, nk * kv_tile - Skv)).reshape(B * H * nk, kv_tile, D)
    key_exists = (torch.arange(nk * kv_tile, device=device) < Skv).view(nk, kv_tile)
    # Task t = (b*H + h)*nq + query tile; its key tile ids as rows of the flat [B*H*nk] tile list.
    ids = indices.reshape(B * H * nq, width).long()
    used = torch.arange(width, device=device) < counts.reshape(B * H * nq, 1)
    ids = torch.where(used, ids, 0)
    flat_ids = ids + (torch.arange(B * H * nq, device=device) // nq * nk).unsqueeze(1)

    # in-place softmax unless autograd has to see the steps
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    out = torch.empty(B * H * nq, q_tile, D, dtype=torch.float32, device=device)
    lse = torch.empty(B * H * nq, q_tile, dtype=torch.float32, device=device)
    chunk = max(1, CHUNK_ELEMENTS // (q_tile * width * kv_tile))
    for t0 in range(0, B * H * nq, chunk):
        t1 = min(t0 + chunk, B * H * nq)
        sel = flat_ids[t0:t1].reshape(-1)
        keys = kb.index_select(0, sel).view(t1 - t0, width * kv_tile, D)
        values = vb.index_select(0, sel).view(t1 - t0, width * kv_tile, D)
        valid = (used[t0:t1].unsqueeze(-1) & key_exists[ids[t0:t1]]).view(t1 - t0, 1, width * kv_tile)
        s = torch.bmm(qb[t0:t1], keys.transpose(1, 2))
        s = s.masked_fill(~valid, float("-inf")) if grad else s.masked_fill_(~valid, float("-inf"))
        m = s.amax(dim=-1, keepdim=True)
        m = torch.where(torch.isinf(m), 0.0, m)  # rows with no keys: avoid -inf - -inf
        p = torch.exp(s - m) if grad else s.sub_(m).exp_()
        total = p.sum(dim=-1, keepdim=True)
        o = torch.bmm(p, values)
        out[t0:t1] = torch.where(total > 0, o / total, 0.0)
        lse[t0:t1] = (m + total.log()).squeeze(-1)  # log(0) = -inf for rows with no keys
    out = out.view(B, H, nq * q_tile, D)[:, :, :Sq]
    return out.to(q.dtype), lse.view(B, H, nq * q_tile)[:, :, :Sq]
