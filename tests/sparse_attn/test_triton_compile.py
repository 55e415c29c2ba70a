"""The Triton kernels compile for Hopper (sm_90) on CPU, for what the API accepts, within shared memory.

The interpreter tests (TRITON_INTERPRET=1) run the kernels as Python and check nothing the GPU compiler
checks: global variables, loop-carried types, shared memory, registers. Here Triton's own compiler builds
each kernel for sm_90 on the specialization its JIT would use for a Wan-14B 720p call (meta tensors; see
sparse_attn/triton_compile.py), and the test asserts: no compile error, shared memory within Hopper's
232,448 bytes, and within the estimate that prunes the autotune configs (so the configs never built here
fit as well). The default run builds a covering subset (`covering`: every kernel x dtype x fp32
precision x head dim at its largest shared memory, the smallest tiles, every loop form) in about two
minutes; ACCEL_COMPILE_ALL=1 builds every distinct specialization (about half an hour on 2 cores).
Registers and spills are reported (`-rP` shows the table; `accel compile-check` prints it).
"""

from __future__ import annotations

import os

import pytest
import torch

triton = pytest.importorskip("triton")

import accel.sparse_attn as sa  # noqa: E402
from accel.sparse_attn import triton_common  # noqa: E402
from accel.sparse_attn import triton_compile as tc  # noqa: E402


def test_every_accepted_input_has_a_launch_config(monkeypatch):
    """Every (kernel, dtype, precision, head dim, block sizes) has configs, except the search's whole-block
    query tiles that cannot fit, which its path refuses before launching (and "auto" falls back)."""
    from accel.sparse_attn.search import choose_search_path

    monkeypatch.setattr(triton_common, "INTERPRETED", True)  # let CPU tensors reach the tile check
    refused = 0
    for kernel in tc.KERNELS:
        for dtype, dot in tc.PRECISIONS:
            for head_dim in (*tc.HEAD_DIM_PADS, 40, 72, 200):
                for q_tile in tc.TILE_SIZES:
                    for kv_tile in tc.TILE_SIZES:
                        if tc.launch_configs(kernel, q_tile, kv_tile, head_dim, dtype, dot):
                            continue
                        assert kernel.startswith("search"), (kernel, dtype, dot, head_dim, q_tile, kv_tile)
                        refused += 1
                        sa.set_fp32_precision(dot if dtype == torch.float32 else "auto")
                        try:
                            with pytest.raises(RuntimeError, match="no tiles"):
                                choose_search_path(torch.empty(1, 1, 8, head_dim, dtype=dtype), "triton",
                                                   (q_tile, kv_tile))
                        finally:
                            sa.set_fp32_precision("auto")
    assert refused  # fp32 at head dim 256 with 128-row query blocks, for one


@pytest.mark.slow
def test_kernels_compile_for_sm90(record_property):
    specs = tc.specializations()
    if not os.environ.get("ACCEL_COMPILE_ALL"):
        specs = tc.covering(specs)
    kernels = {s.kernel for s in specs}
    assert kernels == set(tc.KERNELS)
    results = tc.check(specs)
    table = tc.report(results)
    print(table)  # shown with -rP
    record_property("sm90_builds", len(results))
    assert not tc.problems(results), "\n".join(tc.problems(results))
    # the exact fp32 tiles were chosen because they do not spill on the block-sparse kernel
    spills = [f"{s}: {r.spill_bytes}" for s, r in results
              if s.kernel == "block-sparse" and s.dot == "ieee" and s.dtype == torch.float32 and r.spill_bytes]
    assert not spills, spills


@pytest.mark.parametrize("kernel", ["block-sparse", "search-fused", "search-refresh"])
@pytest.mark.parametrize("dtype,dot", [(torch.bfloat16, "tf32"), (torch.float32, "ieee"), (torch.float32, "tf32x3")])
def test_autotuners_prune_to_the_launch_configs(kernel, dtype, dot):
    """What Triton's autotuner runs on a GPU (its early_config_prune on the launch's arguments) is exactly
    what the compile test builds."""
    from accel.sparse_attn import search_triton, triton_kernel

    spec = tc.Specialization(kernel, dtype, dot, 128, 64, 128, triton.Config({"BLOCK_N": 16}))
    _, args, constexprs = spec._launch()
    tuner = triton_kernel._block_sparse_fwd_tuned if kernel == "block-sparse" else search_triton._search_fwd_tuned
    tuner.nargs = dict(zip(tuner.arg_names, args, strict=False))
    try:
        pruned = tuner.prune_configs(constexprs)
    finally:
        tuner.nargs = None
    want = tc.launch_configs(kernel, 64, 128, 128, dtype, dot)
    assert [c.all_kwargs() for c in pruned] == [c.all_kwargs() for c in want] and want
