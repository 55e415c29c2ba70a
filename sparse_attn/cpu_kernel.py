"""The CPU path: our C++ kernel (csrc/block_sparse_attn.cpp), built once per machine and run on all cores.

Why C++ rather than PyTorch ops: per query tile the work is a few 64x64 tiles, too small for one
framework call each, and gathering the selected keys into a dense tensor first moves as many bytes as
the sparsity saves. Measured at 16k tokens on 2 cores the kernel beats both that gather + matmul path
and compiled FlexAttention (see `accel bench-attn`).

The kernel is compiled with the system C++ compiler on first use (about a second; `-march=native`) and
cached under `~/.cache/accel` (or `$ACCEL_CACHE_DIR`), keyed by the source, the compiler and the CPU.
It is called through ctypes (which releases the GIL) and spreads its tasks over OpenMP threads: built with
`-fopenmp`, the library joins the libgomp runtime PyTorch has already loaded, so it runs on PyTorch's
own worker threads (`torch.get_num_threads()`) instead of fighting them for the cores. Inputs of any
float dtype are computed in fp32.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .tiles import TileIndex

logger = logging.getLogger("accel")

SOURCE = Path(__file__).parent / "csrc" / "block_sparse_attn.cpp"
FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=fast", "-fno-math-errno"]
LOG2E = math.log2(math.e)

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_build: dict[str, object] = {}  # what happened when the kernel was built or loaded (build_info())


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


def _cpu_id() -> str:
    """What -march=native depends on: the CPU model and its feature flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags", "Features"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def _cache_dir() -> Path:
    root = os.environ.get("ACCEL_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "accel"
    )
    return Path(root) / "sparse_attn"


def _compile(compiler: str, target: Path) -> list[str]:
    """Build into a temporary file, then rename (concurrent first calls never load a half-written
    file). Tries the best flags first; returns the ones that worked."""
    target.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    # some compilers or CPUs reject -march=native; some compilers lack OpenMP (then: one thread)
    for extra in (["-march=native", "-fopenmp"], ["-fopenmp"], ["-march=native"], []):
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        cmd = [compiler, *FLAGS, *extra, str(SOURCE), "-o", tmp]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode == 0:
                os.replace(tmp, target)
                target.with_suffix(".flags").write_text(" ".join(extra))
                return extra
            errors.append(f"$ {' '.join(cmd)}\n{done.stderr[-2000:]}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise RuntimeError("compiling the CPU kernel failed:\n" + "\n".join(errors))


def _target(compiler: str) -> Path:
    """The cached library for this source, compiler and CPU."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    parts = (SOURCE.read_text(), compiler, version, " ".join(FLAGS), platform.machine(), _cpu_id())
    key = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
    return _cache_dir() / f"block_sparse_attn-{key}.so"


def bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declare the kernel's C signatures on a loaded library (returned)."""
    for name, pointers, ints in (("accel_block_sparse_attention", 7, 9), ("accel_pisa_attention", 11, 10),
                                 ("accel_block_mass", 4, 8)):
        fn = getattr(lib, name)
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p] * pointers + [ctypes.c_int64] * ints
    return lib


def load() -> ctypes.CDLL | None:
    """The compiled kernel, building it on first use; None when that is impossible (the reason is in
    `build_info()["error"]`)."""
    global _library
    with _lock:
        if _library is not None or "error" in _build:
            return _library
        compiler = _compiler()
        if compiler is None:
            _build["error"] = "no C++ compiler found (set CXX or install g++/clang++)"
            return None
        start = time.perf_counter()
        try:
            target = _target(compiler)
            cached = target.exists() and target.with_suffix(".flags").exists()
            flags = target.with_suffix(".flags").read_text().split() if cached else _compile(compiler, target)
            lib = ctypes.CDLL(str(target))
        except (OSError, RuntimeError) as exc:
            _build["error"] = str(exc)
            return None
        bind(lib)
        _build.update(path=str(target), flags=" ".join(FLAGS + flags), cached=cached,
                      seconds=round(time.perf_counter() - start, 3))
        if not cached:
            logger.info("accel: compiled the CPU block-sparse attention kernel in %.1f s (%s)", _build["seconds"], target)
        if "-fopenmp" not in flags:
            logger.warning("accel: the CPU block-sparse attention kernel was built without OpenMP: one thread only")
        _library = lib
        return lib


def build_info() -> dict[str, object]:
    """{'path', 'flags', 'cached', 'seconds'} once loaded (seconds: the one-time compile when not
    cached), or {'error'}; empty before the first use."""
    return dict(_build)


def available() -> bool:
    return load() is not None


def _padded(x: torch.Tensor, rows: int, dim: int) -> torch.Tensor:
    """x [B, H, S, D] in fp32, zero-padded to [B, H, rows, dim]; no copy when nothing changes."""
    x = x.float()
    if x.shape[2] != rows or x.shape[3] != dim:
        x = F.pad(x, (0, dim - x.shape[3], 0, rows - x.shape[2]))
    return x.contiguous()


def _library_or_raise() -> ctypes.CDLL:
    lib = load()
    if lib is None:
        raise RuntimeError(f"the CPU kernel is unavailable: {_build.get('error')}")
    return lib


