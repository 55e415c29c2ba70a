"""Δ-DiT and TDC on the span-residual cache: exactness, schedules, CFG branches, per-call reset."""

from __future__ import annotations

import pytest
import torch
from support import snapshot

import accel
from accel.zoo import generate


def _computed_steps(handle, pipe):
    """For each block, the (step, branch) pairs at which it really ran (its first attention module fired)."""
    adapter = handle.target.adapter
    seen: dict[str, list[tuple[int, str]]] = {}
    hooks = []
    for ref in adapter.blocks(pipe.transformer):
        attn = next(s.module for s in adapter.attention_sites(pipe.transformer) if s.block.name == ref.name)
        rec = seen.setdefault(ref.name, [])
        hooks.append(
            attn.register_forward_pre_hook(
                lambda m, a, rec=rec: rec.append((handle.tracker.step, handle.tracker.branch))
            )
        )
    return seen, hooks


def _block_io_per_step(pipe, handle, block, steps):
    """Runs the patched pipeline and returns, per call of `block`, (step, hidden input, output); unpatches."""
    records = []
    h = block.register_forward_hook(
        lambda m, args, kwargs, out: records.append(
            (handle.tracker.step, kwargs.get("hidden_states", args[0] if args else None), out)
        ),
        with_kwargs=True,
    )
    generate(pipe, steps=steps)
    h.remove()
    handle.unpatch()
    return records


@pytest.mark.parametrize("name", ["pixart-alpha", "flux", "wan", "hunyuan-video", "sd3", "cogvideox"])
def test_interval_one_is_exact(tiny, name):
    pipe = tiny(name)
    reference = generate(pipe, steps=6)
    with accel.patch(pipe, method="delta-dit", interval=1) as handle:
        assert torch.equal(generate(pipe, steps=6), reference)
        assert handle.stats()["delta-dit"]["blocks_skipped"] == 0


def test_delta_dit_stage_schedule_rear_early_front_late(tiny):
    pipe = tiny("pixart-alpha")  # 2 blocks: front = block 0, rear = block 1
    handle = accel.patch(pipe, method="delta-dit", interval=3, boundary=0.6, warmup=2)
    seen, hooks = _computed_steps(handle, pipe)
    generate(pipe, steps=10)
    for h in hooks:
        h.remove()
    # boundary at step 6. Early: rear cached, refreshed every 3 steps after warm-up (computed at 1, 4);
    # late: front cached, its residual from step 5 reused at 6-7, refreshed at 8.
    assert [s for s, _ in seen["transformer_blocks.1"]] == [0, 1, 4, 6, 7, 8, 9]
    assert [s for s, _ in seen["transformer_blocks.0"]] == [0, 1, 2, 3, 4, 5, 8]
    assert _without_memory(handle.stats()["delta-dit"]) == {"block_calls": 20, "blocks_skipped": 6, "skip_rate": 0.3}
    handle.unpatch()


def test_separate_cfg_branches_each_follow_the_schedule(tiny):
    pipe = tiny("wan")
    handle = accel.patch(pipe, method="delta-dit", interval=3, boundary=0.6, warmup=2)
    seen, hooks = _computed_steps(handle, pipe)
    generate(pipe, steps=10)
    for h in hooks:
        h.remove()
    for branch in ("cond", "uncond"):
        assert [s for s, b in seen["blocks.1"] if b == branch] == [0, 1, 4, 6, 7, 8, 9]
        assert [s for s, b in seen["blocks.0"] if b == branch] == [0, 1, 2, 3, 4, 5, 8]
    handle.unpatch()


def test_skipped_span_replays_input_plus_residual(tiny):
    """With every block in the span and a long interval, a skipped step's block output is exactly the
    block input plus the residual stored at the refresh step."""
    pipe = tiny("pixart-alpha")
    handle = accel.patch(pipe, method="delta-dit", interval=100, cached_blocks=1, boundary=1.0, warmup=1)
    records = _block_io_per_step(pipe, handle, pipe.transformer.transformer_blocks[1], steps=4)
    (s0, in0, out0), (s1, in1, out1) = records[0], records[1]
    assert (s0, s1) == (0, 1)
    torch.testing.assert_close(out1, in1 + (out0 - in0), rtol=0, atol=1e-5)


def test_every_call_starts_empty_and_repeats_itself(tiny):
    pipe = tiny("flux")
    handle = accel.patch(pipe, method="delta-dit")
    first = generate(pipe, steps=8)
    stats = handle.stats()
    generate(pipe, steps=5, height=64, width=64)  # another step count and resolution in between
    assert torch.equal(generate(pipe, steps=8), first)
    assert handle.stats()["delta-dit"] == stats["delta-dit"]
    handle.unpatch()


def test_batch_of_two_skips_the_same_blocks(tiny):
    pipe = tiny("wan")
    with accel.patch(pipe, method="delta-dit") as handle:
        generate(pipe, steps=6)
        one = _without_memory(handle.stats()["delta-dit"])
        out = generate(pipe, steps=6, batch_size=2)
        assert _without_memory(handle.stats()["delta-dit"]) == one and torch.isfinite(out).all()


