"""LEGO: a diffusion backbone of stacked "bricks" (Zheng et al., "Learning Stackable and Skippable LEGO
Bricks for Efficient, Reconfigurable, and Variable-Resolution Diffusion Modeling", arXiv 2310.06389,
ICLR 2024), as a native diffusers model.

A brick k (region size r_k, token patch p_k, depth N_k) splits the full-resolution input into
non-overlapping r_k x r_k regions and denoises each region on its own: a p_k x p_k patch embedding (the
paper's local-feature enrichment), N_k DiT blocks attending over the (r_k/p_k)^2 tokens of the region
(global-content orchestration), and DiT's linear decoder; the regions are put back into a full-resolution
map. Brick 0 sees the noisy image and two coordinate channels (x and y over the whole canvas, in
[-1, 1]); every later brick also sees the previous brick's full-resolution prediction. All bricks share
one conditioning vector c = t_emb + y_emb, so one stack has one width.

Every brick is supervised during training (the EDM loss averaged over the bricks' outputs), so any
prefix of the stack is a denoiser: that is what makes test-time brick skipping
(`accel.patch(pipe, method="lego-skip")`, caches/lego_skip.py) work.

The model computes the raw network output F of EDM's preconditioning (Karras et al. 2022): its
`timestep` is c_noise = ln(sigma) / 4 and its input c_in * x, exactly what diffusers' `EDMEulerScheduler`
(prediction_type "epsilon", sigma_data 0.5) feeds it and expects back; `LEGOPipeline` drives it. A model
trained with the DDPM epsilon objective instead runs the same way in `DiTPipeline`.

Structure and parameter names follow the released `training/lego_models.py`
(`model.{k}.{x_embedder,pos_embed,blocks,final_layer}`, `t_embedder`, `y_embedder`). Differences, each
following the paper's description rather than the released code:

- non-square canvases: regions are re-assembled on an (H/r) x (W/r) grid; the released code assumes a
  square grid (h = w = sqrt(L)), which breaks the paper's variable-resolution (panorama) use;
- skipping: `forward(..., skip_bricks=...)` really skips (see `forward`); the released `generate.py`
  skip flag returns after the last brick, so it skips nothing, and is ignored under CFG;
- no augmentation embedding (EDM's `augment_dim`): the reference recipes here train without
  augmentation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import ModelMixin  # imported by name: diffusers' loader looks for it in this module
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import get_2d_sincos_pos_embed
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from torch import nn

from .common import (
    InvalidTypeError,
    TimestepMLP,
    batch_timesteps,
    check_hidden_states,
    check_int,
    check_ints,
    check_shared_fields,
    class_ids,
    drop_labels,
    edm_positional_embedding,
    is_integer,
    label_tensor,
)

__all__ = ["LEGO_PRESETS", "LEGOBlock", "LEGOBrick", "LEGOModel"]

_S = {"hidden_size": 384, "num_heads": 6}
_L = {"hidden_size": 1024, "num_heads": 16}
_XL = {"hidden_size": 1152, "num_heads": 16}
_PIXEL_64 = {"sample_size": 64, "in_channels": 3}
_LATENT_32 = {"sample_size": 32, "in_channels": 4}
_PG_64 = {"brick_sizes": (4, 16, 64), "patch_sizes": (2, 8, 2)}
_PR_64 = {"brick_sizes": (64, 16, 4), "patch_sizes": (2, 8, 2)}

# name -> constructor kwargs: the released factory functions whose configs are known (the notes, section
# 2.2). PG = progressive growth (small -> image-sized bricks), PR = progressive refinement (large -> small),
# U = PR then PG. The 64 px S stacks are unconditional (num_classes 0), the others class-conditional.
LEGO_PRESETS: dict[str, dict[str, Any]] = {
    "LEGO-S-PG-64": {**_S, **_PIXEL_64, **_PG_64, "depths": (2, 4, 6), "num_classes": 0},
    "LEGO-S-PR-64": {**_S, **_PIXEL_64, **_PR_64, "depths": (6, 4, 2), "num_classes": 0},
    "LEGO-L-PG-64": {**_L, **_PIXEL_64, **_PG_64, "depths": (6, 8, 12), "num_classes": 1000},
    "LEGO-L-PR-64": {**_L, **_PIXEL_64, **_PR_64, "depths": (12, 8, 6), "num_classes": 1000},
    "LEGO-XL-PG-32": {**_XL, **_LATENT_32, "brick_sizes": (4, 16, 32), "patch_sizes": (2, 8, 2),
                      "depths": (4, 12, 14), "num_classes": 1000},
    "LEGO-XL-U-32": {**_XL, **_LATENT_32, "brick_sizes": (32, 16, 4, 16, 32), "patch_sizes": (2, 8, 2, 8, 2),
                     "depths": (14, 10, 4, 10, 14), "num_classes": 1000},
}


def check_config(sample_size: Any, in_channels: Any, out_channels: Any, hidden_size: Any, num_heads: Any,
                 brick_sizes: Any, patch_sizes: Any, depths: Any, mlp_ratio: Any, num_classes: Any,
                 class_dropout_prob: Any) -> dict[str, Any]:
    """`LEGOModel`'s config, checked and normalised (python ints and floats, lists for the per-brick values,
    `out_channels` resolved to `in_channels`).

    Allowed: `brick_sizes`, `patch_sizes` and `depths` lists or tuples (not strings) of integers with one
    entry per brick (at least one): region sides and patches positive, each region divisible by its patch,
    depths non-negative; `sample_size` a positive multiple of every region side; `in_channels` a positive
    integer and `out_channels` None or `in_channels`; `hidden_size` a positive multiple of 4 (the 2-D sin-cos
    position table) and of `num_heads` (a positive integer); `mlp_ratio` a finite number > 0 that leaves the
    MLP at least one channel; `num_classes` a non-negative integer (0: unconditional);
    `class_dropout_prob` in [0, 1).

    Raises `InvalidTypeError` (a `TypeError` and a `ValueError`) for a wrong type and `ValueError` for a
    value out of range; each message names the field, the value and what is allowed."""
    owner = "LEGOModel"
    sizes = check_ints(owner, "brick_sizes", brick_sizes, meaning="region side per brick, bottom first")
    patches = check_ints(owner, "patch_sizes", patch_sizes, meaning="token patch side per brick")
    depths = check_ints(owner, "depths", depths, minimum=0, meaning="DiT blocks per brick")
    if not len(sizes) == len(patches) == len(depths):
        raise ValueError(f"{owner}: brick_sizes={sizes}, patch_sizes={patches} and depths={depths} must have one "
                         "entry per brick (at least one)")
    for r, p in zip(sizes, patches, strict=True):
        if r % p:
            raise ValueError(f"{owner}: brick size {r} is not divisible by its patch size {p}")
    sample_size = check_int(owner, "sample_size", sample_size)
    if any(sample_size % r for r in sizes):
        raise ValueError(f"{owner}: sample_size={sample_size}: expected a multiple of every brick size {sizes}")
    in_channels = check_int(owner, "in_channels", in_channels)
    if out_channels is not None and check_int(owner, "out_channels", out_channels) != in_channels:
        raise ValueError(f"{owner}: out_channels={out_channels}; expected in_channels={in_channels} or None "
                         "(each brick predicts the image; there are no variance channels)")
    hidden_size = check_int(owner, "hidden_size", hidden_size)
    num_heads = check_int(owner, "num_heads", num_heads)
    if hidden_size % 4:
        raise ValueError(f"{owner}: hidden_size={hidden_size}: expected a positive multiple of 4 (the 2-D sin-cos "
                         "position table)")
    if hidden_size % num_heads:
        raise ValueError(f"{owner}: hidden_size={hidden_size} is not divisible by num_heads={num_heads}")
    mlp_ratio, num_classes, class_dropout_prob = check_shared_fields(
        owner, hidden_size, mlp_ratio, num_classes, class_dropout_prob, ffn="MLP")
    return {"sample_size": sample_size, "in_channels": in_channels, "out_channels": in_channels,
            "hidden_size": hidden_size, "num_heads": num_heads, "brick_sizes": list(sizes),
            "patch_sizes": list(patches), "depths": list(depths), "mlp_ratio": mlp_ratio,
            "num_classes": num_classes, "class_dropout_prob": class_dropout_prob}


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class _Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (timm's `Attention`, as DiT uses), on SDPA."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class LEGOBlock(nn.Module):
    """A DiT block (adaLN-Zero, self-attention, tanh-GELU MLP; LayerNorms without affine, eps 1e-6).

    forward(hidden_states [N, T, D], temb [N, D]) -> [N, T, D]; N is batch x regions. A fresh block is
    the identity (zero-initialised modulation)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = _Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        x = hidden_states
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(temb).chunk(6, dim=1)
        x = x + gate1[:, None] * self.attn(_modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(_modulate(self.norm2(x), shift2, scale2))


class _PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch, stride=patch)


