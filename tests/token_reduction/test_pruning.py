"""PyramidDrop and FastV (token_reduction/) on the five VLM families of the zoo (tiny: 4 LM layers).

What a bug would break: the exact setting (keep everything) must give bit-identical logits; decoding on the
per-layer shortened cache must give the tokens a no-cache generation gives (each step re-prefills with the
same ranking row); a padded batch must give each sample what it gets alone; the ranking must equal the
model's own attention probabilities (eager `output_attentions`); unpatch restores bit-identical outputs;
bad options and inputs are refused before anything changes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import accel
from accel.errors import InvalidOptionError, UnsupportedModelError
from accel.token_reduction import prefill_flops
from accel.token_reduction.pruning import UnsupportedInputError
from accel.token_reduction.ranking import attention_row

FAMILIES = ["llava", "llava-next", "llava-onevision", "qwen2-vl", "qwen2.5-vl"]
METHODS = ["pyramid-drop", "fastv"]


@pytest.fixture(scope="module")
def models():
    cache: dict[str, torch.nn.Module] = {}

    def get(name: str) -> torch.nn.Module:
        if name not in cache:
            cache[name] = accel.zoo.load(name, size="tiny")
        return cache[name]

    return get


def _logits(model, x):
    with torch.no_grad():
        return model(**x).logits[:, -1]


def _generate(model, x, **kw):
    with torch.no_grad():
        return model.generate(**x, max_new_tokens=4, do_sample=False, **kw)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_keeping_everything_is_bit_identical_and_unpatch_restores(models, family, method):
    model = models(family)
    x = accel.zoo.vlm_inputs(model, batch=2, vary=True)
    ref = _logits(model, x)
    with accel.patch(model, method=method, keep_ratio=1.0):
        assert torch.equal(_logits(model, x), ref)
    handle = accel.patch(model, method=method)
    pruned = _logits(model, x)
    assert not torch.equal(pruned, ref)  # the default drops tokens, and that shows
    assert handle.stats()[method]["flops_ratio"] < 1
    handle.unpatch()
    assert torch.equal(_logits(model, x), ref)
    assert "generate" not in vars(model)


@pytest.mark.parametrize("positions", ["compact", "keep"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_decoding_on_the_pruned_cache_equals_decoding_without_cache(models, family, method, positions):
    model = models(family)
    if positions == "compact" and family.startswith("qwen"):
        with pytest.raises(InvalidOptionError, match="M-RoPE"):
            accel.patch(model, method=method, positions=positions)
        return
    x = accel.zoo.vlm_inputs(model, batch=2, vary=True)
    with accel.patch(model, method=method, positions=positions) as handle:
        cached = _generate(model, x)
        stats = handle.stats()[method]
        assert stats["decode_calls"] == 3 and stats["kept_visual"]
        recomputed = _generate(model, x, use_cache=False)
    assert torch.equal(cached, recomputed)


@pytest.mark.parametrize("family", FAMILIES)
def test_several_images_per_prompt(models, family):
    model = models(family)
    x = accel.zoo.vlm_inputs(model, batch=2, images_per_prompt=2, vary=True)
    with accel.patch(model, method="pyramid-drop") as handle:
        cached = _generate(model, x)
        visual = handle.stats()["pyramid-drop"]["visual_tokens"]
        recomputed = _generate(model, x, use_cache=False)
    ids = torch.tensor(accel.zoo.image_token_ids(model))
    assert visual == int(torch.isin(x["input_ids"], ids).sum())
    assert torch.equal(cached, recomputed)


def _last_real_logits(handle, method, logits, mask):
    """Each sample's logits at its last real prompt token, found in the pruned output by its prefill index."""
    positions = handle.methods[0].output_positions()
    assert positions.shape == logits.shape[:2]
    last = mask.shape[1] - 1 - mask.flip(1).int().argmax(dim=1)
    slot = (positions == last[:, None]).int().argmax(dim=1)
    return logits[torch.arange(len(slot)), slot]


@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_a_padded_batch_gives_each_sample_its_own_result(models, family, method, padding):
    model = models(family)
    x = accel.zoo.vlm_inputs(model, batch=3, vary=True, padding_side=padding)
    with accel.patch(model, method=method) as handle, torch.no_grad():
        batched = _last_real_logits(handle, method, model(**x).logits, x["attention_mask"])
        kept = handle.stats()[method]["kept_visual"]
        alone, kept_alone = [], []
        for b in range(3):
            one = accel.zoo.vlm_inputs(model, batch=3, vary=True, padding_side=padding)
            one = _sample(one, b)
            alone.append(_last_real_logits(handle, method, model(**one).logits, one["attention_mask"])[0])
            kept_alone.append(handle.stats()[method]["kept_visual"])
    torch.testing.assert_close(batched, torch.stack(alone), atol=2e-5, rtol=1e-4)
    assert kept == [sum(k[s] for k in kept_alone) for s in range(len(kept))]


