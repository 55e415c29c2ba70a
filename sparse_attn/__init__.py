"""Block-sparse attention for diffusion transformers: the engine PISA, AdaSpa and FlashBlock stand on.

One data structure runs through it: FlexAttention's block index (`kv_num_blocks`, `kv_indices`: per
batch, head and query block, which key blocks to attend), in `blocks`.

    blocks       the index format; conversion to/from FlexAttention's BlockMask; dense masks for references
    attention    block_sparse_attention(q, k, v, kv_num_blocks, kv_indices, ...): picks the path below
    triton_kernel   the GPU kernel (Triton, FlashAttention-2 style; also runs under TRITON_INTERPRET=1)
    cpu_kernel   the CPU kernel (C++ built on first use, run on all cores through ctypes)
    torch_path   plain PyTorch fallback (gather + matmul)
    paths        which path ran, at what precision: last_path(), logged once per path on "accel"
    merge        merge_attention: exact union of two partial attentions through their log-sum-exp
    selection    which key blocks to keep: pooled Q/K scores, top-k at a density, forced sink/diagonal blocks
    reorder      token permutations that make each block a 2-D/3-D tile of the latent grid
    bench        `accel bench-attn`: sparse vs dense SDPA, FlexAttention and xformers
"""

from .attention import block_sparse_attention, block_sparse_attention_bshd
from .blocks import (
    blocks_from_dense,
    blocks_to_dense,
    check_blocks,
    from_block_mask,
    to_block_mask,
    token_mask,
)
from .merge import merge_attention
from .paths import AttentionPath, last_path
from .reorder import TokenOrder, tile_order
from .selection import (
    forced_blocks,
    pool_blocks,
    random_blocks,
    select_blocks,
    text_blocks,
    topk_blocks,
)

__all__ = [
    "AttentionPath",
    "TokenOrder",
    "block_sparse_attention",
    "block_sparse_attention_bshd",
    "blocks_from_dense",
    "blocks_to_dense",
    "check_blocks",
    "forced_blocks",
    "from_block_mask",
    "last_path",
    "merge_attention",
    "pool_blocks",
    "random_blocks",
    "select_blocks",
    "text_blocks",
    "tile_order",
    "to_block_mask",
    "token_mask",
    "topk_blocks",
]
