"""The contract every registered method meets, on every model family it claims.

Like diffusers' `CacheTesterMixin` for its caches: one suite, run for each method the registry knows (its
"accel.methods" entry points) on tiny zoo pipelines of each family it claims (`Method.families`; a
method for any model is run on an image and a video family). A new method gets all of it by
registering, and declares on its class what the checks need: `exact_options` / `exact_atol` (options
under which it equals the unpatched model), `stats_keys` (what `stats()` may return) and
`needs_step_count()`.

1. unpatch restores bit-identical behaviour and leaves no trace on the object;
2. a refused option, or a refused model, changes nothing;
3. a second patch is refused and the first one keeps working;
4. the method's exact setting equals the baseline;
   (VLM methods run on the zoo's tiny VLMs of their families: a padded batch's last logits and 3 greedy
   tokens stand for the latents)
5. state is per call: two calls with one seed give the same output and the same stats;
6. `stats()` returns only the documented keys;
7. an unknown step count (a hand-written loop) works as in a pipeline or raises StepCountUnknownError
   naming `reset(num_steps=N)`; with the step count, runs restart every N steps.
"""

from __future__ import annotations

import pytest
import torch
from support import snapshot

import accel
from accel.method import COMMON_STATS, _entry_points, held_tensors, method_class

ANY_FAMILY = ("pixart-alpha", "wan")  # an image and a video model for methods that run on any family
ZOO_NAME = {"pixart": "pixart-alpha"}  # adapter family -> zoo entry, where the names differ
PIPELINE_KIND = {"flashblock": ("llada2", "diffusion-gemma", "anyflow-far")}  # methods for one kind of pipeline (any model family in it)
STEPS = 3


def _cases() -> list[tuple[str, str]]:
    cases = []
    for name in sorted(_entry_points()):
        families = method_class(name).families
        for family in PIPELINE_KIND.get(name) or (ANY_FAMILY if families is None else families):
            cases.append((name, ZOO_NAME.get(family, family)))
    return cases


CASES = _cases()
pytestmark = pytest.mark.parametrize("method,model", CASES, ids=[f"{m}-{f}" for m, f in CASES])


def _run(pipe):  # noqa: ANN001, ANN202
    """A pipeline: its final latents; a VLM: the last logits of a padded batch and 3 greedy tokens; a
    block-diffusion language pipeline: the tokens of a padded batch."""
    name = accel.zoo.built_from(pipe)[0]
    if name in accel.zoo.CHUNK_NAMES:
        return pipe(**accel.zoo.far.call_inputs(pipe, batch=2, guidance_scale=3.0)).frames
    if name in accel.zoo.DLLM_NAMES:  # DiffusionGemmaPipeline pads no batch of prompts
        return pipe(**accel.zoo.dllm.call_inputs(pipe, batch=2, vary=name == "llada2")).sequences.float()
    if not accel.zoo.is_vlm(accel.zoo.built_from(pipe)[0]):
        return accel.zoo.generate(pipe, steps=STEPS, seed=0)
    x = accel.zoo.vlm_inputs(pipe, batch=2, vary=True)
    with torch.no_grad():
        logits = pipe(**x).logits[:, -1]
        ids = pipe.generate(**x, max_new_tokens=3, do_sample=False)
    return torch.cat([logits.flatten(), ids.flatten().float()])


def _runs_per_call(model: str) -> int:
    """The step tracker's runs per pipeline call: one, but a chunk-wise video pipeline sets its scheduler's
    timesteps again for every chunk (a run each). A VLM call is no denoising run."""
    return len(accel.zoo.far.SIZES["tiny"].chunks) if model in accel.zoo.CHUNK_NAMES else 1


def test_unpatch_is_bit_identical_to_never_patched(method, model, tiny):
    pipe = tiny(model)
    baseline = _run(pipe)
    before = snapshot(pipe)
    handle = accel.patch(pipe, method=method)
    _run(pipe)
    handle.unpatch()
    assert snapshot(pipe) == before
    assert torch.equal(_run(pipe), baseline)


def test_a_refused_option_or_model_changes_nothing(method, model, tiny):
    pipe = tiny(model)
    _run(pipe)
    before = snapshot(pipe)
    with pytest.raises(accel.InvalidOptionError, match="no_such_option"):
        accel.patch(pipe, method=method, no_such_option=1)
    assert snapshot(pipe) == before and accel.patch_of(pipe) is None
    linear = torch.nn.Linear(4, 4)
    with pytest.raises(accel.UnsupportedModelError):
        accel.patch(linear, method=method)
    assert not vars(linear).get("_diffusers_hook") and accel.patch_of(linear) is None


