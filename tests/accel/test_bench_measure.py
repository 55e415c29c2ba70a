"""accel/bench/measure.py: attention time is found for every backend diffusers dispatches to, flex
attention included (eager on a CPU its ops carry no attention name)."""

from __future__ import annotations

import torch
from diffusers.models import attention_dispatch
from diffusers.models.transformers import transformer_anyflow_far as far_module

from accel.bench.measure import attention_seconds


def test_flex_attention_through_diffusers_dispatcher_is_counted_and_the_dispatcher_restored():
    original = far_module.dispatch_attention_fn
    q = torch.randn(1, 128, 2, 16)  # diffusers' [B, S, H, D]

    def run() -> None:
        far_module.dispatch_attention_fn(q, q, q, backend="flex")  # as AnyFlow's causal processor calls it

    seconds, total = attention_seconds(run, torch.device("cpu"))
    assert 0 < seconds <= total
    assert far_module.dispatch_attention_fn is original is attention_dispatch.dispatch_attention_fn
