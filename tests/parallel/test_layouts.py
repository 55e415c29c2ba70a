"""Where the tokens are under context parallelism (single process, no process group)."""

from __future__ import annotations

import pytest
import torch

from accel import parallel
from accel.adapters import TokenLayout
from accel.errors import UnsupportedModelError
from accel.sparse_attn.methods.base import gathered, ring_sequence, segments, tiled_sequence


def test_gathered_positions_follow_diffusers_split_part_by_part():
    # Flux: [text 4 | image 8] over 2 ranks: rank 0 holds text 0-1 and image 4-7, rank 1 text 2-3, image 8-11
    assert parallel.gathered_positions([4, 8], 2).tolist() == [0, 1, 4, 5, 6, 7, 2, 3, 8, 9, 10, 11]


@pytest.mark.parametrize("kind,text_position", [("joint", "first"), ("joint", "last"), ("self", "none")])
def test_ulysses_tile_order_gathers_the_same_tiles(kind, text_position):
    layout = TokenLayout((1, 8, 8), 32, text_position if kind == "joint" else "none")
    order = tiled_sequence(layout, kind, text_position, 16, torch.device("cpu"))
    parts = segments(layout, kind, text_position)
    x = torch.randn(1, 1, order.tokens, 4)
    as_gathered = x[:, :, parallel.gathered_positions(parts, 2)]  # what the all-to-all hands a rank
    mine = gathered(order, parts, 2)
    assert torch.equal(mine.order.apply(as_gathered, dim=2), order.order.apply(x, dim=2))
    assert mine.sink_tiles == order.sink_tiles


def test_ring_ranks_hold_whole_tiles_in_the_single_process_order():
    layout = TokenLayout((1, 8, 8), 32, "first")
    order = tiled_sequence(layout, "joint", "first", 16, torch.device("cpu"))
    parts = segments(layout, "joint", "first")
    ring = ring_sequence(order, parts, 2, 16)
    assert not isinstance(ring, str)
    x = torch.randn(1, 1, order.tokens, 4)
    local = x[:, :, parallel.gathered_positions(parts, 2)].chunk(2, dim=2)
    tiled = order.order.apply(x, dim=2).view(1, 1, -1, 16, 4)
    for rank in range(2):
        assert torch.equal(ring.orders[rank].apply(local[rank], dim=2).view(1, 1, -1, 16, 4),
                           tiled[:, :, ring.tiles[rank]])
    assert sorted(torch.cat(ring.tiles).tolist()) == list(range(ring.num_tiles))


def test_a_tile_spanning_two_ranks_is_named():
    layout = TokenLayout((1, 8, 8), 8, "first")  # 4 prompt tokens per rank: the text tile spans both
    order = tiled_sequence(layout, "joint", "first", 16, torch.device("cpu"))
    reason = ring_sequence(order, segments(layout, "joint", "first"), 2, 16)
    assert isinstance(reason, str) and "tile_size=16" in reason


def test_uneven_parts_are_refused_with_the_sizes():
    with pytest.raises(UnsupportedModelError, match=r"\[7, 64\].*2 ranks"):
        parallel.check_split([7, 64], 2, "a sequence")


def test_without_parallelism_nothing_is_reduced_or_split():
    assert parallel.sums(None, [torch.tensor(2.0)]) == [2.0]
    assert parallel.all_ranks(None, True) and not parallel.all_ranks(None, False)
    module = torch.nn.Linear(2, 2)
    args, kwargs = (torch.ones(2),), {"a": 1}
    assert parallel.split_inputs(module, args, kwargs) == (args, kwargs)
    assert parallel.of(module) is None