def test_a_second_patch_is_refused_and_the_first_keeps_working(method, model, tiny):
    pipe = tiny(model)
    handle = accel.patch(pipe, method=method)
    try:
        with pytest.raises(accel.AlreadyPatchedError):
            accel.patch(pipe, method=method)
        assert accel.patch_of(pipe) is handle
        _run(pipe)
        assert handle.stats()["steps"]["runs"] == _runs_per_call(model)
    finally:
        handle.unpatch()


def test_the_exact_setting_equals_the_baseline(method, model, tiny):
    cls = method_class(method)
    if cls.exact_options is None:
        pytest.skip(f"{method} has no exact setting")
    pipe = tiny(model)
    baseline = _run(pipe)
    handle = accel.patch(pipe, method=method, **cls.exact_options)
    try:
        out = _run(pipe)
    finally:
        handle.unpatch()
    if cls.exact_atol == cls.exact_rtol == 0:
        assert torch.equal(out, baseline)
    else:
        atol = cls.exact_atol * max(1.0, baseline.abs().max().item())  # Method.exact_atol: relative to the largest
        torch.testing.assert_close(out, baseline, atol=atol, rtol=cls.exact_rtol)


def test_state_is_per_call_and_stats_are_the_documented_keys(method, model, tiny):
    pipe = tiny(model)
    handle = accel.patch(pipe, method=method)
    try:
        first, stats = _run(pipe), handle.stats()
        second = _run(pipe)
        assert torch.equal(first, second), "the second call saw state left by the first"
        assert handle.stats()[method] == stats[method]
        assert accel.zoo.is_vlm(model) or handle.stats()["steps"]["runs"] == 2 * _runs_per_call(model)
    finally:
        handle.unpatch()
    undocumented = set(stats[method]) - method_class(method).stats_keys - COMMON_STATS
    assert not undocumented, f"{method}.stats() returned keys its class does not declare: {undocumented}"


def test_an_unknown_step_count_works_or_names_the_fix(method, model, tiny):
    if accel.zoo.is_vlm(model):
        pytest.skip("a VLM has no denoising steps")
    if model in (*accel.zoo.DLLM_NAMES, *accel.zoo.CHUNK_NAMES):
        pytest.skip("block diffusion and chunk-wise video: the model calls per run vary (thresholds, editing, "
                    "cache writes), not a step count")
    pipe = tiny(model)
    denoiser = pipe.transformer
    calls = []
    hook = denoiser.register_forward_pre_hook(lambda m, a, kw: calls.append((a, dict(kw))), with_kwargs=True)
    _run(pipe)
    hook.remove()
    handle = accel.patch(denoiser, method=method)
    try:
        with torch.no_grad():
            if method_class(method)(method_class(method).Config()).needs_step_count():
                with pytest.raises(accel.StepCountUnknownError, match=r"reset\(num_steps=N\)"):
                    denoiser(*calls[0][0], **calls[0][1])
            else:
                denoiser(*calls[0][0], **calls[0][1])
            runs = handle.stats()["steps"]["runs"]
            handle.reset(num_steps=STEPS)
            for _ in range(2):  # two loops of the pipeline's own calls: two runs, whatever the timesteps
                for args, kwargs in calls:
                    denoiser(*args, **kwargs)
        assert handle.stats()["steps"]["runs"] == runs + 2
        assert handle.stats()["steps"]["num_steps"] == STEPS
    finally:
        handle.unpatch()


def test_nothing_computed_is_held_after_the_call(method, model, tiny):
    """Per-call state (cached residuals, LSEs, masks) is released after each branch's last step: a method
    holds no tensor between calls (on Wan-14B at 480p that would be hundreds of MB)."""
    pipe = tiny(model)
    handle = accel.patch(pipe, method=method)
    try:
        _run(pipe)
        held = [t for m in handle.methods for t in held_tensors(m, set(), {"counters", *m.kept_between_calls})
                if t.numel() > 1]  # a few 0-d tensors stay, for stats()
        assert not held, f"{method} holds {sum(t.numel() * t.element_size() for t in held)} bytes after the call"
    finally:
        handle.unpatch()
