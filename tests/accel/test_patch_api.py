"""The public API contract: patch / unpatch / stats / methods, errors, exactness and isolation."""

from __future__ import annotations

import pytest
import torch
from support import snapshot

import accel
from accel.zoo import generate


def test_methods_registry_lists_none():
    names = {m.name: m for m in accel.methods()}
    assert "none" in names
    assert names["none"].summary
    assert names["none"].options == []


def test_patch_returns_handle_with_config_and_stats(tiny):
    pipe = tiny("pixart-alpha")
    handle = accel.patch(pipe, method="none")
    assert handle.active and accel.patch_of(pipe) is handle
    assert handle.config.method == "none"
    generate(pipe, steps=3)
    stats = handle.stats()
    assert stats["methods"] == ["none"]
    assert stats["steps"]["runs"] == 1
    assert stats["steps"]["num_steps"] == 3
    assert stats["steps"]["denoiser_calls"] == 3  # batched CFG: one call per step
    handle.unpatch()
    assert not handle.active and accel.patch_of(pipe) is None


@pytest.mark.parametrize("name", ["pixart-alpha", "wan", "flux"])
def test_unpatch_is_bit_identical_to_never_patched(tiny, test_methods, name):
    never = tiny(name)
    patched = tiny(name)
    reference = generate(never, steps=2, seed=3)
    assert torch.equal(generate(patched, steps=2, seed=3), reference)
    before = snapshot(patched)

    handle = accel.patch(patched, method="test-scale", factor=0.5)
    changed = generate(patched, steps=2, seed=3)
    assert not torch.equal(changed, reference)  # the patch really acts
    handle.unpatch()

    assert snapshot(patched) == before
    assert torch.equal(generate(patched, steps=2, seed=3), reference)


def test_unpatch_function_and_context_manager(tiny):
    pipe = tiny("dit")
    before = snapshot(pipe)
    accel.patch(pipe, method="none")
    accel.unpatch(pipe)
    assert snapshot(pipe) == before
    with accel.patch(pipe, method="none") as handle:
        assert handle.active
    assert snapshot(pipe) == before
    with pytest.raises(accel.AccelError, match="not patched"):
        accel.unpatch(pipe)


def test_unpatch_through_a_denoiser_removes_the_pipeline_patch(tiny):
    pipe = tiny("dit")
    before = snapshot(pipe)
    accel.patch(pipe, method="none")
    accel.unpatch(pipe.transformer)
    assert snapshot(pipe) == before


def test_patching_one_instance_leaves_other_instances_and_the_class_alone(tiny, test_methods):
    a, b = tiny("pixart-alpha"), tiny("pixart-alpha")
    reference = generate(b, steps=2)
    cls_forward = type(a.transformer).forward
    cls_dict = dict(vars(type(a.transformer)))
    pipe_cls_dict = dict(vars(type(a)))
    b_before = snapshot(b)
    with accel.patch(a, method="test-scale"):
        assert type(a.transformer).forward is cls_forward
        assert dict(vars(type(a.transformer))) == cls_dict
        assert dict(vars(type(a))) == pipe_cls_dict
        assert type(a) is type(b)
        assert snapshot(b) == b_before
        assert torch.equal(generate(b, steps=2), reference)
        assert not torch.equal(generate(a, steps=2), reference)


def test_patch_a_bare_denoiser(tiny):
    pipe = tiny("wan")
    handle = accel.patch(pipe.transformer, method="none")
    assert handle.target.kind == "denoiser"
    generate(pipe, steps=2)
    assert handle.stats()["steps"]["denoiser_calls"] == 4  # wan: cond + uncond per step
    handle.unpatch()


def test_patch_a_transformers_model_with_the_generic_adapter():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2)
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    reference = model(ids).logits
    before = snapshot(model)
    handle = accel.patch(model, method="none")
    assert handle.target.kind == "transformers"
    assert handle.target.adapter.generic
    assert [b.name for b in handle.target.adapter.blocks(model)] == ["model.layers.0", "model.layers.1"]
    assert torch.equal(model(ids).logits, reference)
    handle.unpatch()
    assert snapshot(model) == before


# ---- errors: raised before anything changes ----------------------------------------------------


def _assert_untouched(pipe, before):
    assert snapshot(pipe) == before
    assert accel.patch_of(pipe) is None


def test_unknown_method_names_valid_ones_and_closest(tiny):
    pipe = tiny("dit")
    before = snapshot(pipe)
    with pytest.raises(accel.UnknownMethodError, match=r"'nonee'.*Did you mean 'none'.*Valid methods: .*none"):
        accel.patch(pipe, method="nonee")
    with pytest.raises(accel.UnknownMethodError):
        accel.patch(pipe, method=42)
    _assert_untouched(pipe, before)


