"""PISA's GPU path: one fused Triton kernel, exact and pooled key tiles on one online-softmax state.

One program computes BLOCK_M query rows of one query tile for one (batch, head), in three phases that
share the running max `m_i`, the running denominator `l_i` and the accumulator `acc` (fp32, log2 units):

1. exact: the selected key tiles (`kv_indices`), tile by tile, with the engine's `attend_tile`
   (triton_common.py);
2. pooled: all Nk tile means k̄_j in chunks of BLOCK_G, the selected ones masked out (a dense int8
   [Nq, Nk] map); `online_softmax` on q.k̄_j, `l += p B_j`, `acc += p V̂_j`, and the tail mass G += p B_j;
3. hybrid only: `acc += G * c` with c = s q @ h̄ computed beforehand for all rows (one [S, D] x [D, D]
   product in PyTorch: a D x D tile in the kernel would crowd the registers at D = 128), then out = acc / l.

G is rescaled by alpha whenever the running max moves, like `l` and `acc` (the public kernel forgot it,
which is wrong whenever a later pooled chunk raises the max). The tile statistics arrive in fp32 from
sparse_attn/pisa.py; the pooled-phase dots run in fp32 at the precision fp32 inputs get (TF32 for
fp16/bf16 inputs). The tiles are fixed per (tile sizes, head dim, precision), chosen by `tiles` to fit
shared memory. Plain pointer loads (no TMA): the kernel runs under TRITON_INTERPRET=1, which is how it
is tested on CPU, and tests/sparse_attn/test_triton_compile.py compiles it for sm_90.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl

from . import triton_common
from .triton_common import (
    INTERPRETED,
    LAUNCH_OPTIONS,
    SHARED_MEMORY_LIMIT,
    attend_listed_tiles,
    base_offset,
    check_offsets,
    dot_precision,
    finish,
    head_dim_pad,
    on_device,
    online_softmax,
    operand_bytes,
    shared_memory_estimate,
)

if TYPE_CHECKING:
    from .pisa import KeyTileStats
    from .tiles import TileIndex

BLOCK_G = 64  # pooled keys per step of phase 2, at most (smaller where shared memory asks)


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
    H, q_len, kv_len, n_kv_tiles, qk_scale,  # qk_scale = softmax scale * log2(e)
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    Q_TILE: tl.constexpr, KV_TILE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr,
    HYBRID: tl.constexpr, DOT: tl.constexpr, POOLED_DOT: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    q_tile_id = pid_m * BLOCK_M // Q_TILE

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    offs_n = tl.arange(0, BLOCK_N)
    offs_g = tl.arange(0, BLOCK_G)
    row_ok = offs_m < q_len
    dim_ok = offs_d < HEAD_DIM

    q = tl.load(Q + base_offset(b, h, stride_qb, stride_qh) + offs_m[:, None] * stride_qs + offs_d[None, :] * stride_qd,
                mask=row_ok[:, None] & dim_ok[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    g_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # tail mass G, same units as l_i
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)

    # -- phase 1: the selected key tiles, exactly -------------------------------------------------------
    m_i, l_i, acc = attend_listed_tiles(
        q, K + base_offset(b, h, stride_kb, stride_kh), V + base_offset(b, h, stride_vb, stride_vh),
        KV_NUM + base_offset(b, h, stride_nb, stride_nh) + q_tile_id * stride_nq,
        KV_IDX + base_offset(b, h, stride_ib, stride_ih) + q_tile_id * stride_iq, stride_ik,
        kv_len, offs_n, offs_d, dim_ok, stride_ks, stride_kd, stride_vs, stride_vd, qk_scale, m_i, l_i, acc,
        KV_TILE, BLOCK_N, DOT)

    # -- phase 2: every other key tile through its mean key (zeroth order) -------------------------
    q32 = q.to(tl.float32)  # the statistics are fp32, so are these dots
    stat_base = pid_bh.to(tl.int64) * n_kv_tiles * HEAD_DIM  # KMEAN / VSUM: contiguous [B*H, Nk, HEAD_DIM] fp32
    sel_base = SEL + base_offset(b, h, stride_sb, stride_sh) + q_tile_id * stride_sq
    for g0 in range(0, n_kv_tiles, BLOCK_G):
        blk = g0 + offs_g
        in_range = blk < n_kv_tiles
        chosen = tl.load(sel_base + blk * stride_sk, mask=in_range, other=1)
        use = in_range & (chosen == 0)
        kbar = tl.load(KMEAN + stat_base + blk[None, :] * HEAD_DIM + offs_d[:, None],
                       mask=use[None, :] & dim_ok[:, None], other=0.0)  # [HEAD_DIM_PAD, BLOCK_G]
        qk = tl.dot(q32, kbar, input_precision=POOLED_DOT)
        qk = tl.where(use[None, :], qk * qk_scale, float("-inf"))
        m_new, p, alpha = online_softmax(qk, m_i)
        cnt = tl.load(COUNTS + blk, mask=use, other=0.0)
        mass = tl.sum(p * cnt[None, :], 1)
        l_i = l_i * alpha + mass
        g_i = g_i * alpha + mass  # rescaled like l_i: the public kernel's missing step
        vsum = tl.load(VSUM + stat_base + blk[:, None] * HEAD_DIM + offs_d[None, :],
                       mask=use[:, None] & dim_ok[None, :], other=0.0)  # [BLOCK_G, HEAD_DIM_PAD]
        acc = tl.dot(p, vsum, acc * alpha[:, None], input_precision=POOLED_DOT)
        m_i = m_new

    # -- phase 3 (hybrid): the shared first-order moment, weighted by the tail mass -----------------
    if HYBRID:  # FIRST: contiguous [B*H, q_len, HEAD_DIM] fp32, s q @ h̄
        first = tl.load(FIRST + pid_bh.to(tl.int64) * q_len * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :],
                        mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
        acc += g_i[:, None] * first

    out, lse = finish(acc, l_i, m_i)
    o_ptrs = (Out + base_offset(b, h, stride_ob, stride_oh) + offs_m[:, None] * stride_os
              + offs_d[None, :] * stride_od)
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None] & dim_ok[None, :])
    tl.store(Lse + pid_bh.to(tl.int64) * q_len + offs_m, lse, mask=row_ok)


# (BLOCK_M, BLOCK_N, BLOCK_G, warps, stages), tried in order: the first that fits is used
CANDIDATES = {
    "fast": [(64, 64, 64, 4, 2), (64, 32, 32, 4, 2), (64, 32, 16, 4, 1), (32, 32, 16, 4, 1), (16, 16, 16, 4, 1)],
    "exact": [(32, 16, 16, 4, 2), (16, 16, 16, 4, 1)],  # ieee / tf32x3 fp32: small tiles, or registers spill
}


def launch_configs(q_tile: int, kv_tile: int, dim_pad: int, dtype: torch.dtype, dot: str) -> list[triton.Config]:
    """The one tile config a launch runs (a list, like the other kernels')."""
    return [tiles(q_tile, kv_tile, dim_pad, dtype, dot)]


def tiles(q_tile: int, kv_tile: int, dim_pad: int, dtype: torch.dtype, dot: str,
          limit: int = SHARED_MEMORY_LIMIT) -> triton.Config:
    """The fixed tiles for these tile sizes, head dim and precision: the first candidate, clamped to the
    index tiles, whose exact phase and pooled phase together fit `limit` bytes of shared memory."""
    exact_fp32 = dtype == torch.float32 and dot in ("ieee", "tf32x3")
    for bm, bn, bg, warps, stages in CANDIDATES["exact" if exact_fp32 else "fast"]:
        config = triton.Config({"BLOCK_M": min(bm, q_tile), "BLOCK_N": min(bn, kv_tile), "BLOCK_G": min(bg, BLOCK_G)},
                               num_warps=warps, num_stages=stages)
        if shared_memory(config, q_tile, dim_pad, dtype, dot) <= limit:
            return config
    raise RuntimeError(f"no PISA tile fits {limit} bytes of shared memory at head dim {dim_pad}")


def shared_memory(config: triton.Config, q_tile: int, dim_pad: int, dtype: torch.dtype, dot: str) -> int:
    """The shared memory estimate of one launch config (bytes): the exact phase's and the pooled
    phase's, added."""
    bm, bn, bg, stages = (config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"], config.kwargs["BLOCK_G"],
                          config.num_stages)
    return (shared_memory_estimate(bm, bn, stages, dim_pad, operand_bytes(dtype, dot))
            + shared_memory_estimate(bm, bg, stages, dim_pad, operand_bytes(torch.float32, pooled_dot(dtype, dot))))


def pooled_dot(dtype: torch.dtype, dot: str) -> str:
    """The pooled phase multiplies fp32 statistics: at the fp32 precision for fp32 inputs, else TF32."""
    return dot if dtype == torch.float32 else "tf32"


def kernel_args(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    num: torch.Tensor, idx: torch.Tensor, sel: torch.Tensor, kmean: torch.Tensor, vsum: torch.Tensor,
    counts: torch.Tensor, first: torch.Tensor, q_tile: int, kv_tile: int, scale: float, hybrid: bool,
) -> tuple[tuple, dict]:
    """The kernel's positional arguments and constexprs (also what the sm_90 compile test specializes)."""
    B, H, Sq, D = q.shape
    dot = dot_precision(q.dtype)
    args = (
        q, k, v, out, lse, num, idx, sel, kmean, vsum, counts, first,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *num.stride(), *idx.stride(), *sel.stride(),
        H, Sq, k.shape[2], counts.shape[0], scale * 1.4426950408889634,
    )
    return args, {"HEAD_DIM": D, "HEAD_DIM_PAD": head_dim_pad(D), "Q_TILE": q_tile, "KV_TILE": kv_tile,
                  "HYBRID": hybrid, "DOT": dot, "POOLED_DOT": pooled_dot(q.dtype, dot), **LAUNCH_OPTIONS}


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: TileIndex,
    stats: KeyTileStats,
    scale: float,
    hybrid: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [B, H, Sq, D] in q's dtype, lse [B, H, Sq] fp32): the index's tiles exactly, the others
    pooled; stats from pisa.key_tile_stats."""
    B, H, Sq, D = q.shape
    q_tile, kv_tile = index.tile_size
    check_offsets(q=q, k=k, v=v)
    out = torch.empty_like(q)
    lse = torch.empty(B, H, Sq, device=q.device, dtype=torch.float32)
    num, idx = index.counts.expand(B, H, -1), index.indices.expand(B, H, -1, -1)
    sel = index.to_dense().to(torch.int8).expand(B, H, -1, -1)  # 1 where a key tile is in the exact part
    kmean = stats.key_means.contiguous()
    vsum = stats.value_sums.contiguous()
    # s q @ h̄ for every row (fp32); a placeholder pointer for the zeroth order
    first = torch.matmul(q.float(), stats.moment * scale).contiguous() if hybrid else kmean
    args, constexprs = kernel_args(q, k, v, out, lse, num, idx, sel, kmean, vsum, stats.counts, first,
                                   q_tile, kv_tile, scale, hybrid)
    config = tiles(q_tile, kv_tile, head_dim_pad(D), q.dtype, constexprs["DOT"])
    launch = {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}
    if INTERPRETED:
        bm, bn = triton_common.interpreter_tiles or (q_tile, kv_tile)
        launch = {"BLOCK_M": min(bm, q_tile), "BLOCK_N": min(bn, kv_tile), "BLOCK_G": BLOCK_G}
    grid = (triton.cdiv(Sq, q_tile) * (q_tile // launch["BLOCK_M"]), B * H)
    with on_device(q):
        _pisa_fwd[grid](*args, **constexprs, **launch)
    return out, lse
