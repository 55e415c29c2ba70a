"""PISA and AdaSpa as patches: every family, the dense schedule, per-branch search state, fallbacks."""

from __future__ import annotations

import pytest
import torch
from support import snapshot

import accel
from accel.adapters import TokenLayout
from accel.errors import InvalidOptionError
from accel.sparse_attn.methods.base import tiled_sequence
from accel.sparse_attn.methods.sdpa_route import SDPACall
from accel.zoo import generate

FAMILIES = ["flux", "wan", "hunyuan-video", "pixart-alpha", "dit", "sd3", "cogvideox"]
ALL_SPARSE = {"dense_steps": 0.0, "dense_layers": 0, "tile_size": 16}


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("method,options", [("pisa", {"density": 1.0}), ("adaspa", {"sparsity": 0.0})])
def test_full_density_equals_dense_attention(tiny, name, method, options):
    pipe = tiny(name)
    reference = generate(pipe, steps=3)
    with accel.patch(pipe, method=method, **options, **ALL_SPARSE) as handle:
        out = generate(pipe, steps=3)
        stats = handle.stats()[method]
    assert stats["sparse_calls"] > 0 and stats["dense_calls"] == 0
    assert "fallbacks" not in stats
    assert stats["density"] == 1.0
    assert _relative_error(out, reference) < 1e-5


@pytest.mark.parametrize("method,options", [("pisa", {"density": 0.3}), ("adaspa", {"sparsity": 0.7})])
def test_sparse_attention_changes_the_output_a_little_and_unpatches_exactly(tiny, method, options):
    pipe = tiny("flux")
    reference = generate(pipe, steps=3)
    before = snapshot(pipe.transformer)  # after a call: the pipeline's cache_context adds a hook registry
    handle = accel.patch(pipe, method=method, **options, **ALL_SPARSE)
    out = generate(pipe, steps=3)
    assert handle.stats()[method]["density"] < 0.9
    assert 0 < _relative_error(out, reference) < 0.05
    handle.unpatch()
    assert snapshot(pipe.transformer) == before
    assert torch.equal(generate(pipe, steps=3), reference)


def test_first_steps_and_first_layers_stay_dense(tiny):
    pipe = tiny("pixart-alpha")  # 2 blocks, batched CFG: one call per step
    with accel.patch(pipe, method="pisa", density=0.5, tile_size=16, dense_steps=0.3, dense_layers=1) as handle:
        generate(pipe, steps=10)
        stats = handle.stats()["pisa"]
    assert stats["sparse_calls"] == 7  # steps 3..9, block 1 only
    assert stats["dense_calls"] == 3 * 2 + 7


def test_pisa_beats_keep_or_drop_on_the_trained_model():
    pipe = accel.zoo.load("digits-image")
    reference = generate(pipe, steps=4)
    errors = {}
    for order in ("none", "zeroth", "hybrid"):
        with accel.patch(pipe, method="pisa", density=0.25, order=order, **ALL_SPARSE):
            errors[order] = _relative_error(generate(pipe, steps=4), reference)
    assert errors["hybrid"] < errors["none"] / 2, errors
    assert errors["zeroth"] < errors["none"], errors


def test_adaspa_searches_once_per_branch_and_refreshes_from_the_cached_lse(tiny):
    pipe = tiny("wan")  # 2 blocks, separate cond/uncond calls
    handle = accel.patch(pipe, method="adaspa", sparsity=0.5, tile_size=16, dense_steps=0.2, dense_layers=0,
                         refresh_at=0.6)
    for _ in range(2):  # every run starts from nothing
        generate(pipe, steps=10)
        stats = handle.stats()["adaspa"]
        assert stats["searches"] == 2 * 2  # at step 2: 2 self-attention modules x 2 branches
        assert stats["refreshes"] == 2 * 2  # at step 6
        assert stats["dense_calls"] == 2 * 2 * 2  # steps 0-1
        assert stats["sparse_calls"] == 8 * 2 * 2
        assert stats["mask_vs_byte_mask"] <= 1 / 6  # 1 bit per block pair in whole bytes: 1/8 at real sizes
    handle.unpatch()


def test_static_top_k_baseline_never_refreshes(tiny):
    pipe = tiny("wan")
    with accel.patch(pipe, method="adaspa", search="pooled", refresh_at=0.0, head_adaptive=False,
                     **ALL_SPARSE) as handle:
        generate(pipe, steps=4)
        stats = handle.stats()["adaspa"]
    assert stats["searches"] == 4 and "refreshes" not in stats


