"""The GPU path: a Triton block-sparse attention kernel (FlashAttention-2 forward, tile index loop).

It reads like Triton's fused-attention tutorial with one change: instead of walking every key tile,
the inner loop walks the key tiles a `TileIndex` lists for its query tile (sparse_attn/tiles.py).
One program computes BLOCK_M query rows (a query tile, or a slice of one) for one (batch, head):

1. load the query rows once;
2. `attend_listed_tiles` (triton_common.py, shared with PISA's kernel): for each listed key tile, in
   steps of BLOCK_N keys, `attend_tile`: scores in fp32 (log2 units), online softmax, acc += p . v;
3. write acc / l_i, and the row log-sum-exp (natural log).

Plain pointer arithmetic (no TMA, no block pointers) keeps it runnable under the Triton interpreter
(`TRITON_INTERPRET=1`), which is how CI runs it on CPU; tests/sparse_attn/test_triton_compile.py
compiles it for sm_90 as well. Triton reads that flag when a kernel is decorated, i.e. when this module is first
imported, so set it before (tests do so in a subprocess).
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
    attend_listed_tiles,
    base_offset,
    check_offsets,
    configs,
    dot_precision,
    finish,
    fit_configs,
    head_dim_pad,
    on_device,
    operand_bytes,
    shared_memory_estimate,
)

if TYPE_CHECKING:
    from .tiles import TileIndex


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
    Q_TILE: tl.constexpr, KV_TILE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT: tl.constexpr,  # tl.dot input_precision for fp32 inputs: "ieee", "tf32" or "tf32x3"
):
    # -- which rows: program (BLOCK_M query rows, batch*head) --------------------------------------------
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    q_tile_id = pid_m * BLOCK_M // Q_TILE  # the query tile these BLOCK_M rows belong to

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    offs_n = tl.arange(0, BLOCK_N)
    row_ok = offs_m < q_len
    dim_ok = offs_d < HEAD_DIM

    q_ptrs = Q + base_offset(b, h, stride_qb, stride_qh) + offs_m[:, None] * stride_qs + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=row_ok[:, None] & dim_ok[None, :], other=0.0)

    # -- running softmax state, fp32 --------------------------------------------------------------------
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)

    # -- the key tiles this query tile attends ----------------------------------------------------
    m_i, l_i, acc = attend_listed_tiles(
        q, K + base_offset(b, h, stride_kb, stride_kh), V + base_offset(b, h, stride_vb, stride_vh),
        KV_NUM + base_offset(b, h, stride_nb, stride_nh) + q_tile_id * stride_nq,
        KV_IDX + base_offset(b, h, stride_ib, stride_ih) + q_tile_id * stride_iq, stride_ik,
        kv_len, offs_n, offs_d, dim_ok, stride_ks, stride_kd, stride_vs, stride_vd, qk_scale, m_i, l_i, acc,
        KV_TILE, BLOCK_N, DOT)

    # -- epilogue: normalise; a row that attended nothing gets 0 and lse = -inf --------------------
    out, lse = finish(acc, l_i, m_i)
    o_ptrs = (Out + base_offset(b, h, stride_ob, stride_oh) + offs_m[:, None] * stride_os
              + offs_d[None, :] * stride_od)
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None] & dim_ok[None, :])
    tl.store(Lse + pid_bh.to(tl.int64) * q_len + offs_m, lse, mask=row_ok)


def launch_configs(q_tile: int, kv_tile: int, dim_pad: int, dtype: torch.dtype, dot: str) -> list[triton.Config]:
    """The tile configs a launch may run (the autotuner times them; the sm_90 compile test builds them)."""
    return fit_configs(configs(dot), q_tile, kv_tile, dim_pad, operand_bytes(dtype, dot))


def shared_memory(config: triton.Config, q_tile: int, dim_pad: int, dtype: torch.dtype, dot: str) -> int:
    """The shared memory estimate of one launch config (bytes), as `launch_configs` fits it."""
    c = config
    return shared_memory_estimate(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_stages, dim_pad,
                                  operand_bytes(dtype, dot))


def _prune(candidates: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    return launch_configs(kwargs["Q_TILE"], kwargs["KV_TILE"], kwargs["HEAD_DIM_PAD"], named_args["Q"].dtype,
                          kwargs["DOT"])


# On the GPU the program tiles are tuned per (index tiles, head dim, dtypes, precision), and the timings are
# kept on disk (Triton's cache dir), so a new process does not tune again; the interpreter runs the plain
# kernel, since its timings mean nothing.
_block_sparse_fwd_tuned = triton.autotune(
    configs=configs(),
    key=["Q_TILE", "KV_TILE", "HEAD_DIM_PAD", "DOT"],  # and the dtypes of the tensor arguments
    prune_configs_by={"early_config_prune": _prune},
    cache_results=True,
)(_block_sparse_fwd)


def kernel_args(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    num: torch.Tensor, idx: torch.Tensor, q_tile: int, kv_tile: int, scale: float,
) -> tuple[tuple, dict]:
    """The kernel's positional arguments and constexprs (also what the sm_90 compile test specializes)."""
    B, H, Sq, D = q.shape
    args = (
        q, k, v, out, lse, num, idx,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *num.stride(), *idx.stride(),
        H, Sq, k.shape[2], scale * 1.4426950408889634,
    )
    return args, {"HEAD_DIM": D, "HEAD_DIM_PAD": head_dim_pad(D), "Q_TILE": q_tile, "KV_TILE": kv_tile,
                  "DOT": dot_precision(q.dtype), **LAUNCH_OPTIONS}


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: TileIndex,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [B, H, Sq, D] in q's dtype, lse [B, H, Sq] fp32). Any strides; the index (int32) may broadcast
    (size-1 batch/head dims are read with stride 0). Head dim at most MAX_HEAD_DIM (`check_inputs`)."""
    B, H, Sq, D = q.shape
    q_tile, kv_tile = index.tile_size
    check_offsets(q=q, k=k, v=v)
    out = torch.empty_like(q)  # same memory layout as q: [B, S, H, D] storage stays so for diffusers
    lse = torch.empty(B, H, Sq, device=q.device, dtype=torch.float32)
    num, idx = index.counts.expand(B, H, -1), index.indices.expand(B, H, -1, -1)
    args, constexprs = kernel_args(q, k, v, out, lse, num, idx, q_tile, kv_tile, scale)

    def grid(meta: dict) -> tuple[int, int]:
        return (triton.cdiv(Sq, q_tile) * (q_tile // meta["BLOCK_M"]), B * H)

    kernel, tiles = _block_sparse_fwd_tuned, {}
    if INTERPRETED:
        bm, bn = triton_common.interpreter_tiles or (q_tile, kv_tile)
        kernel, tiles = _block_sparse_fwd, {"BLOCK_M": min(bm, q_tile), "BLOCK_N": min(bn, kv_tile)}
    with on_device(q):
        kernel[grid](*args, **constexprs, **tiles)
    return out, lse
