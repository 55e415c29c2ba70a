"""Tile selection helpers and token reordering."""

from __future__ import annotations

import math

import pytest
import torch

import accel.sparse_attn as sa
from accel.sparse_attn.selection import pooled_scores


def test_pool_tiles_averages_real_tokens_of_the_partial_tile():
    x = torch.arange(10, dtype=torch.float32).view(1, 1, 10, 1)
    pooled = sa.pool_tiles(x, 4)
    assert pooled.flatten().tolist() == [1.5, 5.5, 8.5]  # the last tile holds tokens 8 and 9 only


def test_topk_count_rule_forced_tiles_and_order():
    nq, nk = 6, 10
    scores = torch.randn(2, 3, nq, nk, generator=torch.Generator().manual_seed(0))
    forced = sa.forced_tiles(nq, nk, sink_tiles=[0, -1], diagonal=True)
    index = sa.topk_tiles(scores, 0.25, 16, nq * 16, nk * 16 - 5, forced)
    k = math.ceil(0.25 * nk)
    dense = index.to_dense()
    assert torch.equal(index.counts, (forced.sum(-1) + k).clamp(max=nk).to(torch.int32).expand(2, 3, nq))
    assert bool((dense | ~forced).all())  # every forced tile kept
    # the others are the best-scoring ones
    others = scores.masked_fill(forced, float("-inf"))
    best = others.topk(k, dim=-1).indices
    assert bool(dense.gather(-1, best).all())
    for row_num, row in zip(index.counts.flatten(), index.indices.flatten(0, 2), strict=True):
        valid = row[: int(row_num)]
        assert torch.equal(valid, valid.sort().values)


def test_topk_keeps_at_least_one_and_at_most_all():
    scores = torch.randn(1, 1, 4, 8)
    assert bool((sa.topk_tiles(scores, 1e-6, 16, 64, 128).counts == 1).all())
    index = sa.topk_tiles(scores, 1.0, 16, 64, 128, sa.forced_tiles(4, 8, [0, 1], diagonal=True))
    assert bool((index.counts == 8).all())
    with pytest.raises(ValueError):
        sa.topk_tiles(scores, 0.0, 16, 64, 128)


def test_forced_diagonal_for_unequal_lengths_and_text_tiles():
    forced = sa.forced_tiles(2, 4, diagonal=True)
    assert forced.nonzero().tolist() == [[0, 0], [1, 2]]
    assert sa.text_tiles(100, 1000, 64, text_first=True) == [0, 1]
    assert sa.text_tiles(100, 1000, 64, text_first=False) == [14, 15]  # tokens 900..999
    assert sa.text_tiles(0, 1000, 64, text_first=True) == []


def test_select_tiles_prefers_the_aligned_keys():
    # keys equal to queries: the pooled score is largest on the diagonal
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(1, 1, 8, 16, generator=g) * 4
    q = centers.repeat_interleave(32, dim=2) + 0.1 * torch.randn(1, 1, 256, 16, generator=g)
    index = sa.select_tiles(q, q.clone(), density=0.125, tile_size=32, diagonal=False)
    assert bool((index.counts == 1).all()) and (index.q_len, index.kv_len, index.tile_size) == (256, 256, (32, 32))
    assert index.indices[..., 0].flatten().tolist() == list(range(8))
    assert pooled_scores(q, q, 32).shape == (1, 1, 8, 8)


# ---- reordering ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "grid,tile,text_len,text_first",
    [((16, 16), (8, 8), 0, False), ((13, 21), (8, 8), 7, True), ((5, 12, 10), (2, 4, 8), 11, False),
     ((3, 9, 9), (4, 4, 4), 0, True)],
)
def test_tile_order_is_an_exact_invertible_permutation(grid, tile, text_len, text_first):
    order = sa.tile_order(grid, tile, text_len, text_first)
    n = math.prod(grid) + text_len
    assert torch.equal(order.perm.sort().values, torch.arange(n))
    x = torch.randn(2, n, 3, 4)
    assert torch.equal(order.restore(order.apply(x)), x)
    assert torch.equal(order.apply(order.restore(x)), x)
    y = x.transpose(1, 2)  # [B, H, S, D]
    assert torch.equal(order.restore(order.apply(y, dim=2), dim=2), y)
    text = torch.arange(text_len) + (0 if text_first else math.prod(grid))
    kept = order.perm[:text_len] if text_first else order.perm[n - text_len:]
    assert torch.equal(kept, text)


@pytest.mark.parametrize("head_dim", [72, 40, 64])
def test_aligned_reorder_pads_rows_in_storage_only(head_dim):
    """The copy the reorder makes anyway can start every row 16-aligned (the Triton kernels' JIT then
    sees row strides divisible by 16): same values and shape, padded storage."""
    order = sa.tile_order((6, 10), (2, 4))
    x = torch.randn(2, 3, 60, head_dim).transpose(1, 2).transpose(1, 2)  # [B, H, S, D]
    y = order.apply(x, dim=2, align=16)
    assert torch.equal(y, order.apply(x, dim=2)) and y.shape == x.shape
    assert all(s % 16 == 0 for s in y.stride()[:3]) and y.stride(-1) == 1
    assert torch.equal(order.restore(y, dim=2), x)


def test_each_block_is_a_tile():
    order = sa.tile_order((16, 24), (8, 8))
    rows, cols = order.perm // 24, order.perm % 24
    for b in range(order.perm.numel() // 64):
        r, c = rows[64 * b: 64 * (b + 1)], cols[64 * b: 64 * (b + 1)]
        assert r.max() - r.min() == 7 and c.max() - c.min() == 7


def test_partial_tiles_come_after_the_full_ones():
    order = sa.tile_order((2, 10, 10), (1, 8, 8))  # one full 8x8 tile per frame, the rest partial
    frames, rows, cols = order.perm // 100, order.perm // 10 % 10, order.perm % 10
    full = (rows < 8) & (cols < 8)
    assert bool(full[:128].all()) and not bool(full[128:].any())
    assert bool((frames[:64] == 0).all()) and bool((frames[64:128] == 1).all())


def test_tile_order_rejects_bad_shapes():
    with pytest.raises(ValueError):
        sa.tile_order((8, 8), (1, 8, 8))
    with pytest.raises(ValueError):
        sa.tile_order((8, 8), (8, 8), text_len=-1)