def _sample(x, b):
    """Sample b of a processor batch, its padding removed."""
    real = x["attention_mask"][b].bool()
    out = {"input_ids": x["input_ids"][b : b + 1, real], "attention_mask": x["attention_mask"][b : b + 1, real]}
    if "mm_token_type_ids" in x:
        out["mm_token_type_ids"] = x["mm_token_type_ids"][b : b + 1, real]
    if "image_grid_thw" in x:  # Qwen: patches of all images in one tensor, one image per sample here
        sizes = x["image_grid_thw"].prod(dim=1).tolist()
        start = sum(sizes[:b])
        out["pixel_values"] = x["pixel_values"][start : start + sizes[b]]
        out["image_grid_thw"] = x["image_grid_thw"][b : b + 1]
    else:
        out["pixel_values"] = x["pixel_values"][b : b + 1]
        if "image_sizes" in x:
            out["image_sizes"] = x["image_sizes"][b : b + 1]
    return out


@pytest.mark.parametrize("family", ["llava", "llava-next", "qwen2-vl"])
def test_the_ranking_is_the_models_own_attention_row(family):
    """attention_row (the layer's norm, q/k, rotary, one row, fp32 softmax, head mean, GQA) against the
    eager attention probabilities transformers returns, at every layer."""
    model = accel.zoo.load(family, size="tiny")
    model.set_attn_implementation("eager")
    x = accel.zoo.vlm_inputs(model, batch=2, vary=True)
    inputs: dict[int, tuple] = {}
    hooks = [layer.register_forward_pre_hook(
        lambda m, a, k, i=i: inputs.__setitem__(i, (a[0] if a else k["hidden_states"], k["position_embeddings"])),
        with_kwargs=True) for i, layer in enumerate(model.model.language_model.layers)]
    try:
        with torch.no_grad():
            out = model(**x, output_attentions=True)
    finally:
        for h in hooks:
            h.remove()
    mask = x["attention_mask"].bool()
    last = torch.full((2,), mask.shape[1] - 1)
    for i, layer in enumerate(model.model.language_model.layers):
        mine = attention_row(layer, *inputs[i], last, mask)
        torch.testing.assert_close(mine, out.attentions[i][:, :, -1].float().mean(1), atol=1e-6, rtol=1e-5)


def test_sdpa_and_eager_keep_the_same_tokens():
    kept = {}
    for impl in ("sdpa", "eager"):
        model = accel.zoo.load("llava-next", size="tiny")
        model.set_attn_implementation(impl)
        x = accel.zoo.vlm_inputs(model, batch=2, vary=True)
        with accel.patch(model, method="pyramid-drop") as handle, torch.no_grad():
            model(**x)
            kept[impl] = [s.index[s.mask.bool()] for s in handle.methods[0].pruner.prefill.stages]
    assert all(torch.equal(a, b) for a, b in zip(kept["sdpa"], kept["eager"], strict=True))


def test_the_kept_counts_follow_the_schedule(models):
    model = models("llava")  # 36 visual tokens, 4 layers: drops before layers 1, 2, 3
    x = accel.zoo.vlm_inputs(model)
    with accel.patch(model, method="pyramid-drop") as handle, torch.no_grad():
        model(**x)
        stats = handle.stats()["pyramid-drop"]
    assert stats["visual_tokens"] == 36 and stats["kept_visual"] == [18, 9, 4]
    text = int(x["attention_mask"].sum()) - 36
    assert stats["tokens_per_layer"] == [text + 36, text + 18, text + 9, text + 4]
    with accel.patch(model, method="fastv", layer=1, keep_ratio=0.25) as handle, torch.no_grad():
        model(**x)
        assert handle.stats()["fastv"]["kept_visual"] == [9]
    with accel.patch(model, method="pyramid-drop", keep_ratio=0.01) as handle, torch.no_grad():
        model(**x)  # the official floor would keep none: an image is never dropped whole
        assert handle.stats()["pyramid-drop"]["kept_visual"] == [1, 1, 1]


@pytest.mark.parametrize("options,match", [
    ({"stages": (0.5, 0.25)}, "stages"),
    ({"stages": ()}, "stages"),
    ({"stages": (0.0, 0.5)}, "stages"),
    ({"stages": (0.3, 0.35)}, "stages"),  # both round to layer 1 of 4
    ({"keep_ratio": 0.0}, "keep_ratio"),
    ({"keep_ratio": 1.5}, "keep_ratio"),
    ({"positions": "gapped"}, "positions"),
    ({"query": "first"}, "query"),
    ({"stages": [0.25, "x"]}, "stages"),
    ({"stages": np.array([0.25, 0.5])}, "stages"),
])
def test_bad_options_are_refused_before_anything_changes(models, options, match):
    model = models("llava")
    with pytest.raises(InvalidOptionError, match=match):
        accel.patch(model, method="pyramid-drop", **options)
    assert accel.patch_of(model) is None and "generate" not in vars(model)
    assert not model.model.language_model.layers[1]._forward_pre_hooks


