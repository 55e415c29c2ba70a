"""PISA's GPU path: one fused Triton kernel, exact and pooled key blocks on one online-softmax state.

One program computes BLOCK_M query rows of one query block for one (batch, head), in three phases that
share the running max `m_i`, the running denominator `l_i` and the accumulator `acc` (fp32, log2 units):

1. exact: the selected key blocks (`kv_indices`), token by token, as in sparse_attn/triton_kernel.py;
2. pooled: all Nk block means k̄_j in chunks of BLOCK_G, the selected ones masked out (a dense int8
   [Nq, Nk] map); p = 2^(q.k̄_j - m), `l += p B_j`, `acc += p V̂_j`, and the tail mass G += p B_j;
3. hybrid only: `acc += G * c` with c = s q @ h̄ computed beforehand for all rows (one [S, D] x [D, D]
   product in PyTorch: a D x D tile in the kernel would crowd the registers at D = 128), then out = acc / l.

G is rescaled by alpha whenever the running max moves, like `l` and `acc` (the public kernel forgot it,
which is wrong whenever a later pooled chunk raises the max). The block statistics arrive in fp32 from
sparse_attn/pisa.py; the pooled-phase dots run in fp32 (IEEE when the inputs are fp32 and TF32 is off).
Plain pointer loads (no TMA): the kernel runs under TRITON_INTERPRET=1, which is how it is tested on CPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl

from .triton_kernel import INTERPRETED, LN2, LOG2E

if TYPE_CHECKING:
    from .pisa import KeyBlockStats

BLOCK_G = 64  # pooled keys per step of phase 2


@triton.jit
def _pisa_fwd(
    Q, K, V, Out, Lse, KV_NUM, KV_IDX, SEL, KMEAN, VSUM, COUNTS, FIRST,
    stride_qb, stride_qh, stride_qs, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    stride_ob, stride_oh, stride_os, stride_od,
    stride_nb, stride_nh, stride_nq,
    stride_ib, stride_ih, stride_iq, stride_ik,
    stride_sb, stride_sh, stride_sq, stride_sk,
    H, q_len, kv_len, n_kv_blocks, qk_scale,  # qk_scale = softmax scale * log2(e)
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    Q_BLOCK: tl.constexpr, KV_BLOCK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr,
    HYBRID: tl.constexpr, IEEE: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    q_blk = pid_m * BLOCK_M // Q_BLOCK

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    offs_n = tl.arange(0, BLOCK_N)
    offs_g = tl.arange(0, BLOCK_G)
    row_ok = offs_m < q_len
    dim_ok = offs_d < HEAD_DIM

    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qs + offs_d[None, :] * stride_qd,
                mask=row_ok[:, None] & dim_ok[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    g_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # tail mass G, same units as l_i
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)

    # -- phase 1: the selected key blocks, exactly ----------------------------------------------------
    n_blocks = tl.load(KV_NUM + b * stride_nb + h * stride_nh + q_blk * stride_nq)
    idx_ptr = KV_IDX + b * stride_ib + h * stride_ih + q_blk * stride_iq
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    for t in range(0, n_blocks):
        kv_blk = tl.load(idx_ptr + t * stride_ik)
        for start in tl.static_range(0, KV_BLOCK, BLOCK_N):
            cols = kv_blk * KV_BLOCK + start + offs_n
            col_ok = cols < kv_len
            k = tl.load(k_base + cols[None, :] * stride_ks + offs_d[:, None] * stride_kd,
                        mask=col_ok[None, :] & dim_ok[:, None], other=0.0)
            if IEEE:
                qk = tl.dot(q, k, input_precision="ieee")
            else:
                qk = tl.dot(q, k)
            qk = tl.where(col_ok[None, :], qk * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(qk - m_safe[:, None])
            alpha = tl.math.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None]
            v = tl.load(v_base + cols[:, None] * stride_vs + offs_d[None, :] * stride_vd,
                        mask=col_ok[:, None] & dim_ok[None, :], other=0.0)
            if IEEE:
                acc = tl.dot(p.to(v.dtype), v, acc, input_precision="ieee")
            else:
                acc = tl.dot(p.to(v.dtype), v, acc)
            m_i = m_new

    # -- phase 2: every other key block through its mean key (zeroth order) -------------------------
    q32 = q.to(tl.float32)  # the statistics are fp32, so are these dots
    stat_base = pid_bh * n_kv_blocks * HEAD_DIM  # KMEAN / VSUM are contiguous [B*H, Nk, HEAD_DIM] fp32
    sel_base = SEL + b * stride_sb + h * stride_sh + q_blk * stride_sq
    for g0 in range(0, n_kv_blocks, BLOCK_G):
        blk = g0 + offs_g
        in_range = blk < n_kv_blocks
        chosen = tl.load(sel_base + blk * stride_sk, mask=in_range, other=1)
        use = in_range & (chosen == 0)
        kbar = tl.load(KMEAN + stat_base + blk[None, :] * HEAD_DIM + offs_d[:, None],
                       mask=use[None, :] & dim_ok[:, None], other=0.0)  # [HEAD_DIM_PAD, BLOCK_G]
        if IEEE:
            qk = tl.dot(q32, kbar, input_precision="ieee")
        else:
            qk = tl.dot(q32, kbar)
        qk = tl.where(use[None, :], qk * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(qk - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        cnt = tl.load(COUNTS + blk, mask=use, other=0.0)
        mass = tl.sum(p * cnt[None, :], 1)
        l_i = l_i * alpha + mass
        g_i = g_i * alpha + mass  # rescaled like l_i: the public kernel's missing step
        vsum = tl.load(VSUM + stat_base + blk[:, None] * HEAD_DIM + offs_d[None, :],
                       mask=use[:, None] & dim_ok[None, :], other=0.0)  # [BLOCK_G, HEAD_DIM_PAD]
        if IEEE:
            acc = tl.dot(p, vsum, acc * alpha[:, None], input_precision="ieee")
        else:
            acc = tl.dot(p, vsum, acc * alpha[:, None])
        m_i = m_new

    # -- phase 3 (hybrid): the shared first-order moment, weighted by the tail mass -----------------
    if HYBRID:  # FIRST: contiguous [B*H, q_len, HEAD_DIM] fp32, s q @ h̄
        first = tl.load(FIRST + pid_bh * q_len * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :],
                        mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
        acc += g_i[:, None] * first

    has_keys = l_i > 0.0
    out = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    lse = tl.where(has_keys, (m_i + tl.math.log2(tl.where(has_keys, l_i, 1.0))) * LN2, float("-inf"))
    o_ptrs = Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_os + offs_d[None, :] * stride_od
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None] & dim_ok[None, :])
    tl.store(Lse + pid_bh * q_len + offs_m, lse, mask=row_ok)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_num_blocks: torch.Tensor,
    kv_indices: torch.Tensor,
    selected: torch.Tensor,
    stats: KeyBlockStats,
    q_block: int,
    kv_block: int,
    scale: float,
    hybrid: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [B, H, Sq, D] in q's dtype, lse [B, H, Sq] fp32). `selected`: int8 [B|1, H|1, Nq, Nk], 1 where
    the block is in the exact part (it must agree with the index); stats from pisa.key_block_stats."""
    B, H, Sq, D = q.shape
    nk = stats.counts.shape[0]
    out = torch.empty_like(q)
    lse = torch.empty(B, H, Sq, device=q.device, dtype=torch.float32)
    num, idx = kv_num_blocks.expand(B, H, -1), kv_indices.expand(B, H, -1, -1)
    sel = selected.expand(B, H, -1, -1)
    kmean = stats.key_means.contiguous()
    vsum = stats.value_sums.contiguous()
    # s q @ h̄ for every row (fp32); a placeholder pointer for the zeroth order
    first = torch.matmul(q.float(), stats.moment * scale).contiguous() if hybrid else kmean
    ieee = q.dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32
    block_m = min(64, q_block)  # tiles never straddle two query blocks
    block_n = min(64, kv_block)
    grid = (triton.cdiv(Sq, q_block) * (q_block // block_m), B * H)
    _pisa_fwd[grid](
        q, k, v, out, lse, num, idx, sel, kmean, vsum, stats.counts, first,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        *num.stride(), *idx.stride(), *sel.stride(),
        H, Sq, k.shape[2], nk, scale * LOG2E,
        HEAD_DIM=D, HEAD_DIM_PAD=max(16, triton.next_power_of_2(D)),
        Q_BLOCK=q_block, KV_BLOCK=kv_block, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_G=BLOCK_G,
        HYBRID=hybrid, IEEE=ieee,
        **({} if INTERPRETED else {"num_warps": 4, "num_stages": 2}),
    )
    return out, lse
