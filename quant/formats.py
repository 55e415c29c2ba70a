"""Number formats of 6Bit-Diffusion (arXiv 2603.18742) for the weights and activations of linear layers,
with real packed storage: a quantized weight holds only its codes and scales, so resident memory drops.

Formats
-------
NVFP4 (the layout of NVIDIA's Blackwell FP4 tensor cores, as torchao's ``NVFP4Tensor`` implements it):
    values are E2M1 (1 sign, 2 exponent, 1 mantissa bit; magnitudes {0, .5, 1, 1.5, 2, 3, 4, 6}), two
    per byte; every 16 consecutive elements of a row share one ``float8_e4m3fn`` block scale; one fp32
    per-tensor scale ``amax / (448 * 6)`` (448 = largest E4M3, 6 = largest E2M1) brings the block scales
    into E4M3's range.  An element is ``e2m1 * block_scale * tensor_scale``; storage is
    4 + 8/16 = 4.5 bits per element plus 4 bytes.
INT8: symmetric per-output-channel int8 weights (``scale = row amax / 127``, codes in [-127, 127]) and, in
    :func:`int8_linear`, symmetric per-token int8 activations, multiplied by a real int8 GEMM
    (``torch._int_mm``, int32 accumulation).  The paper's INT8 route casts the stored NVFP4 weights to INT8:
    :func:`int8_from_nvfp4`.
Rotation: :func:`hadamard` and :func:`rotate_blocks` (a block-diagonal orthonormal Hadamard) spread
    outliers across a block before quantization; ``(x R)(W R)^T == x W^T``.

Rounding is round-to-nearest, ties to even, everywhere (E2M1 codes, E4M3 scales via torch's cast, int8).

Numerics worth knowing
----------------------
* Block scales are ``(block amax / 6) / tensor_scale`` rounded to nearest E4M3 (3 mantissa bits, so up to
  2**-4 relative error for normal E4M3 values; E4M3 subnormals, down to 2**-9, are used rather than clamped
  away, and a block whose scale rounds to 0 (block amax < 6 * 2**-10 * tensor_scale, i.e. below about
  2.2e-6 of the tensor's amax) dequantizes to zeros).  When the scale rounds down the block's largest
  elements exceed 6 after scaling and saturate at +-6: at most 6 * 2**-4 / (1 - 2**-4) = 0.4 of the scale.
* Every element therefore lies within half an E2M1 grid step of its block's grid times the *stored* block
  scale ``S = e4m3_scale * tensor_scale`` (0.25 S below 2 S, 0.5 S below 4 S, 1 S up to 6 S, and
  ``|x| - 6 S <= 0.4 S`` past it), i.e. within 0.0443 (small elements) to 0.177 of the block amax.
* The tensor scale is ``amax / 2688`` in fp32 (torchao's ``per_tensor_amax_to_scale``); only for tiny
  tensors (amax below about 3e-35, where it is an fp32 subnormal) is it kept >= 2**-149 and moved up one
  ulp where rounding left it too small for the block scales to stay <= 448.
* Against torchao 0.18's ``nvfp4_quantize`` (same layout: low nibble = even column, -0 kept as code 8):
  the same tensor scale and E4M3 scales, except that torchao clamps block scales up to 2**-6 (so its
  all-zero and tiny blocks get scale 2**-6 where these get 0 or an E4M3 subnormal), and the same codes
  for fp32 inputs in the normal range; torchao multiplies by ``(1 / tensor_scale) / e4m3`` where this
  divides twice, which can settle an exact E2M1 tie (common with bf16 inputs) the other way.
  Divisions are ordered ``(x / tensor_scale) / e4m3_scale`` and products ``(e2m1 * e4m3_scale) *
  tensor_scale`` so subnormal inputs keep their precision and the largest finite fp32 values never
  overflow (results are clamped to the target dtype's finite range: a saturating cast).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "NVFP4_BLOCK",
    "E2M1_MAX",
    "E4M3_MAX",
    "INT8_QMAX",
    "NVFP4Weight",
    "Int8Weight",
    "quantize_nvfp4",
    "fake_quant_nvfp4",
    "quantize_int8",
    "int8_from_nvfp4",
    "int_mm_accepts",
    "int8_linear",
    "nvfp4_linear",
    "hadamard",
    "rotate_blocks",
]

NVFP4_BLOCK = 16
E2M1_MAX = 6.0
E4M3_MAX = 448.0
INT8_QMAX = 127
_FP32_TINY = 2.0**-149  # smallest positive (subnormal) fp32
# The 16 E2M1 codes (bit 3 = sign, bits 0-2 = magnitude index) as values.
_E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
# Largest K whose int8 x int8 dot product cannot overflow int32: 127 * 127 * K <= 2**31 - 1.
INT_MM_MAX_K = (2**31 - 1) // (INT8_QMAX * INT8_QMAX)


# ----------------------------------------------------------------------------------------------- helpers


def _check_weight(w: torch.Tensor, what: str) -> None:
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{what} needs a torch.Tensor, got {type(w).__name__}")
    if w.dim() != 2 or w.shape[0] == 0 or w.shape[1] == 0:
        raise ValueError(f"{what} needs a non-empty 2-D weight [N, K], got shape {tuple(w.shape)}")
    if not w.is_floating_point():
        raise ValueError(f"{what} needs a floating-point weight, got {w.dtype}")
    if not bool(torch.isfinite(w).all()):
        bad = int((~torch.isfinite(w)).sum())
        raise ValueError(f"{what}: the weight of shape {tuple(w.shape)} holds {bad} NaN/inf value(s)")


def _bump_scale(amax: torch.Tensor, scale: torch.Tensor, ratio: float) -> torch.Tensor:
    """`scale` (fp32, = amax / ratio) made >= 2**-149 where amax > 0, and moved up one ulp where it is a
    subnormal that rounding left noticeably too small (amax / scale > ratio * (1 + 2**-20)), so the largest
    element never lands far past the top code.  Normal-range scales are left exactly amax / ratio (as
    torchao computes them): their rounding error is below 2**-24 and only makes the top code saturate by
    as much."""
    scale = torch.where(amax > 0, scale.clamp_min(_FP32_TINY), scale)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    too_small = (amax / safe) > ratio * (1 + 2.0**-20)
    return torch.where(too_small, torch.nextafter(scale, torch.full_like(scale, math.inf)), scale)


def _finite_limit(dtype: torch.dtype) -> float:
    """The largest finite value of `dtype` reachable from fp32: results are clamped to it (saturating cast)."""
    return min(torch.finfo(dtype).max, torch.finfo(torch.float32).max)


def _finite_abs(x: torch.Tensor) -> torch.Tensor:
    a = x.abs()
    return torch.where(torch.isfinite(a), a, torch.zeros_like(a))


def _round_e2m1(v: torch.Tensor) -> torch.Tensor:
    """Scaled values (fp32) rounded to nearest on the E2M1 grid, ties to even code, saturating at +-6.
    Within each binade of the grid the spacing is constant (0.5 below 2, 1 below 4, 2 up to 6), so
    `round(v / step) * step` (torch.round is half-to-even) is exactly round-to-nearest-even on the grid."""
    a = v.abs()
    step = torch.where(a < 2.0, 0.5, torch.where(a < 4.0, 1.0, 2.0))
    m = (torch.round(a / step) * step).clamp_max(E2M1_MAX)
    return torch.copysign(m, v)


def _e2m1_codes(r: torch.Tensor) -> torch.Tensor:
    """E2M1 grid values (fp32, from `_round_e2m1`) to 4-bit codes (uint8).  The sign bit follows the sign of
    the value, so a negative element that rounds to zero is stored as -0 (code 8), as torchao does."""
    m = r.abs()
    idx = torch.where(m <= 2.0, 2.0 * m, torch.where(m < 5.0, m + 2.0, 7.0))
    code = idx.to(torch.uint8)
    return torch.where(torch.signbit(r), code | 8, code)


@functools.lru_cache(maxsize=32)
def _e2m1_pair_lut(device: torch.device) -> torch.Tensor:
    """[256, 2] fp32: the two E2M1 values of each packed byte (low nibble first)."""
    vals = torch.tensor(_E2M1_VALUES, dtype=torch.float32)
    b = torch.arange(256)
    return torch.stack([vals[b & 15], vals[b >> 4]], dim=1).to(device)


def _nvfp4_scales(x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x2 [R, K] fp32, K % 16 == 0 -> (tensor_scale fp32 0-d, block scales float8_e4m3fn [R, K // 16]).
    Non-finite elements are left out of every amax."""
    a = _finite_abs(x2)
    amax = a.amax() if a.numel() else torch.zeros((), dtype=torch.float32, device=x2.device)
    ratio = E4M3_MAX * E2M1_MAX
    tensor_scale = _bump_scale(amax, amax / ratio, ratio)
    block_amax = a.view(a.shape[0], -1, NVFP4_BLOCK).amax(dim=-1)
    safe_ts = torch.where(tensor_scale > 0, tensor_scale, torch.ones_like(tensor_scale))
    # (block_amax / tensor_scale) is correctly rounded even when both are subnormal; then / 6.
    ideal = (block_amax / safe_ts) / E2M1_MAX
    scales = ideal.clamp(0.0, E4M3_MAX).to(torch.float8_e4m3fn)
    return tensor_scale, scales


