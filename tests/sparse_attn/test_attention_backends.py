"""PISA and AdaSpa under diffusers' attention-dispatcher backends: the ones that end in SDPA are served;
any other is refused at patch time or, when it comes into force later, counted as a fallback and logged.
Never silently nothing."""

from __future__ import annotations

import logging

import pytest
import torch
from diffusers.models.attention_dispatch import _AttentionBackendRegistry, attention_backend

import accel
from accel.zoo import generate

EXACT = {"pisa": {"density": 1.0, "dense_steps": 0.0, "dense_layers": 0},
         "adaspa": {"sparsity": 0.0, "dense_steps": 0.0, "dense_layers": 0}}
FLEX = "attention backend 'flex' (not SDPA)"


@pytest.fixture(autouse=True)
def restore_the_default_backend():
    """diffusers' set_attention_backend also makes its backend the process-wide default."""
    previous = _AttentionBackendRegistry.get_active_backend()[0]
    yield
    _AttentionBackendRegistry.set_active_backend(previous)


@pytest.mark.parametrize("method", sorted(EXACT))
@pytest.mark.parametrize("name", ["flux", "wan"])
def test_a_backend_without_sdpa_is_refused_at_patch_time(tiny, name, method):
    pipe = tiny(name)
    pipe.transformer.set_attention_backend("flex")
    with pytest.raises(accel.UnsupportedModelError, match=r"'flex'.*allowed backends: native"):
        accel.patch(pipe, method=method, **EXACT[method])
    assert accel.patch_of(pipe) is None


@pytest.mark.parametrize("method", sorted(EXACT))
def test_a_backend_set_after_patching_is_counted_and_logged(tiny, method, caplog):
    pipe = tiny("flux")
    handle = accel.patch(pipe, method=method, **EXACT[method])
    pipe.transformer.set_attention_backend("flex")
    with caplog.at_level(logging.WARNING, logger="accel"):
        out = generate(pipe, steps=2)
    stats = handle.stats()[method]
    assert stats["sparse_calls"] == 0 and stats["fallbacks"] == {FLEX: 2 * 4}  # 2 steps x 4 joint/self sites
    assert sum(FLEX in r.getMessage() for r in caplog.records) == 1
    handle.unpatch()
    assert torch.equal(out, generate(pipe, steps=2))  # what the flex backend computes, untouched


def test_the_backend_context_manager_is_seen_per_call(tiny):
    pipe = tiny("flux")
    handle = accel.patch(pipe, **{"method": "pisa", **EXACT["pisa"]})
    with attention_backend("flex"):
        generate(pipe, steps=2)
    assert handle.stats()["pisa"]["fallbacks"] == {FLEX: 8}
    generate(pipe, steps=2)  # native again: every site runs the method
    assert handle.stats()["pisa"]["sparse_calls"] == 8 and "fallbacks" not in handle.stats()["pisa"]
    handle.unpatch()


@pytest.mark.parametrize("backend", ["native", "_native_math"])
def test_backends_that_end_in_sdpa_run_the_method_exactly(tiny, backend):
    pipe = tiny("wan")
    pipe.transformer.set_attention_backend(backend)
    reference = generate(pipe, steps=2)
    with accel.patch(pipe, **{"method": "pisa", **EXACT["pisa"]}) as handle:
        out = generate(pipe, steps=2)
        assert handle.stats()["pisa"]["sparse_calls"] > 0
    torch.testing.assert_close(out, reference, atol=1e-4, rtol=0)
