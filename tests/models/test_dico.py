"""DiCoModel: the published parameter counts, the paper's zero output at initialisation, the diffusers model
contract (config, save/load, return types, gradient checkpointing) and the label / size rules."""

from __future__ import annotations

import pytest
import torch

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
    model = randomized(tiny(class_dropout_prob=1.0))
    x = torch.randn(1, 4, 8, 8)
    null = model(x, 3, [10]).sample
    assert not torch.equal(model(x, 3, [2]).sample, null)  # eval: labels kept
    model.train()
    assert torch.equal(model(x, 3, [2]).sample, null)  # training with p=1: always the null class


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
