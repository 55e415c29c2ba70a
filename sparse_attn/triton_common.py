"""What the three Triton kernels share: constants, the inner loop, tile configs that fit, the launch.

The block-sparse kernel (triton_kernel.py), PISA's fused kernel (pisa_triton.py) and AdaSpa's search
(search_triton.py) are FlashAttention-2 forward passes that differ in which key tiles they visit. Like
`_attn_fwd_inner` in Triton's fused-attention tutorial, one step of the online softmax is written once
here (`attend_tile`, on top of `tile_scores` and `online_softmax`) and every kernel calls it; the walk over
the key tiles an index lists (`attend_listed_tiles`) is shared by the block-sparse and PISA kernels.

Also here, so that every kernel behaves alike on a GPU:

- `LOG2E`, `LN2`: `tl.constexpr` globals (a plain Python float cannot be read inside `@triton.jit`);
- `dot_precision(dtype)` (precision.py): how fp32 inputs are multiplied, following torch's TF32 switch;
- `configs` and `fit_configs`: autotune candidates, clamped to the index's tiles and pruned by an estimate
  of their shared memory against the device's limit (Hopper: 232,448 bytes per thread block), so no candidate
  fails with OutOfResources; `accel compile-check` (and tests/sparse_attn/test_triton_compile.py) builds
  them for sm_90 on CPU and checks the estimate against what the compiler allocates;
- `on_device`: launches run on the tensors' GPU, not the current one (a second GPU, `device_map`);
- `run_or_fall_back`: in "auto", a compile or resource error (`LAUNCH_ERRORS`) at a kernel's first
  launch for a specialization becomes a recorded fallback, remembered so later calls do not recompile.

Offsets that grow with the batch or head index are computed in int64 inside the kernels (`base_offset`):
program id times batch stride overflows int32 from about 2^31 elements, e.g. batch 6 of a Wan-14B 720p
call. Within one (batch, head) the row offsets stay int32; `check_offsets` refuses inputs where that
would overflow.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
import triton
import triton.language as tl
from triton.compiler.errors import CompilationError
from triton.runtime.errors import OutOfResources, PTXASError

from .precision import dot_precision, precision, set_fp32_precision  # noqa: F401 (the kernels' API)

logger = logging.getLogger("accel")

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
MAX_HEAD_DIM = 256  # as FlashAttention: larger head dims leave no room for a K/V tile in shared memory
SHARED_MEMORY_LIMIT = 232_448  # bytes per thread block on sm_90 (H100/H200); A100 (sm_80) has 166,912

# Compile options every launch states: fused multiply-adds, Triton 3.9's default, which 3.10 turns off
# (stating it keeps the kernels' rounding across versions and silences Triton's warning about it).
LAUNCH_OPTIONS = {"enable_fp_fusion": True}

# A Triton compile or resource error at a kernel's first launch: "auto" records it and falls back.
LAUNCH_ERRORS: tuple[type[Exception], ...] = (CompilationError, OutOfResources, PTXASError)


def _interpreted() -> bool:
    knobs = getattr(triton, "knobs", None)  # triton >= 3.4 keeps its flags there
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# Triton reads TRITON_INTERPRET when a kernel is decorated, i.e. when these modules are first imported.
INTERPRETED = _interpreted()

# Under the interpreter a program covers a whole query tile and steps through key tiles whole, unless this
# asks for smaller program tiles (BLOCK_M, BLOCK_N): the tests set it to run the GPU's sub-tiling on CPU.
interpreter_tiles: tuple[int, int] | None = None


_warned_fp32 = False


def warn_fp32_once() -> None:
    """fp32 inputs on the GPU kernels are slow (exact fp32 dots need small tiles); say so once."""
    global _warned_fp32
    if not _warned_fp32:
        _warned_fp32 = True
        logger.warning(
            "accel: fp32 inputs reach the Triton kernels (%s); run the model in bf16/fp16 for speed, or allow "
            "TF32 (torch.backends.cuda.matmul.fp32_precision = 'tf32', or sparse_attn.set_fp32_precision("
            "'tf32x3') for near-fp32 accuracy)", precision(torch.float32),
        )


def interpret_bf16_dot() -> None:
    """Under TRITON_INTERPRET=1 only: make the interpreter's tl.dot read bfloat16 operands as values. It
    stores bf16 as uint16 and multiplies the bit patterns (triton-lang/triton#11584, "we just don't
    support it yet"); converting the operands to fp32 first is what the GPU's bf16 MMA computes (exact
    products, fp32 accumulation), so the kernels' own bf16 handling is what runs. Idempotent."""
    import numpy as np
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    if getattr(builder.create_dot, "_accel_bf16", False):
        return
    original = builder.create_dot

    def as_float32(handle):  # noqa: ANN001, ANN202
        if handle.dtype == tl.bfloat16:
            return interpreter.TensorHandle((handle.data.astype(np.uint32) << 16).view(np.float32), tl.float32)
        return handle

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):  # noqa: ANN001, ANN202
        return original(self, as_float32(a), as_float32(b), d, input_precision, max_num_imprecise_acc)

    create_dot._accel_bf16 = True
    builder.create_dot = create_dot


