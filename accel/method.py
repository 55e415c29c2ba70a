"""The base class of every acceleration method and the registry that names them.

The registry never imports its plug-ins: every method, built-in or third-party, is an entry point in the
"accel.methods" group (pyproject.toml), loaded by name when first asked for, so `accel.patch(pipe,
method="pisa")` imports PISA and nothing else. `register_method` adds one in-process (tests, notebooks).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, ClassVar

import torch

from .config import MethodConfig
from .errors import UnknownMethodError, UnsupportedModelError, closest
from .journal import Journal
from .steps import StepTracker
from .target import PatchTarget, is_vlm

COMMON_STATS = frozenset({"held_peak_MB"})  # in every method's stats(): see Method.note_held


class Method:
    """One acceleration technique, applied to one target through a `Journal`.

    Subclasses set the class attributes, define `Config`, and implement `apply`. They keep their counters
    in `self.counters` (reset by the tracker at each run) and may add to `stats()`.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    paper: ClassVar[str] = ""
    families: ClassVar[tuple[str, ...] | None] = None  # None: any model accel can resolve
    needs_layout: ClassVar[bool] = False  # True: needs a real family adapter (token layout, attention kinds)
    claims: ClassVar[frozenset[str]] = frozenset()  # parts of the model it changes: "blocks", "attention"...
    denoising: ClassVar[bool] = True  # acts on denoising steps or diffusion attention: refuses a VLM
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    # The contract every method meets (tests/test_method_contract.py checks it for each registered one):
    exact_options: ClassVar[dict[str, Any] | None] = {}  # options under which the output equals the unpatched
    # model's; None: the method has no exact setting (quantization)
    exact_atol: ClassVar[float] = 0.0  # ... within this absolute difference of the final latents, as a fraction
    # of their largest magnitude (fp32 rounding grows with it; 0: bit-exact)
    exact_rtol: ClassVar[float] = 0.0  # ... plus this fraction of each latent's magnitude
    stats_keys: ClassVar[frozenset[str]] = frozenset()  # every key `stats()` may return, besides COMMON_STATS
    kept_between_calls: ClassVar[frozenset[str]] = frozenset()  # attributes that persist across calls
    # (small caches such as token permutations per layout); everything else a call computes is released

    def __init__(self, config: MethodConfig) -> None:
        self.config = config
        self.counters: dict[str, Any] = {}

    def check(self, target: PatchTarget) -> None:
        """Raise `UnsupportedModelError` if this method cannot run on `target`. Changes nothing."""
        if self.denoising and target.kind == "transformers" and is_vlm(target.denoisers[0].module):
            raise UnsupportedModelError(
                f"accel: method {self.name!r} acts on the denoising steps of a diffusion model; "
                f"{type(target.denoisers[0].module).__name__} is an autoregressive VLM. For it: "
                "method='pyramid-drop' or 'fastv'."
            )
        if self.denoising and target.kind == "pipeline" and target.denoisers[0].component == "model":
            raise UnsupportedModelError(
                f"accel: method {self.name!r} acts on the denoising steps of an image or video diffusion model; "
                f"{target.describe()} generates text with a transformers language model (block diffusion). "
                "For it: method='flashblock'."
            )
        for d in target.denoisers:
            if self.families is not None and d.adapter.family not in self.families:
                raise UnsupportedModelError(
                    f"accel: method {self.name!r} does not support {type(d.module).__name__} (family "
                    f"{d.adapter.family!r}); it supports: {', '.join(self.families)}."
                )
            if self.needs_layout and d.adapter.generic:
                raise UnsupportedModelError(
                    f"accel: method {self.name!r} needs a model adapter that knows the token layout; "
                    f"{type(d.module).__name__} is only known generically (its block lists). Supported "
                    f"families: {', '.join(self.families or ())}."
                )

    def apply(self, target: PatchTarget, journal: Journal, tracker: StepTracker) -> None:
        raise NotImplementedError

    def needs_step_count(self) -> bool:
        """Whether this method (as configured) keeps state across the steps of a run or schedules by the
        step count. Then a denoiser call whose run length is unknown raises `StepCountUnknownError`
        before anything runs (the tracker checks): one rule for every method, never a silent per-call
        restart."""
        return False

    def before_unpatch(self) -> None:
        """Raise `AccelError` to refuse `unpatch()` before anything is undone (a method that cannot restore
        the model exactly, e.g. one whose originals were freed)."""

    def reset_run(self) -> None:
        """Forget per-run state; called at the start of every pipeline call."""
        self.counters.clear()

    def end_branch(self, branch: str) -> None:
        """Release what this method keeps for `branch` (a CFG branch) of the current run: called after the
        branch's last step. Counters stay, for `stats()`."""

    def stats(self) -> dict[str, Any]:
        return dict(self.counters)

    def held_bytes(self) -> int:
        """Bytes of the tensors this method holds right now: its per-run state (cached residuals, LSEs,
        masks), not its counters, config, or what it keeps between calls (`kept_between_calls`)."""
        skip = {"counters", "config", "tracker", "hooks", *self.kept_between_calls}  # hooks: modules' wiring
        return sum(t.numel() * t.element_size() for t in held_tensors(vars(self), set(), skip))

    def note_held(self) -> None:
        """After each denoiser call: the run's peak of `held_bytes()`, in `stats()["held_peak_MB"]`."""
        held = self.held_bytes() / 2**20
        self.counters["held_peak_MB"] = max(self.counters.get("held_peak_MB", 0.0), held)


