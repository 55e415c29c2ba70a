"""`accel.patch` / `accel.unpatch`: apply methods to one pipeline or model instance, reversibly.

Everything that can be wrong with a request (unknown method, bad option, unsupported model, clashing
methods, a second patch) is found before anything is changed. The changes themselves go through one
`Journal`, so a method that fails half-way leaves the object untouched and `unpatch()` restores it
exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import weakref
from collections.abc import Sequence
from typing import Any

from . import parallel
from .config import MethodConfig
from .errors import (
    AccelError,
    AlreadyPatchedError,
    IncompatibleMethodsError,
    InvalidOptionError,
    PatchedCopyError,
    UnknownMethodError,
    closest,
)
from .journal import Journal
from .method import Method, method_class
from .steps import StepTracker, watch
from .target import PatchTarget, resolve_target

TRACKER_HOOK = "accel.step_tracker"

# Every patched object (the target and each of its denoisers) -> its live Patch.
_PATCHES: weakref.WeakKeyDictionary[Any, Patch] = weakref.WeakKeyDictionary()

MethodSpec = str | MethodConfig


class Patch:
    """The handle `accel.patch` returns: the methods in force, their stats, and `unpatch()`."""

    def __init__(self, target: PatchTarget, methods: list[Method], tracker: StepTracker, journal: Journal) -> None:
        self.target = target
        self.methods = tuple(methods)
        self.tracker = tracker
        self._journal = journal
        self.parallel_stats: dict[str, Any] = {}  # filled by accel.parallel under ring attention

    @property
    def active(self) -> bool:
        return not self._journal.closed

    @property
    def config(self) -> MethodConfig | tuple[MethodConfig, ...]:
        """The validated config (a tuple of configs for a composition)."""
        configs = tuple(m.config for m in self.methods)
        return configs[0] if len(configs) == 1 else configs

    def stats(self) -> dict[str, Any]:
        """Counters of the last (or current) pipeline call: steps seen, and what each method did."""
        out: dict[str, Any] = {"methods": [m.name for m in self.methods], "steps": self.tracker.stats()}
        for m in self.methods:
            out[m.name] = m.stats()
        if self.parallel_stats:  # attention calls run as ring attention on accel's engine
            out["parallel"] = dict(self.parallel_stats)
        return out

    def reset(self, num_steps: int | None = None) -> None:
        """Start a fresh run at the next denoiser call (for hand-written denoising loops, which can
        tell the step count here)."""
        self.tracker.reset(num_steps)

    def unpatch(self) -> None:
        """Restore the target exactly as it was before `accel.patch`; a method that cannot (its originals
        were freed) refuses first, changing nothing."""
        if self.active:
            for m in self.methods:
                m.before_unpatch()
            self._journal.rollback()

    def __enter__(self) -> Patch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.unpatch()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return f"Patch({', '.join(m.name for m in self.methods)} on {self.target.describe()}, {state})"


def _configs(method: MethodSpec | Sequence[MethodSpec], options: dict[str, Any]) -> list[MethodConfig]:
    if isinstance(method, (str, MethodConfig)):
        specs = [method]
    elif isinstance(method, (list, tuple)):
        specs = list(method)
    else:
        raise UnknownMethodError(
            f"accel: method={method!r} is neither a method name, a method config, nor a list of them; "
            "see accel.methods()."
        )
    if not specs:
        raise AccelError("accel: method= is an empty list; give at least one method name.")
    if len(specs) > 1 and options:
        raise InvalidOptionError(
            f"accel: options {sorted(options)} were given with a composition of {len(specs)} methods; pass each "
            "method's options in its config object instead, e.g. method=[PISAConfig(density=0.1), 'delta-dit']."
        )
    configs = []
    for spec in specs:
        if isinstance(spec, MethodConfig):
            method_class(spec.method)
            if options:
                names = [f.name for f in dataclasses.fields(spec)]
                for key in options:
                    if key not in names:
                        raise InvalidOptionError(
                            f"{spec.method}: unknown option {key!r}.{closest(key, names)} "
                            f"Allowed options: {', '.join(names) or 'none'}."
                        )
                spec = dataclasses.replace(spec, **options)
            configs.append(spec)
        elif isinstance(spec, str):
            configs.append(method_class(spec).Config.from_options(**options))
        else:
            raise UnknownMethodError(
                f"accel: method={spec!r} is neither a method name nor a method config; see accel.methods()."
            )
    return configs


def _check_compatible(methods: list[Method]) -> None:
    seen: dict[str, str] = {}
    names = [m.name for m in methods]
    for name in set(names):
        if names.count(name) > 1:
            raise IncompatibleMethodsError(f"accel: method {name!r} appears twice in the composition.")
    for m in methods:
        for part in m.claims:
            if part in seen:
                raise IncompatibleMethodsError(
                    f"accel: methods {seen[part]!r} and {m.name!r} both change the model's {part}; "
                    "they cannot be combined."
                )
            seen[part] = m.name


def _check_not_patched(target: PatchTarget) -> None:
    for obj in (target.obj, *(d.module for d in target.denoisers)):
        existing = _PATCHES.get(obj)
        if existing is not None and existing.active:
            raise AlreadyPatchedError(
                f"accel: {type(obj).__name__} is already patched ({existing!r}). Call accel.unpatch() first, "
                "or compose methods in one call: accel.patch(target, method=['a', 'b'])."
            )


def _refuse_copy(name: str, memo: dict) -> Any:
    raise PatchedCopyError(
        f"accel: copy.deepcopy of a patched {name} would share the patch's hooks and state with the original; "
        "copy before patching (or unpatch, copy, and patch each copy): accel.patch(copy, method=...)."
    )


def _register(obj: Any, patch: Patch, journal: Journal) -> None:
    """Record `obj`'s patch, and refuse deep copies of it while patched (per instance, undone with it)."""
    _PATCHES[obj] = patch
    journal.set_attr(obj, "__deepcopy__", functools.partial(_refuse_copy, type(obj).__name__))

    def forget() -> None:
        _PATCHES.pop(obj, None)

    journal.call_on_undo(forget)


