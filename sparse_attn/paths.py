"""Which implementation computed a sparse-attention call, and at what precision.

The implementations ("kernels") are named by one enum, `Kernel`; each path module keys its choice on it.
Every call records the `AttentionPath` it took: into the `capture()` lists open around it (a method
wraps its attention calls in one, so each call's path is read per call, never from a global), and on
the "accel" logger the first time each (kernel, precision, device, reason) is seen, fallbacks (a `note`:
the reason) as warnings. So a run can always tell whether it got the fast kernel or a fallback.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from enum import Enum

logger = logging.getLogger("accel")


class Kernel(str, Enum):
    """The implementations, fastest first on their device."""

    TRITON = "triton"  # GPU (or CPU under TRITON_INTERPRET=1): triton_kernel.py, pisa_triton.py, search_triton.py
    CPU = "cpu-kernel"  # CPU: the C++ kernel, cpu_kernel.py
    TORCH = "torch"  # any device, plain PyTorch ops: torch_path.py, pisa.py, search.py

    def __str__(self) -> str:
        return self.value


BACKENDS = ("auto", *(k.value for k in Kernel))


def check_backend(backend: str) -> Kernel | None:
    """The Kernel a `backend` option names (None for "auto"); ValueError naming the allowed values."""
    if backend == "auto":
        return None
    try:
        return Kernel(backend)
    except ValueError:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}") from None


@dataclass(frozen=True)
class AttentionPath:
    kernel: str  # a Kernel, or "pisa+<Kernel>" for PISA (the kernel of its exact part)
    precision: str  # e.g. "fp32", "bf16 inputs, fp32 compute", "bf16 dot, fp32 accumulate"
    device: str  # "cpu", "cuda", ...
    note: str = ""  # why a fallback was taken

    def __str__(self) -> str:
        text = f"{self.kernel} ({self.precision}) on {self.device}"
        return f"{text}: {self.note}" if self.note else text


_captures: ContextVar[tuple[list[AttentionPath], ...]] = ContextVar("accel_path_captures", default=())


@contextlib.contextmanager
def capture() -> Iterator[list[AttentionPath]]:
    """Collect the paths of the calls made inside the block (this thread/context), in order."""
    seen: list[AttentionPath] = []
    token = _captures.set((*_captures.get(), seen))
    try:
        yield seen
    finally:
        _captures.reset(token)


class PathLog:
    """Logs each (kernel, precision, device, reason) of one kind of call once, fallbacks as warnings, and
    hands every path to the open captures. The engine and the search each keep one."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._logged: set[tuple[str, str, str, str]] = set()
        self._lock = threading.Lock()

    def record(self, path: AttentionPath) -> None:
        for seen in _captures.get():
            seen.append(path)
        with self._lock:
            key = (str(path.kernel), path.precision, path.device, path.note)
            if key in self._logged:
                return
            self._logged.add(key)
        if path.note:
            logger.warning("accel: %s falls back to %s", self.what, path)
        else:
            logger.info("accel: %s runs on %s", self.what, path)


engine = PathLog("block-sparse attention")
search = PathLog("tile search")
