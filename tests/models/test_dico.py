"""DiCoModel: the published parameter counts, the paper's zero output at initialisation, the diffusers model
contract (config, save/load, return types, gradient checkpointing) and the label / size rules."""

from __future__ import annotations

import pytest
import torch
from support import assert_refused_before_parameters

from accel.models import DICO_PRESETS, DiCoModel

# "DiT Parameters" lines of the released training logs (S/B/L/XL); H measured from the released factory.
PUBLISHED = {"DiCo-S": 33_137_672, "DiCo-B": 129_992_712, "DiCo-L": 463_897_992, "DiCo-XL": 701_151_368,
             "DiCo-H": 1_037_408_328}


def tiny(**kw) -> DiCoModel:
    torch.manual_seed(0)
    return DiCoModel(**{"sample_size": 8, "in_channels": 4, "hidden_size": 16, "depths": (1, 1, 2, 1, 1),
                        "num_classes": 10, **kw}).eval()


def randomized(model: DiCoModel, seed: int = 1) -> DiCoModel:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.1)
    return model


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_presets_have_the_published_parameter_counts(name):
    with torch.device("meta"):
        model = DiCoModel.from_preset(name)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED[name]
    assert model.config.out_channels == 8 and model.config.depths == list(DICO_PRESETS[name]["depths"])


def test_unknown_preset_and_bad_configs_are_refused():
    with pytest.raises(ValueError, match="DiCo-XL"):
        DiCoModel.from_preset("DiCo-XXL")
    with pytest.raises(ValueError, match="out_channels=5"):
        DiCoModel(out_channels=5)
    with pytest.raises(ValueError, match="depths"):
        DiCoModel(depths=(1, 1, 1))


def test_a_fresh_model_outputs_exactly_zero_and_every_gate_is_zero():
    model = tiny()
    x = torch.randn(2, 4, 8, 8)
    out = model(x, torch.tensor([10, 900]), torch.tensor([1, 1000])).sample
    assert out.shape == (2, 8, 8, 8) and torch.count_nonzero(out) == 0
    for block in model.blocks():
        assert torch.count_nonzero(block.adaLN_modulation[1].weight) == 0
    assert torch.count_nonzero(model.final_layer.out_proj.weight) == 0
    assert torch.count_nonzero(model.encoder_level_1[0].conv1.weight) > 0  # not all zero: only the gates


def test_any_size_divisible_by_4_runs_and_others_are_refused():
    model = randomized(tiny())
    assert model(torch.randn(1, 4, 12, 8), 5, [3]).sample.shape == (1, 8, 12, 8)
    with pytest.raises(ValueError, match="divisible by 4"):
        model(torch.randn(1, 4, 10, 8), 5, [3])
    with pytest.raises(ValueError, match=r"\[B, 4, H, W\]"):
        model(torch.randn(1, 3, 8, 8), 5, [3])


def test_labels_timesteps_and_return_types():
    model = randomized(tiny())
    x = torch.randn(1, 4, 8, 8).expand(3, -1, -1, -1).contiguous()
    out = model(x, 7, [1, 10, 1000]).sample
    # every id >= num_classes is the null class (row 10), as DiTPipeline's hard-coded 1000 needs
    # rows of one batch may round differently by their position (vector lanes): equal to rounding, not bits
    torch.testing.assert_close(out[1], out[2], atol=1e-5, rtol=1e-5)
    assert (out[0] - out[1]).abs().max() > 1e-2  # a real class is not the null class
    assert torch.equal(model(x, torch.tensor(7), [1, 10, 10]).sample, out)  # 0-d timestep broadcast
    (tup,) = model(x, [7, 7, 7], [1, 10, 10], return_dict=False)
    assert torch.equal(tup, out)
    with pytest.raises(ValueError, match=">= 0"):
        model(x, 7, [-1, 0, 0])
    with pytest.raises(ValueError, match="2 values for a batch of 3"):
        model(x, [1, 2], [0, 0, 0])
    # a batch gives each sample its own result
    one = model(x[:1], 7, [1]).sample
    torch.testing.assert_close(one, out[:1], atol=1e-5, rtol=1e-5)


def test_class_dropout_only_in_training_mode():
    model = randomized(tiny(class_dropout_prob=0.99))  # [0, 1): p = 1 would never train the labels
    x = torch.randn(1, 4, 8, 8)
    null = model(x, 3, [10]).sample
    assert not torch.equal(model(x, 3, [2]).sample, null)  # eval: labels kept
    model.train()
    torch.manual_seed(0)  # the draw 0.496 < 0.99: dropped
    assert torch.equal(model(x, 3, [2]).sample, null)  # training: the null class


