"""PISA (piecewise sparse attention, arXiv 2602.01077): exact on the critical key blocks, Taylor on the rest.

Keep-or-drop block sparsity throws the unselected key blocks away. PISA keeps them in the SAME softmax
through a block-wise Taylor expansion of exp around each block's mean key k̄_j:

    exp(s q.k) ~= exp(s q.k̄_j) (1 + s q.(k - k̄_j))        for the tokens k of an unselected block j

so, per query row q, with S the selected blocks (computed exactly) and U the others:

    num = sum_{j in S} sum_n e^{s q.k_jn} v_jn  +  sum_{j in U} e^{s q.k̄_j} V̂_j  [+ G s q.h̄]    ("hybrid")
    den = sum_{j in S} sum_n e^{s q.k_jn}       +  G,    G = sum_{j in U} B_j e^{s q.k̄_j}
    out = num / den

V̂_j is the SUM of the block's values, B_j its real token count (the last block may be partial). The first-
order term cancels in the denominator (the k - k̄_j sum to 0). "zeroth" stops at the zeroth order; "hybrid"
(the paper's method) replaces each block's first-order moment H_j = sum_n (k_jn - k̄_j)^T v_jn by a shared
mean. We use the per-token mean over ALL key blocks, selected ones included, h̄ = sum_j H_j / Skv, and
weight block j by B_j: that is the paper's (1/N) sum_j H_j for full blocks and stays consistent for a
partial last block (the public kernel's `g / T` form amounts to the same).

What differs from the public kernel (research notes, sparse_attention.md §1.4), on purpose:
- block statistics (k̄, V̂, h̄) are fp32 whatever the input dtype;
- h̄ comes from one product over the whole sequence, sum_t (k_t - k̄_{blk(t)})^T v_t, never a d x d matrix
  per block (that buffer is B*H*N*D^2: 1.5 GB per sample for Wan2.1-14B 720p);
- the tail mass G is scaled with the running max like the other accumulators (the Triton kernel rescales
  it by alpha; the C++ kernel makes the tail one more step of the same online softmax).

Paths: on CUDA one fused Triton kernel (sparse_attn/pisa_triton.py): exact phase, pooled phase and first-
order term on one online-softmax state. On CPU the same in the engine's C++ kernel (`cpu_kernel.PisaTail`).
Without a C++ compiler: the engine's PyTorch path with `return_lse` for S, batched matmuls against the
pooled keys for U, combined exactly through the log-sum-exp (merge algebra).
`pisa_reference` is the float64 truth the tests use.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import paths
from .attention import _check_qkv, block_sparse_attention, choose_path
from .blocks import BlockSize, block_sizes, blocks_to_dense, check_blocks, num_blocks
from .selection import forced_blocks, pool_blocks, select_blocks, topk_blocks

ORDERS = ("zeroth", "hybrid")
ROUTINGS = ("pooled", "covariance")
BACKENDS = ("auto", *paths.KERNELS)
COVARIANCE_EPS = 1e-5  # inside log(||H_j - H̄|| + eps), as in the paper's Eq. 11 / the public code
PROFILER_RANGE = "accel::attention.pisa"  # counted as attention time by accel.bench (prefix accel::attention)


@dataclass(frozen=True)
class PisaConfig:
    """The options of `pisa_attention`, validated once (a bad value raises ValueError naming it)."""

    density: float = 0.125
    block_size: BlockSize = 64
    order: str = "hybrid"
    routing: str = "pooled"
    sink_blocks: tuple[int, ...] = ()
    scale: float | None = None
    backend: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.density, bool) or not isinstance(self.density, int | float) or not 0.0 < self.density <= 1.0:
            raise ValueError(f"density must be a number in (0, 1]; got {self.density!r}")
        block_sizes(self.block_size)  # raises ValueError naming block_size
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}; got {self.order!r}")
        if self.routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {ROUTINGS}; got {self.routing!r}")
        if any(isinstance(s, bool) or not isinstance(s, int) for s in self.sink_blocks):
            raise ValueError(f"sink_blocks must be key block ids (ints); got {self.sink_blocks!r}")
        if self.scale is not None and not (isinstance(self.scale, int | float) and math.isfinite(self.scale)
                                           and self.scale > 0):
            raise ValueError(f"scale must be a positive finite number or None; got {self.scale!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}; got {self.backend!r}")


@dataclass(frozen=True)
class KeyBlockStats:
    """What the approximate branch needs about the key blocks, all fp32.

    key_means [B, H, Nk, D] (k̄_j), value_sums [B, H, Nk, D] (V̂_j), counts [Nk] (B_j), moment [B, H, D, D]
    (h̄ = sum_t (k_t - k̄_{blk(t)})^T v_t / Skv, the per-token first-order moment)."""

    key_means: torch.Tensor
    value_sums: torch.Tensor
    counts: torch.Tensor
    moment: torch.Tensor


def _blocked(x: torch.Tensor, block: int) -> torch.Tensor:
    """x [B, H, S, D] as fp32 [B, H, N, block, D], the partial last block zero-padded."""
    B, H, S, D = x.shape
    n = num_blocks(S, block)
    x = x.float()
    if n * block != S:
        x = F.pad(x, (0, 0, 0, n * block - S))
    return x.reshape(B, H, n, block, D)  # a view when x is contiguous


def _counts(seq_len: int, block: int, device: torch.device) -> torch.Tensor:
    n = num_blocks(seq_len, block)
    counts = torch.full((n,), float(block), device=device)
    counts[-1] = seq_len - (n - 1) * block
    return counts


def key_block_stats(k: torch.Tensor, v: torch.Tensor, kv_block: int) -> KeyBlockStats:
    """Block means of k, block sums of v and the global first-order moment, in fp32. The moment is one
    [D, S] x [S, D] product over the centred keys: no per-block d x d matrix is ever formed."""
    kb, vb = _blocked(k, kv_block), _blocked(v, kv_block)
    B, H, n, _, D = kb.shape
    counts = _counts(k.shape[2], kv_block, k.device)
    means = kb.sum(dim=3) / counts.view(1, 1, n, 1)
    centred = (kb - means.unsqueeze(3)).view(B, H, n * kv_block, D)  # padded rows meet zero values below
    moment = centred.transpose(-1, -2) @ vb.view(B, H, n * kv_block, D) / k.shape[2]
    return KeyBlockStats(means, vb.sum(dim=3), counts, moment)


def moment_deviation(k: torch.Tensor, v: torch.Tensor, kv_block: int, chunk_elements: int = 1 << 22) -> torch.Tensor:
    """M_j = ||H_j - H̄||_F [B, H, Nk] fp32, H̄ = (1/Nk) sum_j H_j: how far each block's first-order moment
    is from the shared one the hybrid order uses (the paper's covariance-aware routing bias). Blocks are
    taken a few at a time so at most `chunk_elements` d x d entries exist at once."""
    kb, vb = _blocked(k, kv_block), _blocked(v, kv_block)
    B, H, n, block, D = kb.shape
    # centred keys (the padded rows of a partial last block meet zero values)
    kb = kb - kb.sum(dim=3, keepdim=True) / _counts(k.shape[2], kv_block, k.device).view(1, 1, n, 1, 1)
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
    block_size: BlockSize = 64,
    routing: str = "pooled",
    sink_blocks: Iterable[int] = (),
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The critical blocks: top-k at `density` of the pooled score s q̄_i.k̄_j per (batch, head, query
    block), plus `sink_blocks` and the diagonal (sparse_attn/selection.py). "covariance" adds
    log(||H_j - H̄||_F + eps) to the score (paper Eq. 11): blocks whose first-order moment the shared h̄
    would misrepresent are preferred for the exact branch."""
    if routing not in ROUTINGS:
        raise ValueError(f"routing must be one of {ROUTINGS}; got {routing!r}")
    if routing == "pooled":
        return select_blocks(q, k, density, block_size, sink_blocks, diagonal=True, scale=scale)
    q_block, kv_block = block_sizes(block_size)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = pool_blocks(q, q_block) @ pool_blocks(k, kv_block).transpose(-1, -2) * scale
    scores = scores + torch.log(moment_deviation(k, v, kv_block) + COVARIANCE_EPS).unsqueeze(2)
    forced = forced_blocks(num_blocks(q.shape[2], q_block), num_blocks(k.shape[2], kv_block), sink_blocks, True,
                           q.device)
    return topk_blocks(scores, density, forced)


ROW_CHUNK_ELEMENTS = 1 << 22  # pooled scores per step on CPU (16 MiB fp32); few, large ops: every op is a
# parallel region, and on a busy machine each one waits for a descheduled worker thread
EXP_HEADROOM = 60.0  # e^60 * Nk * block_size stays far below fp32's max (e^88)


def _split_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_num_blocks: torch.Tensor,
    kv_indices: torch.Tensor,
    q_block: int,
    kv_block: int,
    scale: float,
    order: str,
    stats: KeyBlockStats,
    exact_kernel: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch path (no C++ kernel): (out, lse). Exact part from the engine (with its LSE), pooled part as a second partial
    softmax over the Nk block means, combined against one reference per row: the algebra of
    merge_attention without normalising twice.

    The reference is the exact part's LSE whenever the Cauchy-Schwarz bound s |q| max_j |k̄_j| shows no
    pooled score can exceed it by more than EXP_HEADROOM: then the subtraction rides inside the matmul
    (an extra column -ref against a row of ones) and no max pass is needed. Chunks with a row that fails
    the bound (or has no exact keys) take the exact max instead. A chunk of query blocks is processed at
    a time so the [rows, Nk] scores stay in cache through the exp / mask / product passes."""
    out1, lse1 = block_sparse_attention(q, k, v, kv_num_blocks, kv_indices, (q_block, kv_block), scale,
                                        return_lse=True, backend=exact_kernel)
    B, H, Sq, D = q.shape
    nk = stats.counts.shape[0]
    # 1.0 where key block j is approximated for query block i, 0.0 where it is in the exact part
    keep = (~blocks_to_dense(kv_num_blocks, kv_indices, nk)).float().expand(B, H, -1, -1).unsqueeze(3)
    keys = torch.cat([stats.key_means.transpose(-1, -2) * scale, torch.ones(B, H, 1, nk, device=q.device)], dim=2)  # [s k̄ | 1]
    key_bound = stats.key_means.norm(dim=-1).amax(dim=-1, keepdim=True) * scale  # [B, H, 1]
    # one product gives the value sums and the tail mass G: the counts ride along as a last column
    values = torch.cat([stats.value_sums, stats.counts.expand(B, H, nk).unsqueeze(-1)], dim=-1)
    # the whole-call pieces in one op each (on a busy machine every op waits for its worker threads)
    first = q.float() @ (stats.moment * scale) if order == "hybrid" else None  # s q.h̄ per row
    risky = q.float().norm(dim=-1) * key_bound > lse1 + EXP_HEADROOM  # [B, H, Sq]: the LSE may overflow
    out = torch.empty(B, H, Sq, D, device=q.device)
    lse = torch.empty(B, H, Sq, device=q.device)
    step = max(1, ROW_CHUNK_ELEMENTS // (B * H * nk * q_block)) * q_block  # whole query blocks per chunk
    for r0 in range(0, Sq, step):
        r1 = min(Sq, r0 + step)
        blocks = -(-(r1 - r0) // q_block)
        keep_c = keep[:, :, r0 // q_block:r0 // q_block + blocks]  # [B, H, blocks, 1, Nk]
        qc = q[:, :, r0:r1].float()
        ref = lse1[:, :, r0:r1]
        if bool(risky[:, :, r0:r1].any()):  # rare: use the exact max
            z = _per_row(torch.matmul(qc, keys[:, :, :D]), keep_c.log(), q_block, torch.add)  # -inf: exact
            ref = torch.maximum(ref, z.amax(dim=-1))
            ref = ref.masked_fill(torch.isinf(ref), 0.0)  # rows with no key at all (only when Skv has none)
            p = z.sub_(ref.unsqueeze(-1)).exp_()
        else:  # p = exp(s q.k̄_j - ref)
            p = torch.matmul(torch.cat([qc, -ref.unsqueeze(-1)], dim=-1), keys).exp_()
            p = _per_row(p, keep_c, q_block, torch.mul)
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


def _per_row(scores: torch.Tensor, block_values: torch.Tensor, q_block: int,
             op: Callable[..., torch.Tensor]) -> torch.Tensor:
    """op(scores [B, H, rows, Nk], the value of each row's query block [B, H, blocks, 1, Nk]) in place: a
    broadcast over the rows of a block (a broadcast multiply is ~10x faster than masked_fill here)."""
    B, H, rows, nk = scores.shape
    if rows % q_block == 0:
        op(scores.view(B, H, rows // q_block, q_block, nk), block_values, out=scores.view(B, H, -1, q_block, nk))
        return scores
    per_row = block_values.squeeze(3).repeat_interleave(q_block, dim=2)[:, :, :rows]
    return op(scores, per_row, out=scores)


# An opaque call under torch.compile, like block_sparse_attention.
@torch.compiler.disable
def pisa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    density: float = 0.125,
    block_size: BlockSize = 64,
    order: str = "hybrid",
    routing: str = "pooled",
    sink_blocks: Sequence[int] = (),
    kv_num_blocks: torch.Tensor | None = None,
    kv_indices: torch.Tensor | None = None,
    scale: float | None = None,
    backend: str = "auto",
    *,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """PISA attention of q [B, H, Sq, D] over k, v [B, H, Skv, D] (fp32/fp16/bf16) -> out like q.

    The critical blocks are routed (`route`: top-k at `density` + `sink_blocks` + diagonal) unless
    `kv_num_blocks`/`kv_indices` give them (block index of sparse_attn/blocks.py; then `density`,
    `routing` and `sink_blocks` are unused). `order`: "hybrid" (zeroth + shared first-order moment, the
    paper's method) or "zeroth". `backend`: "auto" (Triton on CUDA, the CPU kernel on CPU), "triton",
    "cpu-kernel" or "torch-gather" (the last two: the exact part's kernel; the pooled part is PyTorch).
    With `return_lse`, also the row log-sum-exp of the approximated denominator [B, H, Sq] fp32.
    """
    config = PisaConfig(density, block_size, order, routing, tuple(sink_blocks), scale, backend)
    with torch.profiler.record_function(PROFILER_RANGE):
        _check_qkv(q, k, v)
        q_block, kv_block = block_sizes(config.block_size)
        B, H, Sq, D = q.shape
        Skv = k.shape[2]
        scale = D**-0.5 if config.scale is None else float(config.scale)
        path = choose_path(q, config.backend)
        if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
            raise NotImplementedError("pisa_attention is forward-only; run it under torch.no_grad() / "
                                      "torch.inference_mode()")
        if Sq == 0 or Skv == 0:
            out, lse = torch.zeros_like(q), torch.full((B, H, Sq), float("-inf"), device=q.device)
            paths.record(_pisa_path(path))
            return (out, lse) if return_lse else out
        nq, nk = num_blocks(Sq, q_block), num_blocks(Skv, kv_block)
        if (kv_num_blocks is None) != (kv_indices is None):
            raise ValueError("pass both kv_num_blocks and kv_indices, or neither (then PISA routes)")
        if kv_num_blocks is None:
            kv_num_blocks, kv_indices = route(q, k, v, config.density, config.block_size, config.routing,
                                              config.sink_blocks, scale)
        else:
            check_blocks(kv_num_blocks, kv_indices, nq, nk, B, H, values=False)  # values: the engine checks on CPU
        kv_num_blocks = kv_num_blocks.to(device=q.device, dtype=torch.int32)
        kv_indices = kv_indices.to(device=q.device, dtype=torch.int32)
        stats = key_block_stats(k, v, kv_block)
        if path.kernel == paths.TRITON:
            from . import triton_common
            from .pisa_triton import attention as fused

            def split(reason: str) -> tuple[paths.AttentionPath, tuple[torch.Tensor, torch.Tensor]]:
                result = _split_attention(q, k, v, kv_num_blocks, kv_indices, q_block, kv_block, scale,
                                          config.order, stats, "auto")
                exact = paths.last_path()
                note = f"{reason}; {exact.note}" if exact.note else reason
                return paths.AttentionPath(exact.kernel, exact.precision, exact.device, note), result

            selected = blocks_to_dense(kv_num_blocks, kv_indices, nk).to(torch.int8)
            key = ("pisa", q.dtype, D, q_block, kv_block, triton_common.dot_precision(q.dtype), q.device,
                   config.order)
            path, (out, lse) = triton_common.run_or_fall_back(
                key, config.backend,
                lambda: (path, fused(q, k, v, kv_num_blocks, kv_indices, selected, stats, q_block, kv_block, scale,
                                     config.order == "hybrid")),
                split,
            )
        elif path.kernel == paths.CPU_KERNEL:  # the tail fused into the C++ kernel's softmax
            from . import cpu_kernel

            first = q.float() @ (stats.moment * scale) if config.order == "hybrid" else None  # s q.h̄ per row
            tail = cpu_kernel.PisaTail(stats.key_means, stats.value_sums / stats.counts.view(1, 1, -1, 1),
                                       stats.counts, first)
            kv_num_blocks = kv_num_blocks.expand(B, H, nq).contiguous()
            kv_indices = kv_indices.expand(B, H, nq, kv_indices.shape[-1]).contiguous()
            out, lse = cpu_kernel.attention(q, k, v, kv_num_blocks, kv_indices, q_block, kv_block, scale, tail)
        else:
            out, lse = _split_attention(q, k, v, kv_num_blocks, kv_indices, q_block, kv_block, scale,
                                        config.order, stats, path.kernel)
            exact = paths.last_path()  # "auto" may have fallen back inside the engine
            path = exact if exact is not None else path
        paths.record(_pisa_path(path))
    return (out, lse) if return_lse else out


def _pisa_path(path: paths.AttentionPath) -> paths.AttentionPath:
    """The recorded path: 'pisa+<kernel of the exact part>' (the pooled part is PyTorch off CUDA)."""
    return paths.AttentionPath(f"pisa+{path.kernel}", path.precision, path.device, path.note)


def pisa_attention_bshd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    density: float = 0.125,
    block_size: BlockSize = 64,
    order: str = "hybrid",
    routing: str = "pooled",
    sink_blocks: Sequence[int] = (),
    kv_num_blocks: torch.Tensor | None = None,
    kv_indices: torch.Tensor | None = None,
    scale: float | None = None,
    backend: str = "auto",
    *,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`pisa_attention` for diffusers' [B, S, H, D] layout; out [B, Sq, H, D] (lse [B, Sq, H])."""
    out, lse = pisa_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), density, block_size, order, routing,
        sink_blocks, kv_num_blocks, kv_indices, scale, backend, return_lse=True,
    )
    out, lse = out.transpose(1, 2), lse.transpose(1, 2)
    return (out, lse) if return_lse else out


def pisa_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_num_blocks: torch.Tensor,
    kv_indices: torch.Tensor,
    block_size: BlockSize = 64,
    order: str = "hybrid",
    scale: float | None = None,
) -> torch.Tensor:
    """The formulas of the module docstring in float64, written for clarity: dense exact scores over the
    selected tokens, pooled scores over the unselected blocks, one shared max. Returns float64 [B, H, Sq, D]."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}; got {order!r}")
    q_block, kv_block = block_sizes(block_size)
    q, k, v = q.double(), k.double(), v.double()
    B, H, Sq, D = q.shape
    Skv = k.shape[2]
    s = D**-0.5 if scale is None else scale
    nk = num_blocks(Skv, kv_block)
    selected = blocks_to_dense(kv_num_blocks, kv_indices, nk).expand(B, H, -1, -1)  # [B, H, Nq, Nk]
    row_blocks = torch.arange(Sq, device=q.device) // q_block
    col_blocks = torch.arange(Skv, device=q.device) // kv_block
    sel_rows = selected[:, :, row_blocks]  # [B, H, Sq, Nk]: is block j exact for this row?
    exact_mask = sel_rows[..., col_blocks]  # [B, H, Sq, Skv]

    one_hot = F.one_hot(col_blocks, nk).double()  # [Skv, Nk]: token -> its block
    counts = one_hot.sum(0)  # B_j
    k_mean = torch.einsum("bhtd,tj->bhjd", k, one_hot) / counts[:, None]  # k̄_j
    v_sum = torch.einsum("bhtd,tj->bhjd", v, one_hot)  # V̂_j
    centred = k - k_mean[:, :, col_blocks]
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
    block_size: BlockSize = 64,
    sink_blocks: Sequence[int] = (),
    routing: str = "pooled",
) -> dict[str, float]:
    """Relative L2 error vs dense attention (float64) on one routed index: 'keep_or_drop' (the selected
    blocks only: plain block_sparse_attention), 'zeroth' and 'hybrid' PISA. For the quality benchmark."""
    num, idx = route(q, k, v, density, block_size, routing, sink_blocks)
    dense = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    outs = {
        "keep_or_drop": block_sparse_attention(q, k, v, num, idx, block_size),
        "zeroth": pisa_attention(q, k, v, block_size=block_size, order="zeroth", kv_num_blocks=num, kv_indices=idx),
        "hybrid": pisa_attention(q, k, v, block_size=block_size, order="hybrid", kv_num_blocks=num, kv_indices=idx),
    }
    norm = float(dense.norm())
    return {name: float((out.double() - dense).norm()) / norm for name, out in outs.items()}
