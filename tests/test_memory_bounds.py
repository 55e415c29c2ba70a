"""What each method holds during a call (`stats()["held_peak_MB"]`, the peak over the run of the tensors in
its per-run state), bounded by its documented formula, on Wan (two CFG branches):

- delta-dit / tdc: one residual per span and branch (the size of a block's input), a second one (the
  slope) with `order=1`;
- pisa: nothing per run (its token permutations are kept between calls, O(tokens));
- adaspa: per attention site and branch, the LSE (fp32 [B, H, S]) and the mask (1 bit per tile pair).

After the call each holds nothing (tests/test_method_contract.py).
"""

from __future__ import annotations

import math

import pytest

import accel
from accel.zoo import generate

BRANCHES = 2  # Wan: cond and uncond calls


def _block_input_bytes(pipe) -> int:
    """Bytes of one block's hidden-state input, seen on a plain call."""
    seen = []
    first = pipe.transformer.blocks[0]
    handle = first.register_forward_pre_hook(lambda m, args: seen.append(args[0].numel() * args[0].element_size()))
    generate(pipe, steps=2)
    handle.remove()
    return seen[0]


@pytest.mark.parametrize("method, options, per_span", [
    ("delta-dit", {"interval": 2, "warmup": 1}, 1),
    ("tdc", {"threshold": 0.5}, 1),
    ("tdc", {"threshold": 0.5, "order": 1}, 2),
])
def test_span_caches_hold_one_residual_per_span_and_branch(tiny, method, options, per_span):
    pipe = tiny("wan")
    activation = _block_input_bytes(pipe)
    with accel.patch(pipe, method=method, **options) as handle:
        generate(pipe, steps=6)
        peak = handle.stats()[method]["held_peak_MB"] * 2**20
        spans = len(handle.methods[0].spans)
    assert 0 < peak <= per_span * spans * BRANCHES * activation


def test_pisa_holds_nothing_per_run(tiny):
    pipe = tiny("wan")
    with accel.patch(pipe, method="pisa", density=0.5, dense_steps=0.0) as handle:
        generate(pipe, steps=4)
        assert handle.stats()["pisa"]["held_peak_MB"] == 0


def test_adaspa_holds_an_lse_and_a_bit_mask_per_site_and_branch(tiny):
    pipe = tiny("wan")
    sizes = []
    attn = pipe.transformer.blocks[0].attn1
    handle = attn.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape))
    generate(pipe, steps=2)
    handle.remove()
    batch, tokens, _ = sizes[0]
    heads = attn.heads
    with accel.patch(pipe, method="adaspa", sparsity=0.5, dense_steps=0.0, dense_layers=0) as patched:
        generate(pipe, steps=4)
        peak = patched.stats()["adaspa"]["held_peak_MB"] * 2**20
        sites = len(patched.methods[0].hooks)
        tile = patched.config.tile_size
    tiles = math.ceil(tokens / tile)
    per_site = batch * heads * tokens * 4 + math.ceil(batch * heads * tiles * tiles / 8) + 64  # + tile ids
    assert 0 < peak <= sites * BRANCHES * per_site