def _checked(target: Any, method: MethodSpec | Sequence[MethodSpec],
             options: dict[str, Any]) -> tuple[PatchTarget, list[Method]]:
    """Every check `patch` makes before it touches anything: options, target, composition, the methods'
    own model checks, context parallelism. Returns the resolved target and the methods; changes nothing."""
    configs = _configs(method, options)
    methods = [method_class(c.method)(c) for c in configs]
    resolved = resolve_target(target)
    _check_not_patched(resolved)
    _check_compatible(methods)
    for m in methods:
        m.check(resolved)
    parallel.check(resolved, methods)  # diffusers' context parallelism: what accel can serve
    return resolved, methods


def check(target: Any, method: MethodSpec | Sequence[MethodSpec] = "none", **options: Any) -> None:
    """Raise what `patch(target, method, **options)` would raise before touching anything (an `AccelError`:
    a bad option, an unsupported model, methods that do not compose); return None where it would patch.
    Nothing is changed."""
    _checked(target, method, options)


def patch(target: Any, method: MethodSpec | Sequence[MethodSpec] = "none", **options: Any) -> Patch:
    """Apply `method` (a name, a config, or a list of them to compose) to `target`.

    `target` is a diffusers pipeline, a diffusers denoiser, or a transformers model. Options are the
    method's config fields; given with a config, they replace its fields (`patch(pipe, config, fraction=0.2)`
    runs `config` at fraction 0.2, as `dataclasses.replace` would), and are refused with a composition.
    Returns a `Patch` with `.unpatch()`, `.config` and `.stats()`.
    """
    resolved, methods = _checked(target, method, options)
    tracker = StepTracker()
    with Journal() as journal:
        for m in methods:
            tracker.on_new_run(m.reset_run)
            tracker.on_branch_end(m.end_branch)
            tracker.on_call_end(m.note_held)
            m.apply(resolved, journal, tracker)
        ring_stats: dict[str, Any] = {}
        parallel.attach(resolved, methods, journal, ring_stats)  # ring attention: accel's LSE forward op
        tracker.needs_step_count = [m.name for m in methods if m.needs_step_count()]
        for d in resolved.denoisers:
            watch(tracker, d.module, d.adapter, journal, TRACKER_HOOK)
        handle = Patch(resolved, methods, tracker, journal)
        handle.parallel_stats = ring_stats
        for obj in (resolved.obj, *(d.module for d in resolved.denoisers)):
            _register(obj, handle, journal)
    return handle


def patch_of(target: Any) -> Patch | None:
    """The live patch on `target` (a pipeline or one of its denoisers), if any."""
    existing = _PATCHES.get(getattr(target, "_orig_mod", target))
    return existing if existing is not None and existing.active else None


def unpatch(target: Any) -> None:
    """Remove the accel patch from `target`; outputs afterwards are bit-identical to an unpatched object.

    Given one denoiser of a patched pipeline, removes the pipeline's whole patch.
    """
    existing = patch_of(target)
    if existing is None:
        raise AccelError(f"accel: {type(target).__name__} is not patched; nothing to unpatch.")
    existing.unpatch()
