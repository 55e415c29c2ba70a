"""Measuring one run: wall time, what the machine did meanwhile, peak memory, and the time spent in
attention (torch.profiler)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

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


@dataclass(frozen=True)
class Reading:
    """The clock and the machine at one instant. `own_cpu_s`: this process's CPU time, every thread;
    `busy_cpu_s`: the machine's busy CPU time, every process (steal included), None where unknown;
    `load`: the 1-minute load average, None where the OS has none."""

    wall_s: float
    own_cpu_s: float = 0.0
    busy_cpu_s: float | None = None
    load: float | None = None


class Probe(Protocol):
    """Where a run's time and the machine's load are read; tests inject a scripted one."""

    cpus: int

    def read(self) -> Reading: ...


class MachineProbe:
    """The wall clock (`time.perf_counter`), this process's CPU time and the machine's busy CPU time
    (psutil; on a VM these are the VM's CPUs) and `os.getloadavg()`."""

    def __init__(self) -> None:
        self.cpus = psutil.cpu_count() or 1
        self._process = psutil.Process()

    def read(self) -> Reading:
        wall = time.perf_counter()
        own = self._process.cpu_times()
        machine = psutil.cpu_times()
        idle = machine.idle + getattr(machine, "iowait", 0.0)
        busy = sum(machine) - idle - getattr(machine, "guest", 0.0) - getattr(machine, "guest_nice", 0.0)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        return Reading(wall, own.user + own.system, busy, load)


class WallClock:
    """The wall clock alone (no load readings): for callers that only want seconds."""

    cpus = 1

    def read(self) -> Reading:
        return Reading(time.perf_counter())


@dataclass(frozen=True)
class RunSample:
    """One timed run: `seconds` of wall time; `other_cpu`, the share of the machine's CPUs that other
    processes used meanwhile (0 = none, 1 = all of them; None when unknown); `load` at its end. The OS
    counts CPU time in ticks (10 ms on Linux), so runs shorter than about 0.2 s read it coarsely."""

    seconds: float
    other_cpu: float | None = None
    load: float | None = None

    @classmethod
    def between(cls, start: Reading, end: Reading, cpus: int) -> RunSample:
        seconds = end.wall_s - start.wall_s
        other = None
        if start.busy_cpu_s is not None and end.busy_cpu_s is not None and seconds > 0:
            foreign = (end.busy_cpu_s - start.busy_cpu_s) - (end.own_cpu_s - start.own_cpu_s)
            other = min(1.0, max(0.0, foreign / (seconds * cpus)))
        return cls(seconds, other, end.load)


def watched(fn: Callable[[], Any], device: torch.device, probe: Probe) -> tuple[Any, RunSample, int]:
    """Run `fn` once: (result, its `RunSample` read from `probe`, peak memory increase in bytes)."""
    memory = PeakMemory(device)
    _sync(device)
    with memory.track():
        start = probe.read()
        result = fn()
        _sync(device)
        end = probe.read()
    return result, RunSample.between(start, end, probe.cpus), memory.peak_bytes


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float, int]:
    """Run `fn` once: (result, seconds, peak memory increase in bytes)."""
    result, sample, peak = watched(fn, device, WallClock())
    return result, sample.seconds, peak


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
