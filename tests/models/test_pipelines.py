"""DiCoPipeline / LEGOPipeline: DiT's results where DiT's pipeline is right, the initial noise scaled for any
scheduler, learned variance routed to the schedulers that use it, optional VAE, output types, save/load;
and the block caches (delta-dit, tdc) on the new models through their adapters."""

from __future__ import annotations

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DiTPipeline,
    EDMEulerScheduler,
    FlowMatchEulerDiscreteScheduler,
)

import accel
from accel.models import DiCoPipeline, LEGOPipeline


@pytest.fixture
def dico():
    return accel.zoo.load("dico")


@pytest.fixture
def lego():
    return accel.zoo.load("lego")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_dico_pipeline_equals_dit_pipeline_on_dits_own_ground(dico):
    """DDIM (sigma_max 1, eta 0) with guidance: DiTPipeline (null id 1000, two identical latent halves)
    and DiCoPipeline (null id num_classes, one latent batch) make the same images."""
    dit = DiTPipeline(transformer=dico.transformer, vae=dico.vae, scheduler=dico.scheduler)
    dit.set_progress_bar_config(disable=True)
    ref = dit([1, 7], guidance_scale=3.0, generator=_gen(), num_inference_steps=4, output_type="np").images
    out = dico([1, 7], guidance_scale=3.0, generator=_gen(), num_inference_steps=4, output_type="np").images
    assert out.shape == (2, 16, 16, 3)
    torch.testing.assert_close(torch.from_numpy(out), torch.from_numpy(ref), atol=1e-5, rtol=1e-5)


def test_initial_noise_is_scaled_by_the_schedulers_init_noise_sigma(lego):
    scheduler = lego.scheduler
    assert scheduler.init_noise_sigma > 50  # EDM: about 80
    z = torch.randn(1, 4, 8, 8, generator=_gen())
    seen = []
    hook = lego.transformer.register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))
    lego([3], guidance_scale=1.0, latents=z, num_inference_steps=3, output_type="latent")
    hook.remove()
    sigma = scheduler.sigmas[0]
    expected = z * scheduler.init_noise_sigma / (sigma**2 + scheduler.config.sigma_data**2) ** 0.5  # c_in
    torch.testing.assert_close(seen[0], expected)
    assert len(seen) == 3


def _step_channels(pipe, scheduler) -> list[int]:
    pipe.scheduler = scheduler
    step, seen = scheduler.step, []

    def spy(model_output, *args, **kwargs):
        seen.append(model_output.shape[1])
        return step(model_output, *args, **kwargs)

    scheduler.step = spy
    pipe([1], num_inference_steps=2, generator=_gen(), output_type="latent")
    return seen


def test_learned_variance_goes_only_to_schedulers_that_use_it(dico):
    assert _step_channels(dico, DDPMScheduler(variance_type="learned_range")) == [8, 8]
    assert _step_channels(dico, DDIMScheduler(clip_sample=False)) == [4, 4]
    # FlowMatch has no scale_model_input and float timesteps: it runs
    dico.scheduler = FlowMatchEulerDiscreteScheduler()
    assert torch.isfinite(dico([1], num_inference_steps=2, output_type="latent").images).all()


def test_output_types_sizes_and_refusals(dico, lego):
    assert len(dico([1, 2], num_inference_steps=2, output_type="pil").images) == 2
    assert dico([1], num_inference_steps=2, output_type="pt").images.shape == (1, 3, 16, 16)
    assert dico([1], num_inference_steps=2, output_type="latent").images.shape == (1, 4, 8, 8)
    assert dico([1], num_inference_steps=2, height=32, width=16, output_type="np").images.shape == (1, 32, 16, 3)
    with pytest.raises(ValueError, match="output_type='latents'"):
        dico([1], output_type="latents")
    with pytest.raises(ValueError, match=r"expected ids in \[0, 9\]"):
        dico([10])
    with pytest.raises(ValueError, match="multiples of the VAE factor 2"):
        dico([1], height=15)
    with pytest.raises(ValueError, match="height=0"):
        dico([1], height=0)
    with pytest.raises(ValueError, match="batch_size=5 with 2 class_labels"):
        dico([1, 2], batch_size=5)
    with pytest.raises(ValueError, match="empty"):
        dico([])
    for steps in (0, -1):
        with pytest.raises(ValueError, match=f"num_inference_steps={steps}"):
            dico([1], num_inference_steps=steps)
    # without a VAE: pixel space, grey images, any size the bricks allow
    pixel = LEGOPipeline(transformer=lego.transformer, scheduler=EDMEulerScheduler())
    pixel.set_progress_bar_config(disable=True)
    assert pixel.vae is None and pixel.vae_scale_factor == 1
    assert pixel([1], num_inference_steps=2, height=8, width=16, output_type="np").images.shape == (1, 8, 16, 4)


def test_unconditional_generation_runs_the_null_class_once_per_step(lego):
    calls = []
    hook = lego.transformer.register_forward_pre_hook(lambda m, a, kw: calls.append(kw["class_labels"]),
                                                      with_kwargs=True)
    lego(None, batch_size=2, num_inference_steps=2, output_type="latent")
    lego([1, 2], num_inference_steps=1, output_type="latent")
    hook.remove()
    assert calls[0] is None and len(calls) == 3
    assert calls[2].tolist() == [1, 2, 10, 10]  # batched CFG, null id = num_classes


@pytest.mark.parametrize("name", ["dico", "lego"])
def test_save_and_load_pipelines_bit_identically(tmp_path, name):
    pipe = accel.zoo.load(name)
    ref = pipe([1, 2], num_inference_steps=3, generator=_gen(), output_type="pt").images
    if name == "lego":
        pipe = LEGOPipeline(transformer=pipe.transformer, scheduler=pipe.scheduler)  # no VAE: saved as null
        pipe.set_progress_bar_config(disable=True)
        ref = pipe([1, 2], num_inference_steps=3, generator=_gen(), output_type="pt").images
    pipe.save_pretrained(tmp_path)
    cls = DiCoPipeline if name == "dico" else LEGOPipeline
    loaded = cls.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.transformer) is type(pipe.transformer)
    assert torch.equal(loaded([1, 2], num_inference_steps=3, generator=_gen(), output_type="pt").images, ref)


@pytest.mark.parametrize("name", ["dico", "lego"])
@pytest.mark.parametrize("method,exact", [("delta-dit", {"interval": 1}), ("tdc", {"threshold": 0.0})])
def test_block_caches_run_on_the_new_models(name, method, exact):
    pipe = accel.zoo.load(name)
    base = accel.zoo.generate(pipe, steps=6)
    handle = accel.patch(pipe, method=method, **exact)
    assert torch.equal(accel.zoo.generate(pipe, steps=6), base)
    handle.unpatch()
    handle = accel.patch(pipe, method=method, **({"cached_blocks": 3, "interval": 2} if method == "delta-dit"
                                                 else {"threshold": 10.0}))
    out = accel.zoo.generate(pipe, steps=6)
    stats = handle.stats()[method]
    if method == "delta-dit":  # spans stay inside one U-Net level / brick, each on the stage's schedule
        names = [s.name for s in handle.methods[0].spans]
        assert all("@" in n for n in names) and all(len({b.stack for b in s.blocks}) == 1
                                                    for s in handle.methods[0].spans)
    handle.unpatch()
    assert stats["blocks_skipped"] > 0 and torch.isfinite(out).all() and not torch.equal(out, base)
    assert torch.equal(accel.zoo.generate(pipe, steps=6), base)
