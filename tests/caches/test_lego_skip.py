"""lego-skip: LEGO's test-time brick skipping applied at exactly the steps its options name, in the direction
the stack implies, refused cleanly where it cannot run, bit-identical after unpatch, and composable with
the block caches. (The shared contract runs it on the zoo's tiny "lego": tests/test_method_contract.py.)"""

from __future__ import annotations

import pytest
import torch
from support import snapshot

import accel
from accel.models import LEGOModel, LEGOPipeline

STEPS = 10


@pytest.fixture
def lego():
    return accel.zoo.load("lego")


def _skips_per_step(pipe, **call) -> list[tuple[int, ...]]:
    """The `skip_bricks` each denoiser call received (a pre-hook registered after accel's runs after it)."""
    seen: list[tuple[int, ...]] = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda m, a, kw: seen.append(tuple(kw.get("skip_bricks") or ())), with_kwargs=True)
    try:
        accel.zoo.generate(pipe, steps=STEPS, **call)
    finally:
        hook.remove()
    return seen


@pytest.mark.parametrize("steps,fraction,expected", [
    ("auto", 0.4, [6, 7, 8, 9]),  # a PG stack (2 -> 4 -> 8): the global top brick, the last 40% of the steps
    ("low-noise", 0.25, [7, 8, 9]),  # 2.5 steps: half rounded up
    ("high-noise", 0.5, [0, 1, 2, 3, 4]),
    ("auto", 1.0, list(range(10))),
    ("auto", 0.04, []),
])
def test_the_brick_is_skipped_at_exactly_the_scheduled_steps(lego, steps, fraction, expected):
    handle = accel.patch(lego, method="lego-skip", steps=steps, fraction=fraction)
    try:
        seen = _skips_per_step(lego)
        stats = handle.stats()["lego-skip"]
    finally:
        handle.unpatch()
    assert [i for i, s in enumerate(seen) if s] == expected
    assert all(s == (2,) for s in seen if s)
    assert stats["skipped_calls"] == len(expected) and stats["calls"] == STEPS and stats["brick"] == 2
    assert stats["direction"] == ("high-noise" if steps == "high-noise" else "low-noise")


def test_skipped_steps_really_skip_the_brick_and_change_the_result(lego):
    base = accel.zoo.generate(lego, steps=STEPS)
    top = []
    hook = lego.transformer.model[2].register_forward_hook(lambda m, a, o: top.append(1))
    handle = accel.patch(lego, method="lego-skip")  # top brick, last 40%
    out = accel.zoo.generate(lego, steps=STEPS)
    handle.unpatch()
    assert len(top) == STEPS - 4  # 6 of 10 steps ran the top brick
    hook.remove()
    assert not torch.equal(out, base) and torch.isfinite(out).all()
    # batched CFG: both halves follow the schedule in one call
    assert accel.zoo.inputs(lego)["guidance_scale"] > 1


def test_auto_follows_the_stack_direction():
    torch.manual_seed(0)
    pr = LEGOModel(sample_size=8, in_channels=4, hidden_size=32, num_heads=2, brick_sizes=(8, 4, 2),
                   patch_sizes=(1, 2, 1), depths=(1, 1, 1), num_classes=10).eval()
    lego = accel.zoo.load("lego")
    pipe = LEGOPipeline(transformer=pr, scheduler=lego.scheduler, vae=lego.vae)
    pipe.set_progress_bar_config(disable=True)
    handle = accel.patch(pipe, method="lego-skip", fraction=0.3)
    seen = _skips_per_step(pipe, height=16, width=16)
    handle.unpatch()
    assert [i for i, s in enumerate(seen) if s] == [0, 1, 2]  # a local top brick: the high-noise steps
    flat = LEGOModel(sample_size=8, in_channels=4, hidden_size=32, num_heads=2, brick_sizes=(4, 4),
                     patch_sizes=(1, 1), depths=(1, 1), num_classes=10)
    with pytest.raises(accel.InvalidOptionError, match="steps='auto' cannot tell"):
        accel.patch(flat, method="lego-skip")
    accel.patch(flat, method="lego-skip", steps="low-noise").unpatch()


def test_bad_options_and_models_are_refused_before_anything_changes(lego):
    accel.zoo.generate(lego, steps=2)
    before = snapshot(lego)
    for options, match in [({"brick": 0}, "option brick=0"), ({"brick": 3}, "option brick=3"),
                           ({"brick": -4}, "option brick=-4"), ({"fraction": 1.5}, "option fraction=1.5"),
                           ({"steps": "late"}, "option steps='late'")]:
        with pytest.raises(accel.InvalidOptionError, match=match):
            accel.patch(lego, method="lego-skip", **options)
        assert snapshot(lego) == before and accel.patch_of(lego) is None
    with pytest.raises(accel.UnsupportedModelError, match="supports: lego"):
        accel.patch(accel.zoo.load("dico"), method="lego-skip")
    single = LEGOModel(sample_size=8, in_channels=4, hidden_size=32, num_heads=2, brick_sizes=(4,),
                       patch_sizes=(1,), depths=(1,), num_classes=10)
    with pytest.raises(accel.UnsupportedModelError, match="has 1 brick, so there is none to skip"):
        accel.patch(single, method="lego-skip")


def test_unpatch_is_bit_identical_and_fraction_zero_is_exact(lego):
    base = accel.zoo.generate(lego, steps=STEPS)
    before = snapshot(lego)
    with accel.patch(lego, method="lego-skip", fraction=0.0):
        assert torch.equal(accel.zoo.generate(lego, steps=STEPS), base)
    handle = accel.patch(lego, method="lego-skip", brick=1, fraction=0.7)
    accel.zoo.generate(lego, steps=STEPS)
    handle.unpatch()
    assert snapshot(lego) == before and torch.equal(accel.zoo.generate(lego, steps=STEPS), base)


def test_composes_with_the_block_caches(lego):
    handle = accel.patch(lego, method=["lego-skip", "tdc"])
    try:
        seen = _skips_per_step(lego)
        stats = handle.stats()
    finally:
        handle.unpatch()
    assert sum(1 for s in seen if s) == 4 and stats["lego-skip"]["skipped_calls"] == 4
    # tdc hooked every brick's blocks; the top brick's 2 blocks ran at 6 steps only
    assert stats["tdc"]["block_calls"] == STEPS * 2 + 6 * 2
    with accel.patch(lego, method=["lego-skip", "delta-dit"]) as both:
        out = accel.zoo.generate(lego, steps=STEPS)
        assert both.stats()["lego-skip"]["skipped_calls"] == 4 and torch.isfinite(out).all()
