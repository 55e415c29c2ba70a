"""The offline model zoo: every entry builds, runs, is deterministic, and runs CFG the way the real model does."""

from __future__ import annotations

import socket

import pytest
import torch

from accel import zoo
from accel.zoo.families import ENTRIES
from accel.zoo.local import load as load_local

VIDEO = {"wan", "hunyuan-video", "cogvideox"}
# Transformer calls per denoising step with the default guidance: Wan runs cond and uncond separately.
CALLS_PER_STEP = {
    "flux": 1,
    "wan": 2,
    "hunyuan-video": 1,
    "pixart-alpha": 1,
    "pixart-sigma": 1,
    "dit": 1,
    "sd3": 1,
    "cogvideox": 1,
}
BATCHED_CFG = {"pixart-alpha", "pixart-sigma", "dit", "sd3", "cogvideox"}


RANDOM_WEIGHT = list(ENTRIES)  # the entries built from configs (trained ones: test_reference_models.py)


def _spatial_scale(pipe) -> int:
    vae = pipe.vae.config
    if "scale_factor_spatial" in vae:  # Wan
        return vae.scale_factor_spatial
    return 2 ** (len(vae.block_out_channels) - 1)  # what the pipelines themselves compute


def _latent_shape(name: str, pipe, batch: int) -> tuple[int, ...]:
    """The latents a run returns, from the default resolution and the VAE compression."""
    res = zoo.default_resolution(name, zoo.built_from(pipe)[1])
    s = _spatial_scale(pipe)
    h, w = res["height"] // s, res["width"] // s
    c = pipe.vae.config.get("latent_channels") or pipe.vae.config.z_dim
    if name == "flux":
        return (batch, (h // 2) * (w // 2), c * 4)  # packed 2x2
    if name in VIDEO:
        f = (res["num_frames"] - 1) // 4 + 1
        return (batch, f, c, h, w) if name == "cogvideox" else (batch, c, f, h, w)
    return (batch, c, h, w)


def _tokens_per_sample(name: str, pipe) -> int:
    """Image/video tokens the transformer sees per sample at the default resolution."""
    shape = _latent_shape(name, pipe, 1)
    cfg = pipe.transformer.config
    if name == "flux":
        return shape[1]
    if name == "wan":
        pt, ph, pw = cfg.patch_size
        return shape[2] // pt * (shape[3] // ph) * (shape[4] // pw)
    if name == "hunyuan-video":
        return shape[2] // cfg.patch_size_t * (shape[3] // cfg.patch_size) * (shape[4] // cfg.patch_size)
    if name == "cogvideox":
        return shape[1] * (shape[3] // cfg.patch_size) * (shape[4] // cfg.patch_size)
    return (shape[2] // cfg.patch_size) * (shape[3] // cfg.patch_size)


class _CallCounter:
    """Counts transformer forward calls and the batch size of each (a pre-hook, removed afterwards)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.batches: list[int] = []
        self.module = module

    def __enter__(self) -> _CallCounter:
        def hook(_m, args, kwargs):
            x = kwargs.get("hidden_states", args[0] if args else None)
            self.batches.append(x.shape[0])

        self.handle = self.module.register_forward_pre_hook(hook, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


@pytest.fixture(scope="module")
def tiny_pipes():
    """One tiny pipeline per entry, shared by the tests that only run it."""
    return {name: zoo.load(name) for name in RANDOM_WEIGHT}


def test_names_and_resolutions():
    assert zoo.names() == [
        "flux",
        "wan",
        "hunyuan-video",
        "pixart-alpha",
        "pixart-sigma",
        "dit",
        "sd3",
        "cogvideox",
        "llava",  # transformers VLMs (vlm.py)
        "llava-next",
        "llava-onevision",
        "qwen2-vl",
        "qwen2.5-vl",
        "llada2",  # block-diffusion language pipelines (dllm.py)
        "diffusion-gemma",
        "anyflow-far",  # chunk-wise video (far.py)
        "dico",  # accel.models' native backbones (backbones.py)
        "lego",
        "digits-image",  # trained entries come last
        "digits-video",
        "digits-vqa",
        "digits-copy",
        "digits-copy-gemma",
        "digits-dico",  # the backbone comparison (digits_backbones.py)
        "digits-lego",
        "digits-dit",
        "digits-dit-p2",
    ]
    assert [n for n in zoo.names() if zoo.is_text(n)] == ["llada2", "diffusion-gemma", "digits-copy", "digits-copy-gemma"]
    for name in RANDOM_WEIGHT:
        for size in ("tiny", "bench"):
            res = zoo.default_resolution(name, size)
            assert ("num_frames" in res) == (name in VIDEO)
            assert res["height"] % 16 == 0 and res["width"] % 16 == 0


def test_unknown_name_and_size():
    with pytest.raises(ValueError, match="Did you mean 'flux'") as err:
        zoo.load("flx")
    for name in RANDOM_WEIGHT:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="tiny, bench"):
        zoo.load("wan", size="huge")
    with pytest.raises(ValueError, match="Valid names"):
        zoo.default_resolution("stable-cascade")


@pytest.mark.parametrize("name", RANDOM_WEIGHT)
def test_tiny_runs_with_batches(tiny_pipes, name):
    pipe = tiny_pipes[name]
    assert zoo.built_from(pipe) == (name, "tiny")
    for batch in (1, 2):
        latents = zoo.generate(pipe, steps=2, batch_size=batch)
        assert latents.shape == _latent_shape(name, pipe, batch)
        assert torch.isfinite(latents).all()


@pytest.mark.parametrize("name", RANDOM_WEIGHT)
def test_tiny_decodes(tiny_pipes, name):
    pipe = tiny_pipes[name]
    out = zoo.generate(pipe, steps=2, output_type="pt")
    res = zoo.default_resolution(name)
    image = (3, res["height"], res["width"])
    assert out.shape == ((1, res["num_frames"], *image) if name in VIDEO else (1, *image))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", RANDOM_WEIGHT)
def test_deterministic(tiny_pipes, name):
    reference = zoo.generate(tiny_pipes[name], seed=3)
    rebuilt = zoo.load(name)
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            rebuilt.transformer.state_dict().values(),
            tiny_pipes[name].transformer.state_dict().values(),
            strict=True,
        )
    )
    assert torch.equal(zoo.generate(rebuilt, seed=3), reference)
    assert not torch.equal(zoo.generate(rebuilt, seed=4), reference)  # other inputs
    assert not torch.equal(zoo.generate(zoo.load(name, seed=1), seed=3), reference)  # other weights


@pytest.mark.parametrize("name", RANDOM_WEIGHT)
def test_cfg_style(tiny_pipes, name):
    pipe = tiny_pipes[name]
    with _CallCounter(pipe.transformer) as calls:
        zoo.generate(pipe, steps=2, batch_size=2)
    assert len(calls.batches) == 2 * CALLS_PER_STEP[name]
    assert set(calls.batches) == {4 if name in BATCHED_CFG else 2}  # cond+uncond in one batch

    with _CallCounter(pipe.transformer) as calls:
        zoo.generate(pipe, steps=2, batch_size=2, guidance_scale=1.0)
    assert calls.batches == [2, 2]  # CFG off (a no-op scale for the guidance-distilled families)


@pytest.mark.parametrize("name", ["flux", "hunyuan-video"])
def test_true_cfg(tiny_pipes, name):
    pipe = tiny_pipes[name]
    with _CallCounter(pipe.transformer) as calls:
        out = zoo.generate(pipe, steps=2, true_cfg=True)
    assert calls.batches == [1, 1, 1, 1]  # separate cond and uncond calls each step
    assert torch.isfinite(out).all()
    assert not torch.equal(out, zoo.generate(pipe, steps=2))
    with pytest.raises(ValueError, match="true_cfg"):
        zoo.inputs(tiny_pipes["sd3"], true_cfg=True)


def test_inputs_shapes_and_overrides(tiny_pipes):
    kw = zoo.inputs(tiny_pipes["flux"], steps=3, batch_size=2, height=64, width=48)
    assert kw["prompt_embeds"].shape[:2] == (2, 8) and kw["pooled_prompt_embeds"].shape[0] == 2
    assert (kw["height"], kw["width"], kw["num_inference_steps"]) == (64, 48, 3)
    assert kw["output_type"] == "latent" and kw["generator"].initial_seed() == 0
    assert zoo.generate(tiny_pipes["flux"], height=64, width=48).shape == (1, 16 * 12, 16)

    kw = zoo.inputs(tiny_pipes["wan"], num_frames=5, guidance_scale=2.0)
    assert kw["num_frames"] == 5 and kw["guidance_scale"] == 2.0 and "negative_prompt_embeds" in kw
    assert "negative_prompt_embeds" not in zoo.inputs(tiny_pipes["wan"], guidance_scale=1.0)

    kw = zoo.inputs(tiny_pipes["pixart-alpha"], batch_size=3)
    assert kw["prompt_attention_mask"].shape == kw["negative_prompt_attention_mask"].shape == (3, 8)
    assert kw["use_resolution_binning"] is False

    dit = zoo.inputs(tiny_pipes["dit"], batch_size=4)
    assert len(dit["class_labels"]) == 4 and all(0 <= c < 10 for c in dit["class_labels"])
    with pytest.raises(ValueError, match="DiT makes 32x32"):
        zoo.inputs(tiny_pipes["dit"], height=64)


def test_inputs_for_other_pipelines(tiny_pipes):
    pipe = tiny_pipes["wan"]
    other = type(pipe)(**pipe.components)  # the same components, but not built by the zoo
    assert zoo.built_from(other) is None
    with pytest.raises(ValueError, match="height="):
        zoo.inputs(other)
    with pytest.raises(ValueError, match="num_frames="):
        zoo.inputs(other, height=64, width=64)
    out = zoo.generate(other, height=64, width=64, num_frames=5)
    assert out.shape == (1, 4, 2, 8, 8)
    with pytest.raises(ValueError, match="does not know"):
        zoo.inputs(object())


def test_other_output_types(tiny_pipes):
    out = zoo.generate(tiny_pipes["sd3"], output_type="np")
    assert out.shape == (1, 32, 32, 3) and out.dtype == torch.float32
    frames = zoo.generate(tiny_pipes["cogvideox"], output_type="pil")
    assert frames.shape == (1, 9, 64, 64, 3)


def test_load_keeps_global_rng_and_casts():
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    pipe = zoo.load("wan", dtype=torch.bfloat16)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert pipe.transformer.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert pipe.transformer.scale_shift_table.dtype == torch.float32  # kept in fp32, as from_pretrained does
    assert torch.isfinite(zoo.generate(pipe).float()).all()


@pytest.mark.parametrize("name", RANDOM_WEIGHT)
def test_bench_size_has_realistic_token_counts(name):
    pipe = zoo.load(name, size="bench")
    assert zoo.built_from(pipe) == (name, "bench")
    assert pipe.transformer.config.attention_head_dim == 64
    assert _tokens_per_sample(name, pipe) >= 1024
    assert zoo.inputs(pipe)["num_inference_steps"] == 2


# accel.load: local files only ---------------------------------------------------------------------------


@pytest.fixture
def offline(monkeypatch):
    """No network: offline mode for huggingface_hub, and any socket connection fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError("accel.load tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", ["flux", "pixart-alpha", "cogvideox"])
def test_local_load_of_a_saved_pipeline(tmp_path, offline, name):
    pipe = zoo.load(name)
    pipe.save_pretrained(tmp_path)
    loaded = load_local(str(tmp_path))
    assert type(loaded) is type(pipe) and loaded.text_encoder is None
    assert _same_weights(loaded.transformer, pipe.transformer) and _same_weights(loaded.vae, pipe.vae)
    res = zoo.default_resolution(name)
    assert torch.isfinite(zoo.generate(loaded, **res)).all()

    half = load_local(str(tmp_path), dtype=torch.bfloat16)
    assert half.transformer.dtype == torch.bfloat16
    model = load_local(str(tmp_path / "transformer"))  # one diffusers model directory
    assert type(model) is type(pipe.transformer) and _same_weights(model, pipe.transformer)


def test_local_load_of_a_transformers_model(tmp_path, offline):
    import transformers

    config = transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=32, n_positions=16)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path)
    model = load_local(str(tmp_path))
    assert type(model).__name__ == "GPT2LMHeadModel"


def test_local_load_of_missing_model(tmp_path, offline):
    with pytest.raises(FileNotFoundError) as err:
        load_local("nobody-here/no-such-model")
    message = str(err.value)
    assert "hf download nobody-here/no-such-model" in message and "HF_HOME" in message
    assert "never downloads" in message

    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_local(str(tmp_path / "empty"))
