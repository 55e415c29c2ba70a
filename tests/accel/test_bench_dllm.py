"""`accel bench` on a block-diffusion language pipeline: the default rows (stock, prefix cache, FlashBlock),
what each measures, and the prefix cache's exactness in the table."""

from __future__ import annotations

import json

from accel.cli import main


def test_dllm_rows(tmp_path, capsys):
    assert main(["bench", "--model", "llada2", "--size", "tiny", "--repeat", "1", "--warmup", "0", "--no-progress",
                 "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    rows = {r["label"]: r for r in result["rows"]}
    assert list(rows) == ["baseline", "flashblock:prefix-cache", "flashblock"]
    assert rows["flashblock:prefix-cache"]["options"] == {"refresh": 1}
    assert rows["flashblock:prefix-cache"]["agreement"] == 1.0  # exact
    for label in ("flashblock:prefix-cache", "flashblock"):
        stats = rows[label]["stats"]
        assert stats["prefix_tokens_fed"] < stats["window_tokens"]
    assert rows["flashblock"]["stats"]["external_reuses"] > 0
    assert all(r["attention_s"] > 0 and r["tokens_per_s"] > 0 for r in result["rows"])
    assert result["model"]["pipeline"] == "LLaDA2Pipeline"
    out = capsys.readouterr().out
    assert "| flashblock |" in out and ("x lower" in out or "x higher" in out)


def test_diffusion_gemma_rows(tmp_path, capsys):
    """Its pipeline caches the context itself: stock against FlashBlock, attention compared with the stock."""
    assert main(["bench", "--model", "diffusion-gemma", "--size", "tiny", "--repeat", "1", "--warmup", "0",
                 "--no-progress", "--methods", "flashblock,flashblock:exact", "--option", "flashblock:exact.refresh=1",
                 "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    rows = {r["label"]: r for r in result["rows"]}
    assert list(rows) == ["baseline", "flashblock", "flashblock:exact"]
    assert rows["flashblock:exact"]["agreement"] == 1.0  # the same canvases, the same tokens
    assert rows["flashblock"]["stats"]["external_reuses"] > 0 and "prefix_tokens_fed" not in rows["flashblock"]["stats"]
    assert rows["flashblock"]["routed_s"] > 0 and rows["baseline"]["routed_s"] == 0
    assert result["model"] == {**result["model"], "pipeline": "DiffusionGemmaPipeline", "block_length": 8,
                               "prompt_tokens": 41}  # 40 digits and the template's "="
    assert "| flashblock |" in capsys.readouterr().out


def test_anyflow_far_rows(tmp_path, capsys):
    """Chunk-wise video: the exact row runs the chunk steps by SDPA (as FlashBlock does), the agreement is the
    latents' PSNR against the stock pipeline's."""
    assert main(["bench", "--model", "anyflow-far", "--size", "tiny", "--repeat", "1", "--warmup", "0",
                 "--no-progress", "--no-profile", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    rows = {r["label"]: r for r in result["rows"]}
    assert list(rows) == ["baseline", "flashblock:exact", "flashblock"]
    assert rows["baseline"]["agreement"] == float("inf") and rows["flashblock:exact"]["agreement"] > 100  # fp32 apart
    assert 20 < rows["flashblock"]["agreement"] < rows["flashblock:exact"]["agreement"]  # reuse: near, not equal
    assert rows["flashblock"]["stats"]["path"] == "cpu-flash" and rows["flashblock:exact"]["stats"]["path"] == "sdpa"
    assert result["model"]["chunks"] == [1, 2, 2, 2] and result["model"]["tokens_per_frame"] == 16
    assert "PSNR dB vs exact" in capsys.readouterr().out
