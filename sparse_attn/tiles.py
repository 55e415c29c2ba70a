"""`TileIndex`: which key tiles each query tile attends. The one structure every sparse path shares.

Queries and keys are cut into tiles of `tile_size` consecutive tokens (16, 32, 64 or 128; the last tile
of a sequence may be partial). For each (batch, head, query tile) the index says how many key tiles it
attends and which:

- `counts [B, H, Nq]` int32: the count n;
- `indices [B, H, Nq, W]` int32: the key tile ids, the n valid ones first (ascending order is best for
  memory locality but not required); entries after them are ignored. Ids are distinct.

A listed key tile is attended in full (every real token in it). These are the `kv_num_blocks` /
`kv_indices` of FlexAttention's `BlockMask` (which calls tiles "blocks"), so indices convert both ways
(`to_block_mask`, `from_block_mask`) and FlexAttention serves as an independent reference. `B` or `H`
may be 1 to broadcast. Like `BlockMask`, the index carries its tile sizes and sequence lengths, and is
validated once, when it is made: every function that selects tiles returns one and every kernel path
takes one. `PackedTiles` stores it at one bit per (query tile, key tile) between the steps that reuse it.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
from torch.nn.attention.flex_attention import BlockMask, noop_mask

TileSize = int | tuple[int, int]
TILE_SIZES = (16, 32, 64, 128)  # what the kernels tile by (and what tests/sparse_attn/test_triton_compile.py builds)


def tile_sizes(tile_size: TileSize) -> tuple[int, int]:
    """(query tile, key tile) from an int or a pair; each one of TILE_SIZES (any integer type, numpy's
    included). Raises ValueError naming tile_size otherwise."""
    def valid(s: object) -> bool:
        return isinstance(s, numbers.Integral) and not isinstance(s, bool) and s in TILE_SIZES

    pair = tile_size if isinstance(tile_size, tuple | list) else (tile_size, tile_size)
    if len(pair) != 2 or not all(valid(s) for s in pair):
        raise ValueError(f"tile_size must be one of {TILE_SIZES}, or a pair of them; got {tile_size!r}")
    return int(pair[0]), int(pair[1])


def num_tiles(seq_len: int, tile: int) -> int:
    """Tiles covering `seq_len` tokens; the last one may be partial."""
    return -(-seq_len // tile)


@dataclass(frozen=True)
class TileIndex:
    """Per (batch, head, query tile), the key tiles attended; see the module docstring.

    counts [B|1, H|1, Nq] and indices [B|1, H|1, Nq, W] (any integer dtype: `compact` stores the smallest,
    the kernels read int32), q_tile and
    kv_tile (tokens per tile), q_len and kv_len (tokens). Construction checks the shapes and sizes, and on
    CPU also the values (counts within [0, W], ids within [0, Nk) and distinct in each row); on a GPU that
    check would synchronise, so indices made there are checked for shape only (the selection functions
    here only make valid ones). Raises ValueError naming what is wrong.
    """

    counts: torch.Tensor
    indices: torch.Tensor
    q_tile: int
    kv_tile: int
    q_len: int
    kv_len: int

    def __post_init__(self) -> None:
        q_tile, kv_tile = tile_sizes((self.q_tile, self.kv_tile))
        object.__setattr__(self, "q_tile", q_tile)
        object.__setattr__(self, "kv_tile", kv_tile)
        for name in ("q_len", "kv_len"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a token count, an int >= 0; got {value!r} ({type(value).__name__})")
            object.__setattr__(self, name, int(value))
        counts, indices = self.counts, self.indices
        if not isinstance(counts, torch.Tensor) or not isinstance(indices, torch.Tensor):
            raise ValueError(f"counts and indices must be torch tensors; got {type(counts).__name__} and "
                             f"{type(indices).__name__}")
        if counts.dim() != 3 or indices.dim() != 4 or indices.shape[:3] != counts.shape:
            raise ValueError(f"expected counts [B, H, Nq] and indices [B, H, Nq, W]; got {tuple(counts.shape)} and "
                             f"{tuple(indices.shape)}")
        integer = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
        if counts.dtype not in integer or indices.dtype not in integer:
            raise ValueError(f"counts and indices must be integer tensors; got {counts.dtype}, {indices.dtype}")
        if counts.shape[2] != self.num_q_tiles:
            raise ValueError(f"the index has {counts.shape[2]} query tiles; {self.q_len} tokens in tiles of "
                             f"{self.q_tile} need {self.num_q_tiles}")
        if counts.device != indices.device:
            raise ValueError(f"counts on {counts.device} and indices on {indices.device}: one device")
        if counts.device.type == "cpu":
            self.validate()

    def validate(self) -> None:
        """Check the values (counts within [0, W], ids within [0, Nk) and distinct per row); ValueError.
        Reads the tensors (a device sync on GPU). Done at construction on CPU, and again by the CPU kernels
        before they read memory through the ids: the tensors may have been changed in place since."""
        width, nk = self.indices.shape[-1], self.num_kv_tiles
        if self.counts.numel() == 0:
            return
        if int(self.counts.min()) < 0 or int(self.counts.max()) > width:
            raise ValueError(f"counts must lie in [0, {width}] (the width of indices)")
        valid = torch.arange(width, device=self.indices.device) < self.counts.unsqueeze(-1)
        ids = self.indices[valid]
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= nk):
            raise ValueError(f"indices must lie in [0, {nk}) for {nk} key tiles")
        # distinct: a sorted row has no equal neighbours among its valid entries
        big = torch.where(valid, self.indices.long(), nk + torch.arange(width, device=self.indices.device))
        srt = big.sort(dim=-1).values
        if bool((srt[..., 1:] == srt[..., :-1]).any()):
            raise ValueError("indices repeat a key tile within one query tile")

    # -- sizes -------------------------------------------------------------------------------------------
    @property
    def num_q_tiles(self) -> int:
        return num_tiles(self.q_len, self.q_tile)

    @property
    def num_kv_tiles(self) -> int:
        return num_tiles(self.kv_len, self.kv_tile)

    @property
    def tile_size(self) -> tuple[int, int]:
        return self.q_tile, self.kv_tile

    @property
    def device(self) -> torch.device:
        return self.counts.device

    @property
    def nbytes(self) -> int:
        """Bytes the counts and ids take as stored (see `compact`)."""
        return self.counts.numel() * self.counts.element_size() + self.indices.numel() * self.indices.element_size()

    def check_batch(self, batch: int, heads: int) -> None:
        """Raise ValueError unless the index serves `batch` x `heads` (its dims may be 1 to broadcast)."""
        for name, have, want in (("batch", self.counts.shape[0], batch), ("heads", self.counts.shape[1], heads)):
            if have not in (1, want):
                raise ValueError(f"the index has {have} {name}, the inputs {want} (1 broadcasts)")

    # -- conversions -------------------------------------------------------------------------------------
    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> TileIndex:
        """On `device` (and in the integer `dtype`, e.g. torch.int32 as the kernels read it)."""
        return TileIndex(self.counts.to(device, dtype), self.indices.to(device, dtype), self.q_tile, self.kv_tile,
                         self.q_len, self.kv_len)

    def expand(self, batch: int, heads: int) -> TileIndex:
        """The index with its batch and head dims materialised (contiguous), as the CPU kernels read it."""
        self.check_batch(batch, heads)
        nq, width = self.counts.shape[2], self.indices.shape[3]
        return TileIndex(self.counts.expand(batch, heads, nq).contiguous(),
                         self.indices.expand(batch, heads, nq, width).contiguous(),
                         self.q_tile, self.kv_tile, self.q_len, self.kv_len)

    def to_dense(self) -> torch.Tensor:
        """Boolean [B, H, Nq, Nk]: True where a query tile attends a key tile."""
        nk, width = self.num_kv_tiles, self.indices.shape[-1]
        valid = torch.arange(width, device=self.device) < self.counts.unsqueeze(-1)
        dense = torch.zeros(*self.indices.shape[:3], nk + 1, dtype=torch.bool, device=self.device)
        dense.scatter_(-1, torch.where(valid, self.indices.long(), nk), True)  # invalid entries: a spare column
        return dense[..., :nk]

    @classmethod
    def from_dense(cls, dense: torch.Tensor, tile_size: TileSize, q_len: int, kv_len: int) -> TileIndex:
        """The index of a boolean [B, H, Nq, Nk] tile matrix; ids ascending, the width is the largest count
        (at least 1), unused entries 0."""
        counts = dense.sum(dim=-1, dtype=torch.int32)
        order = torch.argsort(dense.to(torch.int8), dim=-1, descending=True, stable=True)
        width = max(1, int(counts.max())) if counts.numel() else 1
        unused = torch.arange(width, device=dense.device) >= counts.unsqueeze(-1)
        indices = order[..., :width].to(torch.int32).masked_fill(unused, 0)
        q_tile, kv_tile = tile_sizes(tile_size)
        return cls(counts, indices, q_tile, kv_tile, q_len, kv_len)

    def token_mask(self) -> torch.Tensor:
        """Boolean token mask [B, H, Sq, Skv] equivalent to the index (for dense references such as SDPA)."""
        dense = self.to_dense()
        rows = torch.arange(self.q_len, device=self.device) // self.q_tile
        cols = torch.arange(self.kv_len, device=self.device) // self.kv_tile
        return dense[:, :, rows][:, :, :, cols]

    def density(self) -> float:
        """The share of (query tile, key tile) pairs attended, over every batch and head (a host sync)."""
        total = self.counts.numel() * self.num_kv_tiles
        return float(self.counts.sum(dtype=torch.int64)) / total if total else 0.0

    def compact(self) -> TileIndex:
        """The same index in the smallest integer dtype that holds 0..Nk (uint8 up to 255, int16 beyond):
        `nbytes` then says what caching it costs. Kernels take it as is."""
        nk = self.num_kv_tiles
        dtype = torch.uint8 if nk <= 255 else torch.int16 if nk <= 32767 else torch.int32
        return TileIndex(self.counts.to(dtype), self.indices.to(dtype), self.q_tile, self.kv_tile, self.q_len,
                         self.kv_len)

    def pack(self) -> PackedTiles:
        """One bit per (batch, head, query tile, key tile): 1/8 of a byte mask."""
        return PackedTiles.pack(self)

    def to_block_mask(self) -> BlockMask:
        """A FlexAttention `BlockMask` attending the same tiles. They are listed as full blocks (the fused
        kernels skip `mask_mod` there), and its `mask_mod` looks the tiles up too, so eager (unfused)
        `flex_attention`, which only applies `mask_mod`, gives the same result."""
        nk = self.num_kv_tiles
        dense = self.to_dense()
        # BlockMask derives its transposed (query-side) index from a dense [.., Nq, Nk] view, so the id
        # list must be Nk wide.
        full = TileIndex.from_dense(dense, self.tile_size, self.q_len, self.kv_len)
        idx = torch.nn.functional.pad(full.indices, (0, nk - full.indices.shape[-1]))
        one_batch, one_head = dense.shape[0] == 1, dense.shape[1] == 1
        q_tile, kv_tile = self.tile_size

        def mask_mod(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
            return dense[0 if one_batch else b, 0 if one_head else h, q_idx // q_tile, kv_idx // kv_tile]

        return BlockMask.from_kv_blocks(
            torch.zeros_like(full.counts), torch.zeros_like(idx), full.counts.contiguous(), idx.contiguous(),
            BLOCK_SIZE=self.tile_size, mask_mod=mask_mod, seq_lengths=(self.q_len, self.kv_len),
        )

    @classmethod
    def from_block_mask(cls, block_mask: BlockMask) -> TileIndex:
        """The index attending every tile the `BlockMask` touches (its partial and full blocks). Raises
        ValueError when partial blocks carry a real `mask_mod`: a mask inside a tile cannot be expressed
        here and would be silently widened."""
        q_len, kv_len = block_mask.seq_lengths
        q_tile, kv_tile = block_mask.BLOCK_SIZE
        nk = num_tiles(kv_len, kv_tile)
        if bool((block_mask.kv_num_blocks > 0).any()) and block_mask.mask_mod is not noop_mask:
            raise ValueError(
                "this BlockMask has partially masked blocks (a mask_mod inside blocks); block-sparse attention "
                "attends whole tiles. Build it so every tile is fully in or out (e.g. a block-aligned mask)."
            )
        dense = cls(block_mask.kv_num_blocks, block_mask.kv_indices, q_tile, kv_tile, q_len, kv_len).to_dense()
        if block_mask.full_kv_num_blocks is not None and block_mask.full_kv_indices is not None:
            dense |= cls(block_mask.full_kv_num_blocks, block_mask.full_kv_indices, q_tile, kv_tile, q_len,
                         kv_len).to_dense()
        return cls.from_dense(dense[..., :nk], (q_tile, kv_tile), q_len, kv_len)


@dataclass(frozen=True)
class PackedTiles:
    """A `TileIndex` stored as a bit mask, 1 bit per (batch, head, query tile, key tile): what a sparse
    method keeps between the steps that reuse a mask. It is 1/8 of a byte mask (per-row id lists cost
    more above density 1/8 even with 1-byte ids); `unpack` gives the index back."""

    bits: torch.Tensor  # uint8, flat
    shape: tuple[int, int, int, int]  # (B, H, Nq, Nk)
    tile_size: tuple[int, int]
    lengths: tuple[int, int]  # (q_len, kv_len)

    @classmethod
    def pack(cls, index: TileIndex) -> PackedTiles:
        dense = index.to_dense()
        flat = dense.flatten()
        flat = torch.nn.functional.pad(flat, (0, -flat.numel() % 8)).view(-1, 8).to(torch.uint8)
        weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=flat.device)
        B, H, nq, nk = dense.shape
        return cls((flat * weights).sum(dim=1, dtype=torch.uint8), (B, H, nq, nk), index.tile_size,
                   (index.q_len, index.kv_len))

    def unpack(self) -> TileIndex:
        shifts = torch.arange(8, dtype=torch.uint8, device=self.bits.device)
        dense = ((self.bits.unsqueeze(1) >> shifts) & 1).flatten().bool()
        return TileIndex.from_dense(dense[: math.prod(self.shape)].view(self.shape), self.tile_size, *self.lengths)

    @property
    def nbytes(self) -> int:
        return self.bits.numel()
