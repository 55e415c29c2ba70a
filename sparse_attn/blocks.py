"""The block index format every sparse-attention path shares: FlexAttention's `kv_num_blocks` + `kv_indices`.

Queries and keys are cut into blocks of `block_size` consecutive tokens (the last block may be partial).
For each (batch, head, query block) the index says how many key blocks it attends to and which:

- `kv_num_blocks [B, H, Nq]` int32: the count `n`;
- `kv_indices [B, H, Nq, W]` int32: the key block ids, the `n` valid ones first (ascending order is best
  for memory locality but not required); entries after them are ignored. Ids must be distinct.

A selected key block is attended in full (every real token in it). This is the `kv_num_blocks` /
`kv_indices` pair of `torch.nn.attention.flex_attention.BlockMask`, so masks convert both ways
(`to_block_mask`, `from_block_mask`) and FlexAttention serves as an independent reference. `B` or `H`
may be 1 to broadcast over batch or heads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn.attention.flex_attention import BlockMask, noop_mask

BlockSize = int | tuple[int, int]


BLOCK_SIZES = (16, 32, 64, 128)  # what the kernels tile by (and what tests/test_triton_compile.py builds)


def block_sizes(block_size: BlockSize) -> tuple[int, int]:
    """(query block, key block) from an int or a pair; each one of BLOCK_SIZES."""
    sizes = (block_size, block_size) if isinstance(block_size, int) else tuple(block_size)
    if len(sizes) != 2 or any(isinstance(s, bool) or s not in BLOCK_SIZES for s in sizes):
        raise ValueError(f"block_size must be one of {BLOCK_SIZES}, or a pair of them; got {block_size!r}")
    return sizes[0], sizes[1]


def num_blocks(seq_len: int, block: int) -> int:
    """Blocks covering `seq_len` tokens; the last one may be partial."""
    return -(-seq_len // block)


def check_blocks(
    kv_num_blocks: torch.Tensor,
    kv_indices: torch.Tensor,
    q_blocks: int,
    kv_blocks: int,
    batch: int | None = None,
    heads: int | None = None,
    values: bool = True,
) -> None:
    """Raise ValueError unless the index is well formed. `values=True` also checks counts and ids (reads
    the tensors: a device sync on GPU), including that the valid ids of a row are distinct."""
    if kv_num_blocks.dim() != 3 or kv_indices.dim() != 4:
        raise ValueError(
            f"expected kv_num_blocks [B, H, Nq] and kv_indices [B, H, Nq, W]; got {tuple(kv_num_blocks.shape)} "
            f"and {tuple(kv_indices.shape)}"
        )
    if kv_num_blocks.dtype.is_floating_point or kv_indices.dtype.is_floating_point:
        raise ValueError("kv_num_blocks and kv_indices must be integer tensors (int32)")
    if kv_indices.shape[:3] != kv_num_blocks.shape:
        raise ValueError(f"kv_indices {tuple(kv_indices.shape)} does not match kv_num_blocks {tuple(kv_num_blocks.shape)}")
    if kv_num_blocks.shape[2] != q_blocks:
        raise ValueError(f"index has {kv_num_blocks.shape[2]} query blocks, the queries need {q_blocks}")
    for name, have, want in (("batch", kv_num_blocks.shape[0], batch), ("heads", kv_num_blocks.shape[1], heads)):
        if want is not None and have not in (1, want):
            raise ValueError(f"index has {have} {name}, expected 1 or {want}")
    if not values or kv_num_blocks.numel() == 0:
        return
    width = kv_indices.shape[-1]
    if int(kv_num_blocks.min()) < 0 or int(kv_num_blocks.max()) > width:
        raise ValueError(f"kv_num_blocks must lie in [0, {width}] (the width of kv_indices)")
    valid = torch.arange(width, device=kv_indices.device) < kv_num_blocks.unsqueeze(-1)
    ids = kv_indices[valid]
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= kv_blocks):
        raise ValueError(f"kv_indices must lie in [0, {kv_blocks}) for {kv_blocks} key blocks")
    # distinct: a sorted row has no equal neighbours among its valid entries
    big = torch.where(valid, kv_indices.long(), kv_blocks + torch.arange(width, device=kv_indices.device))
    srt = big.sort(dim=-1).values
    if bool((srt[..., 1:] == srt[..., :-1]).any()):
        raise ValueError("kv_indices repeats a key block within one query block")


def blocks_to_dense(kv_num_blocks: torch.Tensor, kv_indices: torch.Tensor, kv_blocks: int) -> torch.Tensor:
    """Boolean block matrix [B, H, Nq, Nk]: True where a query block attends a key block."""
    width = kv_indices.shape[-1]
    valid = torch.arange(width, device=kv_indices.device) < kv_num_blocks.unsqueeze(-1)
    dense = torch.zeros(*kv_indices.shape[:3], kv_blocks + 1, dtype=torch.bool, device=kv_indices.device)
    # invalid entries go to the spare last column, which is dropped
    cols = torch.where(valid, kv_indices.long(), kv_blocks)
    dense.scatter_(-1, cols, True)
    return dense[..., :kv_blocks]


def blocks_from_dense(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(kv_num_blocks, kv_indices) from a boolean block matrix [B, H, Nq, Nk]; ids ascending, the width
    is the largest count (at least 1), and unused entries are 0."""
    counts = dense.sum(dim=-1, dtype=torch.int32)
    order = torch.argsort(dense.to(torch.int8), dim=-1, descending=True, stable=True)
    width = max(1, int(counts.max())) if counts.numel() else 1
    indices = order[..., :width].to(torch.int32)
    unused = torch.arange(width, device=dense.device) >= counts.unsqueeze(-1)
    return counts, indices.masked_fill(unused, 0)