def test_padded_prompt_tokens_are_left_out(tiny):
    pipe = tiny("hunyuan-video")  # the zoo pads its prompt: 2 of 8 text tokens masked out
    inputs = accel.zoo.inputs(pipe, steps=2)
    assert not inputs["prompt_attention_mask"].all()
    with accel.patch(pipe, method="pisa", density=0.4, **ALL_SPARSE) as handle:
        out = pipe(**inputs, return_dict=False)[0]
        padded = inputs["prompt_attention_mask"][0] == 0
        inputs = accel.zoo.inputs(pipe, steps=2)  # a fresh generator
        inputs["prompt_embeds"][:, padded] = 100.0  # whatever sits under the padding must not matter
        assert torch.allclose(pipe(**inputs, return_dict=False)[0], out, atol=1e-5)
        assert "fallbacks" not in handle.stats()["pisa"]


def test_other_masks_run_dense_and_say_so():
    q = torch.randn(1, 2, 8, 4)
    additive = SDPACall(q, q, q, attn_mask=torch.zeros(1, 1, 8, 8))
    assert additive.unsupported() == "an attention mask other than a boolean key-padding mask"
    assert SDPACall(q, q, q, is_causal=True).unsupported() == "causal attention"
    padding = torch.ones(1, 1, 1, 8, dtype=torch.bool)
    assert SDPACall(q, q, q, attn_mask=padding).kept_keys() is None  # all-true: no mask
    padding[..., -2:] = False
    assert SDPACall(q, q, q, attn_mask=padding).kept_keys().tolist() == [[True] * 6 + [False] * 2]


