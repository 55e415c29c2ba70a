"""Which denoising step and which CFG branch the denoiser is running, reset for every pipeline call.

Every method reads the step from one `StepTracker`. The tracker sees each denoiser call through a
diffusers `ModelHook` and works out:

- the branch: the name of the pipeline's `cache_context` ("cond"/"uncond") when the pipeline opens one
  (Wan, Flux true CFG, HunyuanVideo...); otherwise a call at the same timestep as the previous one is the
  next branch of the same step (separate cond/uncond calls without contexts), and a call at a new
  timestep is the first branch of a new step. Batched CFG (PixArt, DiT, SD3) is one call per step.
- the step: the number of earlier calls of the same branch in this run, or the pipeline's own
  `step_index` when its context carries one.
- a new run: started when the pipeline's scheduler sets its timesteps (the start of every pipeline call),
  after diffusers resets stateful hooks (the end of a call), or on `reset()`. A bare denoiser (a
  hand-written loop) starts a new run after the `num_steps` given to `reset(num_steps)`; without one, when
  it sees a timestep larger than the last, and methods that keep state across steps refuse to run
  (`StepCountUnknownError`, raised here before the call). The reset is lazy: the stats of the last call
  stay readable until the next call starts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from diffusers.hooks import ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from . import compat
from .adapters import ModelAdapter, TokenLayout


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
        self._pending = True
        self._next_num_steps: int | None = None
        self._calls_by_branch: Counter[str] = Counter()
        self._calls_at_timestep = 0
        self._bare_num_steps: int | None = None
        self._layout: TokenLayout | None = None

    # ---- lifecycle ---------------------------------------------------------------------------
    def on_new_run(self, callback: Callable[[], None]) -> None:
        """Register a method's state reset; it runs at the start of every run."""
        self._on_new_run.append(callback)

    def on_branch_end(self, callback: Callable[[str], None]) -> None:
        """Register a method's release of per-branch state; it runs after a branch's last step (when the
        step count is known), so nothing a run computed is held after the run."""
        self._on_branch_end.append(callback)

    def finished_call(self) -> None:
        """Called after each denoiser call: the call's arguments are let go, and the branch's last step
        releases its state."""
        self.call = {}
        if self.num_steps is not None and self.step >= self.num_steps - 1:
            for callback in self._on_branch_end:
                callback(self.branch)

    def reset(self, num_steps: int | None = None) -> None:
        """Begin a new run at the next denoiser call."""
        self._pending = True
        self._next_num_steps = num_steps

    def _start_run(self) -> None:
        self._pending = False
        self.num_steps, self._next_num_steps = self._next_num_steps, None
        self._bare_num_steps = self.num_steps  # a bare loop's run length, from reset(num_steps)
        self.runs += 1
        self._calls_by_branch.clear()
        self._calls_at_timestep = 0
        self.timestep = None
        self.step = -1
        for callback in self._on_new_run:
            callback()

    # ---- per call ----------------------------------------------------------------------------
    def observe(self, denoiser: torch.nn.Module, adapter: ModelAdapter, args: tuple, kwargs: dict, context: Any) -> None:
        """Account for one denoiser call (called before the denoiser runs)."""
        call = adapter.bind_call(denoiser, args, kwargs)
        t = _timestep_value(call.get(adapter.timestep_arg))
        if not self._pending and context is None and t is not None and self.timestep is not None and t != self.timestep:
            n = self._bare_num_steps
            if n is not None and self._calls_by_branch["default"] >= n:
                self._pending, self._next_num_steps = True, n  # a bare loop of n steps is over: the next
            elif n is None and t > self.timestep:
                self._pending = True  # a bare denoiser started a new denoising loop
        if self._pending:
            self._start_run()
        if context is not None and getattr(context, "num_inference_steps", None):
            self.num_steps = int(context.num_inference_steps)
        if self.num_steps is None and self.needs_step_count:
            from .errors import StepCountUnknownError

            self._pending = True  # nothing of this call was counted
            raise StepCountUnknownError(self.needs_step_count)
        if context is not None:
            branch = str(context.name)
        else:
            self._calls_at_timestep = self._calls_at_timestep + 1 if t is not None and t == self.timestep else 0
            branch = "default" if self._calls_at_timestep == 0 else f"call{self._calls_at_timestep}"
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


class StepTrackerHook(ModelHook):
    """Sits on a denoiser and tells the tracker about every call. Registered outermost, so that it runs
    before any method's hook on the same module."""

    _is_stateful = True

    def __init__(self, tracker: StepTracker, adapter: ModelAdapter) -> None:
        super().__init__()
        self.tracker = tracker
        self.adapter = adapter
        self.context = _ContextReceiver()

    def pre_forward(self, module: torch.nn.Module, *args, **kwargs):
        self.tracker.observe(module, self.adapter, args, kwargs, self.context.current)
        return args, kwargs

    def post_forward(self, module: torch.nn.Module, output: Any) -> Any:
        self.tracker.finished_call()
        return output

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        # diffusers calls this at the end of every pipeline call (`maybe_free_model_hooks`).
        self.tracker.reset()
        self.context.set_context(None)
        return module
