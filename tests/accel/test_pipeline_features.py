"""A patch under the pipeline features users combine it with: other pipelines and schedulers over the
patched components, the run length the loop really has, copies, and offloading in any order.

Δ-DiT at interval 2 keeps state across steps and skips by step index, so a wrong run boundary or step
count changes the output: each right value is the output of a patch made on the final configuration.
"""

from __future__ import annotations

import copy
import inspect

import diffusers
import pytest
import torch
from accelerate.hooks import attach_align_device_hook

import accel
from accel.zoo import default_resolution, generate, inputs

CACHE = {"method": "delta-dit", "interval": 2, "warmup": 1}
# every built-in method at a setting that keeps state across steps (each would show a wrong run boundary)
METHODS = [CACHE, {"method": "tdc", "threshold": 0.5}, {"method": "none"},
           {"method": "pisa", "density": 0.5, "dense_steps": 0.25, "dense_layers": 0},
           {"method": "adaspa", "sparsity": 0.5, "dense_steps": 0.25, "dense_layers": 0}]
IDS = [m["method"] for m in METHODS]
RES = default_resolution("pixart-alpha")


def run(pipe, steps: int) -> torch.Tensor:
    return pipe(**inputs(pipe, steps=steps, **RES)).images


def ddim(pipe) -> diffusers.DDIMScheduler:
    return diffusers.DDIMScheduler.from_config(pipe.scheduler.config)


def patched_run(pipe, steps: int, **method) -> torch.Tensor:
    """The right value: a patch made on `pipe` as it is now, one call, removed again."""
    with accel.patch(pipe, **(method or CACHE)):
        return run(pipe, steps)


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_a_second_pipeline_over_the_patched_components_runs_its_own_steps(tiny, method):
    a = tiny("pixart-alpha")
    handle = accel.patch(a, **method)
    run(a, 4)
    b = diffusers.PixArtAlphaPipeline(**{**a.components, "scheduler": ddim(a)})
    out = run(b, 6)
    assert handle.stats()["steps"] == {"runs": 2, "num_steps": 6, "denoiser_calls": 6,
                                       "calls_by_branch": {"default": 6}}
    handle.unpatch()
    assert torch.equal(out, patched_run(b, 6, **method))


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_a_scheduler_swapped_after_patching_is_followed(tiny, method):
    a = tiny("pixart-alpha")
    handle = accel.patch(a, **method)
    run(a, 4)
    a.scheduler = ddim(a)
    out = run(a, 3)
    assert handle.stats()["steps"]["num_steps"] == 3
    handle.unpatch()
    assert torch.equal(out, patched_run(a, 3, **method))
    assert "set_timesteps" not in vars(a.scheduler)  # nothing of the patch sits on a scheduler


def test_the_run_length_is_what_the_loop_runs(tiny):
    # Heun runs 2N-1 denoiser calls, one loop iteration each (its repeated timesteps are not CFG branches)
    a = tiny("pixart-alpha")
    a.scheduler = diffusers.HeunDiscreteScheduler.from_config(a.scheduler.config)
    with accel.patch(a, method="none") as handle:
        run(a, 3)
        assert handle.stats()["steps"] == {"runs": 1, "num_steps": 5, "denoiser_calls": 5,
                                           "calls_by_branch": {"default": 5}}
    # img2img at strength 0.5 runs half of the steps asked for
    flux = tiny("flux")
    params = inspect.signature(diffusers.FluxImg2ImgPipeline.__init__).parameters
    img2img = diffusers.FluxImg2ImgPipeline(**{k: v for k, v in flux.components.items() if k in params})
    res = default_resolution("flux")
    kwargs = {k: v for k, v in inputs(flux, steps=6, **res).items() if k not in ("height", "width")}
    with accel.patch(img2img, method="none") as handle:
        img2img(**kwargs, image=torch.rand(1, 3, res["height"], res["width"]), strength=0.5, **res)
        assert handle.stats()["steps"]["num_steps"] == handle.stats()["steps"]["denoiser_calls"] == 3


def test_a_patched_object_refuses_deep_copies_until_unpatched(tiny):
    a = tiny("pixart-alpha")
    handle = accel.patch(a, **CACHE)
    for obj in (a, a.transformer):
        with pytest.raises(accel.PatchedCopyError, match="copy before patching"):
            copy.deepcopy(obj)
    handle.unpatch()
    c = copy.deepcopy(a)
    outs = []
    for pipe in (a, c):
        with accel.patch(pipe, **CACHE):
            outs.append(pipe(**inputs(a, steps=4, **RES)).images)  # the zoo's inputs for both
    assert torch.equal(*outs)


def _model_offload(pipe):
    pipe.enable_model_cpu_offload(device="cpu")


