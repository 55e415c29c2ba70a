"""Ahead-of-time compilation of the Triton kernels for a GPU target, on any machine (no GPU needed).

`compile_for(kernel, args, constexprs, config)` runs Triton's real compiler (frontend, TTGIR passes,
LLVM, ptxas) for `target` (default Hopper, sm_90) on exactly the specialization the JIT would build for
those arguments: the JIT's own binder decides which integers are constants, which pointers and strides
are 16-divisible. Meta tensors stand in for the inputs, so Wan-sized shapes cost nothing. The result
reports what a launch would meet: compile errors, shared memory, registers and spills (from the
`cuobjdump` that ships with Triton).

tests/test_triton_compile.py compiles every kernel this way over every (dtype, head dim, block size,
config) the API accepts; `accel gpu-check` repeats a subset on a real GPU.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import triton
from triton.backends.compiler import GPUTarget

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
