"""What `accel tune` searches: each method's key options, their compositions, and fewer steps.

A method applies when its `check` accepts the pipeline (as `accel bench`'s "auto" decides). Its grid is
`GRID[name]` (every combination of the listed values, other options at their defaults); a method with
no grid is tried at its defaults. `sixbit` is left out unless asked for: it needs a calibration file and
is not faster on a CPU. A `--methods` token with options ("tdc(order=1)") is tried as it is.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from .search import Parts

GRID: dict[str, dict[str, tuple[Any, ...]]] = {
    # TDC: order 1 extrapolates; a higher threshold and more skips in a row are faster (docs/benchmarks.md:
    # order 1, threshold 0.5, 3 skips beat fewer steps on digits-video)
    "tdc": {"order": (0, 1), "threshold": (0.1, 0.3, 0.5, 1.0), "max_skips": (2, 3, 4)},
    "delta-dit": {"interval": (2, 3, 4)},
    "pisa": {"density": (0.125, 0.25)},
    "adaspa": {"sparsity": (0.6, 0.8)},
    "lego-skip": {"fraction": (0.2, 0.4, 0.6)},
}
NOT_SEARCHED = {"sixbit": "needs a calibration file (accel calibrate) and is not faster on a CPU; "
                          "ask for it with --methods 'sixbit(calibration=FILE)'"}
STEP_FRACTIONS = (1.0, 0.8, 0.6, 0.5, 0.4, 0.35, 0.3, 0.25)


def steps_grid(base: int, fractions: Sequence[float] = STEP_FRACTIONS) -> list[int]:
    """The step counts tried: fractions of the exact run's `base` steps, at least 2: 20 -> 20, 16, 12,
    10, 8, 7, 6, 5."""
    return sorted({max(2, round(base * f)) for f in fractions if round(base * f) <= base} | {base}, reverse=True)


def grid(name: str, fixed: dict[str, Any] | None = None) -> list[Parts]:
    """The variants of one method: `fixed` options as given, else every combination of its `GRID`."""
    if fixed:
        return [((name, tuple(fixed.items())),)]
    axes = GRID.get(name, {})
    combos = itertools.product(*axes.values()) if axes else [()]
    return [((name, tuple(zip(axes, combo, strict=True))),) for combo in combos]


def applicable(pipe: Any, names: Sequence[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The methods that can patch `pipe` (of `names`, or every registered one but those in `NOT_SEARCHED`),
    and why each other one is not searched."""
    import accel
    from accel.method import method_class
    from accel.target import resolve_target

    target = resolve_target(pipe)
    asked = list(names) if names else [m.name for m in accel.methods()]
    out, why = [], {}
    for name in asked:
        if not names and name in NOT_SEARCHED:
            why[name] = NOT_SEARCHED[name]
            continue
        cls = method_class(name)
        try:
            cls(cls.Config()).check(target)
        except accel.AccelError as err:
            if names:
                raise
            why[name] = str(err).removeprefix("accel: ")
            continue
        if name != "none":
            out.append(name)
    return out, why


def variants(pipe: Any, methods: Sequence[str] | None = None) -> tuple[list[Parts], dict[str, str]]:
    """The variants to screen on `pipe`: `none` (the exact model: fewer steps alone), and each
    applicable method's grid. `methods`: `--methods` entries (names, or tokens with options) to search
    instead of every method. Returns (variants, {method: why it is not searched})."""
    from accel.bench.variants import parse_entry

    fixed: dict[str, list[dict[str, Any]]] = {}
    for entry in methods or ():
        for name, opts in parse_entry(entry):
            fixed.setdefault(name, []).append(opts)
    names, why = applicable(pipe, list(fixed) or None)
    out: list[Parts] = [(("none", ()),)]
    for name in names:
        for opts in fixed.get(name, [{}]):
            out += grid(name, opts)
    return out, why


def composable(a: str, b: str) -> bool:
    """Whether methods `a` and `b` change different parts of the model (a sparse attention and a step
    cache), so that one patch can hold both."""
    from accel.method import method_class

    ca, cb = method_class(a).claims, method_class(b).claims
    return bool(ca) and bool(cb) and not (ca & cb)
