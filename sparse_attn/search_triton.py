"""The GPU path of AdaSpa's block search (sparse_attn/search.py): one Triton kernel, two modes.

One program owns one query block (all its rows, BLOCK_M = the query block size) of one (batch, head), so
the block sums need no atomics:

- fused (AdaSpa's Alg. 1): pass 1 is dense FlashAttention-2 over every key tile (online softmax),
  writing the output and the row log-sum-exp; pass 2 re-reads every key tile and adds
  exp(scale q.k - LSE) per key block with that fresh LSE;
- refresh (Alg. 2): the LSE is loaded (cached from an earlier step) and only pass 2 runs.

The kernel writes block *sums* [B, H, Nq, Nk]; the caller divides by the rows of each query block.
Plain pointer loads, as in sparse_attn/triton_kernel.py, so it also runs under TRITON_INTERPRET=1 (read
when this module is first imported), which is how the tests check it on CPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_kernel import INTERPRETED, LN2, LOG2E, precision

__all__ = ["INTERPRETED", "precision", "search"]


def _configs() -> list[triton.Config]:
    return [
        triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bn in (32, 64)
        for w, s in ((4, 3), (8, 2))
    ]


def _fit_configs(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Key tiles must fit inside one key block."""
    fitted: dict[tuple, triton.Config] = {}
    for c in configs:
        bn = min(c.kwargs["BLOCK_N"], kwargs["KV_BLOCK"])
        fitted.setdefault((bn, c.num_warps, c.num_stages), triton.Config(
            {"BLOCK_N": bn}, num_warps=c.num_warps, num_stages=c.num_stages))
    return list(fitted.values())


@triton.jit
def _search_fwd(
    Q, K, V, Out, Lse, Sums,
    stride_qb, stride_qh, stride_qs, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    stride_ob, stride_oh, stride_os, stride_od,
    H, q_len, kv_len, n_kv_blocks, qk_scale,  # qk_scale = softmax scale * log2(e)
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, KV_BLOCK: tl.constexpr, BLOCK_N: tl.constexpr,
    FUSED: tl.constexpr,  # compute out and LSE first (else: load the cached LSE)
    IEEE: tl.constexpr,
):
    q_blk = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H

    offs_m = q_blk * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    offs_n = tl.arange(0, BLOCK_N)
    row_ok = offs_m < q_len
    dim_ok = offs_d < HEAD_DIM
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qs + offs_d[None, :] * stride_qd,
                mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
    k_base = K + b * stride_kb + h * stride_kh

    if FUSED:
        # -- pass 1: dense attention, online softmax in fp32 (log2 units) ------------------------------
        v_base = V + b * stride_vb + h * stride_vh
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)
        for start in range(0, kv_len, BLOCK_N):
            cols = start + offs_n
            col_ok = cols < kv_len
            k = tl.load(k_base + cols[None, :] * stride_ks + offs_d[:, None] * stride_kd,
                        mask=col_ok[None, :] & dim_ok[:, None], other=0.0)
            if IEEE:
                qk = tl.dot(q, k, input_precision="ieee")
            else:
                qk = tl.dot(q, k)
            qk = tl.where(col_ok[None, :], qk * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1))  # finite: every tile has a real key
            p = tl.math.exp2(qk - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(v_base + cols[:, None] * stride_vs + offs_d[None, :] * stride_vd,
                        mask=col_ok[:, None] & dim_ok[None, :], other=0.0)
            if IEEE:
                acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision="ieee")
            else:
                acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
            m_i = m_new
        lse2 = m_i + tl.math.log2(l_i)
        o_ptrs = Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_os + offs_d[None, :] * stride_od
        tl.store(o_ptrs, (acc / l_i[:, None]).to(Out.dtype.element_ty), mask=row_ok[:, None] & dim_ok[None, :])
        tl.store(Lse + pid_bh * q_len + offs_m, lse2 * LN2, mask=row_ok)
    else:
        lse2 = tl.load(Lse + pid_bh * q_len + offs_m, mask=row_ok, other=float("-inf")) * LOG2E
    # rows without keys (lse = -inf) and padding rows contribute nothing: exp2(qk - inf) = 0
    lse2 = tl.where(row_ok & (lse2 > float("-inf")), lse2, float("inf"))

    # -- pass 2: sum_{i in the query block, j in key block} exp(scale q_i.k_j - LSE_i) ------------------
    sums_ptr = Sums + (pid_bh * tl.num_programs(0) + q_blk) * n_kv_blocks
    for kv_blk in range(0, n_kv_blocks):
        total = tl.zeros([BLOCK_M], dtype=tl.float32)
        for start in tl.static_range(0, KV_BLOCK, BLOCK_N):
            cols = kv_blk * KV_BLOCK + start + offs_n
            col_ok = cols < kv_len
            k = tl.load(k_base + cols[None, :] * stride_ks + offs_d[:, None] * stride_kd,
                        mask=col_ok[None, :] & dim_ok[:, None], other=0.0)
            if IEEE:
                qk = tl.dot(q, k, input_precision="ieee")
            else:
                qk = tl.dot(q, k)
            p = tl.math.exp2(qk * qk_scale - lse2[:, None])
            total += tl.sum(tl.where(col_ok[None, :], p, 0.0), 1)
        tl.store(sums_ptr + kv_blk, tl.sum(total, 0))


_search_fwd_tuned = triton.autotune(
    configs=_configs(),
    key=["BLOCK_M", "KV_BLOCK", "HEAD_DIM_PAD", "FUSED", "IEEE"],
    prune_configs_by={"early_config_prune": _fit_configs},
)(_search_fwd)


def search(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor | None,
    lse: torch.Tensor | None,
    q_block: int,
    kv_block: int,
    scale: float,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """(out or None, lse [B, H, Sq] fp32, block sums [B, H, Nq, Nk] fp32). With `v` (lse None) the fused
    mode; with `lse` (v None) the refresh. q, k, v may have any strides."""
    B, H, Sq, D = q.shape
    Skv = k.shape[2]
    nq, nk = triton.cdiv(Sq, q_block), triton.cdiv(Skv, kv_block)
    fused = v is not None
    out = torch.empty_like(q) if fused else None
    lse = torch.empty(B, H, Sq, device=q.device, dtype=torch.float32) if fused else lse.float().contiguous()
    sums = torch.empty(B, H, nq, nk, device=q.device, dtype=torch.float32)
    # unused operands of the refresh point at q (never read)
    v_arg, out_arg = (v, out) if fused else (q, q)
    ieee = q.dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32
    kernel, tiles = _search_fwd_tuned, {}
    if INTERPRETED:
        kernel, tiles = _search_fwd, {"BLOCK_N": kv_block}
    kernel[(nq, B * H)](
        q, k, v_arg, out_arg, lse, sums,
        *q.stride(), *k.stride(), *v_arg.stride(), *out_arg.stride(),
        H, Sq, Skv, nk, scale * LOG2E,
        HEAD_DIM=D, HEAD_DIM_PAD=max(16, triton.next_power_of_2(D)),
        BLOCK_M=q_block, KV_BLOCK=kv_block, FUSED=fused, IEEE=ieee, **tiles,
    )
    return out, lse, sums