def token_mask(
    kv_num_blocks: torch.Tensor,
    kv_indices: torch.Tensor,
    q_len: int,
    kv_len: int,
    block_size: BlockSize = 64,
) -> torch.Tensor:
    """Boolean token mask [B, H, Sq, Skv] equivalent to the index (for dense references such as SDPA)."""
    q_block, kv_block = block_sizes(block_size)
    dense = blocks_to_dense(kv_num_blocks, kv_indices, num_blocks(kv_len, kv_block))
    rows = torch.arange(q_len, device=dense.device) // q_block
    cols = torch.arange(kv_len, device=dense.device) // kv_block
    return dense[:, :, rows][:, :, :, cols]


def to_block_mask(
    kv_num_blocks: torch.Tensor,
    kv_indices: torch.Tensor,
    q_len: int,
    kv_len: int,
    block_size: BlockSize = 64,
) -> BlockMask:
    """A FlexAttention `BlockMask` attending the same blocks. They are listed as full blocks (the fused
    kernels skip `mask_mod` there), and its `mask_mod` looks the blocks up too, so eager (unfused)
    `flex_attention`, which only applies `mask_mod`, gives the same result."""
    q_block, kv_block = block_sizes(block_size)
    kv_blocks = num_blocks(kv_len, kv_block)
    dense = blocks_to_dense(kv_num_blocks, kv_indices, kv_blocks)
    # BlockMask derives its transposed (query-side) index from a dense [.., Nq, Nk] view, so the id list
    # must be Nk wide.
    num, idx = blocks_from_dense(dense)
    idx = torch.nn.functional.pad(idx, (0, kv_blocks - idx.shape[-1]))
    one_batch, one_head = dense.shape[0] == 1, dense.shape[1] == 1

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        return dense[0 if one_batch else b, 0 if one_head else h, q_idx // q_block, kv_idx // kv_block]

    return BlockMask.from_kv_blocks(
        torch.zeros_like(num), torch.zeros_like(idx), num.contiguous(), idx.contiguous(),
        BLOCK_SIZE=(q_block, kv_block), mask_mod=mask_mod, seq_lengths=(q_len, kv_len),
    )


def from_block_mask(block_mask: BlockMask) -> tuple[torch.Tensor, torch.Tensor]:
    """(kv_num_blocks, kv_indices) attending every block the `BlockMask` touches (its partial and full
    blocks); its block sizes are `block_mask.BLOCK_SIZE`. Raises ValueError when partial blocks carry a
    real `mask_mod`: a mask inside a block cannot be expressed here and would be silently widened."""
    kv_blocks = num_blocks(block_mask.seq_lengths[1], block_mask.BLOCK_SIZE[1])
    has_partial = bool((block_mask.kv_num_blocks > 0).any())
    if has_partial and block_mask.mask_mod is not noop_mask:
        raise ValueError(
            "this BlockMask has partially masked blocks (a mask_mod inside blocks); block-sparse attention "
            "attends whole blocks. Build it so every block is fully in or out (e.g. a block-aligned mask)."
        )
    dense = blocks_to_dense(block_mask.kv_num_blocks, block_mask.kv_indices, kv_blocks)
    if block_mask.full_kv_num_blocks is not None:
        dense |= blocks_to_dense(block_mask.full_kv_num_blocks, block_mask.full_kv_indices, kv_blocks)
    return blocks_from_dense(dense)


@dataclass(frozen=True)
class PackedBlocks:
    """A block index stored as a bit mask, 1 bit per (batch, head, query block, key block): what a
    sparse method keeps between the steps that reuse a mask. It is 1/8 of a byte mask (per-row id lists
    cost more above density 1/8 even with 1-byte ids); `unpack` gives the engine's index back."""

    bits: torch.Tensor  # uint8, flat
    shape: tuple[int, int, int, int]  # (B, H, Nq, Nk)

    @classmethod
    def pack(cls, kv_num_blocks: torch.Tensor, kv_indices: torch.Tensor, kv_blocks: int) -> PackedBlocks:
        dense = blocks_to_dense(kv_num_blocks, kv_indices, kv_blocks)
        flat = dense.flatten()
        flat = torch.nn.functional.pad(flat, (0, -flat.numel() % 8)).view(-1, 8).to(torch.uint8)
        weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=flat.device)
        return cls((flat * weights).sum(dim=1, dtype=torch.uint8), tuple(dense.shape))

    def unpack(self) -> tuple[torch.Tensor, torch.Tensor]:
        shifts = torch.arange(8, dtype=torch.uint8, device=self.bits.device)
        dense = ((self.bits.unsqueeze(1) >> shifts) & 1).flatten().bool()
        return blocks_from_dense(dense[: math.prod(self.shape)].view(self.shape))

    @property
    def nbytes(self) -> int:
        return self.bits.numel()
