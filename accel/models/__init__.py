"""Native diffusers backbones: DiCo (conv U-Net) and LEGO (brick stacks), with their pipelines.

    from accel.models import DiCoModel, DiCoPipeline
    model = DiCoModel.from_preset("DiCo-XL")                       # 701,151,368 parameters, as published
    pipe = DiCoPipeline(transformer=model, scheduler=DDIMScheduler(clip_sample=False), vae=vae)
"""

from .dico import DICO_PRESETS, DiCoBlock, DiCoModel
from .lego import LEGO_PRESETS, LEGOBlock, LEGOBrick, LEGOModel
from .pipelines import ClassConditionalPipeline, DiCoPipeline, LEGOPipeline

__all__ = [
    "DICO_PRESETS",
    "LEGO_PRESETS",
    "ClassConditionalPipeline",
    "DiCoBlock",
    "DiCoModel",
    "DiCoPipeline",
    "LEGOBlock",
    "LEGOBrick",
    "LEGOModel",
    "LEGOPipeline",
]
