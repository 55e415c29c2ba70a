"""Reading a transformer block's streams from its call and writing them back in its output layout.

Step caches replace a block's output by `input + cached residual` (or by its input, to pass a skipped
block through), so they must know where `hidden_states` and `encoder_hidden_states` are in the block's
arguments and outputs. diffusers' own `TransformerBlockRegistry` records this per block class (Flux's
blocks return `(encoder, hidden)`, HunyuanVideo's `(hidden, encoder)`, PixArt's a tensor); accel reads it
there, and assumes "hidden first" for unregistered classes.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class BlockIO:
    hidden_index: int  # position of hidden_states in a tuple output (a tensor output is hidden alone)
    encoder_index: int | None  # position of encoder_hidden_states in a tuple output, if the block returns it
    hidden_arg: str = "hidden_states"
    encoder_arg: str = "encoder_hidden_states"
    _params: dict[type, list[str]] = field(default_factory=dict, repr=False)

    def _positional(self, block: torch.nn.Module, name: str, args: tuple) -> Any:
        params = self._params.get(type(block))
        if params is None:
            params = list(inspect.signature(type(block).forward).parameters)[1:]
            self._params[type(block)] = params
        i = params.index(name) if name in params else -1
        return args[i] if 0 <= i < len(args) else None

    def inputs(self, block: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(hidden_states, encoder_hidden_states or None) of a block call."""
        hidden = kwargs[self.hidden_arg] if self.hidden_arg in kwargs else self._positional(block, self.hidden_arg, args)
        encoder = kwargs.get(self.encoder_arg)
        if encoder is None and self.encoder_index is not None:
            encoder = self._positional(block, self.encoder_arg, args)
        return hidden, encoder

    def outputs(self, output: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(output, torch.Tensor):
            return output, None
        encoder = output[self.encoder_index] if self.encoder_index is not None else None
        return output[self.hidden_index], encoder

    @staticmethod
    def layout(output: Any) -> int:
        """What `pack` needs to rebuild an output like this one: 0 for a tensor, else the tuple length."""
        return 0 if isinstance(output, torch.Tensor) else len(output)

    def pack(self, layout: int, hidden: torch.Tensor, encoder: torch.Tensor | None) -> Any:
        """An output in the block's layout (see `layout`) carrying these streams."""
        if layout == 0:
            return hidden
        out: list[Any] = [None] * layout
        out[self.hidden_index] = hidden
        if self.encoder_index is not None:
            out[self.encoder_index] = encoder
        return tuple(out)


def block_io(block: torch.nn.Module) -> BlockIO:
    """The I/O layout of `block`, from diffusers' registry when the class is registered there."""
    from ..compat import transformer_block_metadata

    for cls in type(block).__mro__:
        meta = transformer_block_metadata(cls)
        if meta is not None:
            return BlockIO(
                meta.return_hidden_states_index or 0,
                meta.return_encoder_hidden_states_index,
                meta.hidden_states_argument_name,
                meta.encoder_hidden_states_argument_name,
            )
    return BlockIO(0, None)