# -- tiles that fit -----------------------------------------------------------------------------------


def head_dim_pad(head_dim: int) -> int:
    """The head dim the kernels tile by: the next power of two, at least 16."""
    return max(16, triton.next_power_of_2(head_dim))


def operand_bytes(dtype: torch.dtype, dot: str) -> int:
    """Bytes per element of a dot operand in shared memory: 2 for fp16/bf16, 4 for fp32, and 8 for
    "tf32x3", which keeps a high and a low TF32 part of each operand."""
    if dtype != torch.float32:
        return 2
    return 8 if dot == "tf32x3" else 4


def shared_memory_estimate(block_m: int, block_n: int, num_stages: int, dim_pad: int, elem_bytes: int,
                           query_tiles: int = 1) -> int:
    """An upper bound on the shared memory (bytes) of one program: the query tile (`query_tiles` copies: a
    kernel with two loops over the keys keeps one per loop), per pipeline stage a key and a value tile
    (what the software pipeliner buffers), the probability tile (the first operand of p . v, staged
    through shared memory for fp32 dots) and 1 KiB of scratch. `accel compile-check --all` checks it
    against the compiler's own figure for every build."""
    tiles = query_tiles * block_m * dim_pad + max(1, num_stages) * 2 * block_n * dim_pad + block_m * block_n
    return tiles * elem_bytes + 1024


# (BLOCK_M, BLOCK_N, warps, stages): for tensor-core dots (fp16, bf16, TF32) as in Triton's fused-attention
# tutorial; for exact fp32 dots ("ieee", "tf32x3") small tiles, which keep the block-sparse kernel from
# spilling registers ("ieee": 0 bytes at every head dim, checked by tests/sparse_attn/test_triton_compile.py; PISA's
# pooled phase and "tf32x3" at head dim 256 still spill a little: `accel compile-check` lists them).
FAST_TILES = [(64, 32, 4, 3), (64, 64, 4, 3), (128, 64, 8, 2), (128, 32, 8, 2)]
EXACT_FP32_TILES = [(64, 16, 8, 2), (32, 16, 4, 2), (16, 16, 4, 2)]


def configs(dot: str | None = None) -> list[triton.Config]:
    """Autotune candidates for the dot precision `dot` (None: every candidate); `fit_configs` clamps
    them to the index's tiles and shrinks them to fit the head dim."""
    shapes = {None: FAST_TILES + EXACT_FP32_TILES, "ieee": EXACT_FP32_TILES, "tf32x3": EXACT_FP32_TILES}
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn, w, s in shapes.get(dot, FAST_TILES)
    ]