def test_tdc_skips_stable_blocks_at_most_max_skips_in_a_row(tiny):
    pipe = tiny("flux")  # 2 dual + 2 single blocks; the middle two are cached
    handle = accel.patch(pipe, method="tdc", threshold=1e6, max_skips=2, warmup=2, protected_blocks=1)
    seen, hooks = _computed_steps(handle, pipe)
    generate(pipe, steps=9)
    for h in hooks:
        h.remove()
    # computed at 0 and 1 (warm-up; the change is known from step 1), then two skips, then a refresh
    assert [s for s, _ in seen["transformer_blocks.1"]] == [0, 1, 4, 7]
    assert [s for s, _ in seen["single_transformer_blocks.0"]] == [0, 1, 4, 7]
    assert [s for s, _ in seen["transformer_blocks.0"]] == list(range(9))  # protected
    handle.unpatch()


def test_tdc_first_order_extrapolates_the_last_two_residuals(tiny):
    """order=1: computed at steps 0 and 1, a block skipped at steps 2 and 3 returns its input plus
    r1 + k (r1 - r0), k = 1 and 2 (steps since the last compute, in units of the gap between the two)."""
    pipe = tiny("pixart-alpha")
    handle = accel.patch(pipe, method="tdc", threshold=1e6, max_skips=2, warmup=2, protected_blocks=0, order=1)
    records = _block_io_per_step(pipe, handle, pipe.transformer.transformer_blocks[1], steps=5)
    assert [r[0] for r in records] == [0, 1, 2, 3, 4]
    r0, r1 = (records[i][2] - records[i][1] for i in (0, 1))
    for step, k in ((2, 1), (3, 2)):
        _, hidden_in, out = records[step]
        torch.testing.assert_close(out, hidden_in + r1 + k * (r1 - r0), rtol=1e-6, atol=1e-4)


def test_tdc_with_a_tiny_threshold_is_exact(tiny):
    pipe = tiny("hunyuan-video")
    reference = generate(pipe, steps=5)
    with accel.patch(pipe, method="tdc", threshold=1e-12, protected_blocks=0) as handle:
        assert torch.equal(generate(pipe, steps=5), reference)
        stats = handle.stats()["tdc"]
        assert stats["blocks_skipped"] == 0 and stats["block_calls"] == 5 * 4


def test_caches_unpatch_exactly_and_refuse_each_other(tiny):
    pipe = tiny("sd3")
    reference = generate(pipe, steps=4)
    before = snapshot(pipe)
    accel.patch(pipe, method="delta-dit").unpatch()
    assert snapshot(pipe) == before and torch.equal(generate(pipe, steps=4), reference)
    with pytest.raises(accel.IncompatibleMethodsError):
        accel.patch(pipe, method=["delta-dit", "tdc"])


def test_cached_blocks_out_of_range_is_refused_before_patching(tiny):
    pipe = tiny("dit")
    with pytest.raises(accel.InvalidOptionError, match=r"cached_blocks=5 is out of range .* 2 blocks"):
        accel.patch(pipe, method="delta-dit", cached_blocks=5)
    assert accel.patch_of(pipe) is None


def test_hand_written_loop_needs_the_step_count(bare_dit):
    model = bare_dit()
    handle = accel.patch(model, method="delta-dit", warmup=0)
    x, labels = torch.randn(1, 4, 8, 8), torch.tensor([1])
    with pytest.raises(RuntimeError, match="reset\\(num_steps=N\\)"):
        model(x, timestep=torch.tensor([900]), class_labels=labels)
    handle.reset(num_steps=4)
    for t in (900, 600, 300, 100):
        model(x, timestep=torch.tensor([t]), class_labels=labels)
    assert handle.stats()["delta-dit"]["blocks_skipped"] > 0
    handle.unpatch()


def test_overlapping_spans_skip_each_block_once_and_store_only_whole_spans():
    """digits-image has 4 blocks; cached_blocks=3 makes the front (0-2) and rear (1-3) spans overlap."""
    pipe = accel.zoo.load("digits-image")
    handle = accel.patch(pipe, method="delta-dit", cached_blocks=3, interval=3, boundary=0.6, warmup=2)
    seen, hooks = _computed_steps(handle, pipe)
    generate(pipe, steps=10)
    for h in hooks:
        h.remove()
    # rear skips 2, 3, 5; its stage ends at 6. The front residual of step 5 is not stored (the rear
    # replayed blocks 1-2 then), so the front computes at 6 and replays it at 7 and 8.
    assert [s for s, _ in seen["transformer_blocks.0"]] == [0, 1, 2, 3, 4, 5, 6, 9]
    assert [s for s, _ in seen["transformer_blocks.1"]] == [0, 1, 4, 6, 9]
    assert [s for s, _ in seen["transformer_blocks.2"]] == [0, 1, 4, 6, 9]
    assert [s for s, _ in seen["transformer_blocks.3"]] == [0, 1, 4, 6, 7, 8, 9]
    assert _without_memory(handle.stats()["delta-dit"]) == {"block_calls": 40, "blocks_skipped": 15, "skip_rate": 0.375}
    handle.unpatch()


