"""AdaSpa's tile search: the exact attention mass of every (query tile, key tile) pair, and the index it
selects.

AdaSpa (arXiv 2502.21079) picks tiles ("blocks" in the paper) by their true attention mass, not by
pooled scores:

    mass[b, h, p, q] = (1 / |p|) * sum_{i in tile p} sum_{j in tile q} exp(scale * q_i . k_j - LSE_i)

where LSE_i = log sum_j exp(scale * q_i . k_j) is row i's log-sum-exp over all keys. With the LSE of the
same q, k each softmax row sums to 1, so every row of `mass` sums to 1 (the share of a query tile's
attention that each key tile receives). Two ways to get it:

- `dense_attention_with_tile_mass` (the paper's fused search, done at the first search step): one dense
  attention pass that also returns each row's LSE and the mass. That step stays dense (its output is
  exact); the caller caches the LSE.
- `tile_mass` (the LSE-cached refresh, at later search steps): the mass from the current q, k and a
  cached LSE in one pass, without the softmax normaliser pass. A stale LSE shifts each row by a
  constant, so the ranking of key tiles within a row is unchanged; rows then sum to about 1, not
  exactly.

From the mass: `tiles_from_mass` keeps per (batch, head, query tile) the forced tiles (text sink,
diagonal) plus the k = max(1, ceil(density_h * Nk)) key tiles of largest mass ("row-wise" top-k, the
paper's fix for global top-k starving regions), as a `TileIndex`; `head_adaptive_density` moves density
from heads whose recall is already high to the heads with the lowest recall, keeping the mean;
`index_recall` is the share of the mass an index keeps.

Paths (`paths.Kernel`): "triton" (search_triton.py; CUDA, or CPU under TRITON_INTERPRET=1), "cpu-kernel"
(the C++ kernel) and "torch" (plain PyTorch, chunked over query tiles: the scores held at once stay near
CHUNK_ELEMENTS, at least one query tile, never S x S). `backend="auto"` takes Triton on CUDA and the C++
kernel on CPU; the path taken is recorded per call (`paths.capture()`; logged once per path on the
"accel" logger, fallbacks as warnings). Statistics (scores, LSE, mass) are fp32 for fp32/fp16/bf16
inputs. Calls run in the profiler range "accel::attention.search", which the project's bench counts as
attention time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch

from . import paths
from .attention import check_qkv, check_scale, forward_only, upcast_precision
from .paths import AttentionPath, Kernel
from .selection import forced_tiles
from .tiles import TileIndex, TileSize, num_tiles, tile_sizes

RANGE = "accel::attention.search"
CHUNK_ELEMENTS = 1 << 18  # fp32 scores per chunk of the torch path (1 MiB: stays in cache)

DensityPerHead = float | Sequence[float] | torch.Tensor


def choose_search_path(q: torch.Tensor, backend: str, tile_size: TileSize = 64) -> AttentionPath:
    """The path for these inputs. An explicitly requested backend that cannot run raises RuntimeError;
    "auto" falls back to torch only with a recorded reason (logged as a warning)."""
    kernel = paths.check_backend(backend)
    device = q.device.type
    if kernel is None:
        want = {"cuda": Kernel.TRITON, "cpu": Kernel.CPU}.get(device)
        if want is None:
            return AttentionPath(Kernel.TORCH, upcast_precision(q.dtype), device)
        try:
            return choose_search_path(q, want.value, tile_size)
        except RuntimeError as exc:
            return AttentionPath(Kernel.TORCH, upcast_precision(q.dtype), device, str(exc))
    if kernel == Kernel.TRITON:
        try:
            from . import triton_common
        except ImportError as exc:
            raise RuntimeError(f"triton is not importable: {exc}") from exc
        triton_common.check_inputs(q, "search")
        from .search_triton import launch_configs

        q_tile, kv_tile = tile_sizes(tile_size)
        dim = q.shape[-1]
        if not launch_configs(q_tile, kv_tile, triton_common.head_dim_pad(dim), q.dtype,
                              triton_common.dot_precision(q.dtype)):
            raise RuntimeError(f"the Triton search kernel has no tiles for query tiles of {q_tile} at head dim "
                               f"{dim} and {triton_common.precision(q.dtype)} within "
                               f"{triton_common.SHARED_MEMORY_LIMIT} bytes of shared memory")
        return AttentionPath(Kernel.TRITON, triton_common.precision(q.dtype), device)
    if kernel == Kernel.CPU:
        from . import cpu_kernel

        if device != "cpu" or not cpu_kernel.available():
            raise RuntimeError(f"the C++ search kernel needs CPU tensors and a compiler; got {device}")
    return AttentionPath(kernel, upcast_precision(q.dtype), device)


def _cpu_search(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None, lse: torch.Tensor | None, q_tile: int,
    kv_tile: int, scale: float,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """The C++ path: the fused search is the engine's kernel over every key tile (dense, with its LSE),
    then one pass of tile sums from that LSE; the refresh is that pass alone."""
    from . import cpu_kernel
    from .attention import block_sparse_attention

    out = None
    if v is not None:
        Sq, Skv = q.shape[2], k.shape[2]
        nq, nk = num_tiles(Sq, q_tile), num_tiles(Skv, kv_tile)
        every = TileIndex(torch.full((1, 1, nq), nk, dtype=torch.int32, device=q.device),
                          torch.arange(nk, dtype=torch.int32, device=q.device).expand(1, 1, nq, nk),
                          q_tile, kv_tile, Sq, Skv)
        out, lse = block_sparse_attention(q, k, v, every, scale, return_lse=True, backend="cpu-kernel")
    assert lse is not None  # given for a refresh, computed above otherwise
    return out, lse, cpu_kernel.tile_sums(q, k, lse, q_tile, kv_tile, scale)


# -- the torch path -----------------------------------------------------------------------------------


def _rows_per_chunk(q_tile: int, batch_heads: int, kv_len: int) -> int:
    """Query rows per chunk: whole query tiles, about CHUNK_ELEMENTS scores, at least one block."""
    blocks = max(1, CHUNK_ELEMENTS // max(1, batch_heads * kv_len * q_tile))
    return blocks * q_tile


def _key_tile_sums(p: torch.Tensor, kv_tile: int) -> torch.Tensor:
    """Per-row sums of p [..., Skv] over each key tile -> [..., Nk] (the last tile may be partial)."""
    full = p.shape[-1] // kv_tile
    sums = p[..., : full * kv_tile].unflatten(-1, (full, kv_tile)).sum(-1)
    if p.shape[-1] > full * kv_tile:
        sums = torch.cat([sums, p[..., full * kv_tile:].sum(-1, keepdim=True)], dim=-1)
    return sums


def _query_tile_sums(rows: torch.Tensor, q_tile: int) -> torch.Tensor:
    """Sums of rows [B, H, R, Nk] over each query tile -> [B, H, ceil(R / q_tile), Nk]."""
    B, H, R, nk = rows.shape
    n = -(-R // q_tile)
    rows = torch.nn.functional.pad(rows, (0, 0, 0, n * q_tile - R))
    return rows.view(B, H, n, q_tile, nk).sum(dim=3)


def _torch_search(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor | None,
    lse: torch.Tensor | None,
    q_tile: int,
    kv_tile: int,
    scale: float,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """(out or None, lse, tile sums [B, H, Nq, Nk]). With `v`, dense attention computes the LSE and the
    output; without, the given `lse` is used. Chunks of about CHUNK_ELEMENTS scores stay in cache, which
    matters more on CPU than the number of framework calls (measured: 1 MiB chunks ran the search about
    twice as fast as 64 MiB ones at 4k tokens)."""
    B, H, Sq, D = q.shape
    Skv = k.shape[2]
    nq, nk = num_tiles(Sq, q_tile), num_tiles(Skv, kv_tile)
    kT = k.float().transpose(-1, -2)  # [B, H, D, Skv]
    vf = None if v is None else v.float()
    out = None if v is None else torch.empty_like(q)
    lse_out = torch.empty(B, H, Sq, dtype=torch.float32, device=q.device) if lse is None else lse
    sums = torch.empty(B, H, nq, nk, dtype=torch.float32, device=q.device)
    step = _rows_per_chunk(q_tile, B * H, Skv)
    for r0 in range(0, Sq, step):
        r1 = min(r0 + step, Sq)
        s = (q[:, :, r0:r1].float() * scale) @ kT  # [B, H, R, Skv] fp32
        if vf is None or out is None:
            assert lse is not None  # a refresh is given the LSE
            row_lse = lse[:, :, r0:r1, None].float()
            # a row with lse = -inf (it attended nothing) contributes nothing
            row_lse = torch.where(row_lse == float("-inf"), float("inf"), row_lse)
            p = s.sub_(row_lse).exp_()
            row_sums = _key_tile_sums(p, kv_tile)
        else:
            m = s.amax(dim=-1, keepdim=True)
            p = s.sub_(m).exp_()
            row_sums = _key_tile_sums(p, kv_tile)
            total = row_sums.sum(dim=-1, keepdim=True)  # the softmax normaliser, from the small [R, Nk]
            out[:, :, r0:r1] = ((p @ vf) / total).to(q.dtype)
            lse_out[:, :, r0:r1] = (m + total.log()).squeeze(-1)
            row_sums = row_sums / total
        sums[:, :, r0 // q_tile:num_tiles(r1, q_tile)] = _query_tile_sums(row_sums, q_tile)
    return out, lse_out, sums


# -- entry points ------------------------------------------------------------------------------------


def _query_tile_sizes(Sq: int, q_tile: int, device: torch.device) -> torch.Tensor:
    """Real rows per query tile, [Nq] fp32 (the last tile may be partial)."""
    n = num_tiles(Sq, q_tile)
    sizes = torch.full((n,), float(q_tile), dtype=torch.float32, device=device)
    if n:
        sizes[-1] = Sq - (n - 1) * q_tile
    return sizes


def _search(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor | None,
    lse: torch.Tensor | None,
    tile_size: TileSize,
    scale: float | None,
    backend: str,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """(out or None, lse, mass) on the chosen path: fused with `v`, a refresh from `lse` without."""
    q_tile, kv_tile = tile_sizes(tile_size)
    B, H, Sq, D = q.shape
    scale = check_scale(scale, D)
    path = choose_search_path(q, backend, tile_size)
    forward_only(f"tile search ({path.kernel})", q, k, *(() if v is None else (v,)))
    nq, nk = num_tiles(Sq, q_tile), num_tiles(k.shape[2], kv_tile)
    if Sq == 0 or k.shape[2] == 0:
        out = None if v is None else torch.zeros_like(q)
        lse = torch.full((B, H, Sq), float("-inf"), dtype=torch.float32, device=q.device) if lse is None else lse
        paths.search.record(path)
        return out, lse, torch.zeros(B, H, nq, nk, dtype=torch.float32, device=q.device)
    if path.kernel == Kernel.TRITON:
        from . import triton_common
        from .search_triton import search

        def torch_search(reason: str) -> tuple[AttentionPath, tuple]:
            fallback = AttentionPath(Kernel.TORCH, upcast_precision(q.dtype), path.device, reason)
            return fallback, _torch_search(q, k, v, lse, q_tile, kv_tile, scale)

        key = ("search", q.dtype, D, (q_tile, kv_tile), triton_common.dot_precision(q.dtype), q.device, v is None)
        path, (out, lse, sums) = triton_common.run_or_fall_back(
            key, backend, lambda: (path, search(q, k, v, lse, q_tile, kv_tile, scale)), torch_search)
    elif path.kernel == Kernel.CPU:
        out, lse, sums = _cpu_search(q, k, v, lse, q_tile, kv_tile, scale)
    else:
        out, lse, sums = _torch_search(q, k, v, lse, q_tile, kv_tile, scale)
    paths.search.record(path)
    return out, lse, sums / _query_tile_sizes(Sq, q_tile, q.device).view(1, 1, nq, 1)


@torch.compiler.disable
def dense_attention_with_tile_mass(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    tile_size: TileSize = 64,
    scale: float | None = None,
    *,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense attention plus the tile mass (AdaSpa's fused online search).

    q [B, H, Sq, D], k and v [B, H, Skv, D], fp32/fp16/bf16, any Sq and Skv. `tile_size`: one size or
    (query tile, key tile), each 16, 32, 64 or 128; `scale` defaults to 1/sqrt(D). Returns
    out [B, H, Sq, D] in q's dtype (exact dense attention, softmax in fp32), lse [B, H, Sq] fp32 (natural
    log of sum_j exp(scale q_i.k_j) over all keys) and mass [B, H, Nq, Nk] fp32 as in the module
    docstring: each row sums to 1 (up to rounding). `backend`: "auto", "triton", "cpu-kernel" or "torch".
    """
    with torch.profiler.record_function(RANGE):
        check_qkv(q, k, v)
        out, lse, mass = _search(q, k, v, None, tile_size, scale, backend)
    assert out is not None  # the fused search computes it
    return out, lse, mass


