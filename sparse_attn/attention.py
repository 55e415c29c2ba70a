"""`block_sparse_attention`: the entry point, which checks its inputs and picks the implementation.

Paths, one per `paths.Kernel`, in `PATHS`: the Triton kernel on CUDA, the C++ kernel on CPU, plain PyTorch
ops where neither can run (a recorded fallback). In "auto", a Triton kernel that does not build for the
inputs (a compile or resource error at its first launch) is such a case too: the reason is recorded and
logged. All compute softmax in fp32; the path taken is recorded per call (`paths.capture()`), and the
call runs inside the profiler range "accel::attention.block_sparse", which the project's bench counts as
attention time.

Semantics. Query row i of query tile `qt` attends exactly the real key tokens of the key tiles
`index.indices[b, h, qt, :index.counts[b, h, qt]]`: softmax(scale * q k^T) over those keys, times v. A row
whose query tile lists no key tile has no keys at all: its output is 0 and its log-sum-exp is -inf
(`merge_attention` then gives it no weight).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import paths
from .paths import AttentionPath, Kernel
from .tiles import TileIndex

_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
BACKENDS = paths.BACKENDS
Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, TileIndex, float], tuple[torch.Tensor, torch.Tensor]]


def upcast_precision(dtype: torch.dtype) -> str:
    """The precision of the CPU and PyTorch paths, which compute in fp32."""
    return "fp32" if dtype == torch.float32 else f"{_DTYPES[dtype]} inputs, fp32 compute"


def _triton_precision(q: torch.Tensor) -> str:
    try:
        from . import triton_common
    except ImportError as exc:
        raise RuntimeError(f"triton is not importable: {exc}") from exc
    triton_common.check_inputs(q, "block-sparse")
    return triton_common.precision(q.dtype)


def _cpu_precision(q: torch.Tensor) -> str:
    from . import cpu_kernel

    if q.device.type != "cpu":
        raise RuntimeError(f"the C++ kernel runs on CPU tensors, got {q.device.type}")
    if not cpu_kernel.available():
        raise RuntimeError(f"the CPU kernel is unavailable: {cpu_kernel.build_info().get('error')}")
    return upcast_precision(q.dtype)


@dataclass(frozen=True)
class KernelPath:
    """One implementation: `precision(q)` says how it computes q's dtype, or raises RuntimeError with the
    reason it cannot run; `module` holds its `attention(q, k, v, index, scale) -> (out, lse)`, imported on
    use (importing the Triton module decorates its kernels)."""

    kernel: Kernel
    precision: Callable[[torch.Tensor], str]
    module: str

    def attention(self) -> Attention:
        import importlib

        return importlib.import_module(f"{__package__}.{self.module}").attention


PATHS: dict[Kernel, KernelPath] = {
    Kernel.TRITON: KernelPath(Kernel.TRITON, _triton_precision, "triton_kernel"),
    Kernel.CPU: KernelPath(Kernel.CPU, _cpu_precision, "cpu_kernel"),
    Kernel.TORCH: KernelPath(Kernel.TORCH, lambda q: upcast_precision(q.dtype), "torch_path"),
}
AUTO = {"cuda": Kernel.TRITON, "cpu": Kernel.CPU}  # what "auto" wants on each device; elsewhere: torch


def choose_path(q: torch.Tensor, backend: str) -> AttentionPath:
    """The path for these inputs. An explicitly requested backend that cannot run raises RuntimeError;
    "auto" falls back to the PyTorch path only with a recorded reason (logged as a warning)."""
    kernel = paths.check_backend(backend)
    device = q.device.type
    if kernel is None:
        want = AUTO.get(device)
        if want is None:
            return AttentionPath(Kernel.TORCH, upcast_precision(q.dtype), device, f"no kernel for {device}")
        try:
            return AttentionPath(want, PATHS[want].precision(q), device)
        except RuntimeError as exc:
            return AttentionPath(Kernel.TORCH, upcast_precision(q.dtype), device, str(exc))
    return AttentionPath(kernel, PATHS[kernel].precision(q), device)


def _run_triton(path: AttentionPath, backend: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                index: TileIndex, scale: float) -> tuple[AttentionPath, tuple[torch.Tensor, torch.Tensor]]:
    """The Triton kernel, or in "auto", when it cannot be built for these inputs, the PyTorch path with
    the reason recorded (triton_common.run_or_fall_back)."""
    from . import triton_common

    key = ("block-sparse", q.dtype, q.shape[-1], index.tile_size, triton_common.dot_precision(q.dtype), q.device)

    def fallback(reason: str) -> tuple[AttentionPath, tuple[torch.Tensor, torch.Tensor]]:
        out = PATHS[Kernel.TORCH].attention()(q, k, v, index.expand(q.shape[0], q.shape[1]), scale)
        return AttentionPath(Kernel.TORCH, upcast_precision(q.dtype), path.device, reason), out

    triton = PATHS[Kernel.TRITON].attention()
    return triton_common.run_or_fall_back(key, backend, lambda: (path, triton(q, k, v, index, scale)), fallback)


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Raise ValueError/TypeError unless q [B, H, Sq, D], k and v [B, H, Skv, D] fit together."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be [B, H, S, D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}: batch, heads and head dim must match "
            "and k, v must have the same shape"
        )
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in _DTYPES:
        raise TypeError(f"q, k, v must share one of fp32/fp16/bf16; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError("q, k, v must be on one device")
    if q.shape[3] == 0:
        raise ValueError("q, k, v have head dim 0; it must be >= 1")


def check_scale(scale: float | None, head_dim: int) -> float:
    """The softmax scale: 1/sqrt(head_dim) for None, else a positive finite number (ValueError)."""
    if scale is None:
        return head_dim**-0.5
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive finite number or None; got {scale!r}")
    return float(scale)


def check_index(index: TileIndex, q: torch.Tensor, k: torch.Tensor) -> TileIndex:
    """The index on q's device as int32, after checking it was made for these sequences (ValueError)."""
    if not isinstance(index, TileIndex):
        raise TypeError(f"index must be a sparse_attn.TileIndex; got {type(index).__name__}")
    if (index.q_len, index.kv_len) != (q.shape[2], k.shape[2]):
        raise ValueError(f"the index is for {index.q_len} query / {index.kv_len} key tokens; the inputs have "
                         f"{q.shape[2]} / {k.shape[2]}")
    index.check_batch(q.shape[0], q.shape[1])
    index = index.to(q.device, torch.int32)
    if index.device.type == "cpu":  # the CPU kernels read memory through the ids
        index.validate()
    return index


