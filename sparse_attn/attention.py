"""`block_sparse_attention`: the entry point, which checks its inputs and picks the implementation.

Paths (sparse_attn/paths.py): the Triton kernel on CUDA, the C++ kernel on CPU, plain PyTorch ops where
neither can run (logged as a warning). In "auto", a Triton kernel that does not build for the inputs (a
compile or resource error at its first launch) is such a case too: the reason is recorded and logged.
All compute softmax in fp32; the chosen path and its precision are recorded (`last_path()`), and the
call runs inside the profiler range "accel::attention.block_sparse", which the project's bench counts
as attention time.

Semantics. Query row i of query block `qb` attends exactly the real key tokens of the key blocks
`kv_indices[b, h, qb, :kv_num_blocks[b, h, qb]]`: softmax(scale * q k^T) over those keys, times v. A row
whose query block lists no key block has no keys at all: its output is 0 and its log-sum-exp is -inf
(`merge_attention` then gives it no weight).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import paths
from .blocks import BlockSize, block_sizes, check_blocks, num_blocks

_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
BACKENDS = ("auto", *paths.KERNELS)


def _upcast_precision(dtype: torch.dtype) -> str:
    return "fp32" if dtype == torch.float32 else f"{_DTYPES[dtype]} inputs, fp32 compute"


def choose_path(q: torch.Tensor, backend: str) -> paths.AttentionPath:
    """The path for these inputs. An explicitly requested backend that cannot run raises; "auto" falls
    back to the PyTorch path only with a recorded reason (logged as a warning)."""
    device = q.device.type
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    if backend == "auto":
        if device == "cuda":
            backend = paths.TRITON
        elif device == "cpu":
            backend = paths.CPU_KERNEL
        else:
            return paths.AttentionPath(paths.TORCH, _upcast_precision(q.dtype), device, f"no kernel for {device}")
        try:
            return choose_path(q, backend)
        except RuntimeError as exc:
            return paths.AttentionPath(paths.TORCH, _upcast_precision(q.dtype), device, str(exc))
    if backend == paths.TRITON:
        try:
            from . import triton_common
        except ImportError as exc:
            raise RuntimeError(f"triton is not importable: {exc}") from exc
        triton_common.check_inputs(q, "block-sparse")
        return paths.AttentionPath(paths.TRITON, triton_common.precision(q.dtype), device)
    if backend == paths.CPU_KERNEL:
        from . import cpu_kernel

        if device != "cpu":
            raise RuntimeError(f"the C++ kernel runs on CPU tensors, got {device}")
        if not cpu_kernel.available():
            raise RuntimeError(f"the CPU kernel is unavailable: {cpu_kernel.build_info().get('error')}")
        return paths.AttentionPath(paths.CPU_KERNEL, _upcast_precision(q.dtype), device)
    return paths.AttentionPath(paths.TORCH, _upcast_precision(q.dtype), device)


def _implementation(kernel: str) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """attention(q, k, v, kv_num_blocks, kv_indices, q_block, kv_block, scale) -> (out, lse) of a path;
    imported on demand (importing triton_kernel decorates the Triton kernel)."""
    if kernel == paths.TRITON:
        from .triton_kernel import attention
    elif kernel == paths.CPU_KERNEL:
        from .cpu_kernel import attention
    else:
        from .torch_path import attention
    return attention


def _run_triton(path: paths.AttentionPath, backend: str, args: tuple) -> tuple[paths.AttentionPath, tuple]:
    """The Triton kernel, or in "auto", when it cannot be built for these inputs, the PyTorch path with
    the reason recorded (triton_common.run_or_fall_back)."""
    from . import triton_common, triton_kernel

    q, _, _, num, idx, q_block, kv_block, _ = args
    key = ("block-sparse", q.dtype, q.shape[-1], q_block, kv_block, triton_common.dot_precision(q.dtype), q.device)
    B, H, nq = q.shape[0], q.shape[1], num.shape[-1]

    def fallback(reason: str) -> tuple[paths.AttentionPath, tuple]:
        dense_index = (num.expand(B, H, nq).contiguous(), idx.expand(B, H, nq, idx.shape[-1]).contiguous())
        out = _implementation(paths.TORCH)(*args[:3], *dense_index, *args[5:])
        return paths.AttentionPath(paths.TORCH, _upcast_precision(q.dtype), path.device, reason), out

    return triton_common.run_or_fall_back(key, backend, lambda: (path, triton_kernel.attention(*args)), fallback)


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
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


# An opaque call under torch.compile: dynamo breaks the graph here instead of tracing the dispatch.
@torch.compiler.disable
def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_num_blocks: torch.Tensor,
    kv_indices: torch.Tensor,
    block_size: BlockSize = 64,
    scale: float | None = None,
    return_lse: bool = False,
    *,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of q over the key blocks each query block selects.

    q [B, H, Sq, D], k and v [B, H, Skv, D] (fp32/fp16/bf16, any Sq and Skv); the index as in
    sparse_attn/blocks.py, batch/head dims may be 1 to broadcast. `block_size`: one size, or
    (query block, key block), powers of two >= 16. `scale` defaults to 1/sqrt(D). Returns out
    [B, H, Sq, D] in q's dtype, and with `return_lse` also the row log-sum-exp [B, H, Sq] in fp32
    (natural log of sum(exp(scale * q.k)) over the selected keys; -inf for rows with none).
    `backend`: "auto" (default), "triton", "cpu-kernel" or "torch-gather". On CPU the index values
    are checked; on GPU only its shape (a value check would synchronise), so build it with the helpers
    of sparse_attn.selection or validate it once with `check_blocks`.
    """
    with torch.profiler.record_function("accel::attention.block_sparse"):
        _check_qkv(q, k, v)
        q_block, kv_block = block_sizes(block_size)
        B, H, Sq, D = q.shape
        nq, nk = num_blocks(Sq, q_block), num_blocks(k.shape[2], kv_block)
        # Reading the values costs a device sync on GPU; on CPU it guards the C++ kernel's memory reads.
        check_blocks(kv_num_blocks, kv_indices, nq, nk, B, H, values=q.device.type == "cpu")
        kv_num_blocks = kv_num_blocks.to(device=q.device, dtype=torch.int32)
        kv_indices = kv_indices.to(device=q.device, dtype=torch.int32)
        scale = D**-0.5 if scale is None else float(scale)
        path = choose_path(q, backend)
        if path.kernel != paths.TORCH and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
            raise NotImplementedError(
                f"the {path.kernel} kernel is forward-only; run under torch.no_grad() / torch.inference_mode(), "
                "or pass backend='torch-gather' (differentiable, slower)"
            )
        if Sq == 0 or k.shape[2] == 0:  # nothing to compute: every row has no keys
            out = torch.zeros_like(q)
            lse = torch.full((B, H, Sq), float("-inf"), device=q.device)
            paths.record(path)
            return (out, lse) if return_lse else out
        if path.kernel != paths.TRITON:  # the CPU paths read the index as dense [B, H, ...] arrays
            kv_num_blocks = kv_num_blocks.expand(B, H, nq).contiguous()
            kv_indices = kv_indices.expand(B, H, nq, kv_indices.shape[-1]).contiguous()
        args = (q, k, v, kv_num_blocks, kv_indices, q_block, kv_block, scale)
        if path.kernel == paths.TRITON:
            path, (out, lse) = _run_triton(path, backend, args)
        else:
            out, lse = _implementation(path.kernel)(*args)
        paths.record(path)
    return (out, lse) if return_lse else out


def block_sparse_attention_bshd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_num_blocks: torch.Tensor,
    kv_indices: torch.Tensor,
    block_size: BlockSize = 64,
    scale: float | None = None,
    return_lse: bool = False,
    *,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The same for diffusers' [B, S, H, D] layout (what `dispatch_attention_fn` passes). The index is
    unchanged ([B, H, Nq, ...]); out is [B, Sq, H, D] and the log-sum-exp [B, Sq, H]."""
    result = block_sparse_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), kv_num_blocks, kv_indices,
        block_size, scale, return_lse=True, backend=backend,
    )
    out, lse = result[0].transpose(1, 2), result[1].transpose(1, 2)
    return (out, lse) if return_lse else out