@pytest.mark.parametrize(
    "options, pattern",
    [
        ({"factr": 0.3}, r"unknown option 'factr'.*Did you mean 'factor'.*Allowed options: factor, mode"),
        ({"factor": 0.0}, r"factor=0.0 is out of range; expected a finite value in \(0.0, 2.0\]"),
        ({"factor": 2.5}, r"factor=2.5 is out of range"),
        ({"factor": float("nan")}, r"factor=nan is not finite"),
        ({"factor": "big"}, r"factor='big' has type str; expected float"),
        ({"mode": "side"}, r"mode='side' is not allowed; expected one of 'post', 'pre'"),
        ({"fail_after_hook": 1}, r"fail_after_hook=1 has type int; expected bool"),
    ],
)
def test_invalid_option_names_option_value_and_allowed(tiny, test_methods, options, pattern):
    pipe = tiny("dit")
    before = snapshot(pipe)
    with pytest.raises(accel.InvalidOptionError, match=pattern):
        accel.patch(pipe, method="test-scale", **options)
    _assert_untouched(pipe, before)


def test_unsupported_family_says_which_are_supported(tiny, test_methods):
    pipe = tiny("pixart-alpha")
    before = snapshot(pipe)
    with pytest.raises(accel.UnsupportedModelError, match=r"'test-wan-only' does not support .*it supports: wan"):
        accel.patch(pipe, method="test-wan-only")
    _assert_untouched(pipe, before)


def test_generic_model_refused_by_methods_that_need_a_layout(test_methods):
    from transformers import LlamaConfig, LlamaModel

    model = LlamaModel(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=2))
    with pytest.raises(accel.UnsupportedModelError):
        accel.patch(model, method="test-wan-only")


def test_not_a_model_is_refused():
    with pytest.raises(accel.UnsupportedModelError, match="diffusers pipeline, a diffusers model"):
        accel.patch(torch.nn.Linear(2, 2), method="none")


def test_incompatible_combination(tiny, test_methods):
    pipe = tiny("dit")
    before = snapshot(pipe)
    with pytest.raises(accel.IncompatibleMethodsError, match="both change the model's blocks"):
        accel.patch(pipe, method=["test-scale", "test-claims-blocks"])
    with pytest.raises(accel.IncompatibleMethodsError, match="appears twice"):
        accel.patch(pipe, method=["none", "none"])
    with pytest.raises(accel.InvalidOptionError, match="composition"):
        accel.patch(pipe, method=["none", "test-scale"], factor=0.3)
    _assert_untouched(pipe, before)


def test_composition_applies_every_method(tiny, test_methods):
    from support import ScaleConfig

    pipe = tiny("dit")
    handle = accel.patch(pipe, method=["none", ScaleConfig(factor=0.25)])
    assert [m.name for m in handle.methods] == ["none", "test-scale"]
    assert handle.config[1].factor == 0.25
    generate(pipe, steps=2)
    assert _without_memory(handle.stats()["test-scale"]) == {"scaled_calls": 2}
    handle.unpatch()


def test_patching_twice_is_refused(tiny):
    pipe = tiny("dit")
    handle = accel.patch(pipe, method="none")
    after_first = snapshot(pipe)
    with pytest.raises(accel.AlreadyPatchedError, match="already patched"):
        accel.patch(pipe, method="none")
    with pytest.raises(accel.AlreadyPatchedError):
        accel.patch(pipe.transformer, method="none")
    assert snapshot(pipe) == after_first
    handle.unpatch()
    accel.patch(pipe, method="none").unpatch()  # allowed again once removed


def test_failed_patch_leaves_nothing_half_applied(tiny, test_methods):
    pipe = tiny("pixart-alpha")
    reference = generate(pipe, steps=2)
    before = snapshot(pipe)
    with pytest.raises(RuntimeError, match="deliberate failure"):
        accel.patch(pipe, method="test-scale", fail_after_hook=True)
    _assert_untouched(pipe, before)
    assert torch.equal(generate(pipe, steps=2), reference)


def test_config_object_with_extra_options(tiny, test_methods):
    from support import ScaleConfig

    pipe = tiny("dit")
    handle = accel.patch(pipe, method=ScaleConfig(), factor=1.5)
    assert handle.config.factor == 1.5
    handle.unpatch()
    with pytest.raises(accel.InvalidOptionError, match="unknown option 'fctor'"):
        accel.patch(pipe, method=ScaleConfig(), fctor=1.5)


def test_patch_composes_with_a_diffusers_cache_and_leaves_it_in_place(tiny):
    from diffusers import FirstBlockCacheConfig

    pipe = tiny("wan")
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.2))
    reference = generate(pipe, steps=4)
    before = snapshot(pipe)
    handle = accel.patch(pipe, method="none")
    assert torch.equal(generate(pipe, steps=4), reference)  # the diffusers cache still acts identically
    assert handle.stats()["steps"]["calls_by_branch"] == {"cond": 4, "uncond": 4}
    handle.unpatch()
    assert snapshot(pipe) == before
    assert pipe.transformer.is_cache_enabled
    assert torch.equal(generate(pipe, steps=4), reference)
    pipe.transformer.disable_cache()


def _without_memory(stats: dict) -> dict:
    """The counters, without `held_peak_MB` (its bounds are tests/test_memory_bounds.py's)."""
    return {k: v for k, v in stats.items() if k != "held_peak_MB"}
