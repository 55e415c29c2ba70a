"""TileIndex: validated once, dense round trips, token masks, FlexAttention's BlockMask both ways, bits."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

import accel.sparse_attn as sa


def test_dense_round_trip_sorts_and_counts():
    dense = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(0)) < 0.4
    dense[0, 0, 0] = False  # an empty row
    index = sa.TileIndex.from_dense(dense, 16, 80, 112)
    assert index.counts.dtype == index.indices.dtype == torch.int32
    assert torch.equal(index.counts, dense.sum(-1, dtype=torch.int32))
    assert torch.equal(index.to_dense(), dense)
    assert index.density() == pytest.approx(float(dense.float().mean()))
    for row_num, row_idx in zip(index.counts.flatten(), index.indices.flatten(0, 2), strict=True):
        valid = row_idx[: int(row_num)]
        assert torch.equal(valid, valid.sort().values)


def test_token_mask_covers_partial_tiles():
    index = sa.TileIndex(torch.tensor([[[1, 2]]]), torch.tensor([[[[1, 0], [0, 1]]]]), 16, 16, 20, 20)
    mask = index.token_mask()
    assert mask.shape == (1, 1, 20, 20)
    assert bool(mask[0, 0, :16, 16:].all()) and not bool(mask[0, 0, :16, :16].any())
    assert bool(mask[0, 0, 16:].all())


@pytest.mark.parametrize("q_len,kv_len,tile", [(256, 256, 64), (200, 130, (32, 16))])
def test_block_mask_round_trip_and_flex_agrees(q_len, kv_len, tile):
    index = sa.random_tiles(2, 2, q_len, kv_len, tile, 0.5, generator=torch.Generator().manual_seed(1))
    mask = index.to_block_mask()
    assert mask.BLOCK_SIZE == sa.tile_sizes(tile) and mask.seq_lengths == (q_len, kv_len)
    back = sa.TileIndex.from_block_mask(mask)
    assert torch.equal(back.to_dense(), index.to_dense()) and back.tile_size == index.tile_size

    g = torch.Generator().manual_seed(2)
    q, k, v = torch.randn(2, 2, q_len, 32, generator=g), torch.randn(2, 2, kv_len, 32, generator=g), torch.randn(
        2, 2, kv_len, 32, generator=g)
    ours = sa.block_sparse_attention(q, k, v, index)
    theirs = flex_attention(q, k, v, block_mask=mask)
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=0)


def test_from_block_mask_of_a_tile_aligned_mask_mod():
    def local(b, h, q_idx, kv_idx):
        return (q_idx // 32 - kv_idx // 32).abs() <= 1  # whole 32x32 tiles in or out

    mask = create_block_mask(local, None, None, 128, 128, device="cpu", BLOCK_SIZE=32)
    index = sa.TileIndex.from_block_mask(mask)
    expected = (torch.arange(4)[:, None] - torch.arange(4)[None, :]).abs() <= 1
    assert torch.equal(index.to_dense()[0, 0], expected)


def test_from_block_mask_refuses_masks_inside_tiles():
    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    mask = create_block_mask(causal, None, None, 128, 128, device="cpu", BLOCK_SIZE=32)
    with pytest.raises(ValueError, match="partially masked"):
        sa.TileIndex.from_block_mask(mask)


def test_malformed_indices_are_refused_at_construction():
    counts, ids = torch.ones(1, 1, 2, dtype=torch.int32), torch.zeros(1, 1, 2, 1, dtype=torch.int32)
    with pytest.raises(ValueError, match="expected counts"):
        sa.TileIndex(counts[0], ids, 16, 16, 32, 32)
    with pytest.raises(ValueError, match="integer"):
        sa.TileIndex(counts.float(), ids, 16, 16, 32, 32)
    with pytest.raises(ValueError, match="query tiles"):
        sa.TileIndex(counts, ids, 16, 16, 64, 32)
    with pytest.raises(ValueError, match="tile_size must be one of"):
        sa.TileIndex(counts, ids, 24, 16, 32, 32)
    with pytest.raises(ValueError, match="counts must lie"):
        sa.TileIndex(counts * 3, ids, 16, 16, 32, 32)
    with pytest.raises(ValueError, match="indices must lie"):
        sa.TileIndex(counts, ids + 2, 16, 16, 32, 32)
    with pytest.raises(ValueError, match="repeat"):
        sa.TileIndex(counts * 2, torch.zeros(1, 1, 2, 2, dtype=torch.int32), 16, 16, 32, 32)
    index = sa.TileIndex(counts, ids, 16, 16, 32, 32)
    with pytest.raises(ValueError, match="heads"):
        index.expand(1, 2).check_batch(1, 3)
    # token counts are plain ints; anything else is named, not failed on later
    for bad in (31.5, True, torch.tensor(32), "32", None, -1):
        with pytest.raises(ValueError, match=r"q_len must be a token count, an int >= 0; got"):
            sa.TileIndex(counts, ids, 16, 16, bad, 32)
    for dtype in (torch.bool, torch.complex64, torch.float16):
        with pytest.raises(ValueError, match="integer tensors"):
            sa.TileIndex(counts, ids.to(dtype), 16, 16, 32, 32)
    with pytest.raises(ValueError, match="must be torch tensors; got list"):
        sa.TileIndex([[[1, 1]]], ids, 16, 16, 32, 32)
    import numpy as np

    assert sa.TileIndex(counts, ids, 16, 16, np.int64(32), 32).q_len == 32


def test_packed_tiles_round_trip_at_one_bit_per_tile_pair_and_compact_ids():
    index = sa.random_tiles(2, 3, 7 * 16, 13 * 16, 16, 0.3, generator=torch.Generator().manual_seed(0))
    packed = index.pack()
    assert packed.nbytes == -(-2 * 3 * 7 * 13 // 8)
    back = packed.unpack()
    assert torch.equal(back.to_dense(), index.to_dense()) and (back.q_len, back.kv_len) == (7 * 16, 13 * 16)
    small = index.compact()
    assert small.indices.dtype == torch.uint8 and small.nbytes < index.nbytes
    assert torch.equal(small.to_dense(), index.to_dense())