def _group_offload(pipe):
    pipe.transformer.enable_group_offload(onload_device=torch.device("cpu"), offload_type="block_level",
                                          num_blocks_per_group=1)


def _module_hooks(pipe):
    # accelerate's per-module device hooks, as sequential offload installs them (they wrap each
    # parameter-holding module's forward); sequential offload itself needs an accelerator
    attach_align_device_hook(pipe.transformer, execution_device=torch.device("cpu"))


def _accelerate_hook_calls(pipe) -> list[int]:
    calls = [0]
    for module in pipe.transformer.modules():
        hook = getattr(module, "_hf_hook", None)
        if hook is not None and hasattr(hook, "pre_forward"):
            inner = hook.pre_forward

            def counted(*args, _inner=inner, **kwargs):
                calls[0] += 1
                return _inner(*args, **kwargs)

            hook.pre_forward = counted
    return calls


@pytest.mark.parametrize("offload", [_model_offload, _group_offload, _module_hooks], ids=["model", "group", "module"])
@pytest.mark.parametrize("method", METHODS, ids=IDS)
@pytest.mark.parametrize("patch_first", [False, True], ids=["offload-then-patch", "patch-then-offload"])
def test_offloading_in_either_order_then_unpatch(tiny, offload, method, patch_first):
    pipe = tiny("pixart-alpha")
    right = patched_run(pipe, 6, **method)
    clean = tiny("pixart-alpha")
    offload(clean)
    calls = _accelerate_hook_calls(clean)
    baseline, baseline_calls = run(clean, 2), calls[0]
    if not patch_first:
        offload(pipe)
    handle = accel.patch(pipe, **method)
    if patch_first:
        offload(pipe)
    for run_index in (1, 2):  # offloading hooks re-installed after a call must not drop the patch
        assert torch.equal(run(pipe, 6), right)
        assert handle.stats()["steps"]["runs"] == run_index
    handle.unpatch()
    calls = _accelerate_hook_calls(pipe)
    assert torch.equal(run(pipe, 2), baseline)
    assert calls[0] == baseline_calls  # every offloading hook still runs after unpatch


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_a_second_thread_is_refused_while_a_run_is_in_progress_then_served(tiny, method):
    """Two threads, each with its own pipeline over one patched transformer: the run in progress keeps its
    caches and finishes exactly as alone, however often the other thread tries; the other thread's calls
    are refused before anything of them runs, and served once the first run is over."""
    import threading

    a = tiny("pixart-alpha")
    handle = accel.patch(a, **method)
    pipes = [diffusers.PixArtAlphaPipeline(**{**a.components, "scheduler": ddim(a)}) for _ in range(2)]
    serial = [run(pipe, 8) for pipe in pipes]
    mid_run, refused = threading.Event(), threading.Event()
    results: dict[str, object] = {"refusals": []}

    def pause(step, t, latents):
        if step == 3:
            mid_run.set()
            refused.wait(timeout=120)

    def first():
        results["first"] = pipes[0](**inputs(pipes[0], steps=8, **RES), callback=pause, callback_steps=1).images

    def second():
        mid_run.wait(timeout=120)
        for _ in range(3):  # a refused call must leave the run in progress as it was
            try:
                run(pipes[1], 8)
            except accel.ConcurrentUseError as err:
                results["refusals"].append(str(err))
        refused.set()

    threads = [threading.Thread(target=first, name="first"), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert len(results["refusals"]) == 3
    assert "in the middle of a run in thread 'first'" in results["refusals"][0]
    assert torch.equal(results["first"], serial[0])
    assert handle.stats()["steps"]["runs"] == 3 and handle.stats()["steps"]["denoiser_calls"] == 8
    later = threading.Thread(target=lambda: results.update(second=run(pipes[1], 8)))
    later.start()
    later.join(timeout=300)
    assert torch.equal(results["second"], serial[1])
    handle.unpatch()


def test_a_run_abandoned_by_an_exception_does_not_lock_out_other_threads(tiny):
    import threading

    a = tiny("pixart-alpha")
    handle = accel.patch(a, **CACHE)

    def stop(step, t, latents):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        a(**inputs(a, steps=6, **RES), callback=stop, callback_steps=1)
    out: dict[str, torch.Tensor] = {}
    worker = threading.Thread(target=lambda: out.update(image=run(a, 6)))
    worker.start()
    worker.join(timeout=300)
    handle.unpatch()
    assert torch.equal(out["image"], patched_run(a, 6))


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_a_run_interrupted_mid_way_leaves_nothing_for_the_next(tiny, method):
    """docs/guarantees.md: every method, after a run stopped by an exception from a step callback, gives the
    next call exactly what a fresh patched run gives."""
    a = tiny("pixart-alpha")
    right = patched_run(a, 6, **method)
    handle = accel.patch(a, **method)

    def stop(step, t, latents):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        a(**inputs(a, steps=6, **RES), callback=stop, callback_steps=1)
    assert torch.equal(run(a, 6), right)
    assert handle.stats()["steps"]["runs"] == 2
    handle.unpatch()


def _add_lora(pipe) -> None:
    """A LoRA made here (peft), with non-zero weights so that it changes the output."""
    from peft import LoraConfig

    torch.manual_seed(1)
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                        init_lora_weights=False)
    pipe.transformer.add_adapter(config, adapter_name="local")


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_lora_loaded_before_or_after_patching_fused_or_not(tiny, method):
    pytest.importorskip("peft")
    # right values: patches made on the model as it ends up (LoRA loaded; LoRA fused)
    ref = tiny("flux")
    _add_lora(ref)
    lora_unpatched = generate(ref, steps=4)
    with accel.patch(ref, **method):
        right = generate(ref, steps=4)
    ref.transformer.fuse_lora()
    with accel.patch(ref, **method):
        right_fused = generate(ref, steps=4)
    ref.transformer.unfuse_lora()  # W + dW - dW: not bit-identical to W, so its own right values
    unfused_unpatched = generate(ref, steps=4)
    with accel.patch(ref, **method):
        right_unfused = generate(ref, steps=4)

    pipe = tiny("flux")
    handle = accel.patch(pipe, **method)
    _add_lora(pipe)  # after patching
    assert torch.equal(generate(pipe, steps=4), right)
    pipe.transformer.fuse_lora()
    assert torch.equal(generate(pipe, steps=4), right_fused)
    pipe.transformer.unfuse_lora()
    assert torch.equal(generate(pipe, steps=4), right_unfused)
    handle.unpatch()
    assert torch.equal(generate(pipe, steps=4), unfused_unpatched)
    assert not torch.equal(lora_unpatched, generate(tiny("flux"), steps=4))  # the LoRA does change the output