@torch.compiler.disable
def tile_mass(
    q: torch.Tensor,
    k: torch.Tensor,
    lse: torch.Tensor,
    tile_size: TileSize = 64,
    scale: float | None = None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """The tile mass [B, H, Nq, Nk] fp32 from q, k and a (cached) row log-sum-exp `lse` [B, H, Sq]
    (AdaSpa's LSE-cached search): mass[p, q] = (1/|p|) sum_{i in p, j in q} exp(scale q_i.k_j - lse_i),
    one pass over the scores. With the LSE of these same q, k it equals the mass of
    `dense_attention_with_tile_mass`; with a stale one the rows sum to about 1. Rows whose lse is -inf
    contribute 0. Same shapes, dtypes, `tile_size`, `scale` and `backend` as there.
    """
    with torch.profiler.record_function(RANGE):
        check_qkv(q, k, k)
        if lse.shape != q.shape[:3] or lse.device != q.device or not lse.dtype.is_floating_point:
            raise ValueError(
                f"lse must be a float tensor [B, H, Sq] = {tuple(q.shape[:3])} on {q.device}; got "
                f"{tuple(lse.shape)} {lse.dtype} on {lse.device}"
            )
        _, _, mass = _search(q, k, None, lse.float(), tile_size, scale, backend)
    return mass


# -- from mass to an index ----------------------------------------------------------------------------


def _check_mass(mass: torch.Tensor) -> None:
    if mass.dim() != 4 or not mass.dtype.is_floating_point:
        raise ValueError(f"mass must be a float tensor [B, H, Nq, Nk]; got {tuple(mass.shape)} {mass.dtype}")


def _density_tensor(density_per_head: DensityPerHead, batch: int, heads: int, device: torch.device) -> torch.Tensor:
    """density_per_head as [B, H] fp32; a float, [H] or [B, H]. Each value must lie in (0, 1]."""
    d = torch.as_tensor(density_per_head, dtype=torch.float32, device=device)
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
    nq: int, nk: int, sink_tiles: Iterable[int], diagonal: bool, dense_query_tiles: Iterable[int], device
) -> torch.Tensor:
    forced = forced_tiles(nq, nk, sink_tiles, diagonal, device)
    rows = sorted({r % nq for r in dense_query_tiles}) if nq else []
    if rows:
        forced[rows] = True  # e.g. text queries: they attend every key tile
    return forced


