"""Model adapters: block lists, attention kinds and token layouts, checked against the real models."""

from __future__ import annotations

import pytest

import accel
from accel.adapters import adapter_for, family_names
from accel.zoo import generate

EXPECTED = {
    # zoo name: (family, stacks, attention kinds per block of the first stack, text position in joint attention)
    "flux": ("flux", ["transformer_blocks", "single_transformer_blocks"], {"joint"}, "first"),
    "wan": ("wan", ["blocks"], {"self", "cross"}, "none"),
    "hunyuan-video": ("hunyuan-video", ["transformer_blocks", "single_transformer_blocks"], {"joint"}, "last"),
    "pixart-alpha": ("pixart", ["transformer_blocks"], {"self", "cross"}, "none"),
    "pixart-sigma": ("pixart", ["transformer_blocks"], {"self", "cross"}, "none"),
    "dit": ("dit", ["transformer_blocks"], {"self"}, "none"),
    "sd3": ("sd3", ["transformer_blocks"], {"joint"}, "last"),
    "cogvideox": ("cogvideox", ["transformer_blocks"], {"joint"}, "first"),
    # accel.models' backbones: block lists only (no diffusers attention modules, no token layout)
    "dico": ("dico", ["encoder_level_1", "encoder_level_2", "latent", "decoder_level_2", "decoder_level_1"], set(),
             "none"),
    "lego": ("lego", ["model.0.blocks", "model.1.blocks", "model.2.blocks"], set(), "none"),
}


def test_every_supported_family_has_a_zoo_model():
    assert sorted({e[0] for e in EXPECTED.values()}) == sorted(family_names())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_adapter_matches_the_real_model(tiny, name):
    family, stacks, kinds, text_position = EXPECTED[name]
    pipe = tiny(name)
    model = pipe.transformer
    adapter = adapter_for(model)
    assert adapter.family == family and not adapter.generic
    blocks = adapter.blocks(model)
    assert sorted({b.stack for b in blocks}) == sorted(stacks)
    for stack in stacks:
        assert len([b for b in blocks if b.stack == stack]) == len(model.get_submodule(stack))
    sites = adapter.attention_sites(model)
    first = [s for s in sites if s.block.stack == stacks[0] and s.block.index == 0]
    if family == "sd3" and getattr(blocks[0].module, "attn2", None) is not None:
        kinds = kinds | {"self"}  # SD3.5 dual-attention layer: attn2 is image-only self-attention
    assert {s.kind for s in first} == kinds
    from diffusers.models.attention import AttentionModuleMixin
    from diffusers.models.attention_processor import Attention

    assert all(isinstance(s.module, (Attention, AttentionModuleMixin)) for s in sites)
    assert {s.text_position for s in sites if s.kind == "joint"} <= {text_position}
    if adapter.layout is None:  # no tokens (DiCo's convolutions; LEGO's per-region blocks): nothing more to read
        assert not sites
        return

    # the layout read from the call's arguments matches the tokens that reach the first block
    handle = accel.patch(pipe, method="none")
    seen = []

    def capture(module, args, kwargs):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        text = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        seen.append((handle.tracker.layout, hidden.shape[1], None if text is None else text.shape[1]))

    h = blocks[0].module.register_forward_pre_hook(capture, with_kwargs=True)
    generate(pipe, steps=2)  # PixArt's pipeline breaks at 1 step (diffusers 0.42 DPM-Solver)
    h.remove()
    handle.unpatch()
    layout, image_tokens, text_tokens = seen[0]
    assert layout.image_tokens == image_tokens
    assert layout.text_position == text_position
    if text_position != "none":
        assert layout.text_tokens == text_tokens
        assert layout.total_tokens == image_tokens + text_tokens
    assert layout.image_slice.stop - layout.image_slice.start == image_tokens


def test_video_layout_has_frames(tiny):
    pipe = tiny("wan")
    handle = accel.patch(pipe, method="none")
    grids = []
    h = pipe.transformer.blocks[0].register_forward_pre_hook(lambda m, a: grids.append(handle.tracker.layout.grid))
    generate(pipe, steps=2)
    h.remove()
    handle.unpatch()
    frames, height, width = grids[0]
    assert frames > 1 and height > 1 and width > 1


def test_generic_adapter_finds_blocks_by_introspection():
    import torch

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stages = torch.nn.ModuleList([Block() for _ in range(3)])
            self.heads = torch.nn.ModuleList([torch.nn.Linear(4, 4), torch.nn.ReLU()])

    adapter = adapter_for(Odd())
    assert adapter.generic and [s.attr for s in adapter.stacks] == ["stages"]
    assert len(adapter.blocks(Odd())) == 3
    assert adapter_for(torch.nn.Linear(2, 2)) is None
