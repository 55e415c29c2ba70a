"""The native backbones of `accel.models` as zoo pipelines with random weights: "dico" (`DiCoPipeline`) and
"lego" (`LEGOPipeline`), class-conditional over 10 classes, latent space with a small `AutoencoderKL`.

    pipe = accel.zoo.load("lego", size="tiny")
    latents = accel.zoo.generate(pipe, steps=4)

Sizes: "tiny" (16x16 images, 8x8 latents: a run takes well under a second; tests) and "bench" (256x256
images, 32x32 latents: DiCo at DiCo-S width and depths, LEGO at LEGO-S width with a 4 -> 16 -> 32 PG
stack). Both models initialise their adaLN gates and output layers to zero (a fresh model outputs 0, as
the papers specify), which would make every random-weight run trivial; the zoo therefore gives each
parameter that starts at exactly zero small seeded values (N(0, 0.02)), like a model some way into
training.

Unlike the rest of the zoo this module imports from accel (`accel.models`): the backbones are accel's own
diffusers models.
"""

from __future__ import annotations

from typing import Any
from weakref import WeakKeyDictionary

import diffusers
import torch

NAMES = ("dico", "lego")
BUILT: WeakKeyDictionary[Any, tuple[str, str]] = WeakKeyDictionary()
RESOLUTION = {"tiny": {"height": 16, "width": 16}, "bench": {"height": 256, "width": 256}}
NUM_CLASSES = 10
GUIDANCE = 4.0  # the pipelines' default (DiT's)


def _vae(size: str) -> diffusers.AutoencoderKL:
    """2x for tiny, 8x (very thin) for bench, like the zoo's other image VAEs."""
    blocks, width = (2, 8) if size == "tiny" else (4, 4)
    return diffusers.AutoencoderKL(
        block_out_channels=(width,) * blocks,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=32,
        mid_block_add_attention=size == "tiny",
    )


def _model(name: str, size: str) -> torch.nn.Module:
    from accel.models import DiCoModel, LEGOModel

    latent = RESOLUTION[size]["height"] // (2 if size == "tiny" else 8)
    if name == "dico":
        if size == "tiny":
            return DiCoModel(sample_size=latent, in_channels=4, hidden_size=16, depths=(1, 1, 2, 1, 1),
                             num_classes=NUM_CLASSES)
        return DiCoModel.from_preset("DiCo-S", sample_size=latent, num_classes=NUM_CLASSES)
    if size == "tiny":
        return LEGOModel(sample_size=latent, in_channels=4, hidden_size=32, num_heads=2, brick_sizes=(2, 4, 8),
                         patch_sizes=(1, 2, 1), depths=(1, 1, 2), num_classes=NUM_CLASSES)
    return LEGOModel(sample_size=latent, in_channels=4, hidden_size=384, num_heads=6, brick_sizes=(4, 16, 32),
                     patch_sizes=(2, 8, 2), depths=(2, 4, 6), num_classes=NUM_CLASSES)


def _wake(model: torch.nn.Module) -> None:
    """Give every trainable parameter that is exactly zero N(0, 0.02) values (seeded by the caller)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and not p.any():
                p.normal_(std=0.02)


def load(name: str, size: str = "tiny", seed: int = 0, dtype: torch.dtype = torch.float32) -> Any:
    """The zoo pipeline `name` ("dico" or "lego") of `size`, weights from `seed` (the global RNG is kept).

    Raises `ValueError` for an unknown name or size."""
    from accel.models import DiCoPipeline, LEGOPipeline

    if name not in NAMES:
        raise ValueError(f"Unknown backbone zoo entry {name!r}; expected one of {', '.join(NAMES)}")
    if size not in RESOLUTION:
        raise ValueError(f"Unknown zoo size {size!r} for {name!r}. Valid sizes: {', '.join(RESOLUTION)}.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _model(name, size)
        _wake(model)
        torch.manual_seed(seed)
        vae = _vae(size)
    if name == "dico":  # DiT's training schedule, as its conversion script saves it
        scheduler: Any = diffusers.DDIMScheduler(beta_schedule="linear", clip_sample=False)
        pipe = DiCoPipeline(transformer=model.eval(), scheduler=scheduler, vae=vae.eval())
    else:
        pipe = LEGOPipeline(transformer=model.eval(), scheduler=diffusers.EDMEulerScheduler(), vae=vae.eval())
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    BUILT[pipe] = (name, size)
    return pipe


def call_inputs(pipe: Any, generator: torch.Generator, batch_size: int, guidance_scale: float,
                height: int | None, width: int | None) -> dict[str, Any]:
    """Class labels drawn from `generator`, guidance and the size (the entry's default unless given)."""
    built = BUILT.get(pipe)
    scale = pipe.vae_scale_factor
    side = pipe.transformer.config.sample_size * scale
    default = RESOLUTION[built[1]] if built else {"height": side, "width": side}
    labels = torch.randint(int(pipe.transformer.config.num_classes), (batch_size,), generator=generator).tolist()
    return {"class_labels": labels, "guidance_scale": guidance_scale,
            "height": height or default["height"], "width": width or default["width"]}
