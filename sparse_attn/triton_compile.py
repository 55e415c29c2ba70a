"""Ahead-of-time compilation of the Triton kernels for a GPU target, on any machine (no GPU needed).

`compile_for(kernel, args, constexprs, config)` runs Triton's real compiler (frontend, TTGIR passes,
LLVM, ptxas) for `target` (default Hopper, sm_90) on exactly the specialization the JIT would build for
those arguments: the JIT's own binder decides which integers are constants, which pointers and strides
are 16-divisible. Meta tensors stand in for the inputs, so Wan-sized shapes cost nothing. The result
reports what a launch would meet: compile errors, shared memory, registers and spills (from the
`cuobjdump` that ships with Triton).

tests/sparse_attn/test_triton_compile.py compiles every kernel this way over every (dtype, head dim, tile size,
config) the API accepts; `accel gpu-check` repeats a subset on a real GPU.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget

from .tiles import TILE_SIZES

HOPPER = GPUTarget("cuda", 90, 32)


@dataclass(frozen=True)
class CompileReport:
    """What the compiler gave for one specialization: shared memory (bytes), registers per thread,
    bytes spilled per thread (stack and local memory), and the error text if it failed."""

    shared: int = 0
    registers: int = 0
    spill_bytes: int = 0
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


def _cuobjdump() -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def resource_usage(cubin: bytes) -> tuple[int, int]:
    """(registers, spilled bytes) per thread of the one kernel in `cubin`, from `cuobjdump -res-usage`:
    the spill is the stack frame plus local memory (ptxas puts spilled registers on the stack)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([_cuobjdump(), "-res-usage", f.name], capture_output=True, text=True,
                              check=True).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", text)
    if found is None:
        raise RuntimeError(f"no resource line in cuobjdump's output: {text[-500:]}")
    registers, stack, local = (int(g) for g in found.groups())
    return registers, stack + local


def compile_for(
    kernel: triton.runtime.JITFunction,
    args: tuple,
    constexprs: dict,
    config: triton.Config,
    target: GPUTarget = HOPPER,
    resources: bool = True,
) -> CompileReport:
    """Compile `kernel` (the plain @triton.jit function, not its autotuner) for `target` as a launch with
    `args` (positional: tensors, meta tensors included, ints, floats) and `constexprs` under `config`
    would. `resources` also reads registers and spills from the cubin (about 0.1 s more)."""
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    kwargs = {**constexprs, **config.all_kwargs()}
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constants, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    try:
        compiled = triton.compile(ASTSource(kernel, signature, constants, attrs), target=target,
                                  options=options.__dict__)
    except Exception as exc:  # noqa: BLE001 (the report carries any compiler failure)
        return CompileReport(error=f"{type(exc).__name__}: {str(exc)[-2000:]}")
    registers, spill = resource_usage(compiled.asm["cubin"]) if resources else (0, 0)
    return CompileReport(shared=int(compiled.metadata.shared), registers=registers, spill_bytes=spill)


# -- every specialization the API can launch ------------------------------------------------------------

# (input dtype, tl.dot precision for fp32 inputs): what `set_fp32_precision` and torch's TF32 switch allow
PRECISIONS: tuple[tuple[torch.dtype, str], ...] = (
    (torch.float16, "tf32"), (torch.bfloat16, "tf32"),
    (torch.float32, "tf32"), (torch.float32, "tf32x3"), (torch.float32, "ieee"),
)
HEAD_DIM_PADS = (16, 32, 64, 128, 256)  # head dims are tiled by these (triton_common.head_dim_pad)
KERNELS = ("block-sparse", "pisa-hybrid", "pisa-zeroth", "search-fused", "search-refresh")
WAN_14B_720P = (2, 40, 75_600)  # batch, heads, tokens of a Wan2.1-14B 720p call: real strides and sizes


