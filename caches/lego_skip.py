"""LEGO's test-time brick skipping (Zheng et al., arXiv 2310.06389, ICLR 2024, section 3.3 and the project
page's `sampling_IN256_skip` figure), as an accel method on `accel.models.LEGOModel`.

Every LEGO brick is trained to denoise (the loss averages all bricks' outputs), so the stack without its
top brick is still a denoiser, and the paper skips the top brick for a fraction t_break of the reverse
steps, where its contribution matters least:

- a **global** brick (its regions larger than the brick below it; PG stacks, small -> image-sized) is
  skipped at the **low-noise** steps, the last t_break of them: the global layout is settled by then;
- a **local** brick (smaller regions than the brick below; PR stacks, large -> small) is skipped at the
  **high-noise** steps, the first t_break: local detail is not yet worth computing.

On ImageNet-256 (LEGO-XL, the project-page figure; values read off the plot) PG keeps FID about 2.05-2.55
at t_break 0.3-0.4 against 2.2 unskipped, and PR 2.45-2.7; t_break 0.5 costs more (PG 3.1). The default
`fraction=0.4` is the released `generate.py`'s intent (skip after 0.6 of the steps); its code skips
nothing (it returns after the last brick, and drops the flag under CFG), so this implements the paper's
description instead. `steps="auto"` picks the direction from the region sizes as above (the released
script codes only the PG direction).

Mechanism: a forward pre-hook on the model adds `skip_bricks=(brick,)` to the calls of the chosen steps
(`LEGOModel.forward` then returns the prediction of the last brick that ran: for the top brick, exactly
brick K-2's output in the full stack). Which steps is a static function of the step index and the run's
step count (the tracker's), `round(fraction * steps)` of them; batched CFG and every branch follow the same
schedule. It changes bricks, not blocks, so it composes with the block caches (`method=["lego-skip",
"tdc"]`: a skipped brick's blocks are simply not called, and TDC's per-block state starts when the brick
runs again, since the skipped steps are one contiguous run at the start or the end).

Skipping an inner brick (`brick` between 1 and K-2) is accepted: the next brick then receives the
previous brick's prediction in its place. The paper evaluates only the top brick.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from accel.config import MethodConfig, option
from accel.errors import InvalidOptionError, UnsupportedModelError
from accel.journal import Journal
from accel.method import Method
from accel.steps import StepTracker
from accel.target import PatchTarget

DIRECTIONS = ("auto", "low-noise", "high-noise")


@dataclass(frozen=True)
class LEGOSkipConfig(MethodConfig):
    method = "lego-skip"
    brick: int = option(-1, "the brick to skip, by index in the stack (negative: from the top; -1, the top "
                        "brick, is the paper's); brick 0 cannot be skipped")
    fraction: float = option(0.4, "t_break: the fraction of the steps at which the brick is skipped "
                             "(0 = never: exact)", low=0.0, high=1.0)
    steps: str = option("auto", "which steps: 'low-noise' (the last ones, for a global brick: PG), "
                        "'high-noise' (the first ones, for a local brick: PR), or 'auto' (from the brick's "
                        "region size against the brick below it)", choices=DIRECTIONS)


class LEGOSkip(Method):
    name = "lego-skip"
    summary = "LEGO test-time brick skipping: drop the top brick for a fraction of the steps (global: last, local: first)."
    paper = "LEGO, arXiv 2310.06389 (ICLR 2024)"
    families = ("lego",)
    claims = frozenset({"bricks"})
    Config = LEGOSkipConfig
    exact_options = {"fraction": 0.0}  # no step skips anything
    stats_keys = frozenset({"brick", "direction", "skipped_calls", "calls", "skip_rate"})

    def __init__(self, config: MethodConfig) -> None:
        super().__init__(config)
        self.plans: dict[int, tuple[int, str]] = {}  # id(model) -> (brick index, direction)

    def plan(self, model: torch.nn.Module) -> tuple[int, str]:
        """(brick index >= 1, "low-noise" or "high-noise") for `model`, or `InvalidOptionError` naming the
        option, its value and what this stack allows."""
        cfg = self.config
        n = model.num_bricks
        if n < 2:
            raise UnsupportedModelError(
                f"accel: method 'lego-skip' skips a brick that a lower brick stands in for; this "
                f"{type(model).__name__} has {n} brick, so there is none to skip.")
        try:
            (brick,) = model.check_skip((cfg.brick,))
        except ValueError as err:
            raise InvalidOptionError(
                f"lego-skip: option brick={cfg.brick!r} is not allowed for this {n}-brick {type(model).__name__}; "
                f"expected a value in [1, {n - 1}] or [-{n - 1}, -1] (brick 0 has no predecessor to stand in "
                f"for it). ({err})"
            ) from None
        direction = cfg.steps
        if direction == "auto":
            sizes = list(model.config.brick_sizes)
            here, below = sizes[brick], sizes[brick - 1]
            if here == below:
                raise InvalidOptionError(
                    f"lego-skip: option steps='auto' cannot tell whether brick {brick} is global or local: its "
                    f"regions ({here}) are as large as the brick below's; expected steps='low-noise' or 'high-noise'."
                )
            direction = "low-noise" if here > below else "high-noise"
        return brick, direction

    def check(self, target: PatchTarget) -> None:
        super().check(target)
        for d in target.denoisers:
            if not hasattr(d.module, "check_skip"):
                raise InvalidOptionError(f"lego-skip: {type(d.module).__name__} has no bricks to skip")
            self.plan(d.module)

    def skips(self, step: int, num_steps: int | None, direction: str) -> bool:
        """Whether the call at `step` (0-based) of a run of `num_steps` skips the brick: the last
        `floor(fraction * num_steps + 0.5)` steps (half rounded up) for "low-noise", the first ones for
        "high-noise"."""
        if num_steps is None or step < 0:
            return False
        count = math.floor(self.config.fraction * num_steps + 0.5)
        return step >= num_steps - count if direction == "low-noise" else step < count

    def needs_step_count(self) -> bool:
        """The schedule is a fraction of the run's steps."""
        return self.config.fraction > 0

    def apply(self, target: PatchTarget, journal: Journal, tracker: StepTracker) -> None:
        for d in target.denoisers:
            brick, direction = self.plan(d.module)

            @torch.compiler.disable  # bookkeeping in Python, outside any compiled graph
            def before(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any],
                       brick: int = brick, direction: str = direction) -> tuple[tuple, dict[str, Any]] | None:
                c = self.counters
                c["brick"], c["direction"] = brick, direction
                c["calls"] = c.get("calls", 0) + 1
                c.setdefault("skipped_calls", 0)
                if not self.skips(tracker.step, tracker.num_steps, direction):
                    return None
                c["skipped_calls"] += 1
                given = tuple(kwargs.get("skip_bricks") or ())
                return args, {**kwargs, "skip_bricks": (*given, brick)}

            journal.add_torch_hook(d.module.register_forward_pre_hook(before, with_kwargs=True))

    def stats(self) -> dict[str, Any]:
        out = dict(self.counters)
        calls = out.get("calls", 0)
        out["skip_rate"] = out.get("skipped_calls", 0) / calls if calls else 0.0
        return out
