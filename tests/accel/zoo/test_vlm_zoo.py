"""The zoo's offline VLMs (accel/zoo/vlm.py): the real transformers classes load offline with seeded weights,
run forward and generate on the processor's own inputs (padding, varying image-token counts, several images
per prompt), and the bench size has the real image-token counts."""

from __future__ import annotations

import socket

import pytest
import torch
import transformers

from accel import zoo
from accel.zoo import vlm

NAMES = list(vlm.NAMES)
PROCESSORS = {
    "llava": transformers.LlavaProcessor,
    "llava-next": transformers.LlavaNextProcessor,
    "llava-onevision": transformers.LlavaOnevisionProcessor,
    "qwen2-vl": transformers.Qwen2VLProcessor,
    "qwen2.5-vl": transformers.Qwen2_5_VLProcessor,
}
ANYRES_OR_QWEN = {"llava-next", "llava-onevision", "qwen2-vl", "qwen2.5-vl"}  # image-token count follows image size
QWEN = {"qwen2-vl", "qwen2.5-vl"}
# bench: image tokens for one image of the default size. LLaVA-NeXT at 672x672 (LLaVA-1.6's 2x2 grid): the
# 24x24 base view, 4 crops of 24x24, and one image_newline per row of the 48x48 crop grid.
BENCH_IMAGE_TOKENS = {
    "llava": 576,
    "llava-next": 576 + 4 * 576 + 48,  # 2,928
    "llava-onevision": 729 + 27 * 54 + 27,  # 384x768: 27x27 base + a 1x2 crop grid + 27 newlines = 2,214
    "qwen2-vl": 36 * 36,  # 1008x1008 / 28x28 per token
    "qwen2.5-vl": 48 * 48,  # 1344x1344
}


@pytest.fixture(scope="module")
def tiny() -> dict[str, torch.nn.Module]:
    return {name: zoo.load(name) for name in NAMES}


def _visual(model: torch.nn.Module, x: transformers.BatchFeature) -> torch.Tensor:
    return torch.isin(x["input_ids"], torch.tensor(zoo.image_token_ids(model)))


def _visual_total(model: torch.nn.Module, x: transformers.BatchFeature) -> int:
    return int(_visual(model, x).sum())


def _features(model: torch.nn.Module, x: transformers.BatchFeature) -> list[int]:
    """Visual features per image, from the model's own vision path."""
    keys = {k: v for k, v in x.items() if k in ("pixel_values", "image_sizes", "image_grid_thw", "batch_num_images")}
    with torch.no_grad():
        return [len(f) for f in model.model.get_image_features(**keys).pooler_output]


def test_names_and_classes(tiny):
    names = zoo.names()
    assert names[-len(zoo.TRAINED):] == list(zoo.TRAINED) and names[-len(zoo.TRAINED)] == "digits-image"  # trained entries stay last
    assert [n for n in names if n in NAMES] == NAMES
    for name, model in tiny.items():
        assert type(model).__name__ == vlm.MODEL_CLASSES[name]
        assert type(model.processor) is PROCESSORS[name]
        assert not model.training
        assert zoo.built_from(model) == (name, "tiny")
        text = model.config.text_config
        assert (text.num_hidden_layers, text.hidden_size, text.num_attention_heads) == (4, 64, 4)
        if name != "llava":  # GQA everywhere but LLaVA-1.5's Llama
            assert text.num_key_value_heads == 2
    assert tiny["llava"].config.text_config.model_type == "llama"
    assert tiny["llava-onevision"].config.text_config.model_type == "qwen2"
    assert tiny["llava-onevision"].config.vision_config.model_type == "siglip_vision_model"
    with pytest.raises(ValueError, match="Valid sizes"):
        zoo.load("llava", size="huge")
    with pytest.raises(ValueError, match="It is a VLM"):
        zoo.default_resolution("qwen2-vl")


