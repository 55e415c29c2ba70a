"""Method configs: validation of every field kind, and the description used by the CLI and the demo."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import accel
from accel.config import MethodConfig, option


@dataclass(frozen=True)
class Demo(MethodConfig):
    method = "demo"
    density: float = option(0.125, "kept fraction", low=0.0, high=1.0, low_open=True)
    steps: int = option(2, "dense steps", low=0)
    order: str = option("hybrid", "expansion order", choices=("hybrid", "zeroth"))


def test_defaults_are_valid_and_described():
    rows = {r["name"]: r for r in Demo.describe()}
    assert Demo().density == 0.125
    assert rows["density"]["allowed"] == "a finite value in (0.0, 1.0]"
    assert rows["steps"]["allowed"] == "an integer in [0, inf)"
    assert rows["order"]["choices"] == ("hybrid", "zeroth")
    assert rows["density"]["help"] == "kept fraction"


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"density": 0.0}, r"demo: option density=0.0 is out of range"),
        ({"steps": -1}, r"steps=-1 is out of range"),
        ({"steps": 1.5}, r"steps=1.5 has type float; expected int"),
        ({"steps": True}, r"steps=True has type bool; expected int"),
        ({"order": "first"}, r"order='first' is not allowed; expected one of 'hybrid', 'zeroth'"),
    ],
)
def test_invalid_values(kwargs, pattern):
    with pytest.raises(accel.InvalidOptionError, match=pattern):
        Demo(**kwargs)


def test_int_is_accepted_for_float_fields():
    assert Demo(density=1).density == 1


def test_from_options_rejects_unknown_names():
    with pytest.raises(accel.InvalidOptionError, match=r"unknown option 'densty'. Did you mean 'density'"):
        Demo.from_options(densty=0.5)


def test_mutable_default_is_refused():
    with pytest.raises(TypeError):
        option([1], "no")


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"tile_size": 64.0}, r"tile_size=64.0 has type float; expected one of 16, 32, 64, 128"),
        ({"first_frame_sink": 1}, r"first_frame_sink=1 has type int; expected one of 'auto', True, False"),
        ({"density": torch.tensor([0.5])}, r"density=tensor\(\[0.5000\]\) has type Tensor; expected float"),
    ],
)
def test_choices_match_by_value_and_type(kwargs, pattern):
    """A value equal to an allowed one but of another type (64.0 for 64, 1 for True) is refused at patch time,
    not inside the kernels mid-run."""
    from accel.sparse_attn.methods.pisa import PISAConfig

    with pytest.raises(accel.InvalidOptionError, match=pattern):
        PISAConfig(**kwargs)


def test_numpy_and_torch_scalars_are_their_python_values():
    import numpy as np

    from accel.sparse_attn.methods.pisa import PISAConfig

    config = PISAConfig(tile_size=np.int64(32), density=np.float32(0.25), first_frame_sink=np.bool_(True))
    assert (config.tile_size, config.density, config.first_frame_sink) == (32, 0.25, True)
    assert [type(v) for v in (config.tile_size, config.density, config.first_frame_sink)] == [int, float, bool]
    assert PISAConfig(density=torch.tensor(0.5)).density == 0.5
