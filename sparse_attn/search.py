"""AdaSpa's block search: the exact attention mass of every (query block, key block) pair, and the index
it selects.

AdaSpa (arXiv 2502.21079) picks blocks by their true attention mass, not by pooled scores:

    mass[b, h, p, q] = (1 / |p|) * sum_{i in block p} sum_{j in block q} exp(scale * q_i . k_j - LSE_i)

where LSE_i = log sum_j exp(scale * q_i . k_j) is row i's log-sum-exp over all keys. With the LSE of the
same q, k each softmax row sums to 1, so every row of `mass` sums to 1 (the share of a query block's
attention that each key block receives). Two ways to get it:

- `dense_attention_with_block_mass` (the paper's fused search, done at the first search step): one dense
  attention pass that also returns each row's LSE and the mass. That step stays dense (its output is
  exact); the caller caches the LSE.
- `block_mass` (the LSE-cached refresh, at later search steps): the mass from the current q, k and a
  cached LSE in one pass, without the softmax normaliser pass. A stale LSE shifts each row by a
  constant, so the ranking of key blocks within a row is unchanged; rows then sum to about 1, not
  exactly.

From the mass: `blocks_from_mass` keeps per (batch, head, query block) the forced blocks (text sink,
diagonal) plus the k = max(1, ceil(density_h * Nk)) key blocks of largest mass ("row-wise" top-k, the
paper's fix for global top-k starving regions), as the engine's block index; `head_adaptive_density`
moves density from heads whose recall is already high to the heads with the lowest recall, keeping the
mean; `index_recall` is the share of the mass an index keeps; `index_bytes` what it costs to cache.

Paths: "triton" (sparse_attn/search_triton.py; CUDA, or CPU under TRITON_INTERPRET=1) and "torch"
(plain PyTorch, chunked over query blocks: the scores held at once stay near CHUNK_ELEMENTS, at least
one query block, never S x S). `backend="auto"` takes Triton on CUDA and torch elsewhere; which one ran
is recorded (`last_search_path()`, logged once per path on the "accel" logger, fallbacks as warnings).
Statistics (scores, LSE, mass) are fp32 for fp32/fp16/bf16 inputs. Calls run in the profiler range
"accel::attention.search", which the project's bench counts as attention time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import torch

from .attention import _check_qkv
from .blocks import BlockSize, block_sizes, num_blocks
from .paths import AttentionPath, PathLog
from .selection import forced_blocks

logger = logging.getLogger("accel")

TRITON = "triton"
CPU_KERNEL = "cpu-kernel"
TORCH = "torch"
BACKENDS = ("auto", TRITON, CPU_KERNEL, TORCH)
RANGE = "accel::attention.search"
CHUNK_ELEMENTS = 1 << 18  # fp32 scores per chunk of the torch path (1 MiB: stays in cache)

DensityPerHead = float | Sequence[float] | torch.Tensor


# -- which path ran ---------------------------------------------------------------------------------------

_paths = PathLog("block search")
_record = _paths.record


def last_search_path() -> AttentionPath | None:
    """The path of the most recent search call (`dense_attention_with_block_mass` or `block_mass`)."""
    return _paths.last


def _torch_precision(dtype: torch.dtype) -> str:
    return "fp32" if dtype == torch.float32 else f"{str(dtype).removeprefix('torch.')} inputs, fp32 compute"


def choose_search_path(q: torch.Tensor, backend: str, block_size: BlockSize = 64) -> AttentionPath:
    """The path for these inputs. An explicitly requested backend that cannot run raises; "auto" on CUDA
    falls back to torch only with a recorded reason (logged as a warning)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    device = q.device.type
    if backend == "auto":
        if device == "cpu":
            from . import cpu_kernel

            if cpu_kernel.available():
                return AttentionPath(CPU_KERNEL, _torch_precision(q.dtype), device)
            return AttentionPath(TORCH, _torch_precision(q.dtype), device, "the C++ kernel is unavailable")
        if device != "cuda":
            return AttentionPath(TORCH, _torch_precision(q.dtype), device)
        try:
            return choose_search_path(q, TRITON, block_size)
        except RuntimeError as exc:
            return AttentionPath(TORCH, _torch_precision(q.dtype), device, str(exc))
    if backend == TRITON:
        try:
            from . import triton_common
        except ImportError as exc:
            raise RuntimeError(f"triton is not importable: {exc}") from exc
        triton_common.check_inputs(q, "search")
        from .search_triton import launch_configs

        q_block, kv_block = block_sizes(block_size)
        dim = q.shape[-1]
        if not launch_configs(q_block, kv_block, triton_common.head_dim_pad(dim), q.dtype,
                              triton_common.dot_precision(q.dtype)):
            raise RuntimeError(f"the Triton search kernel has no tiles for query blocks of {q_block} at head dim "
                               f"{dim} and {triton_common.precision(q.dtype)} within "
                               f"{triton_common.SHARED_MEMORY_LIMIT} bytes of shared memory")
        return AttentionPath(TRITON, triton_common.precision(q.dtype), device)
    if backend == CPU_KERNEL:
        from . import cpu_kernel

        if device != "cpu" or not cpu_kernel.available():
            raise RuntimeError(f"the C++ search kernel needs CPU tensors and a compiler; got {device}")
        return AttentionPath(CPU_KERNEL, _torch_precision(q.dtype), device)
    return AttentionPath(TORCH, _torch_precision(q.dtype), device)