def test_save_and_load_are_bit_identical(tmp_path):
    model = randomized(tiny())
    x = torch.randn(2, 4, 8, 8)
    ref = model(x, [3, 500], [1, 2]).sample
    model.save_pretrained(tmp_path)
    loaded = DiCoModel.from_pretrained(tmp_path)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert type(loaded) is DiCoModel and public(loaded.config) == public(model.config)
    assert isinstance(loaded.config.out_channels, int)
    sd, ld = model.state_dict(), loaded.state_dict()
    assert sd.keys() == ld.keys() and all(torch.equal(sd[k], ld[k]) for k in sd)
    assert torch.equal(loaded(x, [3, 500], [1, 2]).sample, ref)


def test_released_checkpoint_layout_loads_one_to_one(tmp_path):
    model = randomized(tiny())
    names = set(model.state_dict())
    assert {"x_embedder.proj.weight", "t_embedder_1.mlp.0.weight", "y_embedder.embedding_table_2.weight",
            "encoder_level_1.0.ca.1.weight", "latent.1.conv5.weight", "down1_2.0.weight", "up2_1.0.weight",
            "reduce_chan_level1.weight", "final_layer.out_proj.weight",
            "decoder_level_1.0.adaLN_modulation.1.weight"} <= names
    path = tmp_path / "DiCo-tiny.pt"
    torch.save({"ema": model.state_dict(), "opt": {}}, path)
    loaded = DiCoModel.from_original_checkpoint(path, sample_size=8, in_channels=4, hidden_size=16,
                                                depths=(1, 1, 2, 1, 1), num_classes=10)
    x = torch.randn(1, 4, 8, 8)
    assert torch.equal(loaded(x, 3, [1]).sample, model(x, 3, [1]).sample)
    torch.save({"model": {"bogus": torch.zeros(1)}}, path)
    with pytest.raises(KeyError, match="missing"):
        DiCoModel.from_original_checkpoint(path, hidden_size=16, depths=(1, 1, 2, 1, 1))


def test_gradient_checkpointing_gives_the_same_gradients():
    x = torch.randn(2, 4, 8, 8)
    grads = []
    for checkpointing in (False, True):
        model = randomized(tiny())
        if checkpointing:
            model.enable_gradient_checkpointing()
        model(x, [3, 4], [1, 2]).sample.square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_half_precision_keeps_its_dtype():
    model = randomized(tiny()).to(torch.bfloat16)
    out = model(torch.randn(1, 4, 8, 8, dtype=torch.bfloat16), 3, [1]).sample
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


# ---- config and input checks: refused before any parameter exists, with the field, value and rule named ----

BAD_CONFIGS = [
    ({"mlp_ratio": -1}, ValueError, "mlp_ratio=-1: expected a finite number > 0"),
    ({"mlp_ratio": 0.0}, ValueError, "mlp_ratio=0.0: expected a finite number > 0"),
    ({"mlp_ratio": float("inf")}, ValueError, "mlp_ratio=inf"),
    ({"mlp_ratio": 0.01}, ValueError, "an FFN of 0 channels"),
    ({"mlp_ratio": "2"}, TypeError, "mlp_ratio='2'"),
    ({"class_dropout_prob": 1.5}, ValueError, "class_dropout_prob=1.5: expected a finite number in [0, 1)"),
    ({"class_dropout_prob": 1.0}, ValueError, "class_dropout_prob=1.0"),
    ({"class_dropout_prob": -0.1}, ValueError, "class_dropout_prob=-0.1"),
    ({"class_dropout_prob": float("nan")}, ValueError, "class_dropout_prob=nan"),
    ({"hidden_size": 0}, ValueError, "hidden_size=0: expected a positive integer"),
    ({"hidden_size": -16}, ValueError, "hidden_size=-16"),
    ({"hidden_size": 15}, ValueError, "hidden_size=15: expected a positive even width"),
    ({"hidden_size": 16.0}, TypeError, "hidden_size=16.0: expected a positive integer"),
    ({"sample_size": 0}, ValueError, "sample_size=0"),
    ({"sample_size": 6}, ValueError, "sample_size=6: expected a positive multiple of 4"),
    ({"in_channels": 0}, ValueError, "in_channels=0: expected a positive integer"),
    ({"in_channels": True}, TypeError, "in_channels=True"),
    ({"out_channels": 0}, ValueError, "out_channels=0"),
    ({"out_channels": 8.5}, TypeError, "out_channels=8.5"),
    ({"num_classes": -1}, ValueError, "num_classes=-1: expected a non-negative integer"),
    ({"num_classes": 10.5}, TypeError, "num_classes=10.5"),
    ({"depths": (1, 1, -1, 1, 1)}, ValueError, "depths=(1, 1, -1, 1, 1): expected a list or tuple of 5 non-negative"),
    ({"depths": "11211"}, TypeError, "depths='11211'"),
    ({"depths": (1, 1, 2.5, 1, 1)}, TypeError, "depths=(1, 1, 2.5, 1, 1)"),
    ({"depths": (1, 1, 2, 1, 1, 1)}, ValueError, "5 non-negative integers"),
    ({"learn_sigma": "yes"}, TypeError, "learn_sigma='yes': expected True or False"),
    ({"learn_sigma": 1}, TypeError, "learn_sigma=1"),
]