def fit_configs(
    candidates: list[triton.Config], q_tile: int, kv_tile: int, dim_pad: int, elem_bytes: int,
    limit: int = SHARED_MEMORY_LIMIT, query_tiles: int = 1,
) -> list[triton.Config]:
    """The candidates with BLOCK_M clamped to the query tile and BLOCK_N to the key tile (a candidate
    without BLOCK_M covers a whole query tile), minus what would not fit in `limit` bytes of
    shared memory: a stage fewer, then a smaller BLOCK_N, then a smaller BLOCK_M are tried before a
    candidate is dropped. At head dims up to MAX_HEAD_DIM at least one candidate always remains."""
    fitted: dict[tuple, triton.Config] = {}
    for c in candidates:
        tile_m = "BLOCK_M" in c.kwargs
        bm, bn = min(c.kwargs.get("BLOCK_M", q_tile), q_tile), min(c.kwargs["BLOCK_N"], kv_tile)
        stages = c.num_stages
        while shared_memory_estimate(bm, bn, stages, dim_pad, elem_bytes, query_tiles) > limit:
            if stages > 1:
                stages -= 1
            elif bn > 16:
                bn //= 2
            elif tile_m and bm > 16:
                bm //= 2
            else:
                break
        if shared_memory_estimate(bm, bn, stages, dim_pad, elem_bytes, query_tiles) > limit:
            continue
        tiles = {"BLOCK_M": bm, "BLOCK_N": bn} if tile_m else {"BLOCK_N": bn}
        fitted.setdefault((bm, bn, c.num_warps, stages), triton.Config(tiles, num_warps=c.num_warps,
                                                                       num_stages=stages))
    return list(fitted.values())


# -- launching -----------------------------------------------------------------------------------------


T = TypeVar("T")
_failed: dict[tuple, str] = {}  # specialization key -> why its kernel could not be built


def run_or_fall_back(key: tuple, backend: str, launch: Callable[[], T], fallback: Callable[[str], T]) -> T:
    """`launch()` a Triton kernel for the specialization `key` (kernel name, dtype, head dim, blocks,
    precision, device). With `backend="auto"`, a compile or resource error is remembered under `key`
    and `fallback(reason)` serves this call and every later one with that key (the caller records the
    path with the reason, which logs it once); any other backend lets the error through."""
    reason = _failed.get(key) if backend == "auto" else None
    if reason is None:
        try:
            return launch()
        except LAUNCH_ERRORS as exc:
            if backend != "auto":
                raise
            first_line = (str(exc).strip().splitlines() or [""])[-1][:300]
            reason = f"the Triton {key[0]} kernel did not build ({type(exc).__name__}: {first_line})"
            _failed[key] = reason
    return fallback(reason)


@contextlib.contextmanager
def on_device(tensor: torch.Tensor) -> Iterator[None]:
    """Launch on `tensor`'s GPU (Triton launches on the current CUDA device and stream)."""
    if tensor.device.type == "cuda":
        with torch.cuda.device(tensor.device):
            yield
    else:
        yield


def check_inputs(q: torch.Tensor, what: str) -> None:
    """Raise RuntimeError when the Triton `what` kernel cannot take queries `q`: not on CUDA (or on CPU
    under the interpreter), a head dim over MAX_HEAD_DIM, or rows past int32 offsets (`check_offsets`).
    fp32 on CUDA is logged once as slow."""
    device = q.device.type
    if device != "cuda" and not (device == "cpu" and INTERPRETED):
        raise RuntimeError(f"the Triton {what} kernel needs CUDA tensors (or TRITON_INTERPRET=1 on CPU), got {device}")
    if q.shape[-1] > MAX_HEAD_DIM:
        raise RuntimeError(f"the Triton {what} kernel takes head dims up to {MAX_HEAD_DIM}, got {q.shape[-1]}")
    check_offsets(q=q)
    if q.dtype == torch.float32 and device == "cuda":
        warn_fp32_once()


def check_offsets(**tensors: torch.Tensor | None) -> None:
    """The kernels index within one (batch, head) in int32: refuse a tensor whose slice spans 2^31
    elements or more (batch and head offsets are int64 and have no such limit). None is skipped."""
    for name, x in tensors.items():
        if x is None or not x.numel():
            continue
        span = sum((n - 1) * abs(s) for n, s in zip(x.shape[2:], x.stride()[2:], strict=True))
        if span >= 2**31:
            raise RuntimeError(
                f"{name} spans {span} elements within one (batch, head); the Triton kernels index rows in int32 "
                "(up to 2^31 - 1): split the sequence"
            )


