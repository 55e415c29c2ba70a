"""accel bench-parallel's pieces and the launcher the multi-process tests rely on."""

from __future__ import annotations

import os

import pytest
import torch

from accel.adapters import TokenLayout
from accel.bench import scale_out
from accel.sparse_attn.methods.base import ring_sequence, segments, tiled_sequence

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.slow
def test_a_rank_waiting_forever_is_killed_at_the_timeout():
    with pytest.raises(TimeoutError, match="ran past 20 s"):
        scale_out.launch("cp_cases:stall", 2, {}, timeout_s=20, pythonpath=[HERE])


def test_a_failing_rank_fails_the_launch_with_its_output():
    with pytest.raises(RuntimeError, match="fails on purpose"):
        scale_out.launch("cp_cases:fail", 2, {}, timeout_s=60, pythonpath=[HERE])


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("model", scale_out.MODELS)
def test_the_bench_inputs_give_every_rank_whole_tiles(model, world):
    dims = scale_out.sizes(model, "bench", world)
    if model == "flux":  # 8x VAE, 2x2 packing
        layout, kind, text = TokenLayout((1, dims["height"] // 16, dims["width"] // 16), dims["text_tokens"],
                                         "first"), "joint", "first"
    else:  # 4x temporal and 8x spatial VAE, 2x2 patches
        frames = (dims["num_frames"] - 1) // 4 + 1
        layout, kind, text = TokenLayout((frames, dims["height"] // 16, dims["width"] // 16)), "self", "none"
    order = tiled_sequence(layout, kind, text, 64, torch.device("cpu"))
    ring = ring_sequence(order, segments(layout, kind, text), world, 64)
    assert not isinstance(ring, str), ring


def test_the_table_names_the_setup_and_the_rows():
    result = {"model": "flux", "size": "tiny", "steps": 2, "repeat": 1, "world": 2, "threads": 2, "gpus": 0,
              "device": "cpu: x86_64, 2 threads",
              "rows": [{"mode": "1 process", "ranks": 1, "method": "none", "seconds": 1.0, "ratio": 1.0, "error": 0.0},
                       {"mode": "ring", "ranks": 2, "method": "none", "seconds": 1.25, "ratio": 1.25, "error": 1e-7}]}
    text = scale_out.markdown(result, "accel bench-parallel")
    assert "| ring | 2 | none | 1.250 | 1.25x | 1.0e-07 |" in text
    assert "each of 2 ranks with 1" in text and "overhead" in text


def test_bad_names_are_refused_with_the_allowed_ones(capsys):
    from accel.cli import main

    with pytest.raises(SystemExit):
        main(["bench-parallel", "--modes", "ulysses,hybrid"])
    assert "ulysses, ring" in capsys.readouterr().err
