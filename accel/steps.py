"""Which denoising step and which CFG branch the denoiser is running, reset for every pipeline call.

Every method reads the step from one `StepTracker`. The tracker sees each denoiser call (see the
end of this docstring for how) and works out:

- the branch: the name of the pipeline's `cache_context` ("cond"/"uncond") when the pipeline opens one
  (Wan, Flux true CFG, HunyuanVideo...); otherwise a further call in the same iteration of the pipeline's
  loop (its counter `i`; without one, at the same timestep) is the next branch of the same step (separate
  cond/uncond calls without contexts), and a call in a new iteration is the first branch of a new step. Batched CFG (PixArt, DiT, SD3) is one call per step.
- the step: the number of earlier calls of the same branch in this run, or the pipeline's own
  `step_index` when its context carries one.
- a new run: whatever drives the denoiser is looked up on the call stack at each call: the innermost
  diffusers pipeline call (any pipeline, whichever scheduler it holds right now). Its denoising loop's
  `timesteps` is the run: a new `timesteps` object (every call sets its scheduler's timesteps anew) starts
  a new run, and its length is the run's step count, the denoiser calls the loop really makes (img2img's
  strength, Heun's 2N-1). Nothing is attached to the pipeline or its scheduler, so a second pipeline built
  from the same components, a swapped scheduler or a copy needs nothing of the patch. A bare denoiser (a
  hand-written loop) starts a new run after the `num_steps` given to `reset(num_steps)`; without one, when
  it sees a timestep larger than the last, and methods that keep state across steps refuse to run
  (`StepCountUnknownError`, raised here before the call). The reset is lazy: the stats of the last call
  stay readable until the next call starts.

The tracker watches the denoiser through torch's own forward (pre-)hooks rather than by wrapping its
`forward`, so the offload hooks that diffusers re-installs after each call (`enable_model_cpu_offload`)
cannot drop it, in whatever order patching and offloading happen. The pipeline's `cache_context` reaches
it through a stateful diffusers hook on the denoiser's first block (diffusers hands the context to every
stateful hook below the denoiser).
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

import torch
from diffusers.hooks import ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from . import compat
from .adapters import ModelAdapter, TokenLayout
from .journal import Journal


class _ContextReceiver(StateManager):
    """diffusers hands the pipeline's `cache_context` to every StateManager found on a stateful hook;
    this one keeps nothing but the context itself."""

    def __init__(self) -> None:
        super().__init__(BaseState)  # type: ignore[arg-type]  # diffusers annotates the class as an instance

    @property
    def current(self) -> Any | None:
        return compat.current_context(self)


def _timestep_value(t: Any) -> float | None:
    if isinstance(t, torch.Tensor):
        return float(t.detach().max()) if t.numel() else None  # max: per-token timesteps mark clean frames 0
    if isinstance(t, (int, float)):
        return float(t)
    return None


@dataclass(frozen=True)
class DenoisingLoop:
    """The pipeline call running the denoiser: its scheduler's `timesteps` (a new object at every call,
    since each call sets them anew), the number of steps its loop runs, and where the loop is."""

    timesteps: Any
    steps: int
    index: int | None  # the loop's own counter `i` (`for i, t in enumerate(timesteps)`), when it has one


def running_loop(frame: FrameType | None = None, max_depth: int = 64) -> DenoisingLoop | None:
    """The innermost diffusers pipeline call on this thread's stack (or from `frame` up), or None when no
    pipeline drives the denoiser. The step count is the pipeline's own `_num_timesteps` (the loop's length, which diffusers
    pipelines record before their loop: img2img's strength shortens it, Heun's 2N-1 lengthens it), else
    the length of its scheduler's timesteps."""
    utils = sys.modules.get("diffusers.pipelines.pipeline_utils")
    if utils is None:  # no diffusers pipeline was ever imported, so none is running
        return None
    if frame is None:
        frame = sys._getframe(1)
    for _ in range(max_depth):
        if frame is None:
            return None
        code = frame.f_code
        if code.co_argcount and code.co_varnames[0] == "self":
            pipeline = frame.f_locals.get("self")
            if isinstance(pipeline, utils.DiffusionPipeline):
                timesteps = getattr(getattr(pipeline, "scheduler", None), "timesteps", None)
                if timesteps is None or not hasattr(timesteps, "__len__") or not len(timesteps):
                    return None
                steps = getattr(pipeline, "_num_timesteps", None)
                if not isinstance(steps, int) or steps <= 0:
                    steps = len(timesteps)
                index = frame.f_locals.get("i")
                return DenoisingLoop(timesteps, steps, index if isinstance(index, int) else None)
        frame = frame.f_back
    return None


