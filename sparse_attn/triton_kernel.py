"""The GPU path: a Triton block-sparse attention kernel (FlashAttention-2 forward, block index loop).

It reads like Triton's fused-attention tutorial with one change: instead of walking every key tile,
the inner loop walks the key blocks listed for its query block in `kv_indices` (sparse_attn/blocks.py).
One program computes BLOCK_M query rows (a query block, or a slice of one) for one (batch, head):

1. load the query tile once;
2. for each listed key block, and each BLOCK_N-wide tile inside it: scores = q . k^T in fp32 (log2
   units), online softmax (running max `m_i`, running sum `l_i`, rescale `acc`), acc += p . v;
3. write acc / l_i, and the row log-sum-exp (natural log).

Plain pointer arithmetic (no TMA, no block pointers) keeps it runnable under the Triton interpreter
(`TRITON_INTERPRET=1`), which is how CI tests it on CPU. Triton reads that flag when a kernel is
decorated, i.e. when this module is first imported, so set it before (tests do so in a subprocess).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


def _interpreted() -> bool:
    knobs = getattr(triton, "knobs", None)  # triton >= 3.4 keeps its flags there
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


INTERPRETED = _interpreted()


def _configs() -> list[triton.Config]:
    """A few tile shapes, as in Triton's fused-attention tutorial (pruned to fit the blocks)."""
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm in (64, 128)
        for bn in (32, 64)
        for w, s in ((4, 3), (8, 2))
    ]


def _fit_configs(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Tiles must fit inside one block: clamp BLOCK_M to the query block, BLOCK_N to the key block."""
    fitted: dict[tuple, triton.Config] = {}
    for c in configs:
        bm = min(c.kwargs["BLOCK_M"], kwargs["Q_BLOCK"])
        bn = min(c.kwargs["BLOCK_N"], kwargs["KV_BLOCK"])
        fitted.setdefault((bm, bn, c.num_warps, c.num_stages), triton.Config(
            {"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=c.num_warps, num_stages=c.num_stages))
    return list(fitted.values())


@triton.jit
def _block_sparse_fwd(
    Q, K, V, Out, Lse, KV_NUM, KV_IDX,
    stride_qb, stride_qh, stride_qs, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    stride_ob, stride_oh, stride_os, stride_od,
    stride_nb, stride_nh, stride_nq,
    stride_ib, stride_ih, stride_iq, stride_ik,
    H, q_len, kv_len, qk_scale,  # qk_scale = softmax scale * log2(e)
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    Q_BLOCK: tl.constexpr, KV_BLOCK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    IEEE: tl.constexpr,  # fp32 inputs: exact fp32 dot products rather than tf32
):
    # -- which rows: program (tile of BLOCK_M query rows, batch*head) -------------------------------
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    q_blk = pid_m * BLOCK_M // Q_BLOCK  # the query block this tile belongs to

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    offs_n = tl.arange(0, BLOCK_N)
    row_ok = offs_m < q_len
    dim_ok = offs_d < HEAD_DIM

    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qs + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=row_ok[:, None] & dim_ok[None, :], other=0.0)

    # -- running softmax state, fp32 --------------------------------------------------------------------
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)

    # -- the key blocks this query block attends ----------------------------------------------------
    n_blocks = tl.load(KV_NUM + b * stride_nb + h * stride_nh + q_blk * stride_nq)
    idx_ptr = KV_IDX + b * stride_ib + h * stride_ih + q_blk * stride_iq
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    for t in range(0, n_blocks):
        kv_blk = tl.load(idx_ptr + t * stride_ik)
        for start in tl.static_range(0, KV_BLOCK, BLOCK_N):
            cols = kv_blk * KV_BLOCK + start + offs_n
            col_ok = cols < kv_len  # the last block may be partial
            k = tl.load(k_base + cols[None, :] * stride_ks + offs_d[:, None] * stride_kd,
                        mask=col_ok[None, :] & dim_ok[:, None], other=0.0)  # [HEAD_DIM_PAD, BLOCK_N]
            if IEEE:
                qk = tl.dot(q, k, input_precision="ieee")
            else:
                qk = tl.dot(q, k)
            qk = tl.where(col_ok[None, :], qk * qk_scale, float("-inf"))

            m_new = tl.maximum(m_i, tl.max(qk, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing seen yet
            p = tl.math.exp2(qk - m_safe[:, None])
            alpha = tl.math.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None]

            v = tl.load(v_base + cols[:, None] * stride_vs + offs_d[None, :] * stride_vd,
                        mask=col_ok[:, None] & dim_ok[None, :], other=0.0)  # [BLOCK_N, HEAD_DIM_PAD]
            if IEEE:
                acc = tl.dot(p.to(v.dtype), v, acc, input_precision="ieee")
            else:
                acc = tl.dot(p.to(v.dtype), v, acc)
            m_i = m_new

    # -- epilogue: normalise; a row that attended nothing gets 0 and lse = -inf --------------------
    has_keys = l_i > 0.0
    out = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    lse = tl.where(has_keys, (m_i + tl.math.log2(tl.where(has_keys, l_i, 1.0))) * LN2, float("-inf"))
    o_ptrs = Out + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_os + offs_d[None, :] * stride_od
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None] & dim_ok[None, :])
    tl.store(Lse + pid_bh * q_len + offs_m, lse, mask=row_ok)


# On the GPU the tile sizes are tuned per (block sizes, head dim, precision); the interpreter runs the
# plain kernel with one tile per block, since its timings mean nothing.
_block_sparse_fwd_tuned = triton.autotune(
    configs=_configs(),
    key=["Q_BLOCK", "KV_BLOCK", "HEAD_DIM_PAD", "IEEE"],
    prune_configs_by={"early_config_prune": _fit_configs},
)(_block_sparse_fwd)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_num_blocks: torch.Tensor,
    kv_indices: torch.Tensor,
    q_block: int,
    kv_block: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [B, H, Sq, D] in q's dtype, lse [B, H, Sq] fp32). Any strides; the index may broadcast
    (size-1 batch/head dims are read with stride 0)."""
    B, H, Sq, D = q.shape
    Skv = k.shape[2]
    out = torch.empty_like(q)  # same memory layout as q: [B, S, H, D] storage stays so for diffusers
    lse = torch.empty(B, H, Sq, device=q.device, dtype=torch.float32)
    num, idx = kv_num_blocks.expand(B, H, -1), kv_indices.expand(B, H, -1, -1)
    ieee = q.dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32

    def grid(meta: dict) -> tuple[int, int]:
        return (triton.cdiv(Sq, q_block) * (q_block // meta["BLOCK_M"]), B * H)

    kernel, tiles = _block_sparse_fwd_tuned, {}
    if INTERPRETED:
        kernel, tiles = _block_sparse_fwd, {"BLOCK_M": q_block, "BLOCK_N": kv_block}
    kernel[grid](
        q, k, v, out, lse, num, idx,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        *num.stride(), *idx.stride(),
        H, Sq, Skv, scale * LOG2E,
        HEAD_DIM=D, HEAD_DIM_PAD=max(16, triton.next_power_of_2(D)),
        Q_BLOCK=q_block, KV_BLOCK=kv_block, IEEE=ieee, **tiles,
    )
    return out, lse


def precision(dtype: torch.dtype) -> str:
    """How the kernel computes for inputs of `dtype` (recorded with the path taken)."""
    if dtype == torch.float32:
        return "fp32 (tf32 dot)" if torch.backends.cuda.matmul.allow_tf32 else "fp32"
    name = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, str(dtype))
    return f"{name} dot, fp32 accumulate"
