"""The tuned configuration on disk: what `accel tune` writes and `accel.load_config` reads back.

    {"schema": "accel.tune/1", "model": "digits-video", "floor": {"metric": "accuracy-drop", "value": 1.0},
     "methods": [{"method": "tdc", "threshold": 0.5, "max_skips": 3, "order": 1, ...}],
     "token": "tdc(order=1,threshold=0.5,max_skips=3)", "steps": 20, "base_steps": 20,
     "measured": {"speedup": 2.9, "quality": {"40": 0.6}, "held_out": 0.4, ...}, ...}

Every option of every method is written (defaults too), so a later change of a default does not change
what the file applies. `steps` is the denoising step count the configuration was measured at: pass it
to the pipeline (`num_inference_steps`) when it is below `base_steps`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accel.config import MethodConfig
from accel.errors import InvalidOptionError

SCHEMA = "accel.tune/1"
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TunedConfig:
    """A tuned configuration: `method` for `accel.patch(pipe, method=...)` (one config, or a tuple to
    compose), the `steps` to run at, and the file's whole `record` (model, floor, measured speed and
    quality)."""

    method: MethodConfig | tuple[MethodConfig, ...]
    steps: int
    record: dict[str, Any]

    def call_kwargs(self) -> dict[str, Any]:
        """The pipeline-call arguments the configuration was measured with: {"num_inference_steps": steps}."""
        return {"num_inference_steps": self.steps}


def _plain(value: Any) -> Any:
    """A JSON list back as the tuple a config field holds."""
    return tuple(_plain(v) for v in value) if isinstance(value, list) else value


def method_dicts(configs: list[MethodConfig]) -> list[dict[str, Any]]:
    return [{"method": c.method, **{f.name: getattr(c, f.name) for f in dataclasses.fields(c)}} for c in configs]


def configs_from(dicts: list[dict[str, Any]]) -> list[MethodConfig]:
    """Method configs from their dicts ({"method": name, option: value, ...}), each validated."""
    from accel.method import method_class

    out = []
    for d in dicts:
        if not isinstance(d, dict) or "method" not in d:
            raise InvalidOptionError(f"tune config: {d!r} is not a method entry ({{'method': NAME, option: value}})")
        options = {k: _plain(v) for k, v in d.items() if k != "method"}
        out.append(method_class(d["method"]).Config.from_options(**options))
    return out


def read(path: str | Path) -> TunedConfig:
    """The tuned configuration written by `accel tune` at `path` (its tuned.json, or the folder holding it).
    Raises `FileNotFoundError`, or `InvalidOptionError` for a file that is not one (naming what is wrong)."""
    path = Path(path)
    if path.is_dir():
        path = path / "tuned.json"
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InvalidOptionError(f"tune config {path}: not JSON ({err})") from err
    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        raise InvalidOptionError(f"tune config {path}: expected schema {SCHEMA!r}, found "
                                 f"{record.get('schema') if isinstance(record, dict) else type(record).__name__!r}")
    if not record.get("methods"):
        raise InvalidOptionError(f"tune config {path}: holds no configuration ({record.get('status', 'none found')})")
    configs = configs_from(record["methods"])
    method = configs[0] if len(configs) == 1 else tuple(configs)
    return TunedConfig(method, int(record["steps"]), record)


def load_config(path: str | Path) -> MethodConfig | tuple[MethodConfig, ...]:
    """The methods of a configuration written by `accel tune`, for `accel.patch(pipe, method=...)`: one
    method config, or a tuple of them (a composition). Run the pipeline at the file's `steps`
    (`accel.tune.read(path).call_kwargs()`) when it is below the exact run's: the patch alone does not
    change the step count, so this logs a warning naming it."""
    tuned = read(path)
    base = int(tuned.record.get("base_steps", tuned.steps))
    if tuned.steps < base:
        logger.warning("accel tune config %s was measured at num_inference_steps=%d (the exact run: %d); the patch "
                       "does not set the step count: pass num_inference_steps=%d to the pipeline", path, tuned.steps,
                       base, tuned.steps)
    return tuned.method
