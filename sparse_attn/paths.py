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


class PathLog:
    """The last path one kind of call took, in this process; each (kernel, precision, device, reason) is
    logged once, fallbacks (a `note`: the reason) as warnings. The engine and the search each keep one."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.last: AttentionPath | None = None
        self._logged: set[tuple[str, str, str, str]] = set()
        self._lock = threading.Lock()

    def record(self, path: AttentionPath) -> None:
        with self._lock:
            self.last = path
            key = (path.kernel, path.precision, path.device, path.note)
            if key in self._logged:
                return
            self._logged.add(key)
        if path.note:
            logger.warning("accel: %s falls back to %s", self.what, path)
        else:
            logger.info("accel: %s runs on %s", self.what, path)


_engine = PathLog("block-sparse attention")
_logged = _engine._logged  # the engine's already-logged paths (tests clear it)


def record(path: AttentionPath) -> None:
    """Remember `path` as the last one taken; log it the first time it is seen."""
    _engine.record(path)


def last_path() -> AttentionPath | None:
    """The path of the most recent `block_sparse_attention` call in this process (None before any)."""
    return _engine.last
