"""accel bench-parallel's pieces and the launcher the multi-process tests rely on."""

from __future__ import annotations

import os
import statistics

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


def _row(mode: str, ranks: int, times: list[float], other: float = 0.0) -> dict:
    return {"mode": mode, "ranks": ranks, "method": "none", "seconds": sorted(times)[len(times) // 2],
            "times": times, "other_cpu": [other] * len(times), "load": [None] * len(times), "ratio": 1.0, "error": 0.0}


def test_the_table_names_the_setup_the_verdict_and_the_rows():
    rows = [_row("1 process", 1, [1.0, 1.01, 0.99]), _row("ring", 2, [1.25, 1.26, 1.24])]
    rows[1].update(ratio=1.25, error=1e-7)
    result = {"model": "flux", "size": "tiny", "steps": 2, "repeat": 3, "world": 2, "threads": 2, "gpus": 0,
              "device": "cpu: x86_64, 2 threads", "verdict": scale_out.verdict(rows), "rows": rows}
    text = scale_out.markdown(result, "accel bench-parallel")
    assert "| ring | 2 | none | 1.250 | 1.25x | 1.0e-07 |" in text
    assert "each of 2 ranks with 1" in text and "overhead" in text
    assert "Timings: reliable (0 of 6 timed runs disturbed; other processes used 0% of the CPUs" in text


@pytest.mark.parametrize("rows,reason", [
    ([_row("1 process", 1, [1.0]), _row("ring", 2, [1.2])], "the baseline ran once"),
    ([_row("1 process", 1, [1.0, 1.3, 0.9]), _row("ring", 2, [1.2, 1.2, 1.2])], "the baseline's runs spread"),
    ([_row("1 process", 1, [1.0, 1.0, 1.0], other=0.5), _row("ring", 2, [1.2, 1.2, 1.2])],
     "other processes used more than 10% of the CPUs during 3 of 6 timed runs"),
])
def test_a_disturbed_or_too_short_run_is_judged_unreliable(rows, reason):
    verdict = scale_out.verdict(rows)
    assert not verdict["reliable"] and reason in "; ".join(verdict["reasons"])


@pytest.mark.slow
def test_a_run_times_every_row_on_every_rank_and_judges_it(tmp_path):
    """One real run of the tiny Flux, one method, both modes: the timed runs, the load they saw, the verdict."""
    result = scale_out.run("flux", "tiny", ["none"], 2, ["ulysses", "ring"], steps=1, repeat=2, threads=2,
                           timeout_s=300)
    assert [(r["mode"], r["ranks"]) for r in result["rows"]] == [("1 process", 1), ("ulysses", 2), ("ring", 2)]
    for r in result["rows"]:
        assert len(r["times"]) == len(r["other_cpu"]) == 2 and r["seconds"] == statistics.median(r["times"])
        assert all(0 <= c <= 1 for c in r["other_cpu"])  # every rank's own CPU time left out
        assert r["error"] < 1e-4
    assert result["verdict"]["runs"] == 6 and isinstance(result["verdict"]["reliable"], bool)


def test_bad_names_are_refused_with_the_allowed_ones(capsys):
    from accel.cli import main

    with pytest.raises(SystemExit):
        main(["bench-parallel", "--modes", "ulysses,hybrid"])
    assert "ulysses, ring" in capsys.readouterr().err


def _fake_run(reliable: bool):
    def run(model, size, methods, world, modes, steps, repeat, threads, timeout_s):
        rows = [_row("1 process", 1, [1.0, 1.0]), _row("ring", 2, [1.2, 1.2], other=0.0 if reliable else 0.9)]
        rows[1].update(ratio=1.2)
        return {"model": model, "size": size, "steps": steps, "repeat": repeat, "world": world, "threads": threads,
                "gpus": 0, "device": "cpu", "verdict": scale_out.verdict(rows), "rows": rows}
    return run


@pytest.mark.parametrize("reliable", [True, False])
def test_an_unreliable_table_is_kept_out_of_the_doc_unless_asked(reliable, tmp_path, monkeypatch, capsys):
    from accel.cli import main

    monkeypatch.setattr(scale_out, "run", _fake_run(reliable))
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# benchmarks\n")
    argv = ["bench-parallel", "--modes", "ring", "--methods", "none", "--out", str(tmp_path / "out"), "--doc", str(doc)]
    assert main(argv) == (0 if reliable else 3)
    assert ("| ring | 2 | none |" in doc.read_text()) == reliable
    assert ("left unchanged" in capsys.readouterr().err) != reliable
    assert main([*argv, "--publish-unreliable"]) == 0
    assert "| ring | 2 | none |" in doc.read_text()
    assert ("**UNRELIABLE TIMINGS**" in doc.read_text()) != reliable


def test_publish_unreliable_needs_a_doc(tmp_path, monkeypatch, capsys):
    from accel.cli import main

    monkeypatch.setattr(scale_out, "run", _fake_run(False))
    assert main(["bench-parallel", "--publish-unreliable", "--out", str(tmp_path)]) == 2
    assert "--publish-unreliable acts only with --doc" in capsys.readouterr().err