def _nvfp4_round(x2: torch.Tensor, tensor_scale: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x2 [R, K] fp32 scaled by the two scales and rounded to the E2M1 grid (fp32 values in [-6, 6]).
    Blocks with a zero scale give zeros; non-finite elements give NaN (callers handle them)."""
    r, k = x2.shape
    s_b = scales.to(torch.float32).unsqueeze(-1)  # [R, K/16, 1]
    safe_ts = torch.where(tensor_scale > 0, tensor_scale, torch.ones_like(tensor_scale))
    safe_sb = torch.where(s_b > 0, s_b, torch.ones_like(s_b))
    v = (x2.view(r, -1, NVFP4_BLOCK) / safe_ts) / safe_sb
    v = torch.where(s_b > 0, v, torch.zeros_like(v))
    return _round_e2m1(v).view(r, k)


def _nvfp4_rescale(q: torch.Tensor, tensor_scale: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """E2M1 values q [R, K] fp32 times (e4m3 scale, then tensor scale), saturated into `dtype`'s range."""
    r, k = q.shape
    s_b = scales.to(torch.float32).unsqueeze(-1)
    out = ((q.view(r, -1, NVFP4_BLOCK) * s_b) * tensor_scale).view(r, k)  # q * s_b is exact in fp32
    lim = _finite_limit(dtype)
    return out.clamp(-lim, lim).to(dtype)


# -------------------------------------------------------------------------------------------------- NVFP4


@dataclass(frozen=True, eq=False)
class NVFP4Weight:
    """An NVFP4 weight [N, K]: E2M1 codes packed two per byte, one E4M3 scale per 16 consecutive elements of
    a row, one fp32 tensor scale (NVIDIA/torchao NVFP4 layout).  Element ``[n, k]`` is
    ``e2m1(code) * scales[n, k // 16] * tensor_scale``.

    Fields:
        packed: uint8 [N, K // 2]; byte ``[n, j]`` holds column ``2j`` in its low nibble and ``2j + 1`` in its
            high nibble; a code is sign (bit 3) and magnitude index (bits 0-2) into {0, .5, 1, 1.5, 2, 3, 4, 6}.
        scales: float8_e4m3fn [N, K // 16]: (block amax / 6) / tensor_scale, rounded to nearest E4M3.
        tensor_scale: fp32 0-d: amax / (448 * 6) (see the module docstring for the one-ulp adjustment).
        shape: (N, K).

    Built by :func:`quantize_nvfp4` or :meth:`from_state_dict`; a malformed set of fields raises ValueError.
    (``eq=False``: two weights compare by identity, since tensors have no single truth value.)
    """

    packed: torch.Tensor
    scales: torch.Tensor
    tensor_scale: torch.Tensor
    shape: tuple[int, int]

    def __post_init__(self) -> None:
        n, k = (int(s) for s in self.shape)
        object.__setattr__(self, "shape", (n, k))
        if n <= 0 or k <= 0 or k % NVFP4_BLOCK:
            raise ValueError(f"NVFP4Weight: shape {(n, k)} needs N > 0 and K a positive multiple of {NVFP4_BLOCK}")
        expect = (
            ("packed", self.packed, torch.uint8, (n, k // 2)),
            ("scales", self.scales, torch.float8_e4m3fn, (n, k // NVFP4_BLOCK)),
            ("tensor_scale", self.tensor_scale, torch.float32, ()),
        )
        for name, t, dtype, shp in expect:
            if not isinstance(t, torch.Tensor) or t.dtype != dtype or tuple(t.shape) != shp:
                got = (t.dtype, tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"NVFP4Weight: {name} must be {dtype} of shape {shp} for shape {(n, k)}, got {got}")

    @property
    def device(self) -> torch.device:
        return self.packed.device

    @property
    def nbytes(self) -> int:
        """Bytes held: N*K/2 (codes) + N*K/16 (E4M3 scales) + 4 (tensor scale), about 4.5 bits per weight."""
        return self.packed.nbytes + self.scales.nbytes + self.tensor_scale.nbytes

    def codes(self) -> torch.Tensor:
        """The unpacked 4-bit codes, uint8 [N, K]."""
        n, k = self.shape
        return torch.stack([self.packed & 15, self.packed >> 4], dim=-1).view(n, k)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight [N, K] in `dtype` (computed in fp32, saturated into `dtype`'s finite range), built a
        slab of rows at a time so the transient beyond the result stays small."""
        n, k = self.shape
        out = torch.empty((n, k), dtype=dtype, device=self.device)
        lut = _e2m1_pair_lut(self.device)
        rows = max(1, (1 << 22) // k)
        for r0 in range(0, n, rows):
            p = self.packed[r0 : r0 + rows]
            q = F.embedding(p.to(torch.int32), lut).view(p.shape[0], k)
            out[r0 : r0 + rows] = _nvfp4_rescale(q, self.tensor_scale, self.scales[r0 : r0 + rows], dtype)
        return out

    def to(self, device: torch.device | str) -> NVFP4Weight:
        return NVFP4Weight(self.packed.to(device), self.scales.to(device), self.tensor_scale.to(device), self.shape)

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """``{prefix + "packed": uint8, prefix + "scales": float8_e4m3fn, prefix + "tensor_scale": fp32 0-d}``.
        safetensors (>= 0.4) stores float8_e4m3fn (F8_E4M3) and 0-d tensors natively, bit-exactly; the
        shape is implied by ``packed`` (K = 2 * packed.shape[1])."""
        return {prefix + "packed": self.packed, prefix + "scales": self.scales, prefix + "tensor_scale": self.tensor_scale}

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor], prefix: str = "") -> NVFP4Weight:
        """Inverse of :meth:`state_dict`.  ``scales`` may also be a uint8 view of the E4M3 bytes.  A missing key
        raises KeyError; wrong dtypes or inconsistent shapes raise ValueError."""
        missing = [prefix + s for s in ("packed", "scales", "tensor_scale") if prefix + s not in sd]
        if missing:
            raise KeyError(f"NVFP4Weight.from_state_dict: missing {missing}")
        packed, scales, ts = sd[prefix + "packed"], sd[prefix + "scales"], sd[prefix + "tensor_scale"]
        if scales.dtype == torch.uint8:
            scales = scales.view(torch.float8_e4m3fn)
        if packed.dim() != 2:
            raise ValueError(f"NVFP4Weight.from_state_dict: {prefix}packed must be 2-D, got {tuple(packed.shape)}")
        return cls(packed, scales, ts.reshape(()) if ts.numel() == 1 else ts, (packed.shape[0], 2 * packed.shape[1]))


def quantize_nvfp4(w: torch.Tensor) -> NVFP4Weight:
    """Quantizes a weight ``w`` [N, K] (any float dtype, any device) to NVFP4 with packed storage.

    Raises ValueError when ``w`` is not a non-empty 2-D float tensor, when K is not a multiple of 16 (the
    message names the shape), or when ``w`` holds NaN/inf (the message counts them).
    """
    _check_weight(w, "quantize_nvfp4")
    n, k = w.shape
    if k % NVFP4_BLOCK:
        raise ValueError(f"quantize_nvfp4: K = {k} of the weight of shape {(n, k)} is not a multiple of {NVFP4_BLOCK}")
    x2 = w.detach().to(torch.float32)
    tensor_scale, scales = _nvfp4_scales(x2)
    codes = _e2m1_codes(_nvfp4_round(x2, tensor_scale, scales))
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).contiguous()
    return NVFP4Weight(packed, scales.contiguous(), tensor_scale.reshape(()).clone(), (n, k))


def fake_quant_nvfp4(x: torch.Tensor) -> torch.Tensor:
    """Activations quantized to NVFP4 and dequantized again along the last dim, in blocks of 16, with a
    dynamic per-tensor scale (amax / 2688 over all of ``x``) and per-block E4M3 scales, exactly as
    :func:`quantize_nvfp4` does for a weight (so ``fake_quant_nvfp4(w) == quantize_nvfp4(w).dequantize()``).
    Returns a tensor of ``x``'s shape and dtype.

    Inference only: the result carries no gradient to ``x``.
    No host sync and no refusal of non-finite values (this runs in forward passes): NaN/inf elements are
    left out of the amaxes and pass through unchanged, so the rows they touch stay non-finite downstream
    rather than turning silently finite.  Raises ValueError when ``x`` is not a float tensor or its last
    dim is not a multiple of 16.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() == 0:
        raise ValueError("fake_quant_nvfp4 needs a floating-point tensor with at least one dim")
    k = x.shape[-1]
    if k % NVFP4_BLOCK or k == 0:
        raise ValueError(f"fake_quant_nvfp4: the last dim of shape {tuple(x.shape)} is not a positive multiple of {NVFP4_BLOCK}")
    if x.numel() == 0:
        return x.clone()
    x2 = x.detach().reshape(-1, k).to(torch.float32)
    tensor_scale, scales = _nvfp4_scales(x2)
    out = _nvfp4_rescale(_nvfp4_round(x2, tensor_scale, scales), tensor_scale, scales, torch.float32)
    out = torch.where(torch.isfinite(x2), out, x2)
    return out.to(x.dtype).view(x.shape)


def nvfp4_linear(
    x: torch.Tensor, w: NVFP4Weight, bias: torch.Tensor | None, activations: str = "nvfp4"
) -> tuple[torch.Tensor, str]:
    """``F.linear`` with an NVFP4 weight: the weight is dequantized on the fly to ``x.dtype`` (a memory
    saving, not a speed-up), the activations ``x`` [..., K] are fake-quantized to NVFP4 (``"nvfp4"``) or
    left as they are (``"none"``).  Returns ``(out [..., N] in x.dtype, "nvfp4-dequant")``.

    No torchao route is taken (the ``"nvfp4-torchao"`` path of the design is not implemented: it could not
    be tested here, and an H200 would not take it anyway); this module never imports torchao.  Raises ValueError on an unknown ``activations``, a last dim
    other than K, or a bias not of shape [N].
    """
    if activations not in ("nvfp4", "none"):
        raise ValueError(f"nvfp4_linear: activations must be 'nvfp4' or 'none', got {activations!r}")
    n, k = w.shape
    if x.shape[-1] != k:
        raise ValueError(f"nvfp4_linear: x of shape {tuple(x.shape)} does not end in K = {k} of the weight {(n, k)}")
    if bias is not None and tuple(bias.shape) != (n,):
        raise ValueError(f"nvfp4_linear: bias must have shape ({n},), got {tuple(bias.shape)}")
    xq = fake_quant_nvfp4(x) if activations == "nvfp4" else x
    weight = w.dequantize(x.dtype)
    return F.linear(xq, weight, None if bias is None else bias.to(x.dtype)), "nvfp4-dequant"


# --------------------------------------------------------------------------------------------------- INT8


@dataclass(frozen=True, eq=False)
class Int8Weight:
    """A symmetric per-output-channel INT8 weight: ``w[n, k] ~ q[n, k] * scale[n]``, ``q`` in [-127, 127].

    Fields:
        q: int8 [N, K].
        scale: fp32 [N]: row amax / 127 (0 for an all-zero row; never so small that a code passes 127).

    (``eq=False``: compare by identity.)  Inconsistent fields raise ValueError.
    """

    q: torch.Tensor
    scale: torch.Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.q, torch.Tensor) or self.q.dtype != torch.int8 or self.q.dim() != 2:
            raise ValueError(f"Int8Weight: q must be a 2-D int8 tensor, got {getattr(self.q, 'dtype', type(self.q))}")
        n = self.q.shape[0]
        if not isinstance(self.scale, torch.Tensor) or self.scale.dtype != torch.float32 or tuple(self.scale.shape) != (n,):
            got = (self.scale.dtype, tuple(self.scale.shape)) if isinstance(self.scale, torch.Tensor) else type(self.scale)
            raise ValueError(f"Int8Weight: scale must be fp32 of shape ({n},), got {got}")

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.q.shape[0]), int(self.q.shape[1]))

    @property
    def device(self) -> torch.device:
        return self.q.device

    @property
    def nbytes(self) -> int:
        """Bytes held: N*K (codes) + 4*N (scales)."""
        return self.q.nbytes + self.scale.nbytes

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``q * scale[:, None]`` [N, K], computed in fp32 and saturated into `dtype`'s finite range."""
        out = self.q.to(torch.float32) * self.scale.unsqueeze(-1)
        lim = _finite_limit(dtype)
        return out.clamp(-lim, lim).to(dtype)

    def to(self, device: torch.device | str) -> Int8Weight:
        return Int8Weight(self.q.to(device), self.scale.to(device))

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """``{prefix + "q": int8 [N, K], prefix + "scale": fp32 [N]}`` (safetensors-ready)."""
        return {prefix + "q": self.q, prefix + "scale": self.scale}

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor], prefix: str = "") -> Int8Weight:
        """Inverse of :meth:`state_dict`: KeyError on a missing key, ValueError on wrong dtypes/shapes."""
        missing = [prefix + s for s in ("q", "scale") if prefix + s not in sd]
        if missing:
            raise KeyError(f"Int8Weight.from_state_dict: missing {missing}")
        return cls(sd[prefix + "q"], sd[prefix + "scale"])


def _int8_rows(x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x2 [R, K] fp32 -> (int8 codes [R, K], fp32 scales [R]); symmetric, round half to even, in [-127, 127].
    Rows holding NaN/inf get a non-finite scale (callers mark them)."""
    amax = x2.abs().amax(dim=-1) if x2.shape[-1] else torch.zeros(x2.shape[0], device=x2.device)
    scale = _bump_scale(amax, amax / INT8_QMAX, float(INT8_QMAX))
    safe = torch.where((scale > 0) & torch.isfinite(scale), scale, torch.ones_like(scale))
    q = torch.round(x2 / safe.unsqueeze(-1)).clamp(-INT8_QMAX, INT8_QMAX)
    q = torch.where(torch.isfinite(q), q, torch.zeros_like(q))
    return q.to(torch.int8), scale


def quantize_int8(w: torch.Tensor) -> Int8Weight:
    """Symmetric per-output-channel INT8 of a weight ``w`` [N, K]: every element within scale/2 of
    ``q * scale`` (plus fp32 rounding of the product).  Raises ValueError on a tensor that is not a non-empty
    2-D float tensor or that holds NaN/inf."""
    _check_weight(w, "quantize_int8")
    q, scale = _int8_rows(w.detach().to(torch.float32))
    return Int8Weight(q.contiguous(), scale.contiguous())


def int8_from_nvfp4(w: NVFP4Weight) -> Int8Weight:
    """The paper's INT8 route: the stored NVFP4 weight dequantized (fp32) and re-quantized per channel to
    INT8.  The E2M1 grid times an E4M3 scale needs more than 8 bits per row in general, so the cast adds at
    most scale/2 per element on top of the NVFP4 error."""
    return quantize_int8(w.dequantize(torch.float32))


def int_mm_accepts(m: int, k: int, n: int, device: torch.device | str) -> bool:
    """Whether ``torch._int_mm`` takes an int8 [m, k] @ [k, n] product on `device` (torch 2.13), and its int32
    accumulation cannot overflow (k <= INT_MM_MAX_K = 133144 with codes in [-127, 127]).

    CPU (checked empirically on torch 2.13.0+cpu): any 2-D int8 shapes, including m <= 16, odd k and n,
    empty dims and non-contiguous operands; only the dim count, int8 dtypes and matching k are checked.
    CUDA (``_int_mm_out_cuda``'s TORCH_CHECKs): m > 16, k > 0 and k % 8 == 0, n > 0 and n % 8 == 0.
    Other device types: False (not verified).
    """
    dev = torch.device(device).type
    if k > INT_MM_MAX_K:
        return False
    if dev == "cpu":
        return True
    if dev == "cuda":
        return m > 16 and k > 0 and k % 8 == 0 and n > 0 and n % 8 == 0
    return False


def int8_linear(x: torch.Tensor, w: Int8Weight, bias: torch.Tensor | None) -> tuple[torch.Tensor, str]:
    """W8A8 linear: ``x`` [..., K] (float) quantized per token (per row of the flattened [M, K], symmetric,
    scale = row amax / 127), multiplied with ``w`` by ``torch._int_mm`` (int32 accumulation) where
    :func:`int_mm_accepts` the shape, rescaled by both scales (fp32), bias added.  Where ``_int_mm`` cannot
    take the shape the same int8 codes are dequantized and multiplied in fp32.

    Speed: on CPU (torch 2.13, AVX2) ``_int_mm`` is a slow generic kernel, about 30x slower than the fp32
    GEMM at [2048 x 1536] @ [1536 x 1536]: the int8 route is real but a GPU feature; on CPU it only
    demonstrates the numerics.

    Returns ``(out [..., N] in x.dtype, path)`` with path ``"int8-int-mm"`` or ``"int8-dequant"``.  Rows of
    ``x`` holding NaN/inf give NaN output rows.  Raises ValueError when ``x`` is not a float tensor ending in
    K, or bias is not of shape [N].
    """
    n, k = w.shape
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() == 0 or x.shape[-1] != k:
        raise ValueError(f"int8_linear: x must be a float tensor [..., {k}], got {getattr(x, 'shape', type(x))}")
    if bias is not None and tuple(bias.shape) != (n,):
        raise ValueError(f"int8_linear: bias must have shape ({n},), got {tuple(bias.shape)}")
    x2 = x.reshape(-1, k).to(torch.float32)
    m = x2.shape[0]
    xq, sx = _int8_rows(x2)
    if int_mm_accepts(m, k, n, x.device):
        acc = torch._int_mm(xq, w.q.t())
        out = (acc.to(torch.float32) * sx.unsqueeze(-1)) * w.scale.unsqueeze(0)
        path = "int8-int-mm"
    else:
        out = F.linear(xq.to(torch.float32) * sx.unsqueeze(-1), w.dequantize(torch.float32))
        path = "int8-dequant"
    if bias is not None:
        out = out + bias.to(torch.float32)
    out = torch.where(torch.isfinite(sx).unsqueeze(-1), out, torch.full_like(out, math.nan))
    return out.to(x.dtype).view(*x.shape[:-1], n), path


def prepack_x86(w: Int8Weight) -> Any | None:
    """``w`` packed for PyTorch's x86/fbgemm dynamic-quantized linear (``quantized::linear_dynamic``), the
    one fast int8 GEMM of CPU PyTorch (VPMADDUBSW; about 1.7x the fp32 GEMM at [2048 x 1536] @ [1536 x 1536]
    on an AVX2 EPYC, where ``_int_mm`` is 30x slower). Its activations are quantized per tensor (7-bit
    range, ``reduce_range``), not per token: relative error about 0.024 against 0.011. None when this
    PyTorch has neither engine. The API is deprecated upstream (torch.ao quantized tensors); its warning
    is silenced here and the path is named in ``stats()``."""
    engines = torch.backends.quantized.supported_engines
    if w.q.device.type != "cpu" or not ({"x86", "fbgemm"} & set(engines)):
        return None
    import warnings

    n = w.shape[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qw = torch._make_per_channel_quantized_tensor(
            w.q, w.scale.double(), torch.zeros(n, dtype=torch.long), 0)
        return torch.ops.quantized.linear_prepack(qw, None)


def int8_linear_x86(x: torch.Tensor, packed: Any, n: int, bias: torch.Tensor | None) -> tuple[torch.Tensor, str]:
    """W8A8 through ``quantized::linear_dynamic`` with weights from :func:`prepack_x86`: ``(out [..., n] in
    x.dtype, "int8-x86-dynamic")``."""
    x2 = x.reshape(-1, x.shape[-1]).to(torch.float32)
    out = torch.ops.quantized.linear_dynamic(x2, packed, True)
    if bias is not None:
        out = out + bias.to(torch.float32)
    return out.to(x.dtype).view(*x.shape[:-1], n), "int8-x86-dynamic"


# ----------------------------------------------------------------------------------------------- rotation


@functools.lru_cache(maxsize=16)
def _hadamard_cached(n: int, dtype: torch.dtype) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], dim=1), torch.cat([h, -h], dim=1)], dim=0)
    return (h / math.sqrt(n)).to(dtype)


def hadamard(n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The orthonormal Sylvester Hadamard matrix [n, n] (``H_2n = [[H, H], [H, -H]] / sqrt 2``), symmetric,
    ``H @ H.T == I`` up to the rounding of 1/sqrt(n) in `dtype`.  Raises ValueError unless n is a power of two."""
    if not isinstance(n, int) or n < 1 or n & (n - 1):
        raise ValueError(f"hadamard: n must be a power of two, got {n!r}")
    return _hadamard_cached(n, dtype).clone()


def rotate_blocks(x: torch.Tensor, block: int = 128) -> torch.Tensor:
    """``x`` [..., K] times the block-diagonal orthonormal Hadamard ``R = diag(H_block, ..., H_block)``
    (K % block == 0): rotating both activations and weights leaves a linear unchanged,
    ``(x R)(W R)^T == x W^T``, while outliers spread over their block.  Computed in fp32 (fp64 for fp64
    inputs) and returned in ``x.dtype``.  Raises ValueError when block is not a power of two or does not
    divide K."""
    if not isinstance(block, int) or block < 1 or block & (block - 1):
        raise ValueError(f"rotate_blocks: block must be a power of two, got {block!r}")
    k = x.shape[-1]
    if k % block:
        raise ValueError(f"rotate_blocks: the last dim of shape {tuple(x.shape)} is not a multiple of block = {block}")
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    h = _hadamard_cached(block, cdt).to(x.device)
    y = x.to(cdt).reshape(*x.shape[:-1], k // block, block) @ h
    return y.reshape(x.shape).to(x.dtype)
