"""Pieces the native backbones share: timestep embeddings, class-label handling, timestep broadcasting, and
the checks of config values and call arguments (`check_int`, `check_number`, ...).

Nothing here is specific to one paper; each function names where its formula comes from.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch
from torch import nn


class InvalidTypeError(TypeError, ValueError):
    """A value of the wrong type (a string, a float or a bool where an integer belongs, ...). A `TypeError`,
    and a `ValueError` too, so that `except ValueError` catches every refused input."""


def _named(owner: str, name: str, value: Any) -> str:
    return f"{owner + ': ' if owner else ''}{name}={value!r}"


def is_integer(value: Any) -> bool:
    """Whether `value` is a python or numpy integer (bools are not)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _integers(minimum: int) -> str:
    return {0: "non-negative integer", 1: "positive integer"}.get(minimum, f"integer >= {minimum}")


def check_int(owner: str, name: str, value: Any, minimum: int = 1) -> int:
    """`value` as an int: a python or numpy integer (not a bool) >= `minimum`.

    Raises `InvalidTypeError` for another type, `ValueError` for a smaller value; the message names
    `owner`, `name`, the value and what is allowed ("LEGOModel: num_heads=0: expected a positive integer")."""
    if not is_integer(value) or value < minimum:
        error = ValueError if is_integer(value) else InvalidTypeError
        raise error(f"{_named(owner, name, value)}: expected a {_integers(minimum)}")
    return int(value)


def check_number(owner: str, name: str, value: Any, minimum: float = -math.inf, maximum: float = math.inf, *,
                 open_min: bool = False, open_max: bool = False) -> float:
    """`value` as a float: a finite real number (python, numpy; not a bool) in the interval from `minimum` to
    `maximum`, each end excluded when `open_min` / `open_max`.

    Raises `InvalidTypeError` for another type, `ValueError` for NaN, an infinity or a value outside."""
    low = "" if minimum == -math.inf else f"{'>' if open_min else '>='} {minimum:g}"
    high = "" if maximum == math.inf else f"{'<' if open_max else '<='} {maximum:g}"
    if low and high:
        allowed = f"in {'(' if open_min else '['}{minimum:g}, {maximum:g}{')' if open_max else ']'}"
    else:
        allowed = low or high
    message = f"{_named(owner, name, value)}: expected a finite number{' ' + allowed if allowed else ''}"
    if not isinstance(value, numbers.Real) or isinstance(value, bool | np.bool_):
        raise InvalidTypeError(message)
    v = float(value)
    if (not math.isfinite(v) or v < minimum or v > maximum or (open_min and v == minimum)
            or (open_max and v == maximum)):
        raise ValueError(message)
    return v


def check_bool(owner: str, name: str, value: Any) -> bool:
    """`value` if it is a bool (python or numpy); raises `InvalidTypeError` otherwise (no truthiness)."""
    if not isinstance(value, bool | np.bool_):
        raise InvalidTypeError(f"{_named(owner, name, value)}: expected True or False")
    return bool(value)


def check_ints(owner: str, name: str, value: Any, minimum: int = 1, length: int | None = None,
               meaning: str = "") -> tuple[int, ...]:
    """`value` as a tuple of ints: a list or tuple (not a string) of integers >= `minimum`, of `length`
    entries when given (else at least one). `meaning` says what the entries are, for the message.

    Raises `InvalidTypeError` for another container or a non-integer entry, `ValueError` for a wrong
    length or a smaller entry."""
    count = f"{length} " if length is not None else ""
    plural = "s" if length != 1 else ""
    message = (f"{_named(owner, name, value)}: expected a list or tuple of {count}{_integers(minimum)}{plural}"
               f"{' (' + meaning + ')' if meaning else ''}")
    if not isinstance(value, list | tuple) or not all(is_integer(v) for v in value):
        raise InvalidTypeError(message)
    if (len(value) != length if length is not None else not value) or any(v < minimum for v in value):
        raise ValueError(message)
    return tuple(int(v) for v in value)