def _identity(obj: Any) -> Callable[[Any], bool]:
    """A test for 'is this still `obj`' that does not keep `obj` alive (weakly, or by id for lists)."""
    try:
        ref = weakref.ref(obj)
        return lambda other: ref() is other  # type: ignore[misc]
    except TypeError:
        key = id(obj)
        return lambda other: id(other) == key  # type: ignore[misc]


class StepTracker:
    """Per-call step and branch bookkeeping shared by every method of one patch."""

    def __init__(self) -> None:
        self.runs = 0  # pipeline calls (runs) started since patching
        self.num_steps: int | None = None  # the run's step count, when the pipeline told us
        self.step = -1  # step index of the current call within its branch
        self.branch = ""
        self.timestep: float | None = None
        self.denoiser: torch.nn.Module | None = None
        self.adapter: ModelAdapter | None = None
        self.call: dict[str, Any] = {}  # the current denoiser call's arguments by name
        self.needs_step_count: list[str] = []  # the methods that refuse to run without a step count
        self._on_new_run: list[Callable[[], None]] = []
        self._on_branch_end: list[Callable[[str], None]] = []
        self._on_call_end: list[Callable[[], None]] = []
        self._pending = True
        self._next_num_steps: int | None = None
        self._calls_by_branch: Counter[str] = Counter()
        self._calls_at_timestep = 0
        self._position: Any = None  # the loop counter (or timestep) of the last call
        self._bare_num_steps: int | None = None
        self._is_run: Callable[[Any], bool] | None = None  # is this `timesteps` the current run's?
        self._owner: threading.Thread | None = None  # the thread whose run is in progress
        self._complete = True  # the run reached its last step, failed, or was reset
        self._lock = threading.Lock()
        self._calling = threading.local()  # .active: this thread's current denoiser call was accepted
        self._layout: TokenLayout | None = None

    # ---- lifecycle ---------------------------------------------------------------------------
    def on_new_run(self, callback: Callable[[], None]) -> None:
        """Register a method's state reset; it runs at the start of every run."""
        self._on_new_run.append(callback)

    def on_branch_end(self, callback: Callable[[str], None]) -> None:
        """Register a method's release of per-branch state; it runs after a branch's last step (when the
        step count is known), so nothing a run computed is held after the run."""
        self._on_branch_end.append(callback)

    def on_call_end(self, callback: Callable[[], None]) -> None:
        """Register a method's callback after each denoiser call (before a branch's state is released)."""
        self._on_call_end.append(callback)

    def finished_call(self, failed: bool = False) -> None:
        """Called after each denoiser call (also one that raised): the call's arguments are let go, and the
        branch's last step releases its state. A call refused before it ran (another thread's run in
        progress) touches nothing."""
        if not getattr(self._calling, "active", False):
            return
        self._calling.active = False
        self.call = {}
        for note in self._on_call_end:
            note()
        if failed:
            self._complete = True
        if self.num_steps is not None and self.step >= self.num_steps - 1:
            self._complete = True
            for release in self._on_branch_end:
                release(self.branch)

    def reset(self, num_steps: int | None = None) -> None:
        """Begin a new run at the next denoiser call."""
        self._complete = True
        self._pending = True
        self._next_num_steps = num_steps

    def _start_run(self) -> None:
        self._owner, self._complete = threading.current_thread(), False
        self._pending = False
        self.num_steps, self._next_num_steps = self._next_num_steps, None
        self._bare_num_steps = self.num_steps  # a bare loop's run length, from reset(num_steps)
        self.runs += 1
        self._calls_by_branch.clear()
        self._calls_at_timestep = 0
        self._position = None
        self.timestep = None
        self.step = -1
        for callback in self._on_new_run:
            callback()

    # ---- per call ----------------------------------------------------------------------------
    def observe(self, denoiser: torch.nn.Module, adapter: ModelAdapter, args: tuple, kwargs: dict, context: Any) -> None:
        """Account for one denoiser call (called before the denoiser runs). One thread's run at a time:
        a call from another thread while a run is in progress raises `ConcurrentUseError`, before
        anything of it is counted or cached."""
        with self._lock:
            owner = self._owner
            if owner is not None and owner is not threading.current_thread() and self._in_progress(owner):
                from .errors import ConcurrentUseError

                raise ConcurrentUseError(
                    f"accel: this patched denoiser is in the middle of a run in thread {owner.name!r}; its caches "
                    "and step count belong to that run, so a call from another thread would corrupt both. Give each "
                    "thread its own patched model (copy the model before patching, then accel.patch each copy), "
                    "or run the calls one after the other (if that run was abandoned, call handle.reset())."
                )
            self._observe(denoiser, adapter, args, kwargs, context)
            self._calling.active = True

    def _in_progress(self, owner: threading.Thread) -> bool:
        """Whether `owner` is still inside its run: the run is not complete, and, when a pipeline drives it,
        that pipeline call is still on the owner's stack (a run abandoned by an exception is over)."""
        if self._complete or not owner.is_alive():
            return False
        if self._is_run is None:  # a bare loop: only its step count or a reset ends it
            return True
        frame = sys._current_frames().get(owner.ident or -1)
        loop = running_loop(frame) if frame is not None else None
        return loop is not None and self._is_run(loop.timesteps)

    def _observe(self, denoiser: torch.nn.Module, adapter: ModelAdapter, args: tuple, kwargs: dict, context: Any) -> None:
        call = adapter.bind_call(denoiser, args, kwargs)
        t = _timestep_value(call.get(adapter.timestep_arg))
        loop = running_loop()
        if loop is not None:
            if self._is_run is None or not self._is_run(loop.timesteps):
                self.reset(loop.steps)  # a pipeline call we have not seen yet
                self._is_run = _identity(loop.timesteps)
            elif self._pending and self._next_num_steps is None:
                self._next_num_steps = loop.steps  # reset() inside the run (diffusers, or the user)
        else:
            self._is_run = None
        if not self._pending and context is None and t is not None and self.timestep is not None and t != self.timestep:
            n = self._bare_num_steps
            if n is not None and self._calls_by_branch["default"] >= n:
                self._pending, self._next_num_steps = True, n  # a loop of n steps is over: a new one starts
            elif n is None and t > self.timestep:
                self._pending = True  # a bare denoiser started a new denoising loop
        if self._pending:
            self._start_run()
        if context is not None and getattr(context, "num_inference_steps", None):
            self.num_steps = int(context.num_inference_steps)
        if self.num_steps is None and self.needs_step_count:
            from .errors import StepCountUnknownError

            self._pending, self._complete = True, True  # nothing of this call was counted
            raise StepCountUnknownError(self.needs_step_count)
        if context is not None:
            branch = str(context.name)
        else:
            # further calls in one iteration of the loop (or, without its counter, at one timestep) are
            # further branches of one step; Heun's repeated timesteps are separate iterations
            position = loop.index if loop is not None and loop.index is not None else t
            same = position is not None and position == self._position
            self._calls_at_timestep = self._calls_at_timestep + 1 if same else 0
            branch = "default" if self._calls_at_timestep == 0 else f"call{self._calls_at_timestep}"
            self._position = position
        step_index = getattr(context, "step_index", None)
        self.step = int(step_index) if step_index is not None else self._calls_by_branch[branch]
        self._calls_by_branch[branch] += 1
        self.branch = branch
        self.timestep = t
        self.denoiser, self.adapter, self.call = denoiser, adapter, call
        self._layout = None

    @property
    def layout(self) -> TokenLayout:
        """The token layout of the current call (computed on first use)."""
        if self._layout is None:
            if self.adapter is None or self.denoiser is None:
                raise RuntimeError("accel: no denoiser call is in progress")
            self._layout = self.adapter.token_layout(self.denoiser, self.call)
        return self._layout

    def stats(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "num_steps": self.num_steps,
            "denoiser_calls": int(sum(self._calls_by_branch.values())),
            "calls_by_branch": dict(self._calls_by_branch),
        }


