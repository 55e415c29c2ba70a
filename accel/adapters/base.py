"""What accel needs to know about a model family, in one data structure.

An adapter answers, for one denoiser class: where the transformer blocks are (dual-stream and
single-stream lists), which attention modules attend over image/video tokens and which are
cross-attention to text, how the tokens of a call are laid out (text first or last, the frames x height
x width grid of image tokens), and how the pipeline runs classifier-free guidance. Methods ask the
adapter; they never hard-code a model.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

AttentionKind = Literal["self", "cross", "joint", "unknown"]
TextPosition = Literal["first", "last", "none"]
CfgStyle = Literal["batched", "sequential", "distilled", "none"]


@dataclass(frozen=True)
class TokenLayout:
    """The token sequence of one denoiser call: a grid of image/video tokens plus, in joint attention,
    `text_tokens` text tokens placed first or last."""

    grid: tuple[int, int, int]  # (frames, height, width) of image/video tokens after patchify
    text_tokens: int = 0
    text_position: TextPosition = "none"

    @property
    def image_tokens(self) -> int:
        f, h, w = self.grid
        return f * h * w

    @property
    def total_tokens(self) -> int:
        return self.image_tokens + (self.text_tokens if self.text_position != "none" else 0)

    @property
    def image_slice(self) -> slice:
        """Where the image/video tokens sit in a joint sequence."""
        start = self.text_tokens if self.text_position == "first" else 0
        return slice(start, start + self.image_tokens)


@dataclass(frozen=True)
class BlockStack:
    """A `ModuleList` of transformer blocks, by attribute name on the denoiser."""

    attr: str
    stream: Literal["single", "dual"]  # dual: separate image and text streams (MMDiT double blocks)
    self_attention: tuple[str, ...] = ()  # attribute names, inside a block, of attention over image tokens only
    joint_attention: tuple[str, ...] = ()  # attention over image and text tokens in one sequence
    cross_attention: tuple[str, ...] = ()  # image queries attending to text keys
    text_position: TextPosition = "none"  # where the text tokens sit in joint attention


@dataclass(frozen=True)
class BlockRef:
    stack: str
    index: int
    module: torch.nn.Module
    stream: Literal["single", "dual"]

    @property
    def name(self) -> str:
        return f"{self.stack}.{self.index}"


@dataclass(frozen=True)
class AttentionSite:
    """One attention module inside a block and what its sequence is made of."""

    name: str  # qualified name inside the denoiser, e.g. "transformer_blocks.3.attn1"
    module: torch.nn.Module
    kind: AttentionKind
    text_position: TextPosition
    block: BlockRef


LayoutFn = Callable[[torch.nn.Module, dict[str, Any]], TokenLayout]


@dataclass(frozen=True)
class ModelAdapter:
    """Per-family knowledge of a denoiser. `layout` reads the token layout from a call's arguments."""

    family: str
    title: str
    denoiser_classes: tuple[str, ...]
    stacks: tuple[BlockStack, ...]
    cfg: CfgStyle
    layout: LayoutFn | None = None
    timestep_arg: str = "timestep"
    generic: bool = False
    notes: str = ""
    # The stacks of one denoiser instance, when they depend on its config (LEGO: one per brick); else `stacks`.
    stacks_of: Callable[[torch.nn.Module], tuple[BlockStack, ...]] | None = None
    # Whether each stack's output feeds the next stack unchanged (Flux: double then single blocks). False
    # for U-Nets and brick stacks, where resampling or re-tiling sits between stacks: a span of blocks must
    # then stay inside one stack (its residual has one shape and nothing else runs inside it).
    stacks_joined: bool = True
    _signatures: dict[type, inspect.Signature] = field(default_factory=dict, compare=False, repr=False)

    def matches(self, module: torch.nn.Module) -> bool:
        names = {cls.__name__ for cls in type(module).__mro__}
        return any(name in names for name in self.denoiser_classes)

    @staticmethod
    def _stack(denoiser: torch.nn.Module, stack: BlockStack) -> torch.nn.ModuleList | tuple:
        try:
            return denoiser.get_submodule(stack.attr)
        except AttributeError:  # e.g. a config without single-stream blocks
            return ()

    def stacks_for(self, denoiser: torch.nn.Module) -> tuple[BlockStack, ...]:
        """The block stacks of this denoiser instance."""
        return self.stacks_of(denoiser) if self.stacks_of is not None else self.stacks

    def blocks(self, denoiser: torch.nn.Module) -> list[BlockRef]:
        refs = []
        for stack in self.stacks_for(denoiser):
            for i, block in enumerate(self._stack(denoiser, stack)):
                refs.append(BlockRef(stack.attr, i, block, stack.stream))
        return refs

    def attention_sites(self, denoiser: torch.nn.Module) -> list[AttentionSite]:
        """Self/joint and cross attention modules, in block order."""
        sites = []
        for stack in self.stacks_for(denoiser):
            for i, block in enumerate(self._stack(denoiser, stack)):
                ref = BlockRef(stack.attr, i, block, stack.stream)
                kinds = (
                    [(a, "self", "none") for a in stack.self_attention]
                    + [(a, "joint", stack.text_position) for a in stack.joint_attention]
                    + [(a, "cross", "none") for a in stack.cross_attention]
                )
                for attr, kind, text_position in kinds:
                    module = getattr(block, attr, None)
                    if module is not None:
                        sites.append(AttentionSite(f"{ref.name}.{attr}", module, kind, text_position, ref))
        return sites

    def bind_call(self, denoiser: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The denoiser call's arguments by name (positional ones included)."""
        cls = type(denoiser)
        sig = self._signatures.get(cls)
        if sig is None:
            sig = inspect.signature(cls.forward)
            self._signatures[cls] = sig
        try:
            return dict(sig.bind_partial(denoiser, *args, **kwargs).arguments)
        except TypeError:
            return dict(kwargs)

    def token_layout(self, denoiser: torch.nn.Module, call: dict[str, Any]) -> TokenLayout:
        if self.layout is None:
            raise NotImplementedError(f"accel: the {self.title} adapter does not know this model's token layout")
        return self.layout(denoiser, call)