@dataclass(frozen=True)
class Specialization:
    """One kernel build: which kernel, input dtype and fp32 dot precision, head dim, tile sizes and tile
    config. `compile()` builds it for sm_90 on meta tensors shaped like a Wan-14B 720p call ([B, S, H, D]
    storage seen as [B, H, S, D], as diffusers passes it)."""

    kernel: str
    dtype: torch.dtype
    dot: str
    head_dim: int
    q_tile: int
    kv_tile: int
    config: triton.Config

    @property
    def tiles(self) -> tuple[int, ...]:
        c = self.config
        bm = c.kwargs.get("BLOCK_M", self.q_tile)
        return bm, c.kwargs["BLOCK_N"], c.kwargs.get("BLOCK_G", 0), c.num_warps, c.num_stages

    @property
    def key(self) -> tuple:
        """What the compiled code depends on (tile sizes only through tile counts, which decide whether
        a tile loop divides): builds with equal keys are the same build up to integer constants."""
        bm, bn = self.tiles[:2]
        return (self.kernel, self.dtype, self.dot, self.head_dim, self.tiles, self.q_tile > bm, self.kv_tile > bn)

    @property
    def shared_estimate(self) -> int:
        """The kernel's own estimate of this build's shared memory (what its configs are fitted by)."""
        dim_pad = max(16, triton.next_power_of_2(self.head_dim))
        return _module(self.kernel).shared_memory(self.config, self.q_tile, dim_pad, self.dtype, self.dot)

    def __str__(self) -> str:
        name = str(self.dtype).removeprefix("torch.")
        dot = f"/{self.dot}" if self.dtype == torch.float32 else ""
        bm, bn, bg, w, s = self.tiles
        g = f" G{bg}" if bg else ""
        return (f"{self.kernel} {name}{dot} D{self.head_dim} blocks {self.q_tile}x{self.kv_tile} "
                f"tile {bm}x{bn}{g} w{w} s{s}")

    def compile(self, target: GPUTarget = HOPPER, resources: bool = True) -> CompileReport:
        kernel, args, constexprs = self._launch()
        constexprs = {k: v for k, v in constexprs.items() if k not in self.config.kwargs}
        return compile_for(kernel, args, constexprs, self.config, target, resources)

    def _launch(self) -> tuple[triton.runtime.JITFunction, tuple, dict]:
        from . import pisa_triton, search_triton, triton_kernel

        B, H, S = WAN_14B_720P
        D = self.head_dim
        q = torch.empty(B, S, H, D, dtype=self.dtype, device="meta").transpose(1, 2)
        lse = torch.empty(B, H, S, device="meta")
        nq, nk = -(-S // self.q_tile), -(-S // self.kv_tile)
        scale = D**-0.5
        if self.kernel == "block-sparse":
            num = torch.empty(B, H, nq, dtype=torch.int32, device="meta")
            idx = torch.empty(B, H, nq, nk, dtype=torch.int32, device="meta")
            args, constexprs = triton_kernel.kernel_args(q, q, q, torch.empty_like(q), lse, num, idx, self.q_tile,
                                                         self.kv_tile, scale)
            constexprs["DOT"] = self.dot
            return triton_kernel._block_sparse_fwd, args, constexprs
        if self.kernel.startswith("pisa"):
            num = torch.empty(1, 1, nq, dtype=torch.int32, device="meta").expand(B, H, nq)
            idx = torch.empty(1, 1, nq, nk, dtype=torch.int32, device="meta").expand(B, H, nq, nk)
            stat = torch.empty(B, H, nk, D, device="meta")
            first = torch.empty(B, H, S, D, device="meta")
            args, constexprs = pisa_triton.kernel_args(
                q, q, q, torch.empty_like(q), lse, num, idx, torch.empty(B, H, nq, nk, dtype=torch.int8, device="meta"),
                stat, stat, torch.empty(nk, device="meta"), first, self.q_tile, self.kv_tile, scale,
                self.kernel == "pisa-hybrid")
            constexprs["DOT"], constexprs["POOLED_DOT"] = self.dot, pisa_triton.pooled_dot(self.dtype, self.dot)
            return pisa_triton._pisa_fwd, args, constexprs
        sums = torch.empty(B, H, nq, nk, device="meta")
        args, constexprs = search_triton.kernel_args(q, q, q, torch.empty_like(q), lse, sums, self.q_tile,
                                                     self.kv_tile, scale, self.kernel == "search-fused")
        constexprs["DOT"] = self.dot
        return search_triton._search_fwd, args, constexprs


def _module(kernel: str):  # noqa: ANN202
    from . import pisa_triton, search_triton, triton_kernel

    return {"block": triton_kernel, "pisa": pisa_triton, "search": search_triton}[kernel.split("-")[0]]


def launch_configs(kernel: str, q_tile: int, kv_tile: int, head_dim: int, dtype: torch.dtype,
                   dot: str) -> list[triton.Config]:
    """The configs a launch of `kernel` may run for these inputs (what its autotuner or tile rule gives)."""
    return _module(kernel).launch_configs(q_tile, kv_tile, max(16, triton.next_power_of_2(head_dim)), dtype, dot)


def specializations(head_dims: tuple[int, ...] = HEAD_DIM_PADS) -> list[Specialization]:
    """Every distinct build the API can launch at these head dims (one per `Specialization.key`, with the
    tile sizes of its first occurrence), in a stable order."""
    seen: dict[tuple, Specialization] = {}
    for kernel in KERNELS:
        for dtype, dot in PRECISIONS:
            for head_dim in head_dims:
                for q_tile in TILE_SIZES:
                    for kv_tile in TILE_SIZES:
                        for config in launch_configs(kernel, q_tile, kv_tile, head_dim, dtype, dot):
                            spec = Specialization(kernel, dtype, dot, head_dim, q_tile, kv_tile, config)
                            seen.setdefault(spec.key, spec)
    return list(seen.values())


def covering(specs: list[Specialization]) -> list[Specialization]:
    """A subset that exercises every axis in about two minutes on 2 cores: per (kernel, dtype, precision,
    head dim) the build with the most shared memory (the limit's worst case; every compiled build also
    checks the estimate that prunes the rest); per (kernel, dtype, precision) at head dim 64 the one with
    the smallest tiles (the non-wgmma MMA path); and per kernel, at fp16 and head dim 64, one build of each
    loop form (several programs per query tile or one, several steps per key tile or one)."""
    chosen: dict[tuple, Specialization] = {}
    groups: dict[tuple, list[Specialization]] = {}
    for s in specs:
        groups.setdefault(("most shared", s.kernel, s.dtype, s.dot, s.head_dim), []).append(s)
        if s.head_dim == 64:
            groups.setdefault(("smallest tiles", s.kernel, s.dtype, s.dot), []).append(s)
            if s.dtype == torch.float16:
                groups.setdefault(("loop form", s.kernel, s.key[-2:]), []).append(s)
    for name, group in groups.items():
        if name[0] == "smallest tiles":
            pick = min(group, key=lambda s: (s.tiles[0] * s.tiles[1], -s.tiles[3]))
        else:
            pick = max(group, key=lambda s: s.shared_estimate)
        chosen[pick.key] = pick
    return list(chosen.values())


def _compile_one(spec: Specialization) -> CompileReport:
    return spec.compile()


def check(specs: list[Specialization], workers: int | None = None) -> list[tuple[Specialization, CompileReport]]:
    """Compile every spec for sm_90 in `workers` processes (default: the CPU count, at most 4)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    workers = workers or min(4, os.cpu_count() or 1)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(zip(specs, pool.map(_compile_one, specs, chunksize=4), strict=True))


def problems(results: list[tuple[Specialization, CompileReport]], limit: int | None = None) -> list[str]:
    """What would fail at launch, or break the estimate the configs are pruned by: one line each."""
    from .triton_common import SHARED_MEMORY_LIMIT

    limit = SHARED_MEMORY_LIMIT if limit is None else limit
    out = []
    for spec, r in results:
        if not r.ok:
            out.append(f"{spec}: {r.error}")
        elif r.shared > limit:
            out.append(f"{spec}: {r.shared} bytes of shared memory, over the limit of {limit}")
        elif r.shared > spec.shared_estimate:
            out.append(f"{spec}: {r.shared} bytes of shared memory, over its estimate of {spec.shared_estimate}")
    return out


def report(results: list[tuple[Specialization, CompileReport]]) -> str:
    """A markdown table: every build with its shared memory, registers and spills."""
    lines = ["| build | shared (B) | estimate (B) | registers | spilled (B/thread) |", "|---|---:|---:|---:|---:|"]
    for spec, r in results:
        if r.ok:
            lines.append(f"| {spec} | {r.shared} | {spec.shared_estimate} | {r.registers} | {r.spill_bytes} |")
        else:
            lines.append(f"| {spec} | error: {r.error.splitlines()[0][:80] if r.error else ''} | | | |")
    return "\n".join(lines)


def summary(results: list[tuple[Specialization, CompileReport]]) -> str:
    """One markdown row per (kernel, dtype, precision): builds, the most shared memory and registers, and
    how many builds spill (with the largest spill), over every head dim, tile size and config built."""
    groups: dict[tuple[str, str], list[CompileReport]] = {}
    for spec, r in results:
        dtype = str(spec.dtype).removeprefix("torch.") + (f" / {spec.dot}" if spec.dtype == torch.float32 else "")
        groups.setdefault((spec.kernel, dtype), []).append(r)
    lines = ["| kernel | inputs / fp32 dot | builds | errors | most shared (B) | most registers | builds that spill "
             "| largest spill (B/thread) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for (kernel, dtype), reports in groups.items():
        ok = [r for r in reports if r.ok]
        lines.append(
            f"| {kernel} | {dtype} | {len(reports)} | {len(reports) - len(ok)} | {max((r.shared for r in ok), default=0)} "
            f"| {max((r.registers for r in ok), default=0)} | {sum(1 for r in ok if r.spill_bytes)} "
            f"| {max((r.spill_bytes for r in ok), default=0)} |")
    return "\n".join(lines)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1; got {value}")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compile-check", help="compile the Triton kernels for sm_90 on this machine (no GPU needed)")
    p.add_argument("--all", action="store_true", help="every distinct build (about half an hour on 2 cores); "
                   "default: the covering subset the tests build")
    p.add_argument("--workers", type=_positive_int, default=None, help="compiler processes (default: CPUs, at most 4)")
    p.add_argument("--out", default=None, help="also write the markdown table of every build here")
    p.add_argument("--doc", default=None, help="also write the summary into this markdown file (docs/benchmarks.md)")
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    from accel.bench.report import check_outputs

    check_outputs("compile-check", doc=args.doc, files={"--out": args.out})  # before the builds, not after them
    specs = specializations()
    if not args.all:
        specs = covering(specs)
    results = check(specs, args.workers)
    table = report(results)
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w") as f:
            f.write(table + "\n")
    found = problems(results)
    spilling = sum(1 for _, r in results if r.spill_bytes)
    print(f"{len(results)} builds for sm_90: {len(found)} problems, {spilling} spill registers")
    print("\n".join(found))
    if args.doc:
        import platform

        from accel.bench.report import update_doc

        command = "accel " + " ".join(getattr(args, "argv", ["compile-check"]))
        body = (f"### Triton kernels compiled for sm_90 on CPU (accel compile-check)\n\n`{command}`: target "
                f"{HOPPER.backend} sm_{HOPPER.arch}, Triton {triton.__version__}, compiled on {platform.machine()} "
                f"(no GPU). {len(results)} builds, {len(found)} problems (compile errors, or shared memory over "
                "232,448 bytes or over its estimate).\n\n" + summary(results))
        update_doc(Path(args.doc), "compile-check", body)
    return 1 if found else 0