class ContextHook(ModelHook):
    """A stateful diffusers hook on the denoiser's first block: diffusers hands the pipeline's
    `cache_context` to every stateful hook under the denoiser, and resets them at the end of a call."""

    _is_stateful = True

    def __init__(self, tracker: StepTracker) -> None:
        super().__init__()
        self.tracker = tracker
        self.context = _ContextReceiver()

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        # diffusers calls this at the end of a pipeline call (`maybe_free_model_hooks`), for CacheMixin models
        self.tracker.reset()
        self.context.set_context(None)
        return module


def watch(tracker: StepTracker, denoiser: torch.nn.Module, adapter: ModelAdapter, journal: Journal,
          name: str) -> None:
    """Tell `tracker` about every call of `denoiser`, before it runs (ahead of any hook on the denoiser or
    below it) and after it returns or raises. torch forward hooks live on the module, not in its `forward`
    attribute, so offloading libraries that replace `forward` (and re-install themselves after each call)
    leave them in place."""
    context = ContextHook(tracker)
    blocks = adapter.blocks(denoiser)
    journal.add_model_hook(blocks[0].module if blocks else denoiser, context, name)
    journal.invalidate_hook_caches(denoiser)

    @torch.compiler.disable  # bookkeeping in Python, outside any compiled graph
    def before(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        tracker.observe(module, adapter, args, kwargs, context.context.current)

    @torch.compiler.disable
    def after(module: torch.nn.Module, args: tuple, output: Any) -> None:
        tracker.finished_call(failed=output is None)  # torch passes None when the forward raised

    journal.add_torch_hook(denoiser.register_forward_pre_hook(before, with_kwargs=True, prepend=True))
    journal.add_torch_hook(denoiser.register_forward_hook(after, always_call=True))
