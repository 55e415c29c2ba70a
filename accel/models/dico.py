"""DiCo: a purely convolutional diffusion backbone (Ai et al., "DiCo: Revitalizing ConvNets for Scalable
and Efficient Diffusion Modeling", arXiv 2505.11196, NeurIPS 2025), as a native diffusers model.

Architecture (from the released `dico_models.py`; notes in ../shared/research/backbones.md section 1):

- a U-shaped net over three resolution levels of widths C, 2C, 4C; no patchify (a 3x3 stem at stride 1);
  downsampling by conv + PixelUnshuffle(2), upsampling by conv + PixelShuffle(2), skips fused by concat +
  1x1 conv; the top decoder level runs at width 2C;
- every block is adaLN-Zero around a conv module (1x1 -> 3x3 depthwise -> GELU -> compact channel
  attention -> 1x1) and a 1x1-conv FFN;
- conditioning per level: c_k = t_k + y_k from three independent timestep MLPs and label tables
  (widths C, 2C, 4C); row `num_classes` of each table is the classifier-free-guidance null class.

It trains like DiT (epsilon prediction with learned-range Sigma, 1000-step linear betas), so with
`learn_sigma=True` it outputs `2 * in_channels` channels, epsilon first, and runs in diffusers'
`DiTPipeline` (which hard-codes the null id 1000: ids >= `num_classes` map to the null row) as well as in
`accel.models.DiCoPipeline`.

Parameter names mirror the released code (`x_embedder.proj`, `t_embedder_1.mlp`,
`y_embedder.embedding_table_0`, `encoder_level_1`, `down1_2`, ..., block members `conv1`..`conv5`,
`ca.1`, `adaLN_modulation.1`), so its checkpoints would load one to one (`from_original_checkpoint`).

Differences from the released code, following the paper and diffusers' DiT pipeline:
- classifier-free guidance is the pipeline's, on all latent channels; the released `forward_with_cfg`
  guides only the first 3 channels (DiT's legacy quirk), which the paper does not describe.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import ModelMixin  # imported by name: diffusers' loader looks for it in this module
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from torch import nn

from .common import (
    TimestepMLP,
    batch_timesteps,
    check_bool,
    check_hidden_states,
    check_int,
    check_ints,
    check_shared_fields,
    class_ids,
    drop_labels,
    sinusoidal_embedding,
)

__all__ = ["DICO_PRESETS", "DiCoBlock", "DiCoModel"]

# name -> constructor kwargs (the released factory functions); parameter counts in tests/models/test_dico.py
DICO_PRESETS: dict[str, dict[str, Any]] = {
    "DiCo-S": {"hidden_size": 128, "depths": (5, 4, 4, 4, 4), "mlp_ratio": 2.0},
    "DiCo-B": {"hidden_size": 256, "depths": (5, 4, 4, 4, 4), "mlp_ratio": 2.0},
    "DiCo-L": {"hidden_size": 352, "depths": (9, 8, 9, 8, 9), "mlp_ratio": 2.0},
    "DiCo-XL": {"hidden_size": 416, "depths": (9, 9, 10, 9, 9), "mlp_ratio": 2.0},
    "DiCo-H": {"hidden_size": 416, "depths": (14, 12, 10, 12, 14), "mlp_ratio": 4.0},
}


def check_config(sample_size: Any, in_channels: Any, out_channels: Any, hidden_size: Any, depths: Any,
                 mlp_ratio: Any, num_classes: Any, class_dropout_prob: Any, learn_sigma: Any) -> dict[str, Any]:
    """`DiCoModel`'s config, checked and normalised (python ints and floats, `depths` a list, `out_channels`
    resolved from `learn_sigma`).

    Allowed: `sample_size` a positive multiple of 4 (two 2x downsamplings); `in_channels` a positive
    integer; `out_channels` None or `2 * in_channels` with `learn_sigma` (else `in_channels`); `hidden_size` a
    positive even integer (the first downsampler halves it); `depths` 5 non-negative integers; `mlp_ratio` a
    finite number > 0 that leaves the FFN at least one channel; `num_classes` a non-negative integer (0:
    unconditional, only the null class); `class_dropout_prob` in [0, 1); `learn_sigma` a bool.

    Raises `InvalidTypeError` (a `TypeError` and a `ValueError`) for a wrong type, e.g. a float or string
    where an integer belongs, and `ValueError` for a value out of range; each message names the field, the
    value and what is allowed."""
    owner = "DiCoModel"
    sample_size = check_int(owner, "sample_size", sample_size)
    if sample_size % 4:
        raise ValueError(f"{owner}: sample_size={sample_size}: expected a positive multiple of 4 (two 2x "
                         "downsamplings)")
    in_channels = check_int(owner, "in_channels", in_channels)
    hidden_size = check_int(owner, "hidden_size", hidden_size)
    if hidden_size % 2:
        raise ValueError(f"{owner}: hidden_size={hidden_size}: expected a positive even width (the first "
                         "downsampler halves it)")
    depths = check_ints(owner, "depths", depths, minimum=0, length=5,
                        meaning="block counts of encoder 1, encoder 2, middle, decoder 2, decoder 1")
    mlp_ratio, num_classes, class_dropout_prob = check_shared_fields(
        owner, hidden_size, mlp_ratio, num_classes, class_dropout_prob)
    learn_sigma = check_bool(owner, "learn_sigma", learn_sigma)
    expected = in_channels * 2 if learn_sigma else in_channels
    if out_channels is None:
        out_channels = expected
    elif check_int(owner, "out_channels", out_channels) != expected:
        raise ValueError(f"{owner}: out_channels={out_channels} with learn_sigma={learn_sigma} and "
                         f"in_channels={in_channels}; expected {expected} (or None)")
    return {"sample_size": sample_size, "in_channels": in_channels, "out_channels": int(out_channels),
            "hidden_size": hidden_size, "depths": list(depths), "mlp_ratio": mlp_ratio, "num_classes": num_classes,
            "class_dropout_prob": class_dropout_prob, "learn_sigma": learn_sigma}


def layer_norm_2d(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm over the channels of each pixel, no affine: [B, C, H, W] -> [B, C, H, W]."""
    return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), eps=eps).permute(0, 3, 1, 2)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: `x * (1 + scale) + shift`, [B, C] broadcast over H and W."""
    return x * (1 + scale[:, :, None, None]) + shift[:, :, None, None]


class DiCoBlock(nn.Module):
    """One DiCo block of width `dim`: adaLN-Zero, conv module with compact channel attention, conv FFN.

    forward(hidden_states [B, dim, H, W], temb [B, dim]) -> [B, dim, H, W], same dtype. Zero-initialised
    modulation makes a fresh block the identity (paper section 3, "DiCo block"; `DiCoBlock` in the code).
    """

    def __init__(self, dim: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.conv1 = nn.Conv2d(dim, dim, 1)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)  # depthwise
        self.conv3 = nn.Conv2d(dim, dim, 1)
        self.ca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, dim, 1))  # compact channel attention
        self.conv4 = nn.Conv2d(dim, hidden, 1)
        self.conv5 = nn.Conv2d(hidden, dim, 1)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        x = hidden_states
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(temb).chunk(6, dim=1)
        h = self.conv2(self.conv1(modulate(layer_norm_2d(x), shift1, scale1)))
        h = F.gelu(h)
        h = h * torch.sigmoid(self.ca(h))
        x = x + gate1[:, :, None, None] * self.conv3(h)
        h = self.conv5(F.gelu(self.conv4(modulate(layer_norm_2d(x), shift2, scale2))))
        return x + gate2[:, :, None, None] * h


class _Stem(nn.Module):
    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, 3, padding=1)


class _LabelTables(nn.Module):
    """Three label tables (widths C, 2C, 4C) of `num_classes + 1` rows; the last row is the null class."""

    def __init__(self, num_classes: int, dims: tuple[int, int, int]) -> None:
        super().__init__()
        self.embedding_table_0 = nn.Embedding(num_classes + 1, dims[0])
        self.embedding_table_1 = nn.Embedding(num_classes + 1, dims[1])
        self.embedding_table_2 = nn.Embedding(num_classes + 1, dims[2])


class _FinalLayer(nn.Module):
    def __init__(self, dim: int, out_channels: int) -> None:
        super().__init__()
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.out_proj = nn.Conv2d(dim, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.out_proj(modulate(layer_norm_2d(x), shift, scale))


def _resample(conv_in: int, conv_out: int, shuffle: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(conv_in, conv_out, 3, padding=1, bias=False), shuffle)


class DiCoModel(ModelMixin, ConfigMixin):
    """DiCo as a diffusers model: `model(hidden_states, timestep, class_labels).sample`.

    Args:
        sample_size: the latent side the model was trained at (32 for 256 px with the SD VAE). Any H and W
            divisible by 4 run (there is no position embedding), though channel attention's pooled
            statistics depend on the resolution.
        in_channels: latent channels (4 for the SD VAE; 1 for grey pixels).
        out_channels: output channels; `None` -> `2 * in_channels` with `learn_sigma`, else `in_channels`.
        hidden_size: C, the width of the first level (levels are C, 2C, 4C; the top decoder is 2C).
        depths: blocks per level: (encoder 1, encoder 2, middle, decoder 2, decoder 1).
        mlp_ratio: FFN expansion (2; 4 for DiCo-H).
        num_classes: class count; the null class is id `num_classes`, and any larger id maps to it (0: an
            unconditional model, the null class only).
        class_dropout_prob: label dropout in training mode (CFG training), 0.1 in the paper's recipe; in [0, 1).
        learn_sigma: output DiT's learned-range variance channels after epsilon.

    Every field is checked before any parameter is created (`check_config`): raises `InvalidTypeError` (a
    `TypeError` and a `ValueError`) for a value of the wrong type, `ValueError` for one out of range.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["DiCoBlock"]
    _skip_layerwise_casting_patterns = ["x_embedder", "norm"]

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        in_channels: int = 4,
        out_channels: int | None = None,
        hidden_size: int = 128,
        depths: tuple[int, int, int, int, int] | list[int] = (5, 4, 4, 4, 4),
        mlp_ratio: float = 2.0,
        num_classes: int = 1000,
        class_dropout_prob: float = 0.1,
        learn_sigma: bool = True,
    ) -> None:
        cfg = check_config(sample_size, in_channels, out_channels, hidden_size, depths, mlp_ratio, num_classes,
                           class_dropout_prob, learn_sigma)  # before any parameter exists
        super().__init__()
        # normalised, and as JSON gives them back: save/load keeps the config equal; DiTPipeline reads an int
        self.register_to_config(**cfg)
        in_channels, out_channels, hidden_size = cfg["in_channels"], cfg["out_channels"], cfg["hidden_size"]
        depths, mlp_ratio, num_classes = cfg["depths"], cfg["mlp_ratio"], cfg["num_classes"]
        C = hidden_size
        dims = (C, 2 * C, 4 * C)
        self.num_classes = num_classes
        self.x_embedder = _Stem(in_channels, C)
        self.t_embedder_1 = TimestepMLP(dims[0])
        self.t_embedder_2 = TimestepMLP(dims[1])
        self.t_embedder_3 = TimestepMLP(dims[2])
        self.y_embedder = _LabelTables(num_classes, dims)
        self.encoder_level_1 = nn.ModuleList([DiCoBlock(C, mlp_ratio) for _ in range(depths[0])])
        self.down1_2 = _resample(C, C // 2, nn.PixelUnshuffle(2))
        self.encoder_level_2 = nn.ModuleList([DiCoBlock(2 * C, mlp_ratio) for _ in range(depths[1])])
        self.down2_3 = _resample(2 * C, C, nn.PixelUnshuffle(2))
        self.latent = nn.ModuleList([DiCoBlock(4 * C, mlp_ratio) for _ in range(depths[2])])
        self.up3_2 = _resample(4 * C, 8 * C, nn.PixelShuffle(2))
        self.reduce_chan_level2 = nn.Conv2d(4 * C, 2 * C, 1)
        self.decoder_level_2 = nn.ModuleList([DiCoBlock(2 * C, mlp_ratio) for _ in range(depths[3])])
        self.up2_1 = _resample(2 * C, 4 * C, nn.PixelShuffle(2))
        self.reduce_chan_level1 = nn.Conv2d(2 * C, 2 * C, 1)
        self.decoder_level_1 = nn.ModuleList([DiCoBlock(2 * C, mlp_ratio) for _ in range(depths[4])])
        self.final_layer = _FinalLayer(2 * C, out_channels)
        self.gradient_checkpointing = False
        self.initialize_weights()

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> DiCoModel:
        """A model of the named preset (`DICO_PRESETS`: DiCo-S/B/L/XL/H), other config keys overridable.

        Raises `ValueError` naming the presets for an unknown name. Build on `torch.device("meta")` to
        count parameters without allocating."""
        if name not in DICO_PRESETS:
            raise ValueError(f"DiCoModel: unknown preset {name!r}; expected one of {', '.join(DICO_PRESETS)}")
        return cls(**{**DICO_PRESETS[name], **overrides})

    def initialize_weights(self) -> None:
        """The released initialisation: Xavier-uniform weights and zero biases for every Linear and Conv2d,
        the stem like a Linear, label tables and timestep MLPs N(0, 0.02), and zero adaLN output layers and
        head, so a fresh model outputs exactly 0."""
        if any(p.is_meta for p in self.parameters()):
            return
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        for table in (self.y_embedder.embedding_table_0, self.y_embedder.embedding_table_1,
                      self.y_embedder.embedding_table_2):
            nn.init.normal_(table.weight, std=0.02)
        for emb in (self.t_embedder_1, self.t_embedder_2, self.t_embedder_3):
            nn.init.normal_(emb.mlp[0].weight, std=0.02)
            nn.init.normal_(emb.mlp[2].weight, std=0.02)
        for block in self.blocks():
            nn.init.zeros_(block.adaLN_modulation[1].weight)
            nn.init.zeros_(block.adaLN_modulation[1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[1].bias)
        nn.init.zeros_(self.final_layer.out_proj.weight)
        nn.init.zeros_(self.final_layer.out_proj.bias)

    def blocks(self) -> list[DiCoBlock]:
        """Every block, in execution order (encoder 1, encoder 2, middle, decoder 2, decoder 1)."""
        return [b for level in (self.encoder_level_1, self.encoder_level_2, self.latent, self.decoder_level_2,
                                self.decoder_level_1) for b in level]

    # ---- forward -----------------------------------------------------------------------------
    def check_size(self, height: int, width: int) -> None:
        """Raises `ValueError` unless a [*, *, height, width] input can run: both divisible by 4 (two 2x
        downsamplings). Pipelines call it before their first step."""
        if height % 4 or width % 4:
            raise ValueError(f"DiCoModel: height and width must be divisible by 4 (two 2x downsamplings); "
                             f"got {height}x{width}")

    def _run(self, level: nn.ModuleList, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        for block in level:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(block, x, c)
            else:
                x = block(x, c)
        return x

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor | float | int | None = None,
        class_labels: torch.Tensor | list[int] | None = None,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """Predict noise (and variance) for `hidden_states`.

        Args:
            hidden_states: [B, in_channels, H, W] latents, H and W divisible by 4.
            timestep: the DDPM step (or any real noise-level value the model was trained on): a number,
                a 0-d tensor or [B].
            class_labels: [B] int ids; ids >= num_classes (e.g. `DiTPipeline`'s 1000) are the null class;
                `None` is unconditional.
            return_dict: `Transformer2DModelOutput(sample=...)` if True, else `(sample,)`.
            kwargs: other pipeline arguments (ignored, as diffusers' DiT ignores `cross_attention_kwargs`).

        Returns the [B, out_channels, H, W] prediction in the input's dtype. Raises `ValueError` for a wrong
        shape or channel count, an empty batch, H or W not divisible by 4, or malformed timesteps / labels
        (more than one dimension, a wrong count, a negative id), and `InvalidTypeError` (a `TypeError` and a
        `ValueError`) for non-tensor or non-float `hidden_states` and labels that are not integers (bools,
        floats, strings). Only shapes and dtypes are checked, besides the existing test for negative ids.
        """
        x = check_hidden_states("DiCoModel", hidden_states, self.config.in_channels)
        self.check_size(x.shape[-2], x.shape[-1])
        B = x.shape[0]
        t = batch_timesteps(timestep, B, x.device)
        y = drop_labels(class_ids(class_labels, B, self.num_classes, x.device, "DiCoModel"), self.num_classes,
                        self.config.class_dropout_prob, self.training)
        freq = sinusoidal_embedding(t)
        ye = self.y_embedder
        c1 = self.t_embedder_1(freq) + ye.embedding_table_0(y)
        c2 = self.t_embedder_2(freq) + ye.embedding_table_1(y)
        c3 = self.t_embedder_3(freq) + ye.embedding_table_2(y)

        h1 = self._run(self.encoder_level_1, self.x_embedder.proj(x), c1)
        h2 = self._run(self.encoder_level_2, self.down1_2(h1), c2)
        h = self._run(self.latent, self.down2_3(h2), c3)
        h = self.reduce_chan_level2(torch.cat([self.up3_2(h), h2], dim=1))
        h = self._run(self.decoder_level_2, h, c2)
        h = self.reduce_chan_level1(torch.cat([self.up2_1(h), h1], dim=1))
        h = self._run(self.decoder_level_1, h, c2)
        out = self.final_layer(h, c2)
        if not return_dict:
            return (out,)
        return Transformer2DModelOutput(sample=out)

    # ---- released checkpoints ----------------------------------------------------------------
    def load_original_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a state dict in the released code's layout (its names are this model's names). A training
        checkpoint's EMA weights (`state["ema"]`) or `state["model"]` are taken when present.

        Raises `KeyError` listing missing or unexpected keys, `RuntimeError` for shape mismatches."""
        for key in ("ema", "model"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise KeyError(f"DiCoModel: checkpoint does not match the config; missing {missing[:5]}"
                           f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                           f"{'...' if len(unexpected) > 5 else ''}")

    @classmethod
    def from_original_checkpoint(cls, path: str | os.PathLike, preset: str | None = None,
                                 **config: Any) -> DiCoModel:
        """A model from a released `.pt` checkpoint (e.g. `DiCo-XL-400K-256x256.pt`), built from `preset`
        and/or config kwargs. The file is read with `torch.load(weights_only=True)` (no pickled code)."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = cls.from_preset(preset, **config) if preset else cls(**config)
        model.load_original_state_dict(state)
        return model.eval()