@pytest.mark.parametrize("kw,error,message", BAD_CONFIGS, ids=[str(c[0]) for c in BAD_CONFIGS])
def test_every_config_field_is_checked_before_any_parameter_exists(monkeypatch, kw, error, message):
    assert_refused_before_parameters(monkeypatch, tiny, kw, error, message, "DiCoModel")


def test_valid_config_spellings_are_accepted_and_normalised(tmp_path):
    np = pytest.importorskip("numpy")
    model = tiny(sample_size=np.int64(8), in_channels=np.int32(4), hidden_size=np.int64(16),
                 depths=[np.int64(1), 1, 2, 1, 0], mlp_ratio=2, num_classes=np.int64(0), class_dropout_prob=0,
                 learn_sigma=np.bool_(False), out_channels=np.int64(4))
    cfg = model.config
    assert (cfg.sample_size, cfg.in_channels, cfg.hidden_size, cfg.num_classes) == (8, 4, 16, 0)
    assert all(type(v) is int for v in (cfg.sample_size, cfg.in_channels, cfg.hidden_size, cfg.out_channels,
                                        *cfg.depths))
    assert cfg.depths == [1, 1, 2, 1, 0] and cfg.mlp_ratio == 2.0 and cfg.learn_sigma is False
    model.save_pretrained(tmp_path)  # numpy values would not serialise
    loaded = DiCoModel.from_pretrained(tmp_path)
    assert loaded.config.depths == [1, 1, 2, 1, 0] and loaded.config.out_channels == 4
    out = model(torch.randn(1, 4, 8, 8), 3, None).sample  # num_classes 0: unconditional
    assert out.shape == (1, 4, 8, 8)
    assert tiny(class_dropout_prob=0.999, mlp_ratio=0.0625).config.class_dropout_prob == 0.999


def test_forward_refuses_bool_nested_or_non_integer_labels_and_an_empty_batch():
    model = tiny()
    x = torch.randn(2, 4, 8, 8)
    with pytest.raises(TypeError, match="class_labels has dtype torch.bool"):
        model(x, 3, torch.tensor([True, False]))
    with pytest.raises(ValueError, match="class_labels=\\[True, False\\]"):
        model(x, 3, [True, False])
    with pytest.raises(ValueError, match="class_labels=\\['3', '4'\\]: expected integer class ids"):
        model(x, 3, ["3", "4"])
    with pytest.raises(ValueError, match="class_labels has dtype torch.float32"):
        model(x, 3, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="nested lists are not flattened"):
        model(x, 3, [[1, 2]])
    with pytest.raises(ValueError, match="class_labels has shape \\(1, 2\\)"):
        model(x, 3, torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="an empty batch"):
        model(x[:0], 3, torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="hidden_states is a dtype torch.int64"):
        model(torch.zeros(1, 4, 8, 8, dtype=torch.long), 3, [1])
    with pytest.raises(TypeError, match="hidden_states is a list"):
        model([[0.0]], 3, [1])
    # the spellings that stay valid: numpy ids and arrays, 0-d tensors, one id for the batch
    np = pytest.importorskip("numpy")
    ref = model(x, 3, [1, 1]).sample
    for labels in ([np.int64(1), 1], np.array([1, 1]), torch.tensor(1), 1, (1, 1)):
        assert torch.equal(model(x, 3, labels).sample, ref)