class _FinalLayer(nn.Module):
    def __init__(self, dim: int, patch: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch * patch * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(_modulate(self.norm_final(x), shift, scale))


def to_regions(x: torch.Tensor, r: int) -> torch.Tensor:
    """[B, C, H, W] -> [B * (H/r) * (W/r), C, r, r], regions in row-major order within each sample."""
    B, C, H, W = x.shape
    return x.view(B, C, H // r, r, W // r, r).permute(0, 2, 4, 1, 3, 5).reshape(-1, C, r, r)


def from_regions(x: torch.Tensor, batch: int, height: int, width: int) -> torch.Tensor:
    """Inverse of `to_regions` for an (height/r) x (width/r) grid (rectangular grids included)."""
    _, C, r, _ = x.shape
    h, w = height // r, width // r
    return x.view(batch, h, w, C, r, r).permute(0, 3, 1, 4, 2, 5).reshape(batch, C, height, width)


class LEGOBrick(nn.Module):
    """One brick: regions of `region` x `region` pixels, `patch` x `patch` tokens, `depth` DiT blocks.

    forward(hidden_states [B, in_channels, H, W], temb [B, D]) -> [B, out_channels, H, W]: the brick's
    full-resolution prediction (H and W divisible by `region`)."""

    def __init__(self, in_channels: int, out_channels: int, dim: int, num_heads: int, region: int, patch: int,
                 depth: int, mlp_ratio: float) -> None:
        super().__init__()
        self.region, self.patch, self.out_channels = region, patch, out_channels
        self.grid = region // patch
        self.x_embedder = _PatchEmbed(in_channels, dim, patch)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid, dim), requires_grad=False)
        self.blocks = nn.ModuleList([LEGOBlock(dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = _FinalLayer(dim, patch, out_channels)
        self.gradient_checkpointing = False  # diffusers' enable_gradient_checkpointing sets it (and the function)

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        B, _, H, W = hidden_states.shape
        regions = to_regions(hidden_states, self.region)
        n = regions.shape[0] // B
        x = self.x_embedder.proj(regions).flatten(2).transpose(1, 2) + self.pos_embed.to(regions.dtype)
        c = temb.repeat_interleave(n, dim=0)
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(block, x, c)
            else:
                x = block(x, c)
        x = self.final_layer(x, c)  # [B * n, grid^2, p * p * C]
        g, p, C = self.grid, self.patch, self.out_channels
        x = x.view(-1, g, g, p, p, C).permute(0, 5, 1, 3, 2, 4).reshape(-1, C, g * p, g * p)
        return from_regions(x, B, H, W)


def canvas_coordinates(batch: int, height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[batch, 2, height, width]: x then y of every pixel, each spanning [-1, 1] over the whole canvas."""
    ys = torch.linspace(-1.0, 1.0, height, device=device, dtype=dtype)
    xs = torch.linspace(-1.0, 1.0, width, device=device, dtype=dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y])[None].expand(batch, -1, -1, -1)


class LEGOModel(ModelMixin, ConfigMixin):
    """A LEGO brick stack as a diffusers model: `model(hidden_states, timestep, class_labels).sample`.

    Args:
        sample_size: the side the model was trained at (64 pixels, or 32 latents for 256 px). Any H and W
            divisible by every brick's region size run.
        in_channels: image or latent channels C; the output has C channels (EDM's F, no learned variance).
        out_channels: must be `in_channels` (kept in the config for pipelines that read it).
        hidden_size, num_heads: the width D and heads shared by every brick.
        brick_sizes: region side r_k per brick, bottom first (PG: growing; PR: shrinking).
        patch_sizes: token patch p_k per brick (r_k divisible by p_k).
        depths: DiT blocks per brick.
        mlp_ratio: the blocks' MLP expansion (4).
        num_classes: classes of the label embedding (a Linear on one-hot labels); 0 = unconditional. The null
            class (and any id >= num_classes, e.g. `DiTPipeline`'s 1000) is the all-zero one-hot vector.
        class_dropout_prob: label dropout in training mode (0.1 in the paper's recipe).

    Every field is checked before any parameter is created (`check_config` says what is allowed): raises
    `InvalidTypeError` (a `TypeError` and a `ValueError`) for a value of the wrong type (a string or float
    where integers belong), `ValueError` for one out of range, lists of different lengths, a region not
    divisible by its patch, a width not divisible by the heads, or `out_channels != in_channels`.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["LEGOBlock"]
    _skip_layerwise_casting_patterns = ["pos_embed", "norm"]

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        in_channels: int = 4,
        out_channels: int | None = None,
        hidden_size: int = 384,
        num_heads: int = 6,
        brick_sizes: Sequence[int] = (4, 16, 32),
        patch_sizes: Sequence[int] = (2, 8, 2),
        depths: Sequence[int] = (2, 4, 6),
        mlp_ratio: float = 4.0,
        num_classes: int = 1000,
        class_dropout_prob: float = 0.1,
    ) -> None:
        cfg = check_config(sample_size, in_channels, out_channels, hidden_size, num_heads, brick_sizes, patch_sizes,
                           depths, mlp_ratio, num_classes, class_dropout_prob)  # before any parameter exists
        super().__init__()
        self.register_to_config(**cfg)  # normalised, and as JSON gives it back: save/load keeps the config equal
        sizes, patches, depths = cfg["brick_sizes"], cfg["patch_sizes"], cfg["depths"]
        in_channels, hidden_size, num_heads = cfg["in_channels"], cfg["hidden_size"], cfg["num_heads"]
        mlp_ratio, num_classes = cfg["mlp_ratio"], cfg["num_classes"]
        C, D = in_channels, hidden_size
        self.num_classes = num_classes
        self.model = nn.ModuleList([
            LEGOBrick(C + 2 if k == 0 else 2 * C + 2, C, D, num_heads, r, p, n, mlp_ratio)
            for k, (r, p, n) in enumerate(zip(sizes, patches, depths, strict=True))
        ])
        self.t_embedder = TimestepMLP(D)
        self.y_embedder = nn.Linear(num_classes, D, bias=False) if num_classes > 0 else None
        self.initialize_weights()

    @property
    def num_bricks(self) -> int:
        return len(self.model)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> LEGOModel:
        """A model of the named preset (`LEGO_PRESETS`), other config keys overridable. Raises `ValueError`
        naming the presets for an unknown name."""
        if name not in LEGO_PRESETS:
            raise ValueError(f"LEGOModel: unknown preset {name!r}; expected one of {', '.join(LEGO_PRESETS)}")
        return cls(**{**LEGO_PRESETS[name], **overrides})

    def initialize_weights(self) -> None:
        """DiT's initialisation per brick: Xavier-uniform Linear weights with zero biases, patch embeddings
        like a Linear, the fixed 2-D sin-cos position table, label and timestep weights N(0, 0.02), and
        zero adaLN output layers and decoders, so a fresh stack outputs exactly 0 (EDM's D(x) = c_skip x)."""
        if any(p.is_meta for p in self.parameters()):
            return
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for brick in self.model:
            w = brick.x_embedder.proj.weight
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
            nn.init.zeros_(brick.x_embedder.proj.bias)
            table = get_2d_sincos_pos_embed(brick.pos_embed.shape[-1], brick.grid, base_size=brick.grid,
                                            output_type="pt")
            brick.pos_embed.data.copy_(table.float()[None])
            for block in brick.blocks:
                nn.init.zeros_(block.adaLN_modulation[1].weight)
                nn.init.zeros_(block.adaLN_modulation[1].bias)
            final = brick.final_layer
            for layer in (final.adaLN_modulation[1], final.linear):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)

    def embed(self, timestep: Any, class_labels: Any, batch: int, device: torch.device) -> torch.Tensor:
        """The shared conditioning c = t_emb(c_noise) + y_emb(one-hot): [batch, D] in the weights' dtype."""
        t = batch_timesteps(timestep, batch, device)
        c = self.t_embedder(edm_positional_embedding(t))
        if self.y_embedder is not None:
            y = drop_labels(class_ids(class_labels, batch, self.num_classes, device, "LEGOModel"), self.num_classes,
                            self.config.class_dropout_prob, self.training)
            onehot = F.one_hot(y, self.num_classes + 1)[:, : self.num_classes]  # the null id: all zeros
            c = c + self.y_embedder(onehot.to(c.dtype))
        elif class_labels is not None:
            label_tensor(class_labels, "LEGOModel")  # ignored, but only if they are class ids
        return c

    def check_size(self, height: int, width: int) -> None:
        """Raises `ValueError` unless a [*, *, height, width] input can run: both multiples of every brick
        size (region side). Pipelines call it before their first step."""
        if any(height % r or width % r for r in self.config.brick_sizes):
            raise ValueError(f"LEGOModel: height and width must be multiples of every brick size "
                             f"{tuple(self.config.brick_sizes)}; got {height}x{width}")

    def check_skip(self, skip_bricks: Sequence[int]) -> tuple[int, ...]:
        """Validate brick indices to skip (negative ones count from the top): a list or tuple of python or
        numpy integers. Returns them as sorted non-negative indices. Raises `InvalidTypeError` (a `TypeError`
        and a `ValueError`) for anything but a list or tuple (a bare int included) and `ValueError` for
        brick 0 (nothing could stand in for its output) or an index out of range."""
        n = self.num_bricks
        allowed = f"a brick index in [1, {n - 1}] (or [-{n - 1}, -1] from the top) of this {n}-brick stack"
        if not isinstance(skip_bricks, list | tuple):
            raise InvalidTypeError(f"LEGOModel: skip_bricks={skip_bricks!r}; expected a list or tuple of brick "
                                   f"indices (e.g. [{n - 1}] or (-1,)), or None; each {allowed}")
        out = []
        for k in skip_bricks:
            if not is_integer(k) or not -n <= k < n:
                raise ValueError(f"LEGOModel: skip_bricks entry {k!r}; expected {allowed}")
            k = int(k)
            k = k % n
            if k == 0:
                raise ValueError("LEGOModel: brick 0 cannot be skipped: it is the only brick that sees the noisy "
                                 "input alone, and every later brick needs a previous prediction")
            out.append(k)
        return tuple(sorted(set(out)))

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor | float | int | None = None,
        class_labels: torch.Tensor | list[int] | None = None,
        return_dict: bool = True,
        skip_bricks: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """Run the stack (or part of it) on `hidden_states`.

        Args:
            hidden_states: [B, in_channels, H, W] (EDM: c_in * x), H and W divisible by every brick size.
            timestep: the noise level the model was trained with (EDM: c_noise = ln(sigma) / 4): a number,
                a 0-d tensor or [B].
            class_labels: [B] int ids; ids >= num_classes are the null class; `None` is unconditional.
                Ignored by an unconditional model (num_classes 0), once checked to be integer ids.
            return_dict: `Transformer2DModelOutput(sample=...)` if True, else `(sample,)`.
            skip_bricks: a list or tuple of brick indices not to run (the paper's test-time skipping, section
                3.3), or None. A skipped brick's successor receives the last brick that ran's prediction in
                its place, and the output is the last brick that ran's prediction: skipping the top brick
                returns brick K-2's prediction, exactly what it computes in the full stack.
            kwargs: other pipeline arguments (ignored).

        Returns the [B, in_channels, H, W] prediction in the input's dtype. Raises `ValueError` for a wrong
        shape or channel count, an empty batch, a side not divisible by a brick size, malformed labels or
        timesteps, or a bad `skip_bricks` index; `InvalidTypeError` (a `TypeError` and a `ValueError`) for
        non-float `hidden_states`, labels that are not integers, or a `skip_bricks` that is not a list or
        tuple (see `check_skip`). Only shapes and dtypes are checked, besides the existing test for
        negative ids.
        """
        x = check_hidden_states("LEGOModel", hidden_states, self.config.in_channels)
        H, W = x.shape[-2:]
        self.check_size(H, W)
        skipped = self.check_skip(skip_bricks) if skip_bricks is not None else ()
        B = x.shape[0]
        c = self.embed(timestep, class_labels, B, x.device)
        coords = canvas_coordinates(B, H, W, x.device, x.dtype)
        out: torch.Tensor | None = None
        for k, brick in enumerate(self.model):
            if k in skipped:
                continue
            inputs = torch.cat([x, coords] if out is None else [out, x, coords], dim=1)
            out = brick(inputs, c)
        assert out is not None  # brick 0 always runs
        if not return_dict:
            return (out,)
        return Transformer2DModelOutput(sample=out)