def forward_only(kernel: str, *tensors: torch.Tensor) -> None:
    """The kernels have no backward: refuse inputs that need gradients (NotImplementedError)."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        raise NotImplementedError(
            f"the {kernel} kernel is forward-only; run under torch.no_grad() / torch.inference_mode(), "
            "or pass backend='torch' (differentiable, slower)"
        )


def poison_nonfinite(q: torch.Tensor, k: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                     index: TileIndex | None) -> tuple[torch.Tensor, torch.Tensor]:
    """SDPA's answer to non-finite inputs, for the CPU paths, whose online softmax would read a NaN score
    as no weight and return a plausible row: a row with a non-finite query, or whose query tile attends a
    key tile holding a non-finite key (with `index` None: any key, as PISA's approximation reads every
    tile), gets NaN output and LSE. One isfinite pass over q and k when everything is finite."""
    bad_rows = ~torch.isfinite(q).all(dim=-1)  # [B, H, Sq]
    bad_keys = ~torch.isfinite(k).all(dim=-1)  # [B, H, Skv]
    if not bool(bad_rows.any()) and not bool(bad_keys.any()):
        return out, lse
    B, H, Sq, _ = q.shape
    if index is None:
        bad_rows = bad_rows | bad_keys.any(dim=-1, keepdim=True)
    else:
        nk, tile = index.num_kv_tiles, index.kv_tile
        bad_tiles = F.pad(bad_keys, (0, nk * tile - bad_keys.shape[-1])).view(B, H, nk, tile).any(dim=-1)
        index = index.expand(B, H)
        ids = index.indices.long().clamp(0, nk - 1)
        listed = torch.arange(ids.shape[-1], device=ids.device) < index.counts.long()[..., None]
        hit = (bad_tiles.gather(2, ids.flatten(2)).view_as(ids) & listed).any(dim=-1)  # [B, H, Nq]
        bad_rows = bad_rows | hit.repeat_interleave(index.q_tile, dim=2)[:, :, :Sq]
    return out.masked_fill(bad_rows[..., None], float("nan")), lse.masked_fill(bad_rows, float("nan"))


# An opaque call under torch.compile: dynamo breaks the graph here instead of tracing the dispatch.
@torch.compiler.disable
def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: TileIndex,
    scale: float | None = None,
    return_lse: bool = False,
    *,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of q over the key tiles each query tile lists in `index`.

    q [B, H, Sq, D], k and v [B, H, Skv, D] (fp32/fp16/bf16, any Sq and Skv); `index` a `TileIndex` for Sq
    and Skv (its batch/head dims may be 1 to broadcast). `scale` defaults to 1/sqrt(D). Returns out
    [B, H, Sq, D] in q's dtype, and with `return_lse` also the row log-sum-exp [B, H, Sq] in fp32 (natural
    log of sum(exp(scale * q.k)) over the selected keys; -inf for rows with none). `backend`: "auto"
    (default), "triton", "cpu-kernel" or "torch"; an explicit one that cannot run raises RuntimeError.
    The path taken is recorded (`paths.capture()`).
    """
    with torch.profiler.record_function("accel::attention.block_sparse"):
        check_qkv(q, k, v)
        index = check_index(index, q, k)
        B, H, Sq, D = q.shape
        scale = check_scale(scale, D)
        path = choose_path(q, backend)
        if path.kernel != Kernel.TORCH:
            forward_only(path.kernel, q, k, v)
        if Sq == 0 or k.shape[2] == 0 or index.indices.shape[-1] == 0:  # every row has no keys
            out, lse = torch.zeros_like(q), torch.full((B, H, Sq), float("-inf"), dtype=torch.float32, device=q.device)
        elif path.kernel == Kernel.TRITON:
            path, (out, lse) = _run_triton(path, backend, q, k, v, index, scale)
        else:  # the CPU paths read the index as dense [B, H, ...] arrays
            out, lse = PATHS[Kernel(path.kernel)].attention()(q, k, v, index.expand(B, H), scale)
            out, lse = poison_nonfinite(q, k, out, lse, index)
        paths.engine.record(path)
    return (out, lse) if return_lse else out


def block_sparse_attention_bshd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: TileIndex,
    scale: float | None = None,
    return_lse: bool = False,
    *,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The same for diffusers' [B, S, H, D] layout (what `dispatch_attention_fn` passes). The index is
    unchanged; out is [B, Sq, H, D] and the log-sum-exp [B, Sq, H]."""
    out, lse = block_sparse_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), index, scale,
                                      return_lse=True, backend=backend)
    out, lse = out.transpose(1, 2), lse.transpose(1, 2)
    return (out, lse) if return_lse else out
