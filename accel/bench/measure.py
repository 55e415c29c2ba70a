"""Measuring one run: wall time, peak memory, and the time spent in attention (torch.profiler)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import psutil
import torch
from torch.profiler import ProfilerActivity, profile

# Profiler event names that are attention: dense SDPA, FlexAttention, accel's own kernels, which run
# under `torch.profiler.record_function("accel::attention...")`, and diffusers' attention dispatcher
# (`_dispatch_ranges`: eager flex attention on a CPU runs as a compiled region with no attention name).
ATTENTION_EVENTS = ("aten::scaled_dot_product_attention", "flex_attention", "accel::attention", "xformers",
                    "diffusers::attention")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory increase of a run: CUDA max allocated on GPU; on CPU the peak RSS increase, sampled
    by a background thread every `interval` seconds."""

    def __init__(self, device: torch.device, interval: float = 0.005) -> None:
        self.device = device
        self.interval = interval
        self.peak_bytes = 0

    @contextmanager
    def track(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            start = torch.cuda.memory_allocated(self.device)
            yield self
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - start
            return
        proc = psutil.Process()
        start = proc.memory_info().rss
        peak = [start]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], proc.memory_info().rss)
                done.wait(self.interval)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            done.set()
            thread.join()
            peak[0] = max(peak[0], proc.memory_info().rss)
            self.peak_bytes = peak[0] - start


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float, int]:
    """Run `fn` once: (result, seconds, peak memory increase in bytes)."""
    memory = PeakMemory(device)
    _sync(device)
    with memory.track():
        start = time.perf_counter()
        result = fn()
        _sync(device)
        seconds = time.perf_counter() - start
    return result, seconds, memory.peak_bytes


@contextmanager
def _dispatch_ranges() -> Any:
    """While profiling: each call of diffusers' `dispatch_attention_fn` (in every diffusers module that
    imported it) runs in a "diffusers::attention" profiler range, so that a backend whose ops carry no
    attention name is counted; the modules get their own function back afterwards."""
    import sys

    dispatch = sys.modules.get("diffusers.models.attention_dispatch")
    original = getattr(dispatch, "dispatch_attention_fn", None)
    if original is None:
        yield
        return

    def ranged(*args: Any, **kwargs: Any) -> Any:
        with torch.profiler.record_function("diffusers::attention"):
            return original(*args, **kwargs)

    modules = [m for name, m in list(sys.modules.items())
               if name.startswith("diffusers.") and getattr(m, "dispatch_attention_fn", None) is original]
    for module in modules:
        module.dispatch_attention_fn = ranged
    try:
        yield
    finally:
        for module in modules:
            module.dispatch_attention_fn = original


def attention_seconds(fn: Callable[[], Any], device: torch.device) -> tuple[float, float]:
    """Run `fn` under torch.profiler: (seconds in attention ops, profiled run's total seconds)."""
    attention, _, total = attention_profile(fn, device)
    return attention, total


def attention_profile(fn: Callable[[], Any], device: torch.device) -> tuple[float, float, float]:
    """Run `fn` under torch.profiler: (seconds in attention ops, seconds of it in accel's own
    `accel::attention` ranges, the profiled run's total seconds)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    _sync(device)
    start = time.perf_counter()
    with _dispatch_ranges(), profile(activities=activities) as prof:
        fn()
        _sync(device)
    total = time.perf_counter() - start
    events = prof.events()
    return (_outermost_micros(events, device, ATTENTION_EVENTS) / 1e6,
            _outermost_micros(events, device, ("accel::attention",)) / 1e6, total)


def _outermost_micros(events: Any, device: torch.device, names: tuple[str, ...]) -> float:
    """Sum the events named (by prefix) in `names` that are not nested in another such event (accel's
    kernels may call SDPA inside their own `accel::attention` range; each microsecond counts once)."""

    def named(event: Any) -> bool:
        return any(event.name.startswith(name) for name in names)

    micros = 0.0
    for event in events:
        if not named(event):
            continue
        parent, nested = event.cpu_parent, False
        while parent is not None and not nested:
            nested = named(parent)
            parent = parent.cpu_parent
        if not nested:
            micros += event.device_time_total if device.type == "cuda" else event.cpu_time_total
    return micros
