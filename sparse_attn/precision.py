"""How the Triton kernels multiply fp32 inputs (no Triton import: `sparse_attn` exposes it everywhere).

The kernels' `tl.dot` takes an `input_precision` for fp32 operands: "ieee" (exact fp32, no tensor
cores), "tf32" (one TF32 pass, a 10-bit mantissa) or "tf32x3" (three TF32 passes, close to fp32). By
default it follows torch's own switch for fp32 matmuls on CUDA, read through the `fp32_precision` API
(torch >= 2.9) when that is set, since reading the legacy `allow_tf32` then raises; fp16 and bf16 inputs
are not affected. `set_fp32_precision` overrides it for this process.
"""

from __future__ import annotations

import torch

FP32_PRECISIONS = ("auto", "ieee", "tf32", "tf32x3")
_fp32_precision = "auto"


def set_fp32_precision(precision: str) -> None:
    """How the Triton kernels multiply fp32 inputs: "auto" (default) follows torch's TF32 setting for
    matmuls ("tf32" when TF32 is allowed, else "ieee"); "ieee" is exact fp32 (slow: no tensor cores, and only small tiles avoid spilling registers);
    "tf32" is one TF32 pass (10-bit mantissa); "tf32x3" three TF32 passes, close to fp32 at about a third
    of TF32's speed. fp16/bf16 inputs are not affected. Raises ValueError for another value."""
    global _fp32_precision
    if precision not in FP32_PRECISIONS:
        raise ValueError(f"precision must be one of {FP32_PRECISIONS}; got {precision!r}")
    _fp32_precision = precision


def torch_allows_tf32() -> bool:
    """Whether torch lets fp32 matmuls on CUDA use TF32. Reads the `fp32_precision` API (torch >= 2.9;
    the matmul setting, else the global one, "none" meaning inherit), and the legacy `allow_tf32` only
    when neither is set: reading it after the new API was used raises in torch."""
    for node in (torch.backends.cuda.matmul, torch.backends):
        value = getattr(node, "fp32_precision", None)
        if value is None:
            break
        if value != "none":
            return value == "tf32"
    try:
        return bool(torch.backends.cuda.matmul.allow_tf32)
    except RuntimeError:  # a torch that raises on a mix of APIs we did not foresee: exact is safe
        return False


def dot_precision(dtype: torch.dtype) -> str:
    """`input_precision` of the kernels' tl.dot for inputs of `dtype`: "ieee", "tf32" or "tf32x3" for
    fp32; "tf32" for fp16/bf16, where Triton ignores it."""
    if dtype != torch.float32:
        return "tf32"
    if _fp32_precision == "auto":
        return "tf32" if torch_allows_tf32() else "ieee"
    return _fp32_precision


def precision(dtype: torch.dtype) -> str:
    """How the kernels compute for inputs of `dtype` (recorded with the path taken)."""
    if dtype == torch.float32:
        dot = dot_precision(dtype)
        return "fp32" if dot == "ieee" else f"fp32 ({dot} dot)"
    name = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, str(dtype))
    return f"{name} dot, fp32 accumulate"