def check_shared_fields(owner: str, hidden_size: int, mlp_ratio: Any, num_classes: Any, class_dropout_prob: Any,
                        ffn: str = "FFN") -> tuple[float, int, float]:
    """The config fields DiCo and LEGO share, checked as `check_number` / `check_int` do: `mlp_ratio` a finite
    number > 0 leaving the `ffn` at least one channel, `num_classes` >= 0, `class_dropout_prob` in [0, 1)."""
    mlp_ratio = check_number(owner, "mlp_ratio", mlp_ratio, 0.0, open_min=True)
    if int(hidden_size * mlp_ratio) < 1:
        raise ValueError(f"{owner}: mlp_ratio={mlp_ratio} gives hidden_size={hidden_size} an {ffn} of "
                         f"{int(hidden_size * mlp_ratio)} channels; expected a ratio that leaves at least 1")
    num_classes = check_int(owner, "num_classes", num_classes, minimum=0)
    class_dropout_prob = check_number(owner, "class_dropout_prob", class_dropout_prob, 0.0, 1.0, open_max=True)
    return mlp_ratio, num_classes, class_dropout_prob


def sinusoidal_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10_000.0) -> torch.Tensor:
    """GLIDE/DiT timestep embedding: `[cos(t * f_i), sin(t * f_i)]` with `f_i = max_period**(-i / (dim/2))`.

    `t`: [B] (any real dtype) -> [B, dim] float32. The convention of DiT's `TimestepEmbedder` (Peebles & Xie,
    arXiv 2212.09748, code), which DiCo reuses; cos first.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def edm_positional_embedding(t: torch.Tensor, dim: int = 256, max_positions: float = 10_000.0) -> torch.Tensor:
    """EDM's `PositionalEmbedding` (Karras et al., arXiv 2206.00364, code; `endpoint=False`):
    `[cos(t * f_i), sin(t * f_i)]` with `f_i = (1/max_positions)**(i / (dim/2))`. `t`: [B] -> [B, dim] float32.

    Numerically the same frequencies as `sinusoidal_embedding`; kept separate because LEGO feeds it
    EDM's c_noise = ln(sigma)/4 rather than a DDPM step index.
    """
    half = dim // 2
    freqs = (1.0 / max_positions) ** (torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepMLP(nn.Module):
    """Frequency embedding -> Linear -> SiLU -> Linear (DiT's `TimestepEmbedder.mlp`, also LEGO's)."""

    def __init__(self, hidden_size: int, frequency_dim: int = 256) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, frequencies: torch.Tensor) -> torch.Tensor:
        """[B, frequency_dim] float32 -> [B, hidden_size] in the weights' dtype."""
        return self.mlp(frequencies.to(self.mlp[0].weight.dtype))


def batch_timesteps(timestep: Any, batch: int, device: torch.device) -> torch.Tensor:
    """A python number, a 0-d tensor, or a [B] / [1] tensor -> a [batch] tensor on `device`.

    Raises `ValueError` for `None`, more than one dimension, a tensor of another length or a non-finite
    python or numpy value (a tensor's values are not read), `InvalidTypeError` for what is not a real number
    (a string, a bool, a complex number).
    """
    allowed = "a real number, a 0-d tensor or a tensor of shape [batch]"
    if timestep is None:
        raise ValueError(f"timestep is required ({allowed})")
    if isinstance(timestep, torch.Tensor):
        t = timestep
    elif isinstance(timestep, numbers.Real) and not isinstance(timestep, bool | np.bool_):
        t = torch.tensor(float(timestep))
    elif isinstance(timestep, list | tuple | np.ndarray) and all(
            isinstance(v, numbers.Real) and not isinstance(v, bool | np.bool_) for v in np.asarray(timestep).ravel()):
        t = torch.as_tensor(np.asarray(timestep, dtype=np.float64))
    else:
        raise InvalidTypeError(f"timestep={timestep!r}: expected {allowed}")
    if t.dtype == torch.bool or t.is_complex():
        raise InvalidTypeError(f"timestep has dtype {t.dtype}; expected {allowed}")
    if t.dim() > 1:
        raise ValueError(f"timestep has shape {tuple(t.shape)}; expected {allowed}")
    if not isinstance(timestep, torch.Tensor) and not bool(torch.isfinite(t).all()):  # a tensor's values stay
        raise ValueError(f"timestep={timestep!r}: expected finite timesteps")  # unread: no device sync per step
    t = t.to(device).reshape(-1)
    if t.numel() == 1:
        return t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"timestep has {t.numel()} values for a batch of {batch}; give one, or one per sample")
    return t


