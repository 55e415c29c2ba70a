"""DiCoPipeline / LEGOPipeline: DiT's results where DiT's pipeline is right, the initial noise scaled for any
scheduler, learned variance routed to the schedulers that use it, optional VAE, output types, save/load;
and the block caches (delta-dit, tdc) on the new models through their adapters."""

from __future__ import annotations

import numpy as np
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
from accel.models import DiCoModel, DiCoPipeline, LEGOModel, LEGOPipeline


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


# ---- call arguments: checked before the first denoising step, valid spellings kept ----

BAD_CALLS = [
    ({"guidance_scale": float("inf")}, ValueError, "guidance_scale=inf: expected a finite number >= 0"),
    ({"guidance_scale": float("-inf")}, ValueError, "guidance_scale=-inf"),
    ({"guidance_scale": float("nan")}, ValueError, "guidance_scale=nan: expected a finite number >= 0"),
    ({"guidance_scale": -1.0}, ValueError, "guidance_scale=-1.0: expected a finite number >= 0"),
    ({"guidance_scale": "4"}, TypeError, "guidance_scale='4'"),
    ({"guidance_scale": True}, TypeError, "guidance_scale=True"),
    ({"class_labels": None, "batch_size": 2.7}, TypeError, "batch_size=2.7: expected a positive integer"),
    ({"class_labels": None, "batch_size": 0}, ValueError, "batch_size=0: expected a positive integer"),
    ({"class_labels": None, "batch_size": True}, TypeError, "batch_size=True"),
    ({"height": 32.9}, TypeError, "height=32.9: expected a positive integer size in pixels"),
    ({"width": 16.0}, TypeError, "width=16.0: expected a positive integer size in pixels"),
    ({"height": "32"}, TypeError, "height='32'"),
    ({"height": -16}, ValueError, "height=-16"),
    ({"height": 20}, ValueError, "height=20 and width=16 give a 10x8 latent that DiCoModel cannot run"),
    ({"class_labels": [[1, 2]]}, ValueError, "class_labels=[[1, 2]]: expected integer class ids"),
    ({"class_labels": torch.tensor([[1], [2]])}, ValueError, "class_labels has shape (2, 1)"),
    ({"class_labels": ["3"]}, TypeError, "class_labels=['3']: expected integer class ids"),
    ({"class_labels": "3"}, TypeError, "class_labels='3'"),
    ({"class_labels": [1.0, 2.0]}, TypeError, "class_labels=[1.0, 2.0]"),
    ({"class_labels": [True, False]}, TypeError, "class_labels=[True, False]"),
    ({"class_labels": torch.tensor([True])}, TypeError, "class_labels has dtype torch.bool"),
    ({"class_labels": np.array(["1"])}, TypeError, "expected integer class ids"),
    ({"class_labels": [-1]}, ValueError, "class_labels=[-1]; expected ids in [0, 9]"),
    ({"class_labels": [1, 10]}, ValueError, "class_labels=[1, 10]; expected ids in [0, 9]"),
    ({"num_inference_steps": True}, TypeError, "num_inference_steps=True: expected a positive integer"),
    ({"num_inference_steps": 2.0}, TypeError, "num_inference_steps=2.0"),
    ({"num_inference_steps": np.int64(0)}, ValueError, f"num_inference_steps={np.int64(0)!r}: expected a positive"),
    ({"generator": "gen"}, TypeError, "generator='gen': expected a torch.Generator"),
    ({"latents": torch.zeros(2, 4, 8, 8, dtype=torch.long)}, TypeError, "latents has dtype torch.int64"),
    ({"latents": torch.full((2, 4, 8, 8), float("nan"))}, ValueError, "latents holds NaN or infinite values"),
    ({"latents": torch.zeros(2, 4, 8, 8).index_fill_(0, torch.tensor([1]), float("inf"))}, ValueError,
     "latents holds NaN or infinite values"),
    ({"return_dict": "no"}, TypeError, "return_dict='no': expected True or False"),
]


def _no_step(pipe) -> list:
    """A record of every denoiser call (a forward pre-hook): a refused call must leave it empty."""
    calls: list = []
    pipe.transformer.register_forward_pre_hook(lambda m, a: calls.append(1))
    return calls


@pytest.mark.parametrize("kw,error,message", BAD_CALLS, ids=[str(c[0]) for c in BAD_CALLS])
def test_bad_call_arguments_are_refused_before_any_denoising_step(dico, kw, error, message):
    calls = _no_step(dico)
    with pytest.raises(error) as err:
        dico(**{"class_labels": [1, 2], "num_inference_steps": 1, "output_type": "latent", **kw})
    assert message in str(err.value) and isinstance(err.value, ValueError)
    assert calls == []


