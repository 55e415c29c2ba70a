"""The CPU kernel at every x86 instruction-set level it is written for.

csrc/block_sparse_attn.cpp sizes its vectors and register tiles by the target (16 floats with AVX-512,
8 with AVX2, 4 with SSE or NEON), but a machine only ever builds its own (-march=native). Here the source
is built for each level: the levels this CPU can run must give the native build's results (which the
other tests hold to float64 references) for all three entry points; the others must at least compile.
"""

from __future__ import annotations

import ctypes
import platform
import subprocess
from pathlib import Path

import pytest
import torch

import accel.sparse_attn as sa
from accel.sparse_attn import cpu_kernel, pisa

# (gcc -march level, the /proc/cpuinfo flag needed to run it, the vector width the source picks)
LEVELS = [("x86-64", "sse2", 4), ("x86-64-v3", "avx2", 8), ("x86-64-v4", "avx512f", 16)]

pytestmark = pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64") or cpu_kernel.load() is None,
    reason="the levels are x86's; needs the native kernel as the reference",
)


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":")[1].split()}


def _build(level: str, out: Path) -> Path:
    lib = out / f"kernel-{level}.so"
    cmd = [cpu_kernel._compiler(), *cpu_kernel.FLAGS, f"-march={level}", "-fopenmp", str(cpu_kernel.SOURCE),
           "-o", str(lib)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return lib


def _results():
    g = torch.Generator().manual_seed(0)
    results = []
    for Sq, Skv, D, tile in ((256, 256, 64, 64), (200, 137, 40, 32), (100, 300, 24, (32, 16))):
        q, k, v = (torch.randn(2, 2, s, D, generator=g) for s in (Sq, Skv, Skv))
        index = sa.random_tiles(2, 2, Sq, Skv, tile, 0.4, generator=g)
        out, lse = sa.block_sparse_attention(q, k, v, index, return_lse=True, backend="cpu-kernel")
        routed = pisa.route(q, k, v, 0.3, tile)
        approx = sa.pisa_attention(q, k, v, order="hybrid", index=routed, backend="cpu-kernel")
        sums = cpu_kernel.tile_sums(q, k, lse, index.q_tile, index.kv_tile, D**-0.5)
        results += [out, lse, approx, sums]
    return results


@pytest.mark.parametrize("level,flag,width", LEVELS, ids=[lv[0] for lv in LEVELS])
def test_every_instruction_set_level_gives_the_native_results(level, flag, width, tmp_path, monkeypatch):
    lib = _build(level, tmp_path)
    if flag not in _cpu_flags():
        pytest.skip(f"built for {level} ({width}-float vectors); this CPU cannot run it")
    expected = _results()
    monkeypatch.setattr(cpu_kernel, "_library", cpu_kernel.bind(ctypes.CDLL(str(lib))))
    for got, want in zip(_results(), expected, strict=True):
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)
