"""Method configs: dataclasses whose fields are the method's options, validated on construction.

Each method declares `Config = SomeConfig`, a subclass of `MethodConfig`. A field's documented default is
its dataclass default; its constraints live in `metadata` so that validation, error messages, the CLI and
the demo's generated controls read one source:

    density: float = option(0.125, "fraction of key blocks computed exactly", low=0.0, high=1.0)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, ClassVar, get_type_hints

from .errors import InvalidOptionError, closest


def option(
    default: Any,
    help: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    choices: Sequence[Any] | None = None,
) -> Any:
    """A config field with its documentation and allowed values."""
    meta = {"help": help, "low": low, "high": high, "low_open": low_open, "high_open": high_open, "choices": choices}
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults are not allowed in method configs; use a tuple")
    return dataclasses.field(default=default, metadata=meta)


def _allowed(meta: dict[str, Any], hint: Any = None) -> str:
    if meta.get("choices") is not None:
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    low, high = meta.get("low"), meta.get("high")
    left = "(" if meta.get("low_open") or low is None else "["
    right = ")" if meta.get("high_open") or high is None else "]"
    if low is None and high is None:
        return "True or False" if hint is bool else f"any {getattr(hint, '__name__', 'value')}"
    kind = "an integer" if hint is int else "a finite value"
    return f"{kind} in {left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"


def _plain(value: Any) -> Any:
    """numpy and torch scalars as the Python bool/int/float they stand for (a 0-d tensor or np.int64 is as
    good an option value as an int); anything else unchanged."""
    if isinstance(value, (bool, int, float)) or not hasattr(value, "item"):
        return value
    if getattr(value, "shape", None) == ():  # 0-d tensors and numpy scalars; arrays stay arrays
        item = value.item()
        return item if isinstance(item, (bool, int, float)) else value
    return value


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """Base of every method's config. Subclasses add fields made with `option(...)`."""

    method: ClassVar[str] = "?"

    def __post_init__(self) -> None:
        hints = get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = _plain(getattr(self, f.name))
            self._check_field(f, hints.get(f.name), value)
            object.__setattr__(self, f.name, value)

    def _check_field(self, f: dataclasses.Field, hint: Any, value: Any) -> None:
        meta = dict(f.metadata)
        where = f"{self.method}: option {f.name}={value!r}"
        if meta.get("choices") is not None:
            # by value and type: 64.0 is not the tile size 64, nor 1 the flag True
            if not any(value == c and type(value) is type(c) for c in meta["choices"]):
                kind = f"has type {type(value).__name__}" if value in meta["choices"] else "is not allowed"
                raise InvalidOptionError(f"{where} {kind}; expected {_allowed(meta)}.")
            return
        if hint in (int, float, bool, str):
            ok = isinstance(value, hint) or (hint is float and isinstance(value, int))
            if isinstance(value, bool) and hint is not bool:
                ok = False
            if not ok:
                raise InvalidOptionError(f"{where} has type {type(value).__name__}; expected {hint.__name__}.")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, float) and not math.isfinite(value):
                raise InvalidOptionError(f"{where} is not finite; expected {_allowed(meta, hint)}.")
            low, high = meta.get("low"), meta.get("high")
            too_low = low is not None and (value <= low if meta.get("low_open") else value < low)
            too_high = high is not None and (value >= high if meta.get("high_open") else value > high)
            if too_low or too_high:
                raise InvalidOptionError(f"{where} is out of range; expected {_allowed(meta, hint)}.")

    @classmethod
    def from_options(cls, **options: Any) -> MethodConfig:
        """Build the config from user keyword options, naming any option the method does not have."""
        names = [f.name for f in dataclasses.fields(cls)]
        for key in options:
            if key not in names:
                allowed = ", ".join(names) if names else "none"
                raise InvalidOptionError(
                    f"{cls.method}: unknown option {key!r}.{closest(key, names)} Allowed options: {allowed}."
                )
        return cls(**options)

    @classmethod
    def describe(cls) -> list[dict[str, Any]]:
        """One dict per option (name, type, default, help, allowed): for the CLI, docs and the demo."""
        hints = get_type_hints(cls)
        rows = []
        for f in dataclasses.fields(cls):
            hint = hints.get(f.name)
            rows.append(
                {
                    "name": f.name,
                    "type": getattr(hint, "__name__", str(hint)),
                    "default": f.default,
                    "help": f.metadata.get("help", ""),
                    "allowed": _allowed(dict(f.metadata), hint),
                    "choices": f.metadata.get("choices"),
                    "low": f.metadata.get("low"),
                    "high": f.metadata.get("high"),
                }
            )
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **dataclasses.asdict(self)}
