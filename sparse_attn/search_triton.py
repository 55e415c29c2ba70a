"""The GPU path of AdaSpa's tile search (sparse_attn/search.py): one Triton kernel, two modes.

One program owns one query tile (all its rows, BLOCK_M = the query tile size) of one (batch, head), so
the tile sums need no atomics:

- fused (AdaSpa's Alg. 1): pass 1 is dense FlashAttention-2 over every key tile (`attend_tile`, shared
  with the other kernels in triton_common.py), writing the output and the row log-sum-exp; pass 2
  re-reads every key tile and adds exp(scale q.k - LSE) per key tile with that fresh LSE;
- refresh (Alg. 2): the LSE is loaded (cached from an earlier step) and only pass 2 runs.

The kernel writes block *sums* [B, H, Nq, Nk]; the caller divides by the rows of each query tile.
Plain pointer loads, as in sparse_attn/triton_kernel.py, so it also runs under TRITON_INTERPRET=1 (read
when this module is first imported), which is how the tests check it on CPU; tests/sparse_attn/test_triton_compile.py
compiles it for sm_90.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import triton_common
from .triton_common import (
    INTERPRETED,
    LAUNCH_OPTIONS,
    LN2,
    LOG2E,
    attend_tile,
    base_offset,
    check_offsets,
    configs,
    dot_precision,
    fit_configs,
    head_dim_pad,
    on_device,
    operand_bytes,
    precision,
    shared_memory_estimate,
    tile_scores,
)

__all__ = ["INTERPRETED", "precision", "search"]


@triton.jit
def _search_fwd(
    Q, K, V, Out, Lse, Sums,
    stride_qb, stride_qh, stride_qs, stride_qd,
    stride_kb, stride_kh, stride_ks, stride_kd,
    stride_vb, stride_vh, stride_vs, stride_vd,
    stride_ob, stride_oh, stride_os, stride_od,
    H, q_len, kv_len, n_kv_tiles, qk_scale,  # qk_scale = softmax scale * log2(e)
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, KV_TILE: tl.constexpr, BLOCK_N: tl.constexpr,
    FUSED: tl.constexpr,  # compute out and LSE first (else: load the cached LSE)
    DOT: tl.constexpr,
):
    q_tile_id = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H

    offs_m = q_tile_id * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    offs_n = tl.arange(0, BLOCK_N)
    row_ok = offs_m < q_len
    dim_ok = offs_d < HEAD_DIM
    q = tl.load(Q + base_offset(b, h, stride_qb, stride_qh) + offs_m[:, None] * stride_qs + offs_d[None, :] * stride_qd,
                mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
    k_base = K + base_offset(b, h, stride_kb, stride_kh)
    lse_ptrs = Lse + pid_bh.to(tl.int64) * q_len + offs_m

    if FUSED:
        # -- pass 1: dense attention, online softmax in fp32 (log2 units) ------------------------------
        v_base = V + base_offset(b, h, stride_vb, stride_vh)
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)
        for first_col in range(0, kv_len, BLOCK_N):
            m_i, l_i, acc = attend_tile(q, k_base, v_base, first_col + offs_n, kv_len, offs_d, dim_ok,
                                        stride_ks, stride_kd, stride_vs, stride_vd, qk_scale, m_i, l_i, acc, DOT)
        lse2 = m_i + tl.math.log2(l_i)  # every row has kv_len >= 1 keys
        o_ptrs = (Out + base_offset(b, h, stride_ob, stride_oh) + offs_m[:, None] * stride_os
                  + offs_d[None, :] * stride_od)
        tl.store(o_ptrs, (acc / l_i[:, None]).to(Out.dtype.element_ty), mask=row_ok[:, None] & dim_ok[None, :])
        tl.store(lse_ptrs, lse2 * LN2, mask=row_ok)
    else:
        lse2 = tl.load(lse_ptrs, mask=row_ok, other=float("-inf")) * LOG2E
    # rows without keys (lse = -inf) and padding rows contribute nothing: exp2(qk - inf) = 0
    lse2 = tl.where(row_ok & (lse2 > float("-inf")), lse2, float("inf"))

    # -- pass 2: sum_{i in the query tile, j in key tile} exp(scale q_i.k_j - LSE_i) ------------------
    # one flat loop over (key tile, step inside it), so the pipeliner buffers one step per stage
    sums_ptr = Sums + (pid_bh.to(tl.int64) * tl.num_programs(0) + q_tile_id) * n_kv_tiles
    STEPS: tl.constexpr = KV_TILE // BLOCK_N
    total = tl.zeros([BLOCK_M], dtype=tl.float32)
    for t in range(0, n_kv_tiles * STEPS):
        kv_tile_id = t // STEPS
        qk = tile_scores(q, k_base, kv_tile_id * KV_TILE + (t % STEPS) * BLOCK_N + offs_n, kv_len, offs_d, dim_ok,
                         stride_ks, stride_kd, qk_scale, DOT)
        total += tl.sum(tl.math.exp2(qk - lse2[:, None]), 1)  # -inf scores (missing keys) give 0
        if t % STEPS == STEPS - 1:
            tl.store(sums_ptr + kv_tile_id, tl.sum(total, 0))
            total = tl.zeros([BLOCK_M], dtype=tl.float32)


def _key_tiles(dot: str | None = None) -> list[triton.Config]:
    """Candidate key tiles: the engine's, without BLOCK_M (the query tile is the whole query tile)."""
    return [triton.Config({"BLOCK_N": c.kwargs["BLOCK_N"]}, num_warps=c.num_warps, num_stages=c.num_stages)
            for c in configs(dot)]


