"""The step tracker: right in both CFG styles, with batch > 1, and reset on every call."""

from __future__ import annotations

import pytest
import torch

import accel
from accel.zoo import generate, inputs


def _record(handle, pipe):
    """Record (step, branch, num_steps) as seen from inside the first block of every denoiser call."""
    seen = []
    adapter = handle.target.adapter
    first_block = adapter.blocks(pipe.transformer)[0].module
    t = handle.tracker
    h = first_block.register_forward_pre_hook(lambda m, a: seen.append((t.step, t.branch, t.num_steps)))
    return seen, h


BATCHED = ["pixart-alpha", "pixart-sigma", "dit", "sd3", "cogvideox", "flux", "hunyuan-video"]


@pytest.mark.parametrize("name", BATCHED)
def test_one_call_per_step_families(tiny, name):
    pipe = tiny(name)
    handle = accel.patch(pipe, method="none")
    seen, h = _record(handle, pipe)
    generate(pipe, steps=3)
    h.remove()
    assert [s for s, _, _ in seen] == [0, 1, 2]
    # one branch: "default", or the pipeline's own context name (CogVideoX batches CFG as "cond_uncond")
    assert len({b for _, b, _ in seen}) == 1
    assert all(n == 3 for _, _, n in seen)
    handle.unpatch()


@pytest.mark.parametrize("name, extra", [("wan", {}), ("flux", {"true_cfg": True})])
def test_separate_cond_uncond_calls_are_branches_of_one_step(tiny, name, extra):
    pipe = tiny(name)
    handle = accel.patch(pipe, method="none")
    seen, h = _record(handle, pipe)
    generate(pipe, steps=3, **extra)
    h.remove()
    expected = [(s, b) for s in range(3) for b in ("cond", "uncond")]
    assert [(s, b) for s, b, _ in seen] == expected
    assert handle.stats()["steps"]["calls_by_branch"] == {"cond": 3, "uncond": 3}
    handle.unpatch()


def test_batch_size_two_counts_steps_not_samples(tiny):
    pipe = tiny("wan")
    handle = accel.patch(pipe, method="none")
    seen, h = _record(handle, pipe)
    generate(pipe, steps=2, batch_size=2)
    h.remove()
    assert [(s, b) for s, b, _ in seen] == [(0, "cond"), (0, "uncond"), (1, "cond"), (1, "uncond")]
    handle.unpatch()


def test_every_call_is_a_fresh_run_with_new_steps_and_resolution(tiny):
    pipe = tiny("pixart-alpha")
    handle = accel.patch(pipe, method="none")
    layouts = []
    first_block = handle.target.adapter.blocks(pipe.transformer)[0].module
    h = first_block.register_forward_pre_hook(lambda m, a: layouts.append(handle.tracker.layout.grid))
    kw = inputs(pipe, steps=4)
    generate(pipe, steps=4)
    assert handle.stats()["steps"] == {
        "runs": 1,
        "num_steps": 4,
        "denoiser_calls": 4,
        "calls_by_branch": {"default": 4},
    }
    height, width = kw["height"] * 2, kw["width"] * 2
    generate(pipe, steps=2, height=height, width=width)
    h.remove()
    assert handle.stats()["steps"] == {
        "runs": 2,
        "num_steps": 2,
        "denoiser_calls": 2,
        "calls_by_branch": {"default": 2},
    }
    assert layouts[-1][1] == 2 * layouts[0][1] and layouts[-1][2] == 2 * layouts[0][2]
    handle.unpatch()


def test_method_state_is_reset_at_every_run(tiny):
    pipe = tiny("dit")
    handle = accel.patch(pipe, method="none")
    method = handle.methods[0]
    resets = []
    handle.tracker.on_new_run(lambda: resets.append(handle.tracker.runs))
    method.counters["leftover"] = 1
    generate(pipe, steps=2)
    assert "leftover" not in method.counters
    generate(pipe, steps=2)
    assert resets == [1, 2]
    handle.unpatch()


def test_a_failed_call_does_not_leak_into_the_next(tiny):
    pipe = tiny("pixart-alpha")
    handle = accel.patch(pipe, method="none")
    first_block = handle.target.adapter.blocks(pipe.transformer)[0].module
    boom = first_block.register_forward_pre_hook(lambda m, a: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        generate(pipe, steps=3)
    boom.remove()
    generate(pipe, steps=3)
    assert handle.stats()["steps"]["denoiser_calls"] == 3
    assert handle.stats()["steps"]["runs"] == 2
    handle.unpatch()


def test_hand_written_loop_on_a_bare_denoiser(bare_dit):
    """No pipeline, no cache_context: same timestep twice = two branches; a larger timestep = a new run."""
    model = bare_dit()
    handle = accel.patch(model, method="none")
    x, labels = torch.randn(1, 4, 8, 8), torch.tensor([1])
    seen = []
    for t in (900, 900, 500, 500, 100, 100, 900, 900):
        model(x, timestep=torch.tensor([t]), class_labels=labels)
        tr = handle.tracker
        seen.append((tr.runs, tr.step, tr.branch))
    assert seen == [
        (1, 0, "default"),
        (1, 0, "call1"),
        (1, 1, "default"),
        (1, 1, "call1"),
        (1, 2, "default"),
        (1, 2, "call1"),
        (2, 0, "default"),
        (2, 0, "call1"),
    ]
    handle.reset()
    model(x, timestep=torch.tensor([100]), class_labels=labels)
    assert (handle.tracker.runs, handle.tracker.step) == (3, 0)
    handle.unpatch()


def test_wan22_two_transformers_share_one_step_count(tiny):
    """Wan 2.2 runs high-noise steps on `transformer` and low-noise steps on `transformer_2`."""
    import copy

    from diffusers import WanPipeline

    base = tiny("wan")
    pipe = WanPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=base.vae,
        scheduler=base.scheduler,
        transformer=base.transformer,
        transformer_2=copy.deepcopy(base.transformer),
        boundary_ratio=0.5,
    )
    pipe.set_progress_bar_config(disable=True)
    handle = accel.patch(pipe, method="delta-dit")
    assert [d.component for d in handle.target.denoisers] == ["transformer", "transformer_2"]
    seen = {"transformer": [], "transformer_2": []}
    hooks = [
        getattr(pipe, name)
        .blocks[0]
        .register_forward_pre_hook(
            lambda m, a, name=name: seen[name].append((handle.tracker.step, handle.tracker.branch))
        )
        for name in seen
    ]
    kwargs = inputs(base, steps=6)
    with torch.inference_mode():
        pipe(**kwargs)
    for h in hooks:
        h.remove()
    steps = sorted({s for s, _ in seen["transformer"]}) + sorted({s for s, _ in seen["transformer_2"]})
    assert steps == list(range(6)) and seen["transformer"] and seen["transformer_2"]
    handle.unpatch()