@pytest.mark.parametrize("component,value,message", [
    ("scheduler", "ddim", "scheduler='ddim': expected a diffusers scheduler instance"),
    ("scheduler", None, "scheduler=None: expected a diffusers scheduler instance"),
    ("vae", "sd-vae", "vae is a str; expected an AutoencoderKL or None"),
    ("transformer", "dico", "transformer is a str; expected a model with DiT's call and a config"),
])
def test_a_pipeline_refuses_components_of_the_wrong_kind(dico, component, value, message):
    parts = {"transformer": dico.transformer, "scheduler": dico.scheduler, component: value}
    with pytest.raises(TypeError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        DiCoPipeline(**parts)
    assert isinstance(err.value, ValueError)  # InvalidTypeError: both kinds, as every refusal here


def test_a_generator_list_must_hold_one_generator_per_image(dico):
    calls = _no_step(dico)
    for count in (1, 3):
        with pytest.raises(ValueError, match=f"a list of {count} generators for a batch of 2 images"):
            dico([1, 2], generator=[_gen(i) for i in range(count)], num_inference_steps=1, output_type="latent")
    with pytest.raises(ValueError, match="a list of 3 generators for a batch of 2"):
        dico(None, batch_size=2, generator=[_gen(), _gen(), _gen()], num_inference_steps=1)
    with pytest.raises(TypeError, match="expected a torch.Generator, a list of one per image"):
        dico([1, 2], generator=[_gen(), 0], num_inference_steps=1)
    assert calls == []
    out = dico([1, 2], generator=[_gen(0), _gen(1)], num_inference_steps=1, output_type="latent").images
    assert out.shape == (2, 4, 8, 8)


def test_an_unconditional_model_refuses_labels(lego):
    uncond = LEGOPipeline(transformer=LEGOModel(**{**lego.transformer.config, "num_classes": 0}),
                          scheduler=lego.scheduler)
    uncond.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match="this LEGOModel is unconditional \\(num_classes=0\\); pass class_labels=None"):
        uncond([1], num_inference_steps=1)
    assert uncond(None, batch_size=2, num_inference_steps=1, output_type="latent").images.shape == (2, 4, 8, 8)


def test_a_learned_variance_scheduler_is_refused_for_a_model_without_variance_channels(dico, lego):
    lego.scheduler = DDPMScheduler(variance_type="learned_range")
    calls = _no_step(lego)
    with pytest.raises(ValueError) as err:
        lego([1], num_inference_steps=2, output_type="latent")
    assert "variance_type='learned_range'" in str(err.value) and "out_channels=4" in str(err.value)
    assert calls == []
    plain = DiCoPipeline(transformer=DiCoModel(**{**dico.transformer.config, "learn_sigma": False,
                                                  "out_channels": None}), scheduler=DDPMScheduler(variance_type="learned"))
    plain.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match="variance_type='learned' needs learned variance channels"):
        plain([1], num_inference_steps=2)
    # the model that has them runs (learned variance reaches the scheduler)
    dico.scheduler = DDPMScheduler(variance_type="learned_range")
    assert dico([1], num_inference_steps=2, output_type="latent").images.shape == (1, 4, 8, 8)


def test_valid_call_spellings_are_accepted(dico):
    def run(**kw):
        return dico(**{"num_inference_steps": 2, "generator": _gen(), "output_type": "latent", **kw}).images

    ref = run(class_labels=[1, 2], guidance_scale=3.0)
    for labels in ((1, 2), [np.int64(1), 2], np.array([1, 2]), torch.tensor([1, 2])):
        assert torch.equal(run(class_labels=labels, guidance_scale=3.0), ref)
    assert torch.equal(run(class_labels=[1, 2], guidance_scale=np.float32(3.0)), ref)
    assert torch.equal(run(class_labels=[1, 2], guidance_scale=3.0, num_inference_steps=np.int64(2)), ref)
    assert torch.equal(run(class_labels=[1, 2], guidance_scale=3.0, height=np.int64(16), width=np.int32(16)), ref)
    assert torch.equal(run(class_labels=[1, 2], guidance_scale=3.0, batch_size=np.int64(2)), ref)
    one = run(class_labels=[7])
    assert torch.equal(run(class_labels=7), one) and torch.equal(run(class_labels=torch.tensor(7)), one)
    # guidance_scale in [0, 1] is no guidance (DiTPipeline's rule): the conditional prediction alone
    plain = run(class_labels=[1, 2], guidance_scale=1.0)
    assert not torch.equal(plain, ref)
    for scale in (0, 0.0, 0.5, np.float64(1.0)):
        assert torch.equal(run(class_labels=[1, 2], guidance_scale=scale), plain)
    assert run(class_labels=None, batch_size=np.int64(3)).shape == (3, 4, 8, 8)


def test_timesteps_and_step_counts_are_checked_before_any_work():
    """A non-finite, non-numeric or nested timestep is refused by the forward; a step count above the
    scheduler's training timesteps is refused before the caller's generator is used."""
    from accel import zoo
    from accel.models.common import InvalidTypeError

    pipe = zoo.load("digits-lego")
    model = pipe.transformer
    x = torch.zeros(1, model.config.in_channels, model.config.sample_size, model.config.sample_size)
    for bad, error in ((float("nan"), ValueError), (float("inf"), ValueError), ("10", InvalidTypeError),
                       (True, InvalidTypeError), (1 + 2j, InvalidTypeError), ([[1], [2]], ValueError)):
        with pytest.raises(error, match="timestep"):
            model(x, timestep=bad, class_labels=[1])
    assert model(x, timestep=10, class_labels=[1]).sample.shape[0] == 1
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=r"num_inference_steps=5000: expected at most the scheduler's num_train"):
        pipe(class_labels=[1, 2], num_inference_steps=5000, output_type="pt", generator=g)
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(0).get_state())