def test_overlapping_spans_with_interval_one_are_exact():
    pipe = accel.zoo.load("digits-image")
    reference = generate(pipe, steps=5)
    with accel.patch(pipe, method="delta-dit", cached_blocks=3, interval=1) as handle:
        assert torch.equal(generate(pipe, steps=5), reference)
        assert handle.stats()["delta-dit"]["blocks_skipped"] == 0


def test_residuals_are_stored_only_where_a_later_step_can_use_them(tiny, monkeypatch):
    from accel.caches.span_cache import Span

    stored = []
    original = Span.store
    monkeypatch.setattr(Span, "store", lambda self, out: (stored.append(self.tracker.step), original(self, out)))
    pipe = tiny("pixart-alpha")
    reference = generate(pipe, steps=10)
    for method, options in (("delta-dit", {"interval": 1}), ("tdc", {"threshold": 0.0, "protected_blocks": 0})):
        with accel.patch(pipe, method=method, **options) as handle:  # nothing can be skipped: exact, no stores
            assert torch.equal(generate(pipe, steps=10), reference)
            assert stored == [] and handle.stats()[method]["blocks_skipped"] == 0
    with accel.patch(pipe, method="delta-dit", interval=3, boundary=0.6, warmup=2):
        generate(pipe, steps=10)
    # the schedule of test_delta_dit_stage_schedule_rear_early_front_late: the rear replays at 2-3 and 5
    # (stored at 1 and 4), the front at 6-7 and 9 (stored at 5 and 8); the other 10 computes store nothing
    assert sorted(stored) == [1, 4, 5, 8]
    with pytest.raises(accel.InvalidOptionError, match="threshold"):
        accel.patch(pipe, method="tdc", threshold=-0.1)
    with pytest.raises(accel.InvalidOptionError, match=r"protected_blocks=1 leaves no block .* 2 blocks"):
        accel.patch(pipe, method="tdc", protected_blocks=1)
    assert accel.patch_of(pipe) is None


def test_size_aware_defaults():
    from accel.caches.delta_dit import default_cached_blocks
    from accel.caches.tdc import default_protected_blocks

    assert [default_cached_blocks(n) for n in (1, 2, 4, 28, 57)] == [1, 1, 3, 21, 42]
    assert [default_protected_blocks(n) for n in (2, 4, 9, 10, 28, 40)] == [0, 0, 0, 1, 2, 4]


def test_no_skip_path_adds_no_tensor_operations(tiny):
    """Overhead when nothing can be skipped is the hooks' Python alone: not one aten op more than the
    patch machinery (`none`: the step tracker) runs."""
    from torch.profiler import profile

    pipe = tiny("pixart-alpha")

    def aten_ops() -> int:
        with profile() as prof:
            generate(pipe, steps=4)
        return sum(1 for e in prof.events() if e.name.startswith("aten::"))

    with accel.patch(pipe, method="none"):
        baseline = aten_ops()
    for method, options in (("delta-dit", {"interval": 1}), ("tdc", {"threshold": 0.0, "protected_blocks": 0})):
        with accel.patch(pipe, method=method, **options):
            assert aten_ops() == baseline, method


@pytest.mark.parametrize("method, options", [("delta-dit", {"interval": 2, "warmup": 1}), ("tdc", {"threshold": 0.5})])
def test_a_residual_with_nan_or_inf_is_never_cached(tiny, method, options, caplog):
    """A block that overflows at one step: its residual is not stored (so no later step replays it), and
    stats() counts it."""
    pipe = tiny("pixart-alpha")
    handle = accel.patch(pipe, method=method, **options)
    blocks = pipe.transformer.transformer_blocks
    calls = []

    def overflow(module, args, output):
        calls.append(1)
        return output * float("inf") if len(calls) == 1 else output  # the first block call only

    stored = []

    def spy(span):
        store = span.store

        def checked(output):
            store(output)
            if span.current.residual is not None:
                stored.append(all(bool(torch.isfinite(p).all()) for p in span.current.residual if p is not None))

        return checked

    for span in handle.methods[0].spans:
        span.store = spy(span)
    hooks = [block.register_forward_hook(overflow) for block in blocks]
    with caplog.at_level("WARNING", logger="accel"):
        generate(pipe, steps=6)
    for h in hooks:
        h.remove()
    assert handle.stats()[method]["nonfinite_residuals"] >= 1
    assert sum("NaN/inf" in r.getMessage() for r in caplog.records) >= 1
    assert all(stored)  # every residual that was stored is finite
    handle.unpatch()


def _without_memory(stats: dict) -> dict:
    """The counters, without `held_peak_MB` (its bounds are tests/test_memory_bounds.py's)."""
    return {k: v for k, v in stats.items() if k != "held_peak_MB"}
