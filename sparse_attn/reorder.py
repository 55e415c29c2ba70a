"""Token reordering for locality: make every tile of consecutive tokens a compact tile of the latent grid.

Image and video tokens arrive in raster order (frame, row, column), so a block of 64 consecutive tokens
is a thin strip of one row, and its neighbours above and below sit in far-away blocks. Reordering the
tokens tile by tile (8x8 for images; 1x8x8, 2x4x8 or 4x4x4 for video) makes each tile a compact
patch, which is what block selection wants: nearby tokens attend similarly. Apply the permutation to
q, k and v (after RoPE), run attention, and restore the output with the inverse.

Layout produced: text tokens stay at their end of the sequence (first or last) untouched; the image
tokens of every full tile come first, tile after tile in raster order of tiles; then the tokens of the
partial tiles at the grid's edges (when the grid is not a multiple of the tile), again tile by tile.
Blocks line up with full tiles when the text is last or its length is a multiple of the tile size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenOrder:
    """A permutation of the sequence axis: new position i holds old token `perm[i]`; `inverse` undoes it."""

    perm: torch.Tensor
    inverse: torch.Tensor

    def apply(self, x: torch.Tensor, dim: int = 1, align: int = 1) -> torch.Tensor:
        """Reorder x along its sequence axis `dim` (1 for [B, S, H, D] and [B, S, C]; 2 for [B, H, S, D]).

        With `align` > 1 the copy is written into storage whose last dim is padded to a multiple of
        `align` elements, and a view of x's shape is returned: every row then starts `align`-aligned,
        which lets the Triton kernels load K/V rows with vector loads at head dims like 72 or 40 (their
        JIT specializes on strides divisible by 16). Same values, same cost: the copy happens anyway."""
        perm = self.perm.to(x.device)
        last = x.shape[-1]
        if align <= 1 or last % align == 0 or dim in (-1, x.dim() - 1):
            return x.index_select(dim, perm)
        out = x.new_empty(*x.shape[:-1], -(-last // align) * align)[..., :last]
        return torch.index_select(x, dim, perm, out=out)

    def restore(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """Undo `apply`: exactly the original order."""
        return x.index_select(dim, self.inverse.to(x.device))


def tile_order(
    grid: tuple[int, ...],
    tile: tuple[int, ...],
    text_len: int = 0,
    text_first: bool = False,
    device: torch.device | str | None = None,
) -> TokenOrder:
    """The tile-by-tile order of a latent grid (height, width) or (frames, height, width), with `tile` of
    the same rank, e.g. (8, 8) or (1, 8, 8) for 64-token blocks. `text_len` text tokens precede
    (`text_first`) or follow the image tokens in the sequence."""
    if len(grid) != len(tile) or len(grid) not in (2, 3) or min(grid) < 1 or min(tile) < 1:
        raise ValueError(f"grid and tile must both be (H, W) or (F, H, W) of positive sizes; got {grid}, {tile}")
    if text_len < 0:
        raise ValueError(f"text_len must be >= 0; got {text_len}")
    grid_t = torch.tensor(grid, device="cpu")
    tile_t = torch.tensor(tile, device="cpu")
    tiles_per_dim = (grid_t + tile_t - 1) // tile_t
    full_per_dim = grid_t // tile_t
    # coordinates of every image token, in raster order: [N, rank]
    axes = [torch.arange(n, device="cpu") for n in grid]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(grid))
    tile_idx = coords // tile_t
    within = coords % tile_t

    def raster(index: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        flat = torch.zeros(index.shape[0], dtype=torch.long, device="cpu")
        for d in range(index.shape[1]):
            flat = flat * sizes[d] + index[:, d]
        return flat

    tile_size = math.prod(tile)
    n_tiles = math.prod(tiles_per_dim.tolist())
    partial = (tile_idx >= full_per_dim).any(dim=1).long()
    key = (partial * n_tiles + raster(tile_idx, tiles_per_dim)) * tile_size + raster(within, tile_t)
    image = torch.argsort(key, stable=True)

    n_image = image.numel()
    text = torch.arange(text_len, device="cpu")
    if text_first:
        perm = torch.cat([text, image + text_len])
    else:
        perm = torch.cat([image, text + n_image])
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.numel(), device="cpu")
    return TokenOrder(perm.to(device), inverse.to(device))
