"""The block index format: dense round trips, token masks, and FlexAttention BlockMask both ways."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

import sparse_attn as sa
from sparse_attn.selection import random_blocks


def test_dense_round_trip_sorts_and_counts():
    dense = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(0)) < 0.4
    dense[0, 0, 0] = False  # an empty row
    num, idx = sa.blocks_from_dense(dense)
    assert num.dtype == idx.dtype == torch.int32
    assert torch.equal(num, dense.sum(-1, dtype=torch.int32))
    assert torch.equal(sa.blocks_to_dense(num, idx, 7), dense)
    for row_num, row_idx in zip(num.flatten(), idx.flatten(0, 2), strict=True):
        valid = row_idx[: int(row_num)]
        assert torch.equal(valid, valid.sort().values)
    sa.check_blocks(num, idx, 5, 7, 2, 3)


def test_token_mask_covers_partial_blocks():
    num = torch.tensor([[[1, 2]]], dtype=torch.int32)
    idx = torch.tensor([[[[1, 0], [0, 1]]]], dtype=torch.int32)
    mask = sa.token_mask(num, idx, q_len=20, kv_len=20, block_size=16)
    assert mask.shape == (1, 1, 20, 20)
    assert bool(mask[0, 0, :16, 16:].all()) and not bool(mask[0, 0, :16, :16].any())
    assert bool(mask[0, 0, 16:].all())


@pytest.mark.parametrize("q_len,kv_len,block", [(256, 256, 64), (200, 130, (32, 16))])
def test_block_mask_round_trip_and_flex_agrees(q_len, kv_len, block):
    q_block, kv_block = sa.blocks.block_sizes(block)
    nq, nk = sa.blocks.num_blocks(q_len, q_block), sa.blocks.num_blocks(kv_len, kv_block)
    num, idx = random_blocks(2, 2, nq, nk, 0.5, generator=torch.Generator().manual_seed(1))
    mask = sa.to_block_mask(num, idx, q_len, kv_len, block)
    assert mask.BLOCK_SIZE == (q_block, kv_block) and mask.seq_lengths == (q_len, kv_len)
    num2, idx2 = sa.from_block_mask(mask)
    assert torch.equal(sa.blocks_to_dense(num2, idx2, nk), sa.blocks_to_dense(num, idx, nk))

    g = torch.Generator().manual_seed(2)
    q, k, v = torch.randn(2, 2, q_len, 32, generator=g), torch.randn(2, 2, kv_len, 32, generator=g), torch.randn(
        2, 2, kv_len, 32, generator=g)
    ours = sa.block_sparse_attention(q, k, v, num, idx, block)
    theirs = flex_attention(q, k, v, block_mask=mask)
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=0)


def test_from_block_mask_of_a_block_aligned_mask_mod():
    def local(b, h, q_idx, kv_idx):
        return (q_idx // 32 - kv_idx // 32).abs() <= 1  # whole 32x32 blocks in or out

    mask = create_block_mask(local, None, None, 128, 128, device="cpu", BLOCK_SIZE=32)
    num, idx = sa.from_block_mask(mask)
    expected = (torch.arange(4)[:, None] - torch.arange(4)[None, :]).abs() <= 1
    assert torch.equal(sa.blocks_to_dense(num, idx, 4)[0, 0], expected)


def test_from_block_mask_refuses_masks_inside_blocks():
    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    mask = create_block_mask(causal, None, None, 128, 128, device="cpu", BLOCK_SIZE=32)
    with pytest.raises(ValueError, match="partially masked"):
        sa.from_block_mask(mask)


def test_check_blocks_rejects_malformed_indices():
    num = torch.ones(1, 1, 2, dtype=torch.int32)
    with pytest.raises(ValueError, match="expected"):
        sa.check_blocks(num[0], torch.zeros(1, 1, 2, 1), 2, 2)
    with pytest.raises(ValueError, match="integer"):
        sa.check_blocks(num.float(), torch.zeros(1, 1, 2, 1), 2, 2)
    with pytest.raises(ValueError, match="heads"):
        sa.check_blocks(num.expand(1, 2, 2), torch.zeros(1, 2, 2, 1, dtype=torch.int32), 2, 2, heads=3)
    with pytest.raises(ValueError, match="kv_num_blocks must lie"):
        sa.check_blocks(num * 3, torch.zeros(1, 1, 2, 2, dtype=torch.int32), 2, 2)


def test_packed_blocks_round_trip_at_one_bit_per_block_pair():
    from sparse_attn import PackedBlocks, blocks_to_dense, random_blocks

    num, idx = random_blocks(2, 3, 7, 13, 0.3, generator=torch.Generator().manual_seed(0))
    packed = PackedBlocks.pack(num, idx, 13)
    assert packed.nbytes == -(-2 * 3 * 7 * 13 // 8)
    assert torch.equal(blocks_to_dense(*packed.unpack(), 13), blocks_to_dense(num, idx, 13))
