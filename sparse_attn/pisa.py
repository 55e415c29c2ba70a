"""PISA (piecewise sparse attention, arXiv 2602.01077): exact on the critical key tiles, Taylor on the rest.

Keep-or-drop block sparsity throws the unselected key tiles away. PISA keeps them in the SAME softmax
through a tile-wise Taylor expansion of exp around each tile's mean key k̄_j:

    exp(s q.k) ~= exp(s q.k̄_j) (1 + s q.(k - k̄_j))        for the tokens k of an unselected tile j

so, per query row q, with S the selected tiles (computed exactly) and U the others:

    num = sum_{j in S} sum_n e^{s q.k_jn} v_jn  +  sum_{j in U} e^{s q.k̄_j} V̂_j  [+ G s q.h̄]    ("hybrid")
    den = sum_{j in S} sum_n e^{s q.k_jn}       +  G,    G = sum_{j in U} B_j e^{s q.k̄_j}
    out = num / den

V̂_j is the SUM of the tile's values, B_j its real token count (the last tile may be partial). The first-
order term cancels in the denominator (the k - k̄_j sum to 0). "zeroth" stops at the zeroth order; "hybrid"
(the paper's method) replaces each tile's first-order moment H_j = sum_n (k_jn - k̄_j)^T v_jn by a shared
mean. We use the per-token mean over ALL key tiles, selected ones included, h̄ = sum_j H_j / Skv, and
weight tile j by B_j: that is the paper's (1/N) sum_j H_j for full blocks and stays consistent for a
partial last tile (the public kernel's `g / T` form amounts to the same).

What differs from the public kernel (research notes, sparse_attention.md §1.4), on purpose:
- tile statistics (k̄, V̂, h̄) are fp32 whatever the input dtype;
- h̄ comes from one product over the whole sequence, sum_t (k_t - k̄_{blk(t)})^T v_t, never a d x d matrix
  per tile (that buffer is B*H*N*D^2: 1.5 GB per sample for Wan2.1-14B 720p);
- the tail mass G is scaled with the running max like the other accumulators (the Triton kernel rescales
  it by alpha; the C++ kernel makes the tail one more step of the same online softmax).

Paths: on CUDA one fused Triton kernel (sparse_attn/pisa_triton.py): exact phase, pooled phase and first-
order term on one online-softmax state. On CPU the same in the engine's C++ kernel (`cpu_kernel.PisaTail`).
Without a C++ compiler: the engine's PyTorch path with `return_lse` for S, batched matmuls against the
pooled keys for U, combined exactly through the log-sum-exp (merge algebra).
`pisa_reference` is the float64 truth the tests use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import paths
from .attention import (
    block_sparse_attention,
    check_index,
    check_qkv,
    check_scale,
    choose_path,
    forward_only,
    poison_nonfinite,
)
from .paths import AttentionPath, Kernel
from .selection import forced_tiles, pool_tiles, select_tiles, topk_tiles
from .tiles import TileIndex, TileSize, num_tiles, tile_sizes

ORDERS = ("zeroth", "hybrid")
ROUTINGS = ("pooled", "covariance")
COVARIANCE_EPS = 1e-5  # inside log(||H_j - H̄|| + eps), as in the paper's Eq. 11 / the public code
PROFILER_RANGE = "accel::attention.pisa"  # counted as attention time by accel.bench (prefix accel::attention)


@dataclass(frozen=True)
class _PisaArgs:
    """The options of `pisa_attention`, validated once (a bad value raises ValueError naming it)."""

    density: float = 0.125
    tile_size: TileSize = 64
    order: str = "hybrid"
    routing: str = "pooled"
    sink_tiles: tuple[int, ...] = ()
    scale: float | None = None
    backend: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.density, bool) or not isinstance(self.density, int | float) or not 0.0 < self.density <= 1.0:
            raise ValueError(f"density must be a number in (0, 1]; got {self.density!r}")
        tile_sizes(self.tile_size)  # raises ValueError naming tile_size
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}; got {self.order!r}")
        if self.routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {ROUTINGS}; got {self.routing!r}")
        if any(isinstance(s, bool) or not isinstance(s, int) for s in self.sink_tiles):
            raise ValueError(f"sink_tiles must be key tile ids (ints); got {self.sink_tiles!r}")
        paths.check_backend(self.backend)


@dataclass(frozen=True)
class KeyTileStats:
    """What the approximate branch needs about the key tiles, all fp32.

    key_means [B, H, Nk, D] (k̄_j), value_sums [B, H, Nk, D] (V̂_j), counts [Nk] (B_j), moment [B, H, D, D]
    (h̄ = sum_t (k_t - k̄_{blk(t)})^T v_t / Skv, the per-token first-order moment)."""

    key_means: torch.Tensor
    value_sums: torch.Tensor
    counts: torch.Tensor
    moment: torch.Tensor


def _tiled(x: torch.Tensor, block: int) -> torch.Tensor:
    """x [B, H, S, D] as fp32 [B, H, N, block, D], the partial last tile zero-padded."""
    B, H, S, D = x.shape
    n = num_tiles(S, block)
    x = x.float()
    if n * block != S:
        x = F.pad(x, (0, 0, 0, n * block - S))
    return x.reshape(B, H, n, block, D)  # a view when x is contiguous


def _counts(seq_len: int, block: int, device: torch.device) -> torch.Tensor:
    n = num_tiles(seq_len, block)
    counts = torch.full((n,), float(block), dtype=torch.float32, device=device)
    counts[-1] = seq_len - (n - 1) * block
    return counts


def key_tile_stats(k: torch.Tensor, v: torch.Tensor, kv_tile: int) -> KeyTileStats:
    """Block means of k, tile sums of v and the global first-order moment, in fp32. The moment is one
    [D, S] x [S, D] product over the centred keys: no per-block d x d matrix is ever formed."""
    kb, vb = _tiled(k, kv_tile), _tiled(v, kv_tile)
    B, H, n, _, D = kb.shape
    counts = _counts(k.shape[2], kv_tile, k.device)
    means = kb.sum(dim=3) / counts.view(1, 1, n, 1)
    centred = (kb - means.unsqueeze(3)).view(B, H, n * kv_tile, D)  # padded rows meet zero values below
    moment = centred.transpose(-1, -2) @ vb.view(B, H, n * kv_tile, D) / k.shape[2]
    return KeyTileStats(means, vb.sum(dim=3), counts, moment)


def key_moment_sum(k: torch.Tensor, v: torch.Tensor, kv_tile: int) -> torch.Tensor:
    """sum_t (k_t - k̄_{blk(t)})^T v_t [B, H, D, D] fp32 over these keys (whole tiles): h̄ times their count,
    which adds up over key shards (then divided by the whole count: h̄ of the whole sequence)."""
    return key_tile_stats(k, v, kv_tile).moment * k.shape[2]


def moment_deviation(k: torch.Tensor, v: torch.Tensor, kv_tile: int, chunk_elements: int = 1 << 22) -> torch.Tensor:
    """M_j = ||H_j - H̄||_F [B, H, Nk] fp32, H̄ = (1/Nk) sum_j H_j: how far each tile's first-order moment
    is from the shared one the hybrid order uses (the paper's covariance-aware routing bias). Blocks are
    taken a few at a time so at most `chunk_elements` d x d entries exist at once."""
    kb, vb = _tiled(k, kv_tile), _tiled(v, kv_tile)
    B, H, n, block, D = kb.shape
    # centred keys (the padded rows of a partial last tile meet zero values)
    kb = kb - kb.sum(dim=3, keepdim=True) / _counts(k.shape[2], kv_tile, k.device).view(1, 1, n, 1, 1)
    mean = (kb.reshape(B, H, n * block, D).transpose(-1, -2) @ vb.reshape(B, H, n * block, D)) / n
    step = max(1, chunk_elements // max(1, B * H * D * D))
    norms = [
        (torch.einsum("bhnsd,bhnse->bhnde", kb[:, :, i:i + step], vb[:, :, i:i + step]) - mean.unsqueeze(2))
        .flatten(3).norm(dim=-1)
        for i in range(0, n, step)
    ]
    return torch.cat(norms, dim=2)


def route(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    density: float,
    tile_size: TileSize = 64,
    routing: str = "pooled",
    sink_tiles: Iterable[int] = (),
    scale: float | None = None,
) -> TileIndex:
    """The critical tiles: top-k at `density` of the pooled score s q̄_i.k̄_j per (batch, head, query
    tile), plus `sink_tiles` and the diagonal (sparse_attn/selection.py). "covariance" adds
    log(||H_j - H̄||_F + eps) to the score (paper Eq. 11): tiles whose first-order moment the shared h̄
    would misrepresent are preferred for the exact branch."""
    if routing not in ROUTINGS:
        raise ValueError(f"routing must be one of {ROUTINGS}; got {routing!r}")
    if routing == "pooled":
        return select_tiles(q, k, density, tile_size, sink_tiles, diagonal=True, scale=scale)
    q_tile, kv_tile = tile_sizes(tile_size)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = pool_tiles(q, q_tile) @ pool_tiles(k, kv_tile).transpose(-1, -2) * scale
    scores = scores + torch.log(moment_deviation(k, v, kv_tile) + COVARIANCE_EPS).unsqueeze(2)
    forced = forced_tiles(num_tiles(q.shape[2], q_tile), num_tiles(k.shape[2], kv_tile), sink_tiles, True,
                          q.device)
    return topk_tiles(scores, density, tile_size, q.shape[2], k.shape[2], forced)


ROW_CHUNK_ELEMENTS = 1 << 22  # pooled scores per step on CPU (16 MiB fp32); few, large ops: every op is a
# parallel region, and on a busy machine each one waits for a descheduled worker thread
EXP_HEADROOM = 60.0  # e^60 * Nk * tile_size stays far below fp32's max (e^88)


def _split_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: TileIndex,
    scale: float,
    order: str,
    stats: KeyTileStats,
    exact_kernel: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch path (no C++ kernel): (out, lse). Exact part from the engine (with its LSE), pooled part as a second partial
    softmax over the Nk tile means, combined against one reference per row: the algebra of
    merge_attention without normalising twice.

    The reference is the exact part's LSE whenever the Cauchy-Schwarz bound s |q| max_j |k̄_j| shows no
    pooled score can exceed it by more than EXP_HEADROOM: then the subtraction rides inside the matmul
    (an extra column -ref against a row of ones) and no max pass is needed. Chunks with a row that fails
    the bound (or has no exact keys) take the exact max instead. A chunk of query tiles is processed at
    a time so the [rows, Nk] scores stay in cache through the exp / mask / product passes."""
    q_tile = index.q_tile
    out1, lse1 = block_sparse_attention(q, k, v, index, scale, return_lse=True, backend=exact_kernel)
    B, H, Sq, D = q.shape
    nk = stats.counts.shape[0]
    # 1.0 where key tile j is approximated for query tile i, 0.0 where it is in the exact part
    keep = (~index.to_dense()).float().expand(B, H, -1, -1).unsqueeze(3)
    keys = torch.cat([stats.key_means.transpose(-1, -2) * scale, torch.ones(B, H, 1, nk, dtype=torch.float32, device=q.device)], dim=2)  # [s k̄ | 1]
    key_bound = stats.key_means.norm(dim=-1).amax(dim=-1, keepdim=True) * scale  # [B, H, 1]
    # one product gives the value sums and the tail mass G: the counts ride along as a last column
    values = torch.cat([stats.value_sums, stats.counts.expand(B, H, nk).unsqueeze(-1)], dim=-1)
    # the whole-call pieces in one op each (on a busy machine every op waits for its worker threads)
    first = q.float() @ (stats.moment * scale) if order == "hybrid" else None  # s q.h̄ per row
    risky = q.float().norm(dim=-1) * key_bound > lse1 + EXP_HEADROOM  # [B, H, Sq]: the LSE may overflow
    out = torch.empty(B, H, Sq, D, dtype=torch.float32, device=q.device)
    lse = torch.empty(B, H, Sq, dtype=torch.float32, device=q.device)
    step = max(1, ROW_CHUNK_ELEMENTS // (B * H * nk * q_tile)) * q_tile  # whole query tiles per chunk
    for r0 in range(0, Sq, step):
        r1 = min(Sq, r0 + step)
        blocks = -(-(r1 - r0) // q_tile)
        keep_c = keep[:, :, r0 // q_tile:r0 // q_tile + blocks]  # [B, H, blocks, 1, Nk]
        qc = q[:, :, r0:r1].float()
        ref = lse1[:, :, r0:r1]
        if bool(risky[:, :, r0:r1].any()):  # rare: use the exact max
            z = _per_row(torch.matmul(qc, keys[:, :, :D]), keep_c.log(), q_tile, torch.add)  # -inf: exact
            ref = torch.maximum(ref, z.amax(dim=-1))
            ref = ref.masked_fill(torch.isinf(ref), 0.0)  # rows with no key at all (only when Skv has none)
            p = z.sub_(ref.unsqueeze(-1)).exp_()
        else:  # p = exp(s q.k̄_j - ref)
            p = torch.matmul(torch.cat([qc, -ref.unsqueeze(-1)], dim=-1), keys).exp_()
            p = _per_row(p, keep_c, q_tile, torch.mul)
        tail = torch.matmul(p, values)  # [B, H, rows, D + 1]: sum_U e^{..} V̂_j | G
        mass = tail[..., -1:]
        exact = torch.exp(lse1[:, :, r0:r1] - ref).unsqueeze(-1)
        num = tail[..., :-1].addcmul_(exact, out1[:, :, r0:r1].float())
        if first is not None:
            num.addcmul_(mass, first[:, :, r0:r1])  # first order: G s q.h̄
        den = exact + mass
        torch.div(num, den.clamp_min(torch.finfo(torch.float32).tiny), out=out[:, :, r0:r1])
        den = den.squeeze(-1)
        lse[:, :, r0:r1] = torch.where(den > 0, torch.log(den) + ref, float("-inf"))
    return out.to(q.dtype), lse


def _per_row(scores: torch.Tensor, tile_values: torch.Tensor, q_tile: int,
             op: Callable[..., torch.Tensor]) -> torch.Tensor:
    """op(scores [B, H, rows, Nk], the value of each row's query tile [B, H, blocks, 1, Nk]) in place: a
    broadcast over the rows of a block (a broadcast multiply is ~10x faster than masked_fill here)."""
    B, H, rows, nk = scores.shape
    if rows % q_tile == 0:
        op(scores.view(B, H, rows // q_tile, q_tile, nk), tile_values, out=scores.view(B, H, -1, q_tile, nk))
        return scores
    per_row = tile_values.squeeze(3).repeat_interleave(q_tile, dim=2)[:, :, :rows]
    return op(scores, per_row, out=scores)


# An opaque call under torch.compile, like block_sparse_attention.
@torch.compiler.disable
def pisa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    density: float = 0.125,
    tile_size: TileSize = 64,
    order: str = "hybrid",
    routing: str = "pooled",
    sink_tiles: Sequence[int] = (),
    index: TileIndex | None = None,
    scale: float | None = None,
    backend: str = "auto",
    *,
    return_lse: bool = False,
    moment: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """PISA attention of q [B, H, Sq, D] over k, v [B, H, Skv, D] (fp32/fp16/bf16) -> out like q.

    The critical tiles are routed (`route`: top-k at `density` + `sink_tiles` + diagonal) unless `index`
    gives them (a `TileIndex`; then `density`, `tile_size`, `routing` and `sink_tiles` are unused).
    `order`: "hybrid" (zeroth + shared first-order moment, the paper's method) or "zeroth". `backend`:
    "auto" (Triton on CUDA, the CPU kernel on CPU), "triton", "cpu-kernel" or "torch" (the last two: the
    exact part's kernel; the pooled part is PyTorch). With `return_lse`, also the row log-sum-exp of the
    approximated denominator [B, H, Sq] fp32. The path is recorded as "pisa+<kernel>" (`paths.capture()`).
    `moment` [B, H, D, D] fp32 replaces the shared first-order moment h̄ of these keys: for a partial over
    one shard of a longer key sequence (ring attention), the whole sequence's h̄ (`key_moment_sum`),
    so that the shards' partials merge by LSE into the single call's result.
    """
    args = _PisaArgs(density, index.tile_size if index is not None else tile_size, order, routing,
                     tuple(sink_tiles), scale, backend)
    with torch.profiler.record_function(PROFILER_RANGE):
        check_qkv(q, k, v)
        B, H, Sq, D = q.shape
        scale = check_scale(args.scale, D)
        path = choose_path(q, args.backend)
        forward_only("pisa_attention", q, k, v)
        if index is not None:
            index = check_index(index, q, k)
        if Sq == 0 or k.shape[2] == 0:
            out, lse = torch.zeros_like(q), torch.full((B, H, Sq), float("-inf"), dtype=torch.float32, device=q.device)
        else:
            if index is None:
                index = route(q, k, v, args.density, args.tile_size, args.routing, args.sink_tiles, scale)
            stats = key_tile_stats(k, v, index.kv_tile)
            if moment is not None:
                stats = dataclasses.replace(stats, moment=moment.float())
            path, (out, lse) = _pisa(path, args, q, k, v, index, scale, stats)
            if path.device == "cpu":
                out, lse = poison_nonfinite(q, k, out, lse, None)
        paths.engine.record(AttentionPath(f"pisa+{path.kernel}", path.precision, path.device, path.note))
    return (out, lse) if return_lse else out


def _pisa(path: AttentionPath, args: _PisaArgs, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
          index: TileIndex, scale: float, stats: KeyTileStats) -> tuple[AttentionPath, tuple[torch.Tensor, torch.Tensor]]:
    """(the path of the exact part, (out, lse)) on the chosen kernel."""
    hybrid = args.order == "hybrid"

    def split(exact_kernel: str, reason: str = "") -> tuple[AttentionPath, tuple[torch.Tensor, torch.Tensor]]:
        with paths.capture() as seen:  # the engine's "auto" may fall back in turn
            result = _split_attention(q, k, v, index, scale, args.order, stats, exact_kernel)
        exact = seen[-1]
        note = "; ".join(n for n in (reason, exact.note) if n)
        return AttentionPath(exact.kernel, exact.precision, exact.device, note), result

    if path.kernel == Kernel.TRITON:
        from . import triton_common
        from .pisa_triton import attention as fused

        key = ("pisa", q.dtype, q.shape[-1], index.tile_size, triton_common.dot_precision(q.dtype), q.device,
               args.order)
        return triton_common.run_or_fall_back(
            key, args.backend, lambda: (path, fused(q, k, v, index, stats, scale, hybrid)),
            lambda reason: split("auto", reason))
    if path.kernel == Kernel.CPU:  # the tail fused into the C++ kernel's softmax
        from . import cpu_kernel

        first = q.float() @ (stats.moment * scale) if hybrid else None  # s q.h̄ per row
        tail = cpu_kernel.PisaTail(stats.key_means, stats.value_sums / stats.counts.view(1, 1, -1, 1),
                                   stats.counts, first)
        return path, cpu_kernel.attention(q, k, v, index.expand(q.shape[0], q.shape[1]), scale, tail)
    return split(path.kernel, path.note)


def pisa_attention_bshd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    density: float = 0.125,
    tile_size: TileSize = 64,
    order: str = "hybrid",
    routing: str = "pooled",
    sink_tiles: Sequence[int] = (),
    index: TileIndex | None = None,
    scale: float | None = None,
    backend: str = "auto",
    *,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`pisa_attention` for diffusers' [B, S, H, D] layout; out [B, Sq, H, D] (lse [B, Sq, H])."""
    out, lse = pisa_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), density, tile_size, order, routing,
        sink_tiles, index, scale, backend, return_lse=True,
    )
    out, lse = out.transpose(1, 2), lse.transpose(1, 2)
    return (out, lse) if return_lse else out


def pisa_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: TileIndex,
    order: str = "hybrid",
    scale: float | None = None,
) -> torch.Tensor:
    """The formulas of the module docstring in float64, written for clarity: dense exact scores over the
    selected tokens, pooled scores over the unselected tiles, one shared max. Returns float64 [B, H, Sq, D]."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}; got {order!r}")
    q_tile, kv_tile = index.tile_size
    q, k, v = q.double(), k.double(), v.double()
    B, H, Sq, D = q.shape
    Skv = k.shape[2]
    s = D**-0.5 if scale is None else scale
    nk = num_tiles(Skv, kv_tile)
    selected = index.to(q.device).to_dense().expand(B, H, -1, -1)  # [B, H, Nq, Nk]
    row_tiles = torch.arange(Sq, device=q.device) // q_tile
    col_tiles = torch.arange(Skv, device=q.device) // kv_tile
    sel_rows = selected[:, :, row_tiles]  # [B, H, Sq, Nk]: is tile j exact for this row?
    exact_mask = sel_rows[..., col_tiles]  # [B, H, Sq, Skv]

    one_hot = F.one_hot(col_tiles, nk).double()  # [Skv, Nk]: token -> its tile
    counts = one_hot.sum(0)  # B_j
    k_mean = torch.einsum("bhtd,tj->bhjd", k, one_hot) / counts[:, None]  # k̄_j
    v_sum = torch.einsum("bhtd,tj->bhjd", v, one_hot)  # V̂_j
    centred = k - k_mean[:, :, col_tiles]
    h_bar = torch.einsum("bhtd,bhte->bhde", centred, v) / Skv  # per-token first-order moment

    exact_logits = (s * q @ k.transpose(-1, -2)).masked_fill(~exact_mask, float("-inf"))
    pooled_logits = (s * q @ k_mean.transpose(-1, -2)).masked_fill(sel_rows, float("-inf"))
    m = torch.maximum(exact_logits.amax(-1), pooled_logits.amax(-1)).unsqueeze(-1)
    p_exact, p_pooled = torch.exp(exact_logits - m), torch.exp(pooled_logits - m)
    tail_mass = p_pooled @ counts  # G = sum_{j in U} B_j e^{s q.k̄_j} (relative to m)
    num = p_exact @ v + p_pooled @ v_sum
    if order == "hybrid":
        num = num + tail_mass.unsqueeze(-1) * (s * q @ h_bar)
    den = p_exact.sum(-1) + tail_mass
    return num / den.unsqueeze(-1)


def relative_errors(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    density: float,
    tile_size: TileSize = 64,
    sink_tiles: Sequence[int] = (),
    routing: str = "pooled",
) -> dict[str, float]:
    """Relative L2 error vs dense attention (float64) on one routed index: 'keep_or_drop' (the selected
    blocks only: plain block_sparse_attention), 'zeroth' and 'hybrid' PISA. For the quality benchmark."""
    index = route(q, k, v, density, tile_size, routing, sink_tiles)
    dense = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    outs = {
        "keep_or_drop": block_sparse_attention(q, k, v, index),
        "zeroth": pisa_attention(q, k, v, order="zeroth", index=index),
        "hybrid": pisa_attention(q, k, v, order="hybrid", index=index),
    }
    norm = float(dense.norm())
    return {name: float((out.double() - dense).norm()) / norm for name, out in outs.items()}