def _cpu_search(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None, lse: torch.Tensor | None, q_block: int,
    kv_block: int, scale: float,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """The C++ path: the fused search is the engine's kernel over every key block (dense, with its LSE),
    then one pass of block sums from that LSE; the refresh is that pass alone."""
    from . import cpu_kernel
    from .attention import block_sparse_attention

    out = None
    if v is not None:
        B, H, Sq, _ = q.shape
        nq, nk = num_blocks(Sq, q_block), num_blocks(k.shape[2], kv_block)
        every = torch.arange(nk, dtype=torch.int32, device=q.device).expand(1, 1, nq, nk)
        count = torch.full((1, 1, nq), nk, dtype=torch.int32, device=q.device)
        out, lse = block_sparse_attention(q, k, v, count, every, (q_block, kv_block), scale, return_lse=True,
                                          backend="cpu-kernel")
    return out, lse, cpu_kernel.block_sums(q, k, lse, q_block, kv_block, scale)


def _forward_only(path: AttentionPath, *tensors: torch.Tensor) -> None:
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        raise NotImplementedError(
            f"the block search ({path.kernel}) is forward-only; run it under torch.no_grad() / torch.inference_mode()"
        )


# -- the torch path -----------------------------------------------------------------------------------


def _rows_per_chunk(q_block: int, batch_heads: int, kv_len: int) -> int:
    """Query rows per chunk: whole query blocks, about CHUNK_ELEMENTS scores, at least one block."""
    blocks = max(1, CHUNK_ELEMENTS // max(1, batch_heads * kv_len * q_block))
    return blocks * q_block


def _key_block_sums(p: torch.Tensor, kv_block: int) -> torch.Tensor:
    """Per-row sums of p [..., Skv] over each key block -> [..., Nk] (the last block may be partial)."""
    full = p.shape[-1] // kv_block
    sums = p[..., : full * kv_block].unflatten(-1, (full, kv_block)).sum(-1)
    if p.shape[-1] > full * kv_block:
        sums = torch.cat([sums, p[..., full * kv_block:].sum(-1, keepdim=True)], dim=-1)
    return sums


def _query_block_sums(rows: torch.Tensor, q_block: int) -> torch.Tensor:
    """Sums of rows [B, H, R, Nk] over each query block -> [B, H, ceil(R / q_block), Nk]."""
    B, H, R, nk = rows.shape
    n = -(-R // q_block)
    rows = torch.nn.functional.pad(rows, (0, 0, 0, n * q_block - R))
    return rows.view(B, H, n, q_block, nk).sum(dim=3)


def _torch_search(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor | None,
    lse: torch.Tensor | None,
    q_block: int,
    kv_block: int,
    scale: float,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """(out or None, lse, block sums [B, H, Nq, Nk]). With `v`, dense attention computes the LSE and the
    output; without, the given `lse` is used. Chunks of about CHUNK_ELEMENTS scores stay in cache, which
    matters more on CPU than the number of framework calls (measured: 1 MiB chunks ran the search about
    twice as fast as 64 MiB ones at 4k tokens)."""
    B, H, Sq, D = q.shape
    Skv = k.shape[2]
    nq, nk = num_blocks(Sq, q_block), num_blocks(Skv, kv_block)
    kT = k.float().transpose(-1, -2)  # [B, H, D, Skv]
    vf = None if v is None else v.float()
    out = None if v is None else torch.empty_like(q)
    lse_out = torch.empty(B, H, Sq, device=q.device) if lse is None else lse
    sums = torch.empty(B, H, nq, nk, device=q.device)
    step = _rows_per_chunk(q_block, B * H, Skv)
    for r0 in range(0, Sq, step):
        r1 = min(r0 + step, Sq)
        s = (q[:, :, r0:r1].float() * scale) @ kT  # [B, H, R, Skv] fp32
        if v is None:
            row_lse = lse[:, :, r0:r1, None].float()
            # a row with lse = -inf (it attended nothing) contributes nothing
            row_lse = torch.where(row_lse == float("-inf"), float("inf"), row_lse)
            p = s.sub_(row_lse).exp_()
            row_sums = _key_block_sums(p, kv_block)
        else:
            m = s.amax(dim=-1, keepdim=True)
            p = s.sub_(m).exp_()
            row_sums = _key_block_sums(p, kv_block)
            total = row_sums.sum(dim=-1, keepdim=True)  # the softmax normaliser, from the small [R, Nk]
            out[:, :, r0:r1] = ((p @ vf) / total).to(q.dtype)
            lse_out[:, :, r0:r1] = (m + total.log()).squeeze(-1)
            row_sums = row_sums / total
        sums[:, :, r0 // q_block:num_blocks(r1, q_block)] = _query_block_sums(row_sums, q_block)
    return out, lse_out, sums


# -- entry points ------------------------------------------------------------------------------------


def _query_block_sizes(Sq: int, q_block: int, device: torch.device) -> torch.Tensor:
    """Real rows per query block, [Nq] fp32 (the last block may be partial)."""
    n = num_blocks(Sq, q_block)
    sizes = torch.full((n,), float(q_block), device=device)
    if n:
        sizes[-1] = Sq - (n - 1) * q_block
    return sizes


def _search(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor | None,
    lse: torch.Tensor | None,
    block_size: BlockSize,
    scale: float | None,
    backend: str,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """(out or None, lse, mass) on the chosen path: fused with `v`, a refresh from `lse` without."""
    q_block, kv_block = block_sizes(block_size)
    B, H, Sq, D = q.shape
    scale = D**-0.5 if scale is None else float(scale)
    path = choose_search_path(q, backend, block_size)
    _forward_only(path, q, k, *(() if v is None else (v,)))
    nq, nk = num_blocks(Sq, q_block), num_blocks(k.shape[2], kv_block)
    if Sq == 0 or k.shape[2] == 0:
        out = None if v is None else torch.zeros_like(q)
        lse = torch.full((B, H, Sq), float("-inf"), device=q.device) if lse is None else lse
        _record(path)
        return out, lse, torch.zeros(B, H, nq, nk, device=q.device)
    if path.kernel == TRITON:
        from . import triton_common
        from .search_triton import search

        def torch_search(reason: str) -> tuple[AttentionPath, tuple]:
            fallback = AttentionPath(TORCH, _torch_precision(q.dtype), path.device, reason)
            return fallback, _torch_search(q, k, v, lse, q_block, kv_block, scale)

        key = ("search", q.dtype, D, q_block, kv_block, triton_common.dot_precision(q.dtype), q.device, v is None)
        path, (out, lse, sums) = triton_common.run_or_fall_back(
            key, backend, lambda: (path, search(q, k, v, lse, q_block, kv_block, scale)), torch_search)
    elif path.kernel == CPU_KERNEL:
        out, lse, sums = _cpu_search(q, k, v, lse, q_block, kv_block, scale)
    else:
        out, lse, sums = _torch_search(q, k, v, lse, q_block, kv_block, scale)
    _record(path)
    return out, lse, sums / _query_block_sizes(Sq, q_block, q.device).view(1, 1, nq, 1)


@torch.compiler.disable
def dense_attention_with_block_mass(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_size: BlockSize = 64,
    scale: float | None = None,
    *,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense attention plus the block mass (AdaSpa's fused online search).

    q [B, H, Sq, D], k and v [B, H, Skv, D], fp32/fp16/bf16, any Sq and Skv. `block_size`: one size or
    (query block, key block), powers of two >= 16; `scale` defaults to 1/sqrt(D). Returns
    out [B, H, Sq, D] in q's dtype (exact dense attention, softmax in fp32), lse [B, H, Sq] fp32 (natural
    log of sum_j exp(scale q_i.k_j) over all keys) and mass [B, H, Nq, Nk] fp32 as in the module
    docstring: each row sums to 1 (up to rounding). `backend`: "auto", "triton" or "torch".
    """
    with torch.profiler.record_function(RANGE):
        _check_qkv(q, k, v)
        out, lse, mass = _search(q, k, v, None, block_size, scale, backend)
    return out, lse, mass


@torch.compiler.disable
def block_mass(
    q: torch.Tensor,
    k: torch.Tensor,
    lse: torch.Tensor,
    block_size: BlockSize = 64,
    scale: float | None = None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """The block mass [B, H, Nq, Nk] fp32 from q, k and a (cached) row log-sum-exp `lse` [B, H, Sq]
    (AdaSpa's LSE-cached search): mass[p, q] = (1/|p|) sum_{i in p, j in q} exp(scale q_i.k_j - lse_i),
    one pass over the scores. With the LSE of these same q, k it equals the mass of
    `dense_attention_with_block_mass`; with a stale one the rows sum to about 1. Rows whose lse is -inf
    contribute 0. Same shapes, dtypes, `block_size`, `scale` and `backend` as there.
    """
    with torch.profiler.record_function(RANGE):
        _check_qkv(q, k, k)
        if lse.shape != q.shape[:3] or lse.device != q.device or not lse.dtype.is_floating_point:
            raise ValueError(
                f"lse must be a float tensor [B, H, Sq] = {tuple(q.shape[:3])} on {q.device}; got "
                f"{tuple(lse.shape)} {lse.dtype} on {lse.device}"
            )
        _, _, mass = _search(q, k, None, lse.float(), block_size, scale, backend)
    return mass


# -- from mass to an index ----------------------------------------------------------------------------


def _check_mass(mass: torch.Tensor) -> None:
    if mass.dim() != 4 or not mass.dtype.is_floating_point:
        raise ValueError(f"mass must be a float tensor [B, H, Nq, Nk]; got {tuple(mass.shape)} {mass.dtype}")


def _density_tensor(density_per_head: DensityPerHead, batch: int, heads: int, device: torch.device) -> torch.Tensor:
    """density_per_head as [B, H] fp32; a float, [H] or [B, H]. Each value must lie in (0, 1]."""
    d = torch.as_tensor(density_per_head, dtype=torch.float32).to(device)
    if d.dim() == 0:
        d = d.expand(batch, heads)
    elif d.dim() == 1 and d.shape[0] == heads:
        d = d.expand(batch, heads)
    elif d.shape != (batch, heads):
        raise ValueError(
            f"density_per_head must be a float, [H] = [{heads}] or [B, H] = [{batch}, {heads}]; got shape "
            f"{tuple(d.shape)}"
        )
    if not bool(((d > 0) & (d <= 1)).all()):
        raise ValueError(f"density_per_head values must lie in (0, 1]; got min {float(d.min())}, max {float(d.max())}")
    return d


def _forced(
    nq: int, nk: int, sink_blocks: Iterable[int], diagonal: bool, dense_query_blocks: Iterable[int], device
) -> torch.Tensor:
    forced = forced_blocks(nq, nk, sink_blocks, diagonal, device)
    rows = sorted({r % nq for r in dense_query_blocks}) if nq else []
    if rows:
        forced[rows] = True  # e.g. text queries: they attend every key block
    return forced


def blocks_from_mass(
    mass: torch.Tensor,
    density_per_head: DensityPerHead,
    sink_blocks: Iterable[int] = (),
    diagonal: bool = True,
    *,
    dense_query_blocks: Iterable[int] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """The block index (kv_num_blocks [B, H, Nq] int32, kv_indices [B, H, Nq, W] int32, ids ascending) that
    keeps, per (batch, head, query block), the forced blocks plus the k_h = max(1, ceil(density_h * Nk))
    others of largest mass (ties: lower id), at most Nk in all. Forced: the key blocks `sink_blocks`
    (text sink; negative ids count from the end), with `diagonal` key block i * Nk // Nq for query block
    i, and every key block for the query blocks in `dense_query_blocks` (text queries). Forced blocks come
    on top of k_h, as in `selection.topk_blocks`. `density_per_head`: a float, [H] or [B, H], in (0, 1];
    density 1 keeps every block.
    """
    _check_mass(mass)
    B, H, nq, nk = mass.shape
    density = _density_tensor(density_per_head, B, H, mass.device)
    forced = _forced(nq, nk, sink_blocks, diagonal, dense_query_blocks, mass.device)
    if nq == 0 or nk == 0:
        return torch.zeros(B, H, nq, dtype=torch.int32, device=mass.device), torch.zeros(
            B, H, nq, 1, dtype=torch.int32, device=mass.device)
    k = torch.ceil(density * nk).clamp(min=1, max=nk).to(torch.int32)  # [B, H]
    count = (forced.sum(dim=-1, dtype=torch.int32) + k.view(B, H, 1)).clamp(max=nk)  # [B, H, Nq]
    width = int(count.max())
    scores = mass.float().masked_fill(forced, float("inf"))  # forced blocks are taken first
    # a stable descending sort keeps the lower id on ties (topk does not promise an order)
    ranked = scores.sort(dim=-1, descending=True, stable=True).indices[..., :width]
    used = torch.arange(width, device=mass.device) < count.unsqueeze(-1)
    ids = torch.where(used, ranked, nk).sort(dim=-1).values  # ascending, unused (= nk) last
    return count.contiguous(), torch.where(ids == nk, 0, ids).to(torch.int32)


def index_recall(mass: torch.Tensor, kv_num_blocks: torch.Tensor, kv_indices: torch.Tensor) -> torch.Tensor:
    """[B, H] fp32: the share of each head's mass that the index keeps, sum(kept) / sum(all), every query
    block weighted alike (AdaSpa's Recall; with a fresh LSE sum(all) = Nq). An index with a batch or head
    dim of 1 is broadcast."""
    _check_mass(mass)
    B, H, nq, nk = mass.shape
    width = kv_indices.shape[-1]
    num = kv_num_blocks.expand(B, H, nq)
    idx = kv_indices.expand(B, H, nq, width).long()
    used = torch.arange(width, device=mass.device) < num.unsqueeze(-1)
    kept = torch.where(used, mass.float().gather(-1, idx.clamp(0, max(nk - 1, 0))), 0.0).sum(dim=(2, 3))
    total = mass.float().sum(dim=(2, 3))
    return torch.where(total > 0, kept / total.clamp_min(torch.finfo(torch.float32).tiny), 1.0)


def head_adaptive_density(
    mass: torch.Tensor,
    base_density: float,
    recall_threshold: float = 0.8,
    sink_blocks: Iterable[int] = (),
    min_density: float = 0.0,
    max_density: float = 1.0,
    *,
    diagonal: bool = True,
    dense_query_blocks: Iterable[int] = (),
) -> torch.Tensor:
    """Density per head, [B, H] fp32, averaging `base_density` over the heads of each batch element.

    AdaSpa's three-level rule (paper §4.2), per batch element: each head's recall is that of
    `blocks_from_mass` at `base_density` (same forced blocks); n = number of heads with recall >
    `recall_threshold`, at most H // 2; the n heads of highest recall get density d - delta, the n of
    lowest recall d + delta, the rest d. The paper's delta = d / 2 (sparsity s -> (1+s)/2 and (3s-1)/2);
    here delta = min(d / 2, max_density - d, d - min_density), so both moves stay inside
    [min_density, max_density] and the mean stays exactly d (a clamp on one side only would break it).
    Ties in recall go to the lower head index (stable sort).
    """
    _check_mass(mass)
    if not 0.0 < base_density <= 1.0:
        raise ValueError(f"base_density must lie in (0, 1]; got {base_density}")
    if not 0.0 <= recall_threshold <= 1.0:
        raise ValueError(f"recall_threshold must lie in [0, 1]; got {recall_threshold}")
    if not 0.0 <= min_density <= base_density:
        raise ValueError(f"min_density must lie in [0, base_density={base_density}]; got {min_density}")
    if not base_density <= max_density <= 1.0:
        raise ValueError(f"max_density must lie in [base_density={base_density}, 1]; got {max_density}")
    B, H = mass.shape[:2]
    num, idx = blocks_from_mass(mass, base_density, sink_blocks, diagonal, dense_query_blocks=dense_query_blocks)
    recall = index_recall(mass, num, idx)  # [B, H]
    delta = min(base_density / 2, max_density - base_density, base_density - min_density)
    density = torch.full((B, H), float(base_density), device=mass.device)
    n_high = (recall > recall_threshold).sum(dim=1).clamp(max=H // 2)  # [B]
    order = recall.sort(dim=1, descending=True, stable=True).indices  # best recall first
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(H, device=mass.device).expand(B, H))
    n = n_high.unsqueeze(1)
    density = torch.where(rank < n, base_density - delta, density)
    density = torch.where(rank >= H - n, base_density + delta, density)
    return density


def index_bytes(kv_num_blocks: torch.Tensor, kv_indices: torch.Tensor) -> int:
    """Bytes the index takes as stored (counts and ids at their dtypes; `compact_index` shrinks them)."""
    return kv_num_blocks.numel() * kv_num_blocks.element_size() + kv_indices.numel() * kv_indices.element_size()


def compact_index(kv_num_blocks: torch.Tensor, kv_indices: torch.Tensor, kv_blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The index in the smallest integer dtype that holds 0..`kv_blocks` (uint8 up to 255, int16, int32),
    for caching between search steps; the engine accepts it as is (it converts to int32)."""
    if kv_blocks < 0:
        raise ValueError(f"kv_blocks must be >= 0; got {kv_blocks}")
    dtype = torch.uint8 if kv_blocks <= 255 else torch.int16 if kv_blocks <= 32767 else torch.int32
    return kv_num_blocks.to(dtype), kv_indices.to(dtype)


def byte_mask_bytes(q_len: int, kv_len: int, batch: int = 1, heads: int = 1) -> int:
    """Bytes of the token-level boolean mask [B, H, Sq, Skv] (one byte per entry) the index stands for."""
    return batch * heads * q_len * kv_len