def test_first_frame_sink_keeps_the_blocks_of_the_given_frame():
    layout = TokenLayout(grid=(4, 16, 16), text_tokens=0, text_position="none")
    cpu = torch.device("cpu")
    assert tiled_sequence(layout, "self", "none", 16, cpu).sink_tiles == ()
    order = tiled_sequence(layout, "self", "none", 16, cpu, first_frame_sink=True)
    assert order.sink_tiles == tuple(range(16))  # (1, 4, 4) tiles: frame 0 fills exactly the first 16 blocks
    held = set((order.order.inverse[:256] // 16).tolist())  # blocks holding frame 0's tokens
    assert held == set(order.sink_tiles)
    # (4, 4, 4) tiles would span all four frames; with the sink, frame 0 gets (8, 8) tiles of its own
    assert set((tiled_sequence(layout, "self", "none", 64, cpu).order.inverse[:256] // 64).tolist()) == set(range(16))
    order = tiled_sequence(layout, "self", "none", 64, cpu, first_frame_sink=True)
    assert order.sink_tiles == (0, 1, 2, 3)
    assert sorted(order.order.perm.tolist()) == list(range(1024))
    assert set((order.order.inverse[256:] // 64).tolist()) == set(range(4, 16))  # the other frames: (4, 4, 4)
    rows = order.order.perm[:64] // 16
    assert rows.max() - rows.min() == 7  # an 8x8 tile of frame 0


def test_first_frame_sink_is_on_by_default_only_where_the_image_is_the_first_latent_frame():
    i2v = accel.zoo.load("digits-video")
    density = {}
    for sink in ("auto", False):
        with accel.patch(i2v, method="pisa", first_frame_sink=sink, **ALL_SPARSE) as handle:
            i2v(**accel.zoo.inputs(i2v, steps=2))
            stats = handle.stats()["pisa"]
        assert ("sink" in stats) == (sink == "auto")
        density[sink] = stats["density"]
    assert density["auto"] > density[False] + 0.1  # the 16 of 64 key blocks of frame 0, kept for every query block
    t2v = accel.zoo.load("wan", size="tiny")
    with accel.patch(t2v, method="adaspa") as handle:
        assert "sink" not in handle.stats()["adaspa"]


def test_block_order_tiles_the_grid_and_puts_text_last():
    layout = TokenLayout(grid=(1, 16, 16), text_tokens=10, text_position="first")
    order = tiled_sequence(layout, "joint", "first", 64, torch.device("cpu"))
    perm = order.order.perm
    assert sorted(perm.tolist()) == list(range(266))
    assert perm[-10:].tolist() == list(range(10))  # the text, moved to the end
    first_block = perm[:64] - 10  # raster positions of the first block's image tokens
    rows, cols = first_block // 16, first_block % 16
    assert rows.max() - rows.min() == 7 and cols.max() - cols.min() == 7  # an 8x8 tile
    assert order.sink_tiles == (4,)  # tokens 256..265 sit in block 4
    x = torch.randn(1, 2, 266, 4)
    assert torch.equal(order.order.restore(order.order.apply(x, dim=2), dim=2), x)


@pytest.mark.parametrize(
    "method,options,pattern",
    [
        ("pisa", {"density": 1.5}, r"pisa: option density=1.5 is out of range"),
        ("pisa", {"tile_size": 48}, r"tile_size=48 is not allowed; expected one of 16, 32, 64, 128"),
        ("pisa", {"order": "first"}, r"order='first' is not allowed"),
        ("adaspa", {"sparsity": 1.0}, r"adaspa: option sparsity=1.0 is out of range"),
        ("adaspa", {"dense_steps": 1.0}, r"dense_steps=1.0 is out of range"),
    ],
)
def test_bad_options_are_refused_before_patching(tiny, method, options, pattern):
    pipe = tiny("flux")
    before = snapshot(pipe.transformer)
    with pytest.raises(InvalidOptionError, match=pattern):
        accel.patch(pipe, method=method, **options)
    assert snapshot(pipe.transformer) == before


def test_attention_quality_bench_captures_block_ordered_calls(tmp_path):
    from accel.bench import attention_quality
    from accel.cli import main

    pipe = accel.zoo.load("digits-image")  # 4 blocks, batched CFG: one call per block and step
    calls = attention_quality.capture(pipe, steps=4, at=(0.5,), tile_size=16)
    assert [(c.step, c.layer) for c in calls] == [(2, 0), (2, 1), (2, 2), (2, 3)]
    assert calls[0].q.shape == (2, 3, 256, 32) and calls[0].sinks == ()
    assert main(["bench-attn-quality", "--model", "digits-image", "--steps", "4", "--at", "0.5",
                 "--tile-size", "16", "--density", "0.25", "--out", str(tmp_path)]) == 0
    errors = __import__("json").loads((tmp_path / "attention_quality.json").read_text())["errors"]["0.25"]
    assert all(h < k for h, k in zip(errors["hybrid"], errors["keep_or_drop"], strict=True))


def test_bench_runs_two_configurations_of_one_method_side_by_side():
    from accel.bench import BenchSpec, run

    spec = BenchSpec(model="flux", size="tiny", methods=("pisa", "pisa:keep-or-drop"), peers=(), steps=2, repeat=1,
                     warmup=0, profile_attention=False, progress=False,
                     method_options={name: {**ALL_SPARSE, "density": 0.3} for name in ("pisa", "pisa:keep-or-drop")})
    spec.method_options["pisa:keep-or-drop"]["order"] = "none"
    rows = {row.label: row for row in run(spec).rows}
    assert rows["pisa:keep-or-drop"].options["order"] == "none"
    assert rows["pisa"].stats["pisa"]["kernel"].startswith("pisa+")
    assert not rows["pisa:keep-or-drop"].stats["pisa"]["kernel"].startswith("pisa+")


def test_adaspa_never_caches_a_nan_or_inf_lse(tiny, monkeypatch, caplog):
    """A search whose dense pass yields a NaN/inf log-sum-exp (overflowing q/k): nothing is cached for that
    site, the step runs dense, the next step searches again, and stats() counts it."""
    from accel.sparse_attn.methods import adaspa as module

    real = module.dense_attention_with_tile_mass
    calls = []

    def first_overflows(*args, **kwargs):
        out, lse, mass = real(*args, **kwargs)
        calls.append(1)
        return (out, lse * float("nan"), mass) if len(calls) == 1 else (out, lse, mass)

    monkeypatch.setattr(module, "dense_attention_with_tile_mass", first_overflows)
    pipe = tiny("wan")
    with accel.patch(pipe, method="adaspa", sparsity=0.5, tile_size=16, dense_steps=0.2, dense_layers=0,
                     refresh_at=0.6) as handle, caplog.at_level("WARNING", logger="accel"):
        generate(pipe, steps=10)
        stats = handle.stats()["adaspa"]
        states = list(handle.methods[0].states.values())
    assert stats["nonfinite_lse"] == 1
    assert stats["searches"] == 2 * 2 + 1  # the poisoned site searched once more, a step later
    assert sum("NaN/inf" in r.getMessage() for r in caplog.records) == 1
    assert all(s.lse is None or bool(torch.isfinite(s.lse).all()) for s in states)


@pytest.mark.parametrize("model, says", [
    ("dit", "--model dit: expected a trained image or video entry of the zoo"),
    ("digits-vqa", "--model digits-vqa: expected a trained image or video entry"),
    ("digits-dico", "method 'pisa' does not support DiCoModel"),
])
def test_attention_quality_bench_refuses_models_without_trained_attention(model, says, tmp_path, capsys):
    from accel.cli import main

    assert main(["bench-attn-quality", "--model", model, "--steps", "2", "--out", str(tmp_path / "o")]) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