def tiles_from_mass(
    mass: torch.Tensor,
    density_per_head: DensityPerHead,
    tile_size: TileSize,
    q_len: int,
    kv_len: int,
    sink_tiles: Iterable[int] = (),
    diagonal: bool = True,
    *,
    dense_query_tiles: Iterable[int] = (),
    forced: torch.Tensor | None = None,
) -> TileIndex:
    """The index (ids ascending) of q_len query / kv_len key tokens in tiles of `tile_size` that keeps,
    per (batch, head, query tile), the forced tiles plus the k_h = max(1, ceil(density_h * Nk)) others of
    largest `mass` [B, H, Nq, Nk] (ties: lower id), at most Nk in all. Forced: the key tiles `sink_tiles`
    (text sink; negative ids count from the end), with `diagonal` key tile i * Nk // Nq for query tile i,
    and every key tile for the query tiles in `dense_query_tiles` (text queries). Forced tiles come on top
    of k_h, as in `selection.topk_tiles`. `density_per_head`: a float, [H] or [B, H], in (0, 1]; density 1
    keeps every tile. `forced` ([Nq, Nk] bool) replaces the forced tiles the other arguments give (under
    ring attention a rank's query tiles are rows of the whole sequence's matrix).
    """
    _check_mass(mass)
    q_tile, kv_tile = tile_sizes(tile_size)
    B, H, nq, nk = mass.shape
    if (nq, nk) != (num_tiles(q_len, q_tile), num_tiles(kv_len, kv_tile)):
        raise ValueError(f"mass has {nq} x {nk} tiles; {q_len} x {kv_len} tokens in tiles of {q_tile} x {kv_tile} "
                         "make a different count")
    density = _density_tensor(density_per_head, B, H, mass.device)
    if forced is None:
        forced = _forced(nq, nk, sink_tiles, diagonal, dense_query_tiles, mass.device)
    if nq == 0 or nk == 0:
        return TileIndex(torch.zeros(B, H, nq, dtype=torch.int32, device=mass.device),
                         torch.zeros(B, H, nq, 1, dtype=torch.int32, device=mass.device), q_tile, kv_tile, q_len,
                         kv_len)
    k = torch.ceil(density * nk).clamp(min=1, max=nk).to(torch.int32)  # [B, H]
    count = (forced.sum(dim=-1, dtype=torch.int32) + k.view(B, H, 1)).clamp(max=nk)  # [B, H, Nq]
    width = int(count.max())
    scores = mass.float().masked_fill(forced, float("inf"))  # forced tiles are taken first
    # a stable descending sort keeps the lower id on ties (topk does not promise an order)
    ranked = scores.sort(dim=-1, descending=True, stable=True).indices[..., :width]
    used = torch.arange(width, device=mass.device) < count.unsqueeze(-1)
    ids = torch.where(used, ranked, nk).sort(dim=-1).values  # ascending, unused (= nk) last
    return TileIndex(count.contiguous(), torch.where(ids == nk, 0, ids).to(torch.int32), q_tile, kv_tile, q_len,
                     kv_len)