def label_tensor(class_labels: Any, owner: str = "") -> torch.Tensor:
    """Class ids as an integer tensor of at most one dimension, not moved: a python or numpy integer, a flat
    list or tuple of them, a numpy integer array or an integer tensor (0-d or 1-d). Checks types and shapes
    only (no value is read from a device tensor).

    Raises `InvalidTypeError` for anything that is not integer ids (floats, bools, strings, ...) and
    `ValueError` for nested lists or more than one dimension (ids are never flattened)."""
    allowed = "expected integer class ids: an int, a flat list of ints or a 1-D integer tensor"
    if isinstance(class_labels, np.ndarray):
        if class_labels.dtype.kind not in "iu":
            raise InvalidTypeError(f"{_named(owner, 'class_labels', class_labels)}: {allowed}")
        class_labels = torch.from_numpy(class_labels.astype(np.int64))
    if isinstance(class_labels, torch.Tensor):
        y = class_labels
        if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
            raise InvalidTypeError(f"{owner + ': ' if owner else ''}class_labels has dtype {y.dtype}; {allowed}")
    else:
        items = list(class_labels) if isinstance(class_labels, list | tuple) else [class_labels]
        if not all(is_integer(v) for v in items):
            nested = any(isinstance(v, list | tuple | np.ndarray | torch.Tensor) for v in items)
            error = ValueError if nested else InvalidTypeError
            raise error(f"{_named(owner, 'class_labels', class_labels)}: {allowed}"
                        f"{' (nested lists are not flattened)' if nested else ''}")
        y = torch.tensor([int(v) for v in items], dtype=torch.long)
    if y.dim() > 1:
        raise ValueError(f"{owner + ': ' if owner else ''}class_labels has shape {tuple(y.shape)}; "
                         f"{allowed} (one id per sample; ids are not flattened)")
    return y


def class_ids(class_labels: Any, batch: int, num_classes: int, device: torch.device, owner: str = "") -> torch.Tensor:
    """Class labels as int64 [batch]; every id >= `num_classes` becomes `num_classes`, the null class of
    classifier-free guidance (diffusers' `DiTPipeline` hard-codes 1000 as its null id, so a model with
    fewer classes maps it here). `None` means all-null (unconditional). One id is broadcast to the batch.

    Raises `InvalidTypeError` for ids that are not integers (floats, bools, strings; see `label_tensor`),
    `ValueError` for more than one dimension, a wrong length or a negative id.
    """
    if class_labels is None:
        return torch.full((batch,), num_classes, dtype=torch.long, device=device)
    y = label_tensor(class_labels, owner).to(device=device, dtype=torch.long).reshape(-1)
    if y.numel() == 1 and batch > 1:
        y = y.expand(batch)
    if y.numel() != batch:
        raise ValueError(f"{owner + ': ' if owner else ''}class_labels has {y.numel()} ids for a batch of {batch}")
    if bool((y < 0).any()):
        raise ValueError(f"{owner + ': ' if owner else ''}class_labels must be >= 0; got {y.tolist()}")
    return y.clamp(max=num_classes)


def check_hidden_states(owner: str, hidden_states: Any, channels: int) -> torch.Tensor:
    """`hidden_states` if it is a floating-point [B, channels, H, W] tensor with B, H, W >= 1 (shape and
    dtype only). Raises `InvalidTypeError` for a non-tensor or a non-float dtype, `ValueError` for another
    shape, an empty batch included."""
    expected = f"expected a floating-point tensor of shape [B, {channels}, H, W], B, H and W >= 1"
    if not isinstance(hidden_states, torch.Tensor) or not hidden_states.is_floating_point():
        what = f"dtype {hidden_states.dtype}" if isinstance(hidden_states, torch.Tensor) else type(hidden_states).__name__
        raise InvalidTypeError(f"{owner}: hidden_states is a {what}; {expected}")
    shape = tuple(hidden_states.shape)
    if len(shape) != 4 or shape[1] != channels or 0 in shape:
        empty = " (an empty batch)" if len(shape) == 4 and shape[0] == 0 else ""
        raise ValueError(f"{owner}: hidden_states has shape {shape}{empty}; {expected}")
    return hidden_states


def drop_labels(y: torch.Tensor, num_classes: int, prob: float, training: bool) -> torch.Tensor:
    """Classifier-free-guidance label dropout during training (DiT's `LabelEmbedder.token_drop`): each
    label becomes the null id `num_classes` with probability `prob`. The identity outside training."""
    if not training or prob <= 0:
        return y
    drop = torch.rand(y.shape[0], device=y.device) < prob
    return torch.where(drop, torch.full_like(y, num_classes), y)