def _exact(name: str) -> dict:
    """The method at its exact setting, with no dense warm-up steps or layers."""
    cls = accel.method.method_class(name)
    return {"method": name, **cls.exact_options}


def _drop_cfg_after(step: int):
    def callback(pipe, i, t, tensors):  # diffusers' documented way to end CFG mid-run
        if i == step:
            pipe._guidance_scale = 1.0
        return tensors

    return callback


GUIDANCE = {
    "batch of 2": {"batch_size": 2},
    "2 videos per prompt": {"num_videos_per_prompt": 2},
    "no CFG": {"guidance_scale": 1.0},
    "CFG dropped after step 1": {"callback_on_step_end": _drop_cfg_after(1)},
}


@pytest.mark.parametrize("case", sorted(GUIDANCE))
@pytest.mark.parametrize("name", IDS)
def test_batches_and_guidance_variants_at_the_exact_setting(tiny, name, case):
    """Wan (separate cond/uncond calls, in cache contexts) at each method's exact setting equals the
    unpatched pipeline under every batch and guidance variant, however many calls a step makes."""
    pipe = tiny("wan")
    extra = dict(GUIDANCE[case])
    batch = extra.pop("batch_size", 1)
    guidance = extra.pop("guidance_scale", None)

    def call():
        kwargs = inputs(pipe, steps=4, batch_size=batch, guidance_scale=guidance)
        return pipe(**kwargs, **extra).frames

    baseline = call()
    method = _exact(name)
    with accel.patch(pipe, **method) as handle:
        out = call()
        calls = handle.stats()["steps"]["calls_by_branch"]
    cls = accel.method.method_class(name)
    atol = cls.exact_atol * max(1.0, baseline.abs().max().item())  # Method.exact_atol: relative to the largest
    torch.testing.assert_close(out, baseline, atol=atol, rtol=cls.exact_rtol)
    expected = {"cond": 4, "uncond": {"no CFG": 0, "CFG dropped after step 1": 2}.get(case, 4)}
    assert calls == {k: v for k, v in expected.items() if v}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", IDS)
def test_half_precision_pipelines_at_the_exact_setting_and_by_default(name, dtype):
    """bf16/fp16 pipelines: the exact setting stays within half-precision rounding of the unpatched half
    pipeline (the CPU kernels compute in fp32, SDPA in the input dtype: a few ulps of the latents), and the
    default options run to finite latents."""
    pipe = accel.zoo.load("pixart-alpha", size="tiny", dtype=dtype)
    baseline = generate(pipe, steps=3)
    with accel.patch(pipe, **_exact(name)):
        out = generate(pipe, steps=3)
    assert out.dtype == baseline.dtype == dtype
    ulp = torch.finfo(dtype).eps * baseline.abs().max().item()
    torch.testing.assert_close(out.float(), baseline.float(), atol=8 * ulp, rtol=0)
    with accel.patch(pipe, method=name):
        assert bool(torch.isfinite(generate(pipe, steps=3)).all())