@pytest.mark.parametrize("name", NAMES)
def test_seeded_weights_and_global_rng(name):
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a, b, c = zoo.load(name, seed=0), zoo.load(name, seed=0), zoo.load(name, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


@pytest.mark.parametrize("name", NAMES)
def test_forward_and_generate(tiny, name):
    model = tiny[name]
    for batch in (1, 2):
        x = zoo.vlm_inputs(model, batch=batch, vary=batch > 1, padding_side="left")
        visual = _visual(model, x)
        # what the processor expanded equals what the vision path makes (the forward checks it too)
        assert visual.sum().item() == sum(_features(model, x))
        if batch == 2:
            mask = x["attention_mask"]
            assert (mask == 0).any() and (mask[:, -1] == 1).all()  # left padding
            counts = visual.sum(1).tolist()
            assert (counts[0] != counts[1]) == (name in ANYRES_OR_QWEN)
        if name in QWEN:
            assert torch.equal(x["mm_token_type_ids"] == 1, visual)
        assert 10 <= visual.sum(1).min() and visual.sum(1).max() <= 60  # a few dozen image tokens
        with torch.no_grad():
            logits = model(**x).logits
            ids = model.generate(**x, max_new_tokens=3, do_sample=False)
        assert logits.shape == (*x["input_ids"].shape, model.config.text_config.vocab_size)
        assert torch.isfinite(logits).all()
        assert ids.shape[0] == batch and x["input_ids"].shape[1] < ids.shape[1] <= x["input_ids"].shape[1] + 3
        assert torch.equal(ids[:, : x["input_ids"].shape[1]], x["input_ids"])


@pytest.mark.parametrize("name", NAMES)
def test_several_images_right_padding_and_bf16(tiny, name):
    model = tiny[name]
    x = zoo.vlm_inputs(model, batch=2, images_per_prompt=2, vary=True, seed=3)
    assert _visual_total(model, x) == sum(_features(model, x))
    tokens = x["input_ids"][0].tolist()
    if name in QWEN:
        assert tokens.count(model.config.vision_start_token_id) == 2
    with torch.no_grad():
        model(**x)
        model.generate(**x, max_new_tokens=2, do_sample=False)
    right = zoo.vlm_inputs(model, batch=2, vary=True, padding_side="right")
    assert (right["attention_mask"][:, 0] == 1).all() and (right["attention_mask"] == 0).any()
    with torch.no_grad():
        model(**right)
    half = zoo.load(name, dtype=torch.bfloat16)
    x = zoo.vlm_inputs(half)
    assert x["pixel_values"].dtype == torch.bfloat16
    with torch.no_grad():
        assert half(**x).logits.dtype == torch.bfloat16


def test_inputs_are_deterministic(tiny):
    model = tiny["qwen2-vl"]
    a, b = zoo.vlm_inputs(model, batch=2, vary=True), zoo.vlm_inputs(model, batch=2, vary=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    c = zoo.vlm_inputs(model, batch=2, vary=True, seed=1)
    assert torch.equal(a["input_ids"], c["input_ids"]) and not torch.equal(a["pixel_values"], c["pixel_values"])
    with pytest.raises(ValueError, match="padding_side"):
        zoo.vlm_inputs(model, padding_side="middle")
    other = transformers.Qwen2VLForConditionalGeneration(model.config)  # not built by the zoo
    with pytest.raises(ValueError, match="built by accel.zoo.load"):
        zoo.vlm_inputs(other)


def test_image_token_ids_and_prompts(tiny):
    for name, model in tiny.items():
        tok = model.processor.tokenizer
        ids = zoo.image_token_ids(model)
        assert ids[0] == model.config.image_token_id == tok.image_token_id
        if name == "llava" or name == "llava-next":
            assert ids == (tok.convert_tokens_to_ids("<image>"),)
        else:
            assert ids[1] == model.config.video_token_id == tok.video_token_id
    assert vlm.prompt(tiny["llava"], "what is in the image?") == "USER: <image>\nwhat is in the image? ASSISTANT:"
    assert vlm.prompt(tiny["qwen2-vl"], "is there a circle?", images=2) == (
        "<|im_start|>user\n" + "<|vision_start|><|image_pad|><|vision_end|>" * 2
        + "is there a circle?<|im_end|>\n<|im_start|>assistant\n")
    assert vlm.prompt(tiny["llava-onevision"], "describe this picture.") == (
        "<|im_start|>user <image>\ndescribe this picture.<|im_end|><|im_start|>assistant\n")


@pytest.mark.parametrize("name", NAMES)
def test_bench_size_token_counts(name):
    """Configs and image-token counts only: one bench prefill takes a second or two."""
    model = zoo.load(name, size="bench")
    text = model.config.text_config
    assert text.num_hidden_layers == 8 and 256 <= text.hidden_size <= 512
    assert text.hidden_size // text.num_attention_heads == 64
    assert model.config.vision_config.num_hidden_layers == 1
    x = zoo.vlm_inputs(model)
    assert _visual_total(model, x) == BENCH_IMAGE_TOKENS[name]
    assert x["input_ids"].shape[1] - BENCH_IMAGE_TOKENS[name] < 20
    if name != "llava":
        vary = zoo.vlm_inputs(model, batch=2, vary=True)
        counts = _visual(model, vary).sum(1).tolist()
        assert counts[0] == BENCH_IMAGE_TOKENS[name] and 1000 <= counts[1] != counts[0]


def test_nothing_is_downloaded(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError("the zoo tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    for name in NAMES:
        model = zoo.load(name)
        with torch.no_grad():
            model(**zoo.vlm_inputs(model))
