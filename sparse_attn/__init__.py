"""Block-sparse attention for diffusion transformers: the engine PISA, AdaSpa and FlashBlock stand on.

One data structure runs through it: `TileIndex` (FlexAttention's block index with its tile sizes and
sequence lengths: per batch, head and query tile, which key tiles to attend), in `tiles`.

    tiles        TileIndex and PackedTiles; conversion to/from FlexAttention's BlockMask; dense masks
    attention    block_sparse_attention(q, k, v, index): picks the kernel path (`PATHS`, keyed by Kernel)
    paths        the Kernel enum; the path each call took, per call (capture()), logged once per path
    triton_kernel   the GPU kernel (Triton, FlashAttention-2 style; also runs under TRITON_INTERPRET=1)
    triton_common   what the Triton kernels share: the inner loop, tiles that fit, fallbacks
    triton_compile  builds the Triton kernels for sm_90 on any machine (`accel compile-check`)
    gpu_check    `accel gpu-check`: compile, correctness, fallbacks and timings on a real GPU
    precision    how fp32 inputs are multiplied on the GPU (torch's TF32 switch, or set_fp32_precision)
    cpu_kernel   the CPU kernel (C++ built on first use, run on all cores through ctypes)
    torch_path   plain PyTorch fallback (gather + matmul)
    merge        merge_attention: exact union of two partial attentions through their log-sum-exp
    pisa         pisa_attention: PISA, exact critical tiles + Taylor-approximated rest (pisa_triton: GPU)
    selection    which key tiles to keep: pooled Q/K scores, top-k at a density, forced sink/diagonal tiles
    reorder      token permutations that make each tile a 2-D/3-D patch of the latent grid
    search       AdaSpa's tile search: exact attention mass per tile pair (dense + mass, or from a cached
                 LSE), row-wise top-k index from it, head-adaptive density; search_triton is its GPU kernel
    bench        `accel bench-attn`: sparse vs dense SDPA, FlexAttention and xformers
"""

from .attention import PATHS, block_sparse_attention, block_sparse_attention_bshd
from .merge import merge_attention
from .paths import AttentionPath, Kernel, capture
from .pisa import pisa_attention, pisa_attention_bshd, pisa_reference
from .precision import set_fp32_precision
from .reorder import TokenOrder, tile_order
from .search import (
    byte_mask_bytes,
    dense_attention_with_tile_mass,
    head_adaptive_density,
    index_recall,
    tile_mass,
    tiles_from_mass,
)
from .selection import (
    forced_tiles,
    pool_tiles,
    random_tiles,
    select_tiles,
    text_tiles,
    topk_tiles,
)
from .tiles import TILE_SIZES, PackedTiles, TileIndex, num_tiles, tile_sizes

__all__ = [
    "PATHS",
    "TILE_SIZES",
    "AttentionPath",
    "Kernel",
    "PackedTiles",
    "TileIndex",
    "TokenOrder",
    "block_sparse_attention",
    "block_sparse_attention_bshd",
    "byte_mask_bytes",
    "capture",
    "dense_attention_with_tile_mass",
    "forced_tiles",
    "head_adaptive_density",
    "index_recall",
    "merge_attention",
    "num_tiles",
    "pisa_attention",
    "pisa_attention_bshd",
    "pisa_reference",
    "pool_tiles",
    "random_tiles",
    "select_tiles",
    "set_fp32_precision",
    "text_tiles",
    "tile_mass",
    "tile_order",
    "tile_sizes",
    "tiles_from_mass",
    "topk_tiles",
]
