"""The bench's quantization peers (accel/bench/variants.py): each builds a quantized copy of the
transformer the way its users do (torchao's quantize_, diffusers' quantization configs at
from_pretrained), swaps it in for its row and out after it, and leaves the pipeline's own transformer as
it was; peers that cannot run here are named with the reason."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import accel.zoo
from accel.bench import variants as V
from accel.zoo import generate


def _runnable(name: str) -> bool:
    return V.quant_peer_support(name) is None


@pytest.mark.parametrize("name", [n for n in V.QUANT_PEERS if n != "diffusers-bnb-8bit"])
def test_quant_peer_swaps_in_a_quantized_copy_and_out_again(name):
    if not _runnable(name):
        pytest.skip(V.quant_peer_support(name))
    pipe = accel.zoo.load("wan", size="tiny")
    original = pipe.transformer
    weights = {n: p.detach().clone() for n, p in original.named_parameters()}
    baseline = generate(pipe, steps=2)
    row = V.quant_peer(name, steps=2)
    saved = row.enable(pipe)
    quantized = pipe.transformer
    assert quantized is not original
    to_q = quantized.blocks[0].attn1.to_q.weight
    assert type(to_q) is not torch.nn.Parameter or to_q.dtype == torch.int8, type(to_q)  # a quantized tensor
    out = generate(pipe, steps=2)
    row.disable(pipe, saved)
    assert pipe.transformer is original
    assert all(torch.equal(p, weights[n]) for n, p in original.named_parameters())
    assert torch.equal(generate(pipe, steps=2), baseline)
    error = float((out - baseline).norm() / baseline.norm())
    assert 0 < error < 0.1  # int8 weights: close to, not equal to, full precision


def test_unavailable_quant_peers_say_why(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert "optimum.quanto is not installed" in V.quant_peer_support("diffusers-quanto-int8")
    assert "torchao is not installed" in V.quant_peer_support("torchao-int8wo")
    if not torch.cuda.is_available():
        monkeypatch.undo()
        reason = V.quant_peer_support("diffusers-bnb-8bit")
        assert reason is None or "GPU" in reason or "not installed" in reason
