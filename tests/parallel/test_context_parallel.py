"""accel under diffusers' context parallelism, on CPU: two processes over gloo, launched by the test.

diffusers 0.42.1's own engine runs here (`enable_parallelism` with `ContextParallelConfig`, its Ulysses
all-to-all and its `TemplatedRingAttention`); the one thing it cannot do on a CPU is pick a device
(`rank % torch.accelerator.device_count()` divides by zero), which `accel.bench.scale_out.enable` gets
past for that one call. Every check compares a 2-rank run with the single-process run of the same
weights and inputs (each rank computes that reference too), for tiny Flux (joint attention, the prompt
split over the ranks) and Wan (self- and cross-attention, the video split at blocks.0).
One launch runs everything (cp_cases.suite); a deadlocked collective fails it at the timeout.
"""

from __future__ import annotations

import os
import types

import pytest

import accel
from accel.bench.scale_out import launch

HERE = os.path.dirname(os.path.abspath(__file__))
METHODS = ["none", "pisa", "adaspa", "delta-dit", "tdc", "sixbit"]
FAMILIES = ["flux", "wan"]
MODES = ["ulysses", "ring"]
THRESHOLD = 0.1
TOLERANCE = 1e-5  # fp32: max |2 ranks - 1 process| / max |1 process| (observed at most ~7e-7)
# sixbit: its INT8 route quantizes activations with one dynamic scale per tensor (PyTorch's x86
# linear_dynamic), which is each rank's shard under parallelism: the same routes, a different rounding
SIXBIT_TOLERANCE = 2e-2


@pytest.fixture(scope="module")
def ranks():
    return launch("cp_cases:suite", 2, {"modes": MODES, "families": FAMILIES, "methods": METHODS,
                                        "threshold": THRESHOLD}, timeout_s=240, pythonpath=[HERE])


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("family,method", [(f, m) for f in FAMILIES for m in METHODS
                                           if m != "sixbit" or f == "flux"])  # the router: on Flux
def test_two_ranks_equal_one_process(ranks, mode, family, method):
    results = [rank[mode][f"{family}/{method}"] for rank in ranks]
    for result in results:
        assert result["error"] < (SIXBIT_TOLERANCE if method == "sixbit" else TOLERANCE), result
        if method == "sixbit":  # per step: layer calls in NVFP4, INT8, A16 and skipped blocks, as one process
            assert result["stats"]["per_step"] == result["reference_stats"]["per_step"]
        stats, reference = result["stats"], result["reference_stats"]
        for key in ("sparse_calls", "dense_calls", "blocks_skipped", "block_calls"):
            assert stats.get(key) == reference.get(key), key  # the same calls, the same skips
    if method in ("pisa", "adaspa"):  # each rank counts its heads (Ulysses) or query tiles (ring): equal shares
        density = sum(r["stats"]["density"] for r in results) / len(results)
        assert density == pytest.approx(results[0]["reference_stats"]["density"], abs=1e-9)
    for result in results:
        stats = result["stats"]
        if method in ("pisa", "adaspa"):
            assert stats["sparse_calls"] > 0 and stats["density"] < 0.9  # really sparse
            assert "fallbacks" not in stats
        if method in ("delta-dit", "tdc"):
            assert stats["blocks_skipped"] > 0
        if mode == "ring" and method not in ("pisa", "adaspa"):
            assert result["parallel"]["ring_calls"] > 0  # accel's LSE op served diffusers' ring


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_ranks_with_different_statistics_take_the_same_decisions(ranks, mode):
    zero, one = (rank[f"{mode}/decisions"] for rank in ranks)
    local0, reduced0 = zip(*zero["record"], strict=True)
    local1, reduced1 = zip(*one["record"], strict=True)
    # rank 1's shard was skewed: alone, the ranks would see statistics far apart
    assert max(b / a for a, b in zip(local0, local1, strict=True)) > 2
    assert reduced0 == reduced1  # every rank decides on the same number
    assert (zero["skipped"], zero["calls"]) == (one["skipped"], one["calls"])


@pytest.mark.slow
def test_the_reduction_is_what_makes_the_decision_agree(ranks):
    (zero, one) = (rank["statistic"] for rank in ranks)
    assert zero["local"] < THRESHOLD < one["local"]  # without the reduction: rank 0 skips, rank 1 computes
    assert zero["reduced"] == one["reduced"] == pytest.approx((0.01 + 1.0) / 2)  # the single process's value


@pytest.mark.slow
def test_tiles_spanning_two_ranks_are_refused_with_the_reason(ranks):
    for rank in ranks:
        assert "pisa under ring attention" in rank["misaligned"] and "tile_size=16" in rank["misaligned"]


def _fake_parallel(model, ulysses=1, ring=1, **flags):
    """A context-parallel config as diffusers leaves it on a model (no process group needed: the
    refusals happen before anything is used)."""
    fields = {"ulysses_anything": False, "ring_anything": False, "convert_to_fp32": True, **flags}
    cp = types.SimpleNamespace(ulysses_degree=ulysses, ring_degree=ring, _mesh=object(), **fields)
    model._parallel_config = types.SimpleNamespace(context_parallel_config=cp)


@pytest.mark.parametrize("setup,method,options,message", [
    ({"ulysses": 2, "ring": 2}, "none", {}, "one at a time"),
    ({"ulysses": 4}, "pisa", {}, "do not split over ulysses_degree=4"),
    ({"ulysses": 2, "ulysses_anything": True}, "tdc", {}, "even shards only"),
    ({"ring": 2}, "pisa", {"routing": "covariance"}, "routing='covariance'"),
    ({"ring": 2, "convert_to_fp32": False}, "none", {}, "convert_to_fp32=False"),
])
def test_unsupported_setups_are_refused_at_patch_time(tiny, setup, method, options, message):
    pipe = tiny("flux")  # 2 heads
    flags = {k: setup.pop(k) for k in list(setup) if k not in ("ulysses", "ring")}
    _fake_parallel(pipe.transformer, **setup, **flags)
    try:
        with pytest.raises(accel.UnsupportedModelError, match=message):
            accel.patch(pipe, method=method, **options)
        assert accel.patch_of(pipe) is None  # nothing applied
    finally:
        pipe.transformer._parallel_config = None


@pytest.mark.parametrize("method", ["tdc", "pisa", "sixbit"])
def test_parallelism_enabled_after_patching_is_refused_at_the_next_call(tiny, method):
    pipe = tiny("flux")
    with accel.patch(pipe, method=method):
        _fake_parallel(pipe.transformer, ulysses=2)
        try:
            with pytest.raises(accel.UnsupportedModelError, match="changed after accel.patch"):
                accel.zoo.generate(pipe, steps=2)
        finally:
            pipe.transformer._parallel_config = None
        accel.zoo.generate(pipe, steps=2)  # the setup it was patched for: runs
