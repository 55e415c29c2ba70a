"""Every method under torch.compile, compiled after an eager call of the patched pipeline: the compiled
output equals the eager one, and the number of compiled graphs does not grow with the step count (no
recompile per step: dynamo's recompile limit would otherwise send the rest of the run back to eager).

Not fullgraph: the step tracker's bookkeeping runs eagerly at the denoiser's entry and exit, the caches'
decisions before each block, and the sparse methods' attention between compiled graphs.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

import accel
from accel.zoo import generate

METHODS = {
    "none": {},
    "delta-dit": {"interval": 2, "warmup": 1},
    "tdc": {"threshold": 0.5},
    "pisa": {"density": 1.0, "dense_steps": 0.0, "dense_layers": 0},
    "adaspa": {"sparsity": 0.0, "dense_steps": 0.0, "dense_layers": 0},
}


def compiled_graphs(pipe, steps: int) -> tuple[torch.Tensor, int]:
    """A fresh compile of the transformer, one run: (output, graphs compiled)."""
    torch._dynamo.reset()
    counters.clear()
    original = pipe.transformer
    pipe.transformer = torch.compile(original)
    try:
        out = generate(pipe, steps=steps)
    finally:
        pipe.transformer = original
    return out, counters["stats"]["unique_graphs"]


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
def test_compiled_equals_eager_without_a_recompile_per_step(tiny, method):
    pipe = tiny("pixart-alpha")
    handle = accel.patch(pipe, method=method, **METHODS[method])
    eager = generate(pipe, steps=8)
    compiled, graphs_8 = compiled_graphs(pipe, 8)
    _, graphs_16 = compiled_graphs(pipe, 16)
    torch._dynamo.reset()
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-3)  # outputs of magnitude ~100
    assert graphs_8 == graphs_16 <= torch._dynamo.config.recompile_limit
    if method != "none":
        stats = handle.stats()[method]
        assert stats.get("sparse_calls", 1) > 0 and stats.get("block_calls", 1) > 0
    handle.unpatch()
