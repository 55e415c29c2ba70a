"""Compositions against their parts: a sparse-attention method with a step cache, in one patch.

- both at their exact settings: the unpatched output;
- one exact, the other not: the other alone (bitwise where the exact part is a cache that never skips,
  within the kernels' last bits where it is the sparse method at full density);
- the refused pairs say why (two caches, two sparse methods: both change the same part).
"""

from __future__ import annotations

import pytest
import torch

import accel
from accel.caches.delta_dit import DeltaDiTConfig
from accel.caches.tdc import TDCConfig
from accel.sparse_attn.methods.adaspa import AdaSpaConfig
from accel.sparse_attn.methods.pisa import PISAConfig
from accel.zoo import generate

SPARSE = {
    "pisa": (PISAConfig(density=1.0, dense_steps=0.0, dense_layers=0), PISAConfig(density=0.5, dense_steps=0.25)),
    "adaspa": (AdaSpaConfig(sparsity=0.0, dense_steps=0.0, dense_layers=0), AdaSpaConfig(sparsity=0.5, dense_steps=0.25)),
}
CACHES = {
    "delta-dit": (DeltaDiTConfig(interval=1), DeltaDiTConfig(interval=2, warmup=1)),
    "tdc": (TDCConfig(threshold=0.0), TDCConfig(threshold=0.5)),
}
STEPS = 6


def output(pipe, method=None) -> torch.Tensor:
    if method is None:
        return generate(pipe, steps=STEPS)
    with accel.patch(pipe, method=method):
        return generate(pipe, steps=STEPS)


@pytest.mark.parametrize("cache", sorted(CACHES))
@pytest.mark.parametrize("sparse", sorted(SPARSE))
def test_a_sparse_method_with_a_step_cache_against_its_parts(tiny, sparse, cache):
    pipe = tiny("wan")  # separate cond/uncond calls: each branch keeps its own cache and masks
    (sparse_exact, sparse_approx), (cache_exact, cache_approx) = SPARSE[sparse], CACHES[cache]
    baseline = output(pipe)
    torch.testing.assert_close(output(pipe, [sparse_exact, cache_exact]), baseline, atol=1e-4, rtol=0)
    # a cache that never skips leaves the sparse method's output exactly as alone
    assert torch.equal(output(pipe, [sparse_approx, cache_exact]), output(pipe, sparse_approx))
    if cache == "delta-dit":  # a step-scheduled cache skips the same blocks over exact attention
        torch.testing.assert_close(output(pipe, [sparse_exact, cache_approx]), output(pipe, cache_approx),
                                   atol=1e-4, rtol=0)
    with accel.patch(pipe, method=[sparse_approx, cache_approx]) as handle:
        generate(pipe, steps=STEPS)
        stats = handle.stats()
    assert stats[sparse]["sparse_calls"] > 0 and stats[cache]["block_calls"] > 0


@pytest.mark.parametrize("pair", [("pisa", "adaspa"), ("delta-dit", "tdc")])
def test_methods_that_change_the_same_part_are_refused_by_name(tiny, pair):
    pipe = tiny("wan")
    with pytest.raises(accel.IncompatibleMethodsError, match=f"{pair[0]!r} and {pair[1]!r} both change"):
        accel.patch(pipe, method=list(pair))
    assert accel.patch_of(pipe) is None
