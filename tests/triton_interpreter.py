"""The one way tests run the Triton kernels on CPU: a child process under TRITON_INTERPRET=1.

Triton reads TRITON_INTERPRET when a kernel is decorated, that is when sparse_attn's Triton modules are
first imported; setting it in the pytest process would switch every later import to the interpreter.
So a test file runs itself as a script in a child with the flag set (`run_child`), the child prints
one JSON line, and the test checks it.

`fix_bf16_dot` works around a gap of Triton's interpreter (`triton_common.interpret_bf16_dot`: its
`tl.dot` multiplies bfloat16 bit patterns, triton-lang/triton#11584), so the kernels' own bf16 handling
(loads, casts, stores) is what is tested.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any


def run_child(script: str, *args: str, timeout: int = 600, env: dict[str, str] | None = None) -> Any:
    """Run `script` (a test file's __file__) under TRITON_INTERPRET=1; return its last stdout line as JSON."""
    here = os.path.dirname(os.path.abspath(__file__))  # so the child imports support and this module too
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, **(env or {}), "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    done = subprocess.run([sys.executable, script, *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"child exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def fix_bf16_dot() -> None:
    """In the child: let the interpreter's tl.dot read bfloat16 operands as values, not bit patterns."""
    from accel.sparse_attn.triton_common import interpret_bf16_dot

    interpret_bf16_dot()