def index_recall(mass: torch.Tensor, index: TileIndex) -> torch.Tensor:
    """[B, H] fp32: the share of each head's mass that the index keeps, sum(kept) / sum(all), every query
    tile weighted alike (AdaSpa's Recall; with a fresh LSE sum(all) = Nq). An index with a batch or head
    dim of 1 is broadcast."""
    return _recall(*recall_sums(mass, index))


def recall_sums(mass: torch.Tensor, index: TileIndex) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, H] kept mass, [B, H] total mass) of `index_recall`, before the division: sums that add up
    over query tiles held apart (ranks of a ring) and concatenate over heads held apart (Ulysses)."""
    _check_mass(mass)
    B, H, nq, nk = mass.shape
    index = index.expand(B, H)
    width = index.indices.shape[-1]
    used = torch.arange(width, device=mass.device) < index.counts.unsqueeze(-1)
    kept = torch.where(used, mass.float().gather(-1, index.indices.long().clamp(0, max(nk - 1, 0))), 0.0)
    return kept.sum(dim=(2, 3)), mass.float().sum(dim=(2, 3))


def _recall(kept: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    return torch.where(total > 0, kept / total.clamp_min(torch.finfo(torch.float32).tiny), 1.0)


# (kept, total) [B, H_local] -> the same sums over every head and query tile of the sequence [B, H]
RecallReduce = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def head_adaptive_density(
    mass: torch.Tensor,
    base_density: float,
    recall_threshold: float = 0.8,
    sink_tiles: Iterable[int] = (),
    min_density: float = 0.0,
    max_density: float = 1.0,
    *,
    diagonal: bool = True,
    dense_query_tiles: Iterable[int] = (),
    forced: torch.Tensor | None = None,
    reduce: RecallReduce | None = None,
) -> torch.Tensor:
    """Density per head, [B, H] fp32, averaging `base_density` over the heads of each batch element.

    AdaSpa's three-level rule (paper §4.2), per batch element: each head's recall is that of
    `tiles_from_mass` at `base_density` (same forced blocks); n = number of heads with recall >
    `recall_threshold`, at most H // 2; the n heads of highest recall get density d - delta, the n of
    lowest recall d + delta, the rest d. The paper's delta = d / 2 (sparsity s -> (1+s)/2 and (3s-1)/2);
    here delta = min(d / 2, max_density - d, d - min_density), so both moves stay inside
    [min_density, max_density] and the mean stays exactly d (a clamp on one side only would break it).
    Ties in recall go to the lower head index (stable sort). Under context parallelism `reduce` sums the
    recall's (kept, total) over the ranks first, so every rank ranks the same heads alike (Ulysses: the
    result then covers every head, [B, H_all]); `forced` is passed on to `tiles_from_mass`.
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
    B, H, nq, nk = mass.shape
    # recall only reads the tile ids: any tile size with this many tiles will do
    index = tiles_from_mass(mass, base_density, 16, nq * 16, nk * 16, sink_tiles, diagonal,
                            dense_query_tiles=dense_query_tiles, forced=forced)
    kept, total = recall_sums(mass, index)
    if reduce is not None:
        kept, total = reduce(kept, total)
    recall = _recall(kept, total)  # [B, H]
    H = recall.shape[1]
    delta = min(base_density / 2, max_density - base_density, base_density - min_density)
    density = torch.full((B, H), float(base_density), dtype=torch.float32, device=mass.device)
    n_high = (recall > recall_threshold).sum(dim=1).clamp(max=H // 2)  # [B]
    order = recall.sort(dim=1, descending=True, stable=True).indices  # best recall first
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(H, device=mass.device).expand(B, H))
    n = n_high.unsqueeze(1)
    density = torch.where(rank < n, base_density - delta, density)
    density = torch.where(rank >= H - n, base_density + delta, density)
    return density


def byte_mask_bytes(q_len: int, kv_len: int, batch: int = 1, heads: int = 1) -> int:
    """Bytes of the token-level boolean mask [B, H, Sq, Skv] (one byte per entry) the index stands for."""
    return batch * heads * q_len * kv_len