def held_tensors(obj: Any, seen: set[int], skip: set[str]) -> Iterator[torch.Tensor]:
    """The tensors reachable from `obj` through dicts, sequences and object attributes, each once; modules
    (the model's own weights) and the attributes named in `skip` are not entered."""
    if id(obj) in seen or isinstance(obj, torch.nn.Module | type):
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            if key not in skip:
                yield from held_tensors(value, seen, skip)
    elif isinstance(obj, list | tuple | set | frozenset):
        for value in obj:
            yield from held_tensors(value, seen, skip)
    elif hasattr(obj, "__dict__"):
        yield from held_tensors(vars(obj), seen, skip)


@dataclass(frozen=True)
class MethodInfo:
    name: str
    summary: str
    families: tuple[str, ...] | None
    paper: str
    options: list[dict[str, Any]]


ENTRY_POINT_GROUP = "accel.methods"  # in pyproject.toml: name = "package.module:MethodClass"
_REGISTRY: dict[str, type[Method]] = {}  # methods loaded so far, and those registered at run time


def register_method(cls: type[Method]) -> type[Method]:
    """Make a method available under `cls.name` in this process (a class decorator). Installed packages
    declare theirs as an entry point in the "accel.methods" group instead, loaded on first use."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"accel: a method named {cls.name!r} is already registered")
    if cls.Config.method != cls.name:
        raise ValueError(f"accel: {cls.__name__}.Config.method must be {cls.name!r}")
    _REGISTRY[cls.name] = cls
    return cls


logger = logging.getLogger("accel")
_DISTRIBUTION = "hf-accel"  # ours: its entry points are the built-in methods
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)


def _package(ep: EntryPoint) -> str:
    return ep.dist.name if ep.dist is not None else ep.value


def _entry_points() -> dict[str, EntryPoint]:
    """The installed methods by name. A built-in name cannot be taken over: where another package declares
    a method under the same name, accel's own wins, and the other is named in a warning (once)."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        kept = found.get(ep.name)
        if kept is None:
            found[ep.name] = ep
            continue
        if _package(ep) == _DISTRIBUTION and _package(kept) != _DISTRIBUTION:
            kept, ep = ep, kept
            found[kept.name] = kept
        _warn_once(f"accel: method {ep.name!r} is declared by both {_package(kept)!r} and {_package(ep)!r}; "
                   f"using {_package(kept)!r}'s ({kept.value})")
    return found


def _load(ep: EntryPoint) -> type[Method]:
    """Import one entry point's method class and register it; a wrong one raises naming its package."""
    try:
        cls = ep.load()
    except Exception as err:
        raise UnknownMethodError(f"accel: method {ep.name!r} from package {_package(ep)!r} could not be imported "
                                 f"({ep.value}): {type(err).__name__}: {err}") from err
    if not (isinstance(cls, type) and issubclass(cls, Method)) or getattr(cls, "name", None) != ep.name:
        raise UnknownMethodError(f"accel: the entry point {ep.name!r} = {ep.value!r} ({_package(ep)}) must name a "
                                 f"Method subclass whose name is {ep.name!r}")
    return register_method(cls)


def method_class(name: str) -> type[Method]:
    """The method registered as `name`, importing its module on first use (only that one)."""
    if isinstance(name, str) and name in _REGISTRY:
        return _REGISTRY[name]
    found = _entry_points()
    if isinstance(name, str) and name in found:
        return _load(found[name])
    names = sorted({*_REGISTRY, *found})
    hint = closest(name, names) if isinstance(name, str) else ""
    raise UnknownMethodError(f"accel: unknown method {name!r}.{hint} Valid methods: {', '.join(names)}.")


def methods() -> list[MethodInfo]:
    """Every method, installed or registered: name, one-line summary, model families, paper, options
    (this imports them all; a package whose method cannot be imported is left out, with a warning)."""
    for name, ep in _entry_points().items():
        if name not in _REGISTRY:
            try:
                _load(ep)
            except UnknownMethodError as err:  # one broken package must not hide every other method
                _warn_once(f"{err} (left out of the list)")
    return [
        MethodInfo(c.name, c.summary, c.families, c.paper, c.Config.describe())
        for c in sorted(_REGISTRY.values(), key=lambda c: c.name)
    ]