QUERY_TILES = 2  # the fused kernel's two loops over the keys each keep the query tile in shared memory


def launch_configs(q_tile: int, kv_tile: int, dim_pad: int, dtype: torch.dtype, dot: str) -> list[triton.Config]:
    """The tile configs a launch may run; empty when even the smallest key tile leaves no room next to a
    whole query tile (then the search refuses the Triton path)."""
    return fit_configs(_key_tiles(dot), q_tile, kv_tile, dim_pad, operand_bytes(dtype, dot),
                       query_tiles=QUERY_TILES)


def shared_memory(config: triton.Config, q_tile: int, dim_pad: int, dtype: torch.dtype, dot: str) -> int:
    """The shared memory estimate of one launch config (bytes), as `launch_configs` fits it."""
    return shared_memory_estimate(q_tile, config.kwargs["BLOCK_N"], config.num_stages, dim_pad,
                                  operand_bytes(dtype, dot), QUERY_TILES)


def _prune(candidates: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    return launch_configs(kwargs["BLOCK_M"], kwargs["KV_TILE"], kwargs["HEAD_DIM_PAD"], named_args["Q"].dtype,
                          kwargs["DOT"])


_search_fwd_tuned = triton.autotune(
    configs=_key_tiles(),
    key=["BLOCK_M", "KV_TILE", "HEAD_DIM_PAD", "FUSED", "DOT"],  # and the dtypes of the tensor arguments
    prune_configs_by={"early_config_prune": _prune},
    cache_results=True,
)(_search_fwd)


def kernel_args(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, sums: torch.Tensor,
    q_tile: int, kv_tile: int, scale: float, fused: bool,
) -> tuple[tuple, dict]:
    """The kernel's positional arguments and constexprs (also what the sm_90 compile test specializes)."""
    B, H, Sq, D = q.shape
    args = (
        q, k, v, out, lse, sums, *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        H, Sq, k.shape[2], sums.shape[-1], scale * 1.4426950408889634,
    )
    return args, {"HEAD_DIM": D, "HEAD_DIM_PAD": head_dim_pad(D), "BLOCK_M": q_tile, "KV_TILE": kv_tile,
                  "FUSED": fused, "DOT": dot_precision(q.dtype), **LAUNCH_OPTIONS}


def search(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor | None,
    lse: torch.Tensor | None,
    q_tile: int,
    kv_tile: int,
    scale: float,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """(out or None, lse [B, H, Sq] fp32, tile sums [B, H, Nq, Nk] fp32). With `v` (lse None) the fused
    mode; with `lse` (v None) the refresh. q, k, v may have any strides; head dim at most MAX_HEAD_DIM (`check_inputs`)."""
    B, H, Sq, D = q.shape
    if not launch_configs(q_tile, kv_tile, head_dim_pad(D), q.dtype, dot_precision(q.dtype)):
        raise RuntimeError(f"no search tiles for query tiles of {q_tile} at head dim {D} ({precision(q.dtype)})")
    check_offsets(q=q, k=k, v=v)
    Skv = k.shape[2]
    nq, nk = triton.cdiv(Sq, q_tile), triton.cdiv(Skv, kv_tile)
    fused = v is not None
    out = torch.empty_like(q) if fused else None
    lse = torch.empty(B, H, Sq, device=q.device, dtype=torch.float32) if fused else lse.float().contiguous()
    sums = torch.empty(B, H, nq, nk, device=q.device, dtype=torch.float32)
    # unused operands of the refresh point at q (never read)
    v_arg, out_arg = (v, out) if fused else (q, q)
    args, constexprs = kernel_args(q, k, v_arg, out_arg, lse, sums, q_tile, kv_tile, scale, fused)
    kernel, tiles = _search_fwd_tuned, {}
    if INTERPRETED:
        _, bn = triton_common.interpreter_tiles or (q_tile, kv_tile)
        kernel, tiles = _search_fwd, {"BLOCK_N": min(bn, kv_tile)}
    with on_device(q):
        kernel[(nq, B * H)](*args, **constexprs, **tiles)
    return out, lse, sums
