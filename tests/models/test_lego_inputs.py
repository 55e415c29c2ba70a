"""LEGOModel's refusals: every config field checked before any parameter exists (the field, the value and the
rule named), forward inputs (skip_bricks, labels, an empty batch) refused clearly, the valid spellings kept;
and accel.zoo.load's size check for every entry (the trained "digits-lego" included)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support import assert_refused_before_parameters

import accel
from accel.models import LEGOModel


def tiny(**kw) -> LEGOModel:
    torch.manual_seed(0)
    return LEGOModel(**{"sample_size": 8, "in_channels": 1, "hidden_size": 32, "num_heads": 2,
                        "brick_sizes": (2, 4, 8), "patch_sizes": (1, 2, 1), "depths": (1, 1, 2),
                        "num_classes": 10, **kw}).eval()


BAD_CONFIGS = [
    ({"num_heads": 0}, ValueError, "num_heads=0: expected a positive integer"),
    ({"num_heads": -2}, ValueError, "num_heads=-2: expected a positive integer"),
    ({"num_heads": 2.0}, TypeError, "num_heads=2.0"),
    ({"num_heads": 3}, ValueError, "hidden_size=32 is not divisible by num_heads=3"),
    ({"hidden_size": 0}, ValueError, "hidden_size=0: expected a positive integer"),
    ({"hidden_size": 30, "num_heads": 3}, ValueError, "hidden_size=30: expected a positive multiple of 4"),
    ({"brick_sizes": (0, 4, 8)}, ValueError, "brick_sizes=(0, 4, 8): expected a list or tuple of positive integers"),
    ({"brick_sizes": (-2, 4, 8)}, ValueError, "brick_sizes=(-2, 4, 8)"),
    ({"brick_sizes": "248"}, TypeError, "brick_sizes='248': expected a list or tuple of positive integers"),
    ({"brick_sizes": (2, 4.5, 8)}, TypeError, "brick_sizes=(2, 4.5, 8)"),
    ({"brick_sizes": (2, True, 8)}, TypeError, "brick_sizes=(2, True, 8)"),
    ({"brick_sizes": 8}, TypeError, "brick_sizes=8"),
    ({"brick_sizes": (), "patch_sizes": (), "depths": ()}, ValueError, "brick_sizes=()"),
    ({"patch_sizes": (0, 2, 1)}, ValueError, "patch_sizes=(0, 2, 1): expected a list or tuple of positive integers"),
    ({"patch_sizes": "121"}, TypeError, "patch_sizes='121'"),
    ({"depths": (1, -1, 2)}, ValueError, "depths=(1, -1, 2): expected a list or tuple of non-negative integers"),
    ({"depths": "112"}, TypeError, "depths='112'"),
    ({"num_classes": -1}, ValueError, "num_classes=-1: expected a non-negative integer"),
    ({"num_classes": 10.0}, TypeError, "num_classes=10.0"),
    ({"in_channels": 0}, ValueError, "in_channels=0: expected a positive integer"),
    ({"out_channels": 0}, ValueError, "out_channels=0: expected a positive integer"),
    ({"out_channels": 2}, ValueError, "out_channels=2; expected in_channels=1 or None"),
    ({"sample_size": 0}, ValueError, "sample_size=0: expected a positive integer"),
    ({"sample_size": 12}, ValueError, "sample_size=12: expected a multiple of every brick size (2, 4, 8)"),
    ({"class_dropout_prob": 1.5}, ValueError, "class_dropout_prob=1.5: expected a finite number in [0, 1)"),
    ({"class_dropout_prob": 1}, ValueError, "class_dropout_prob=1: expected a finite number in [0, 1)"),
    ({"class_dropout_prob": -0.5}, ValueError, "class_dropout_prob=-0.5"),
    ({"class_dropout_prob": True}, TypeError, "class_dropout_prob=True"),
    ({"mlp_ratio": -1.0}, ValueError, "mlp_ratio=-1.0: expected a finite number > 0"),
    ({"mlp_ratio": float("nan")}, ValueError, "mlp_ratio=nan"),
    ({"mlp_ratio": 0.01}, ValueError, "an MLP of 0 channels"),
]


@pytest.mark.parametrize("kw,error,message", BAD_CONFIGS, ids=[str(c[0]) for c in BAD_CONFIGS])
def test_every_config_field_is_checked_before_any_parameter_exists(monkeypatch, kw, error, message):
    assert_refused_before_parameters(monkeypatch, tiny, kw, error, message, "LEGOModel")


def test_valid_config_spellings_are_accepted_and_normalised(tmp_path):
    model = tiny(sample_size=np.int64(8), hidden_size=np.int64(32), num_heads=np.int32(2),
                 brick_sizes=[np.int64(2), 4, 8], patch_sizes=[1, 2, 1], depths=(0, 1, 2), mlp_ratio=4,
                 num_classes=np.int64(0), class_dropout_prob=0, out_channels=1)
    cfg = model.config
    assert cfg.brick_sizes == [2, 4, 8] and cfg.depths == [0, 1, 2] and cfg.num_classes == 0
    assert all(type(v) is int for v in (cfg.sample_size, cfg.hidden_size, cfg.num_heads, *cfg.brick_sizes))
    assert cfg.mlp_ratio == 4.0 and cfg.class_dropout_prob == 0.0 and cfg.out_channels == 1
    model.save_pretrained(tmp_path)  # numpy values would not serialise
    assert LEGOModel.from_pretrained(tmp_path).config.brick_sizes == [2, 4, 8]
    assert tiny(class_dropout_prob=0.999).config.class_dropout_prob == 0.999


def test_forward_refuses_a_bare_int_or_string_skip_bricks_and_keeps_lists_and_tuples():
    model = tiny()
    x = torch.randn(1, 1, 8, 8)
    for bad in (2, 0, "2", {2}):
        with pytest.raises(TypeError) as err:
            model(x, 0.1, [1], skip_bricks=bad)
        assert f"skip_bricks={bad!r}; expected a list or tuple of brick indices" in str(err.value)
        assert isinstance(err.value, ValueError)
    for bad in ([2.0], [True], ["1"]):
        with pytest.raises(ValueError, match="skip_bricks entry"):
            model(x, 0.1, [1], skip_bricks=bad)
    ref = model(x, 0.1, [1], skip_bricks=(2,)).sample
    for good in ([2], (-1,), [np.int64(2)], (2, 2)):
        assert torch.equal(model(x, 0.1, [1], skip_bricks=good).sample, ref)
    full = model(x, 0.1, [1]).sample
    assert torch.equal(model(x, 0.1, [1], skip_bricks=[]).sample, full)
    assert torch.equal(model(x, 0.1, [1], skip_bricks=None).sample, full)


def test_forward_refuses_bool_or_string_labels_and_an_empty_batch():
    model = tiny()
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(TypeError, match="LEGOModel: class_labels has dtype torch.bool"):
        model(x, 0.1, torch.tensor([True, False]))
    with pytest.raises(ValueError, match="class_labels=\\['3', '4'\\]: expected integer class ids"):
        model(x, 0.1, ["3", "4"])
    with pytest.raises(ValueError, match="nested lists are not flattened"):
        model(x, 0.1, [[1], [2]])
    with pytest.raises(ValueError, match="an empty batch"):
        model(x[:0], 0.1, None)
    with pytest.raises(TypeError, match="LEGOModel: class_labels=\\[True, False\\]"):  # unconditional: still ids
        tiny(num_classes=0)(x, 0.1, [True, False])


@pytest.mark.parametrize("name", ["digits-lego", "digits-image", "lego", "dico", "wan"])
@pytest.mark.parametrize("size", ["huge", "Tiny", None])
def test_zoo_load_refuses_an_unknown_size_for_every_entry(name, size):
    with pytest.raises(ValueError) as err:
        accel.zoo.load(name, size=size)
    assert f"Unknown zoo size {size!r} for {name!r}. Valid sizes: tiny, bench." in str(err.value)
