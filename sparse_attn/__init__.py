"""Block-sparse attention for diffusion transformers: the engine PISA, AdaSpa and FlashBlock stand on.

One data structure runs through it: FlexAttention's block index (`kv_num_blocks`, `kv_indices`: per
batch, head and query block, which key blocks to attend), in `blocks`.

    blocks       the index format; conversion to/from FlexAttention's BlockMask; dense masks for references
    attention    block_sparse_attention(q, k, v, kv_num_blocks, kv_indices, ...): picks the path below
    triton_kernel   the GPU kernel (Triton, FlashAttention-2 style; also runs under TRITON_INTERPRET=1)
    triton_common   what the Triton kernels share: the inner loop, tiles that fit, fp32 precision, fallbacks
    triton_compile  builds the Triton kernels for sm_90 on any machine (`accel compile-check`)
    gpu_check    `accel gpu-check`: compile, correctness, fallbacks and timings on a real GPU
    cpu_kernel   the CPU kernel (C++ built on first use, run on all cores through ctypes)
    torch_path   plain PyTorch fallback (gather + matmul)
    paths        which path ran, at what precision: last_path(), logged once per path on "accel"
    merge        merge_attention: exact union of two partial attentions through their log-sum-exp
    pisa         pisa_attention: PISA, exact critical blocks + Taylor-approximated rest (pisa_triton: GPU)
    selection    which key blocks to keep: pooled Q/K scores, top-k at a density, forced sink/diagonal blocks
    reorder      token permutations that make each block a 2-D/3-D tile of the latent grid
    search       AdaSpa's block search: exact block attention mass (dense + mass, or from a cached LSE),
                 row-wise top-k index from it, head-adaptive density; search_triton is its GPU kernel
    bench        `accel bench-attn`: sparse vs dense SDPA, FlexAttention and xformers
"""

from .attention import block_sparse_attention, block_sparse_attention_bshd
from .blocks import (
    PackedBlocks,
    blocks_from_dense,
    blocks_to_dense,
    check_blocks,
    from_block_mask,
    to_block_mask,
    token_mask,
)
from .merge import merge_attention
from .paths import AttentionPath, last_path
from .pisa import PisaConfig, pisa_attention, pisa_attention_bshd, pisa_reference
from .precision import set_fp32_precision
from .reorder import TokenOrder, tile_order
from .search import (
    block_mass,
    blocks_from_mass,
    byte_mask_bytes,
    compact_index,
    dense_attention_with_block_mass,
    head_adaptive_density,
    index_bytes,
    index_recall,
    last_search_path,
)
from .selection import (
    forced_blocks,
    pool_blocks,
    random_blocks,
    select_blocks,
    text_blocks,
    topk_blocks,
)

__all__ = [
    "PackedBlocks",
    "AttentionPath",
    "PisaConfig",
    "TokenOrder",
    "block_mass",
    "block_sparse_attention",
    "block_sparse_attention_bshd",
    "blocks_from_dense",
    "blocks_from_mass",
    "blocks_to_dense",
    "byte_mask_bytes",
    "check_blocks",
    "compact_index",
    "dense_attention_with_block_mass",
    "forced_blocks",
    "from_block_mask",
    "head_adaptive_density",
    "index_bytes",
    "index_recall",
    "last_path",
    "last_search_path",
    "merge_attention",
    "pisa_attention",
    "pisa_attention_bshd",
    "pisa_reference",
    "pool_blocks",
    "random_blocks",
    "select_blocks",
    "set_fp32_precision",
    "text_blocks",
    "tile_order",
    "to_block_mask",
    "token_mask",
    "topk_blocks",
]