def _queries_and_key_tiles(
    q: torch.Tensor, k: torch.Tensor, q_tile: int, kv_tile: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The kernel's layouts: queries pre-scaled so that exp2 of the scores is the softmax numerator,
    [B, H, Nq*BQ, dim]; keys as transposed blocks [B, H, Nk, dim, BK]; dim = D rounded up to 16 (the
    kernel works on whole 16-float vectors); padding is zero."""
    B, H, Sq, D = q.shape
    nq, nk = -(-Sq // q_tile), -(-k.shape[2] // kv_tile)
    dim = -(-D // 16) * 16
    qs = torch.empty(B, H, nq * q_tile, dim, dtype=torch.float32, device="cpu")
    if nq * q_tile != Sq or dim != D:
        qs.zero_()
    torch.mul(q.float(), scale * LOG2E, out=qs[:, :, :Sq, :D])
    kp = _padded(k, nk * kv_tile, dim).view(B, H, nk, kv_tile, dim)
    kt = torch.empty(B, H, nk, dim, kv_tile, dtype=torch.float32, device="cpu")
    kt.permute(0, 1, 2, 4, 3).copy_(kp)
    return qs, kt, dim


def tile_sums(q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, q_tile: int, kv_tile: int,
               scale: float) -> torch.Tensor:
    """AdaSpa's tile mass before the division by the query tile sizes: [B, H, Nq, Nk] fp32, the sum over
    each (query tile, key tile) of exp(scale q.k - lse) (sparse_attn/search.py). Rows with lse = -inf
    count 0."""
    lib = _library_or_raise()
    B, H, Sq, D = q.shape
    Skv = k.shape[2]
    nq, nk = -(-Sq // q_tile), -(-Skv // kv_tile)
    qs, kt, dim = _queries_and_key_tiles(q, k, q_tile, kv_tile, scale)
    lse2 = torch.full((B, H, nq * q_tile), float("inf"), dtype=torch.float32, device="cpu")  # padding rows count 0
    lse2[:, :, :Sq] = torch.where(lse == float("-inf"), float("inf"), lse.float() * LOG2E)
    sums = torch.empty(B, H, nq, nk, dtype=torch.float32, device="cpu")
    threads = max(1, min(torch.get_num_threads(), B * H * nq))
    if lib.accel_block_mass(qs.data_ptr(), kt.data_ptr(), lse2.data_ptr(), sums.data_ptr(), B * H, nq, nk, q_tile,
                            kv_tile, dim, Skv, threads):
        raise MemoryError("the CPU kernel could not allocate its scratch memory")
    return sums


@dataclass(frozen=True)
class PisaTail:
    """PISA's approximated key tiles, for the kernel's tail step (fp32): the tile means
    `key_means` [B, H, Nk, D] and mean values `value_means` [B, H, Nk, D], each tile's real key count
    `counts` [Nk], and for the first order `first_order` = s q.h-bar per query row [B, H, Sq, D]."""

    key_means: torch.Tensor
    value_means: torch.Tensor
    counts: torch.Tensor
    first_order: torch.Tensor | None


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: TileIndex,
    scale: float,
    tail: PisaTail | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [B, H, Sq, D] in q's dtype, lse [B, H, Sq] fp32). q/k/v [B, H, S, D] on the CPU; the index
    is already broadcast to [B, H, ...], int32, contiguous and range-checked. With `tail`, every key tile
    a query tile does not select also enters its softmax through its mean (PISA, sparse_attn/pisa.py)."""
    lib = _library_or_raise()
    counts, indices, q_tile, kv_tile = index.counts, index.indices, index.q_tile, index.kv_tile
    B, H, Sq, D = q.shape
    Skv = k.shape[2]
    nq, nk = -(-Sq // q_tile), -(-Skv // kv_tile)
    qs, kt, dim = _queries_and_key_tiles(q, k, q_tile, kv_tile, scale)
    vp = _padded(v, nk * kv_tile, dim)

    out = torch.empty(B, H, nq * q_tile, dim, dtype=torch.float32, device="cpu")
    lse = torch.empty(B, H, nq * q_tile, dtype=torch.float32, device="cpu")
    tensors = (qs, kt, vp, counts, indices, out, lse)
    sizes = (B * H, nq, nk, indices.shape[-1], q_tile, kv_tile, dim, Skv)
    threads = max(1, min(torch.get_num_threads(), B * H * nq))
    if tail is None:
        failed = lib.accel_block_sparse_attention(*[t.data_ptr() for t in tensors], *sizes, threads)
    else:
        nkp = -(-nk // 64) * 64  # whole 64-column tiles
        kbt = torch.zeros(B, H, dim, nkp, dtype=torch.float32, device="cpu")
        kbt[:, :, :D, :nk] = tail.key_means.transpose(-1, -2)
        vbar = torch.zeros(B, H, nkp, dim, dtype=torch.float32, device="cpu")
        vbar[:, :, :nk, :D] = tail.value_means
        bias = torch.full((nkp,), float("-inf"), dtype=torch.float32, device="cpu")
        bias[:nk] = torch.log2(tail.counts.float())
        qh = None if tail.first_order is None else _padded(tail.first_order, nq * q_tile, dim)
        extra = (kbt, vbar, bias)
        failed = lib.accel_pisa_attention(
            *[t.data_ptr() for t in (*tensors, *extra)], None if qh is None else qh.data_ptr(), *sizes, nkp, threads
        )
    if failed:
        raise MemoryError("the CPU kernel could not allocate its scratch memory")
    out = out[:, :, :Sq, :D]
    return out.to(q.dtype) if q.dtype != torch.float32 else out, lse[:, :, :Sq]
