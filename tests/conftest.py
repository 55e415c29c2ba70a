"""Fixtures shared by every test folder (tests/ mirrors the source: accel/, caches/, sparse_attn/), the
markers, and one way to run Triton kernels under the interpreter.

Markers (pyproject.toml): `slow` (over ~20 s; CI runs them, `-m "not slow"` is a quick pass), `gpu`
(needs CUDA: skipped without it), `browser` (drives Chromium: the demo).
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

import accel
from accel.method import _REGISTRY

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # support.py and triton_interpreter.py, from every folder

from support import ClaimsBlocks, ScaleOutput, WanOnly  # noqa: E402


def pytest_collection_modifyitems(config, items):  # noqa: ANN001
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def triton_interpreter(request):  # noqa: ANN001
    """Runs the requesting test file as a script under TRITON_INTERPRET=1 (Triton reads the flag when a
    kernel is decorated, so it cannot be switched on inside the pytest process) and returns the JSON its
    last stdout line holds: `results = triton_interpreter()` or `triton_interpreter("overflow")`."""
    pytest.importorskip("triton")
    from triton_interpreter import run_child

    return lambda *args, timeout=600: run_child(str(request.path), *args, timeout=timeout)


@pytest.fixture
def test_methods():
    """Registers the test-only methods for one test and removes them afterwards."""
    added = [ScaleOutput, ClaimsBlocks, WanOnly]
    for cls in added:
        accel.register_method(cls)
    yield
    for cls in added:
        _REGISTRY.pop(cls.name, None)


@pytest.fixture
def tiny():
    """Builds (fresh) tiny zoo pipelines: tiny("pixart-alpha")."""

    def build(name: str, seed: int = 0):
        return accel.zoo.load(name, size="tiny", seed=seed)

    return build


@pytest.fixture
def bare_dit():
    """A tiny DiT denoiser without a pipeline, for hand-written denoising loops."""

    def build(num_layers: int = 2):
        from diffusers import DiTTransformer2DModel

        torch.manual_seed(0)
        return DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                     num_layers=num_layers, sample_size=8, patch_size=2, norm_num_groups=4).eval()

    return build