def test_stages_of_numpy_scalars_are_plain_fractions():
    from token_reduction.methods import PyramidDropConfig

    assert PyramidDropConfig(stages=(np.float32(0.5), np.float64(0.75))).stages == (0.5, 0.75)
    assert PyramidDropConfig(stages=[0.25, 0.5]).stages == (0.25, 0.5)


def test_fastv_layer_out_of_range_and_non_vlm_targets(models):
    with pytest.raises(InvalidOptionError, match="layer=4"):
        accel.patch(models("llava"), method="fastv", layer=4)
    with pytest.raises(UnsupportedModelError, match="pyramid-drop"):
        accel.patch(accel.zoo.load("pixart-alpha"), method="pyramid-drop")
    for method in ("tdc", "delta-dit", "pisa", "adaspa"):  # diffusion methods refuse a VLM up front
        with pytest.raises(UnsupportedModelError, match=method):
            accel.patch(models("llava"), method=method)


def test_static_cache_labels_and_embeddings_only_are_refused(models):
    from transformers import StaticCache

    model = models("llava")
    x = accel.zoo.vlm_inputs(model)
    with accel.patch(model, method="pyramid-drop"):
        with pytest.raises(UnsupportedInputError, match="StaticCache"):
            with torch.no_grad():
                model(**x, cache=StaticCache(config=model.config.text_config, max_cache_len=128), use_cache=True)
        with pytest.raises(UnsupportedInputError, match="labels"):
            model(**x, labels=x["input_ids"])
        embeds = model.get_input_embeddings()(x["input_ids"])
        with pytest.raises(UnsupportedInputError, match="input_ids"), torch.no_grad():
            model(inputs_embeds=embeds, attention_mask=x["attention_mask"], pixel_values=x["pixel_values"])


def test_prefill_flops_on_llava_1_5_at_the_default_schedule():
    drops = [(8, 0.5), (16, 0.25), (24, 0.125)]
    for text in (40, 60, 100):
        cost = prefill_flops(layers=32, hidden=4096, intermediate=11008, text_tokens=text, visual_tokens=576,
                             drops=drops)
        assert 0.49 <= cost.flops_ratio <= 0.55
        assert cost.visual_per_layer == (576,) * 8 + (288,) * 8 + (144,) * 8 + (72,) * 8
        assert cost.average_visual_tokens == 270
        assert cost.kv_bytes_saved == 2 * 4096 * 2 * 8 * (288 + 432 + 504)
    with pytest.raises(ValueError, match="drop"):
        prefill_flops(layers=32, hidden=8, intermediate=8, text_tokens=1, visual_tokens=1, drops=[(32, 0.5)])


def test_a_holder_of_the_model_is_patched_like_the_model(models):
    """A pipeline-like object with the VLM at `.model` (a transformers pipeline): the model is patched."""
    model = models("llava")
    x = accel.zoo.vlm_inputs(model)
    ref = _logits(model, x)

    class Holder:
        def __init__(self, model):
            self.model = model

    holder = Holder(model)
    with accel.patch(holder, method="pyramid-drop") as handle:
        assert not torch.equal(_logits(model, x), ref)
        assert handle.stats()["pyramid-drop"]["kept_visual"] == [18, 9, 4]
        assert accel.patch_of(holder) is handle
    assert torch.equal(_logits(model, x), ref)


@pytest.mark.slow
def test_torch_compile_gives_the_eager_result(models):
    """The hooks are compiler-disabled: a compiled model breaks its graph around them and prunes the same."""
    model = accel.zoo.load("llava", size="tiny")
    x = accel.zoo.vlm_inputs(model, batch=2, vary=True)
    with accel.patch(model, method="pyramid-drop") as handle:
        eager = _logits(model, x)
        kept = handle.stats()["pyramid-drop"]["kept_visual"]
        compiled = _logits(torch.compile(model), x)
        assert handle.stats()["pyramid-drop"]["kept_visual"] == kept
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llava-next", "qwen2-vl"])
def test_sampling_on_the_pruned_cache_equals_sampling_without_cache(models, family):
    model = models(family)
    x = accel.zoo.vlm_inputs(model, batch=2, vary=True)
    with accel.patch(model, method="pyramid-drop"):
        runs = []
        for use_cache in (True, False):
            torch.manual_seed(0)
            with torch.no_grad():
                runs.append(model.generate(**x, max_new_tokens=4, do_sample=True, top_k=5, use_cache=use_cache))
    assert torch.equal(*runs)
