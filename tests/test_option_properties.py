"""Property-based (hypothesis) checks over every registered method's options: any value is either
accepted as a value the option allows, or refused with InvalidOptionError naming the option, before the
pipeline is touched. Never another exception, never a half-applied patch."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import snapshot

import accel
from accel.method import _entry_points, method_class

METHODS = sorted(_entry_points())

VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.sampled_from([16, 32, 64, 128, 64.0, "auto", "hybrid", "zeroth", (64, 64), [1], {}, -0.0, 1e-300]),
)


def _allowed(config: accel.MethodConfig, field: dataclasses.Field) -> bool:
    """Whether the accepted value obeys the option's declared choices, type and range."""
    value, meta = getattr(config, field.name), field.metadata
    if meta.get("choices") is not None:
        return any(value == c and type(value) is type(c) for c in meta["choices"])
    if isinstance(value, float) and not math.isfinite(value):
        return False
    low, high = meta.get("low"), meta.get("high")
    if low is not None and (value <= low if meta.get("low_open") else value < low):
        return False
    return not (high is not None and (value >= high if meta.get("high_open") else value > high))


@pytest.mark.parametrize("method", METHODS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_option_value_is_accepted_in_range_or_refused_by_name(method, data):
    config_cls = method_class(method).Config
    fields = dataclasses.fields(config_cls)
    if not fields:
        return
    field = data.draw(st.sampled_from(fields))
    value = data.draw(VALUES)
    try:
        config = config_cls.from_options(**{field.name: value})
    except accel.InvalidOptionError as err:
        assert f"option {field.name}=" in str(err) and "expected" in str(err)
        return
    assert _allowed(config, field), (field.name, value)


@pytest.fixture(scope="module")
def pipe():
    pipe = accel.zoo.load("wan", size="tiny")
    accel.zoo.generate(pipe, steps=2)  # the pipeline's own run-time attributes, before the snapshot
    return pipe


@pytest.mark.parametrize("method", [m for m in METHODS if m != "none"])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_refused_value_leaves_the_pipeline_untouched(pipe, method, data):
    fields = dataclasses.fields(method_class(method).Config)
    field = data.draw(st.sampled_from(fields))
    value = data.draw(VALUES)
    before = snapshot(pipe)
    try:
        handle = accel.patch(pipe, method=method, **{field.name: value})
    except accel.AccelError:
        assert snapshot(pipe) == before and accel.patch_of(pipe) is None
        return
    handle.unpatch()
    assert snapshot(pipe) == before


def test_the_property_checks_see_real_refusals():
    """The strategy reaches values every kind of option refuses (so the properties are not vacuous)."""
    with pytest.raises(accel.InvalidOptionError):
        method_class("pisa").Config.from_options(density=float("nan"))
    with pytest.raises(accel.InvalidOptionError):
        method_class("delta-dit").Config.from_options(interval=torch.tensor([2]))