# -- the inner loop -------------------------------------------------------------------------------------


@triton.jit
def base_offset(b, h, stride_b, stride_h):
    """b * stride_b + h * stride_h in int64 (program ids are int32)."""
    return b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h


@triton.jit
def tile_scores(q, k_base, cols, kv_len, offs_d, dim_ok, stride_ks, stride_kd, qk_scale, DOT: tl.constexpr):
    """Scores of q [BLOCK_M, D] against the keys `cols` [BLOCK_N] in log2 units, fp32 [BLOCK_M, BLOCK_N];
    -inf where the key does not exist (past `kv_len`)."""
    col_ok = cols < kv_len
    k = tl.load(k_base + cols[None, :] * stride_ks + offs_d[:, None] * stride_kd,
                mask=col_ok[None, :] & dim_ok[:, None], other=0.0)  # [HEAD_DIM_PAD, BLOCK_N]
    qk = tl.dot(q, k, input_precision=DOT)
    return tl.where(col_ok[None, :], qk * qk_scale, float("-inf"))


@triton.jit
def online_softmax(qk, m_i):
    """One step of the online softmax over scores qk [BLOCK_M, N] (log2 units): the new running max,
    p = 2^(qk - max) and the factor alpha that rescales what was summed before. Rows that have seen no
    finite score yet keep max -inf and get p = 0, alpha = 1."""
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(qk - m_safe[:, None])
    alpha = tl.math.exp2(m_i - m_safe)
    return m_new, p, alpha


@triton.jit
def attend_tile(q, k_base, v_base, cols, kv_len, offs_d, dim_ok, stride_ks, stride_kd, stride_vs, stride_vd,
                qk_scale, m_i, l_i, acc, DOT: tl.constexpr):
    """One key tile of FlashAttention-2: scores, online softmax, acc += p . v. Returns (m_i, l_i, acc)."""
    qk = tile_scores(q, k_base, cols, kv_len, offs_d, dim_ok, stride_ks, stride_kd, qk_scale, DOT)
    m_new, p, alpha = online_softmax(qk, m_i)
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(v_base + cols[:, None] * stride_vs + offs_d[None, :] * stride_vd,
                mask=(cols < kv_len)[:, None] & dim_ok[None, :], other=0.0)  # [BLOCK_N, HEAD_DIM_PAD]
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT)
    return m_new, l_i, acc


@triton.jit
def attend_listed_tiles(q, k_base, v_base, num_ptr, ids_ptr, stride_ik, kv_len, offs_n, offs_d, dim_ok,
                        stride_ks, stride_kd, stride_vs, stride_vd, qk_scale, m_i, l_i, acc,
                        KV_TILE: tl.constexpr, BLOCK_N: tl.constexpr, DOT: tl.constexpr):
    """The key tiles a query tile lists (count at `num_ptr`, ids from `ids_ptr`), each through
    `attend_tile` in steps of BLOCK_N keys. One flat loop over (listed tile, step): the software pipeliner
    then buffers one step per stage (a nested loop over the steps of a tile would buffer a whole tile).
    Returns (m_i, l_i, acc)."""
    STEPS: tl.constexpr = KV_TILE // BLOCK_N
    for t in range(0, tl.load(num_ptr) * STEPS):
        kv_tile_id = tl.load(ids_ptr + (t // STEPS) * stride_ik)
        cols = kv_tile_id * KV_TILE + (t % STEPS) * BLOCK_N + offs_n
        m_i, l_i, acc = attend_tile(q, k_base, v_base, cols, kv_len, offs_d, dim_ok,
                                    stride_ks, stride_kd, stride_vs, stride_vd, qk_scale, m_i, l_i, acc, DOT)
    return m_i, l_i, acc


@triton.jit
def finish(acc, l_i, m_i):
    """Normalise: (out fp32 [BLOCK_M, D], row log-sum-exp in natural log); a row that saw no key gets 0
    and -inf."""
    has_keys = l_i > 0.0
    out = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    lse = tl.where(has_keys, (m_i + tl.math.log2(tl.where(has_keys, l_i, 1.0))) * LN2, float("-inf"))
    return out, lse
