"""Which implementation computed the last block-sparse attention, and at what precision.

Every call records its path here, and the first use of each (kernel, precision) is logged on the
"accel" logger, so a run can always tell whether it got the fast kernel or a fallback: fallbacks are
logged as warnings, with the reason.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

logger = logging.getLogger("accel")

# The implementations, fastest first on their device.
TRITON = "triton"  # GPU (or CPU under TRITON_INTERPRET=1): sparse_attn/triton_kernel.py
CPU_KERNEL = "cpu-kernel"  # CPU: the C++ kernel, sparse_attn/cpu_kernel.py
TORCH = "torch-gather"  # any device, plain PyTorch ops: sparse_attn/torch_path.py
KERNELS = (TRITON, CPU_KERNEL, TORCH)


@dataclass(frozen=True)
class AttentionPath:
    kernel: str  # one of KERNELS
    precision: str  # e.g. "fp32", "bf16 inputs, fp32 compute", "bf16 dot, fp32 accumulate"
    device: str  # "cpu", "cuda", ...
    note: str = ""  # why a fallback was taken

    def __str__(self) -> str:
        text = f"{self.kernel} ({self.precision}) on {self.device}"
        return f"{text}: {self.note}" if self.note else text


_lock = threading.Lock()
_last: AttentionPath | None = None
_logged: set[tuple[str, str, str]] = set()


def record(path: AttentionPath) -> None:
    """Remember `path` as the last one taken; log it the first time it is seen."""
    global _last
    with _lock:
        _last = path
        key = (path.kernel, path.precision, path.device)
        if key in _logged:
            return
        _logged.add(key)
    if path.note:
        logger.warning("accel: block-sparse attention falls back to %s", path)
    else:
        logger.info("accel: block-sparse attention runs on %s", path)


def last_path() -> AttentionPath | None:
    """The path of the most recent `block_sparse_attention` call in this process (None before any)."""
    return _last
