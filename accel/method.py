"""The base class of every acceleration method and the registry that names them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from .config import MethodConfig
from .errors import UnknownMethodError, UnsupportedModelError, closest
from .journal import Journal
from .steps import StepTracker
from .target import PatchTarget


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
    Config: ClassVar[type[MethodConfig]] = MethodConfig

    def __init__(self, config: MethodConfig) -> None:
        self.config = config
        self.counters: dict[str, Any] = {}

    def check(self, target: PatchTarget) -> None:
        """Raise `UnsupportedModelError` if this method cannot run on `target`. Changes nothing."""
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

    def reset_run(self) -> None:
        """Forget per-run state; called at the start of every pipeline call."""
        self.counters.clear()

    def stats(self) -> dict[str, Any]:
        return dict(self.counters)


@dataclass(frozen=True)
class MethodInfo:
    name: str
    summary: str
    families: tuple[str, ...] | None
    paper: str
    options: list[dict[str, Any]]


_REGISTRY: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available under `cls.name`."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"accel: a method named {cls.name!r} is already registered")
    if cls.Config.method != cls.name:
        raise ValueError(f"accel: {cls.__name__}.Config.method must be {cls.name!r}")
    _REGISTRY[cls.name] = cls
    return cls


def method_class(name: str) -> type[Method]:
    _load_builtin_methods()
    if not isinstance(name, str) or name not in _REGISTRY:
        names = sorted(_REGISTRY)
        hint = closest(name, names) if isinstance(name, str) else ""
        raise UnknownMethodError(f"accel: unknown method {name!r}.{hint} Valid methods: {', '.join(names)}.")
    return _REGISTRY[name]


def methods() -> list[MethodInfo]:
    """Every registered method: name, one-line summary, model families, paper, options."""
    _load_builtin_methods()
    return [
        MethodInfo(c.name, c.summary, c.families, c.paper, c.Config.describe())
        for c in sorted(_REGISTRY.values(), key=lambda c: c.name)
    ]


def _load_builtin_methods() -> None:
    """Import the modules whose import registers the built-in methods."""
    import caches  # noqa: F401
    import sparse_attn.methods  # noqa: F401

    from . import noop  # noqa: F401
