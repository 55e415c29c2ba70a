"""`accel gpu-check` runs end to end on CPU under the Triton interpreter (`--tiny`), so the command a GPU
session runs is known to work before it gets the device: every step passes and the JSON is complete."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

@pytest.mark.slow
def test_gpu_check_runs_every_step_on_cpu_under_the_interpreter(tmp_path):
    out, doc = tmp_path / "gpu-check.json", tmp_path / "benchmarks.md"
    code = (  # the command as documented: no test helper patches the interpreter
        "import sys\n"
        "from accel.cli import main\n"
        f"sys.exit(main(['gpu-check', '--tiny', '--device', 'cpu', '--repeats', '1', '--json', {str(out)!r}, "
        f"'--doc', {str(doc)!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "TRITON_INTERPRET": "1"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    steps = {s["step"]: s for s in result["steps"]}
    assert result["verdict"] == "PASS" and all(s["status"] == "PASS" for s in steps.values()), done.stdout[-4000:]
    assert any(name.startswith("correctness: bfloat16 head dim 128, strided") for name in steps)
    assert len(steps["compile: first launch of every kernel (JIT + autotune)"]["first_launch_s"]) == 4 * 9
    timings = steps["timings: tiny [1, 2, 300, 64], bf16, density 0.15"]["rows"]  # --tiny says its shape
    assert set(timings) == {"dense SDPA", "block-sparse (triton)", "PISA hybrid (triton)", "search fused (triton)",
                            "search refresh (triton)"}
    assert result["command"].startswith("accel gpu-check") and result["device"]["interpreted"]
    assert "PASS" in done.stdout and "FAIL " not in done.stdout
    text = doc.read_text()
    assert "accel gpu-check --tiny" in text and "CPU under the Triton interpreter" in text
    assert "| block-sparse (triton) |" in text and text.count("| PASS |") == len(steps)


def test_gpu_check_refuses_without_a_gpu_or_the_interpreter(tmp_path):
    import torch

    from accel.cli import main

    if os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available():
        pytest.skip("this process can run the kernels")
    assert main(["gpu-check", "--json", str(tmp_path / "x.json")]) == 2  # no CUDA here
    assert main(["gpu-check", "--device", "cpu", "--json", str(tmp_path / "x.json")]) == 2
    assert not (tmp_path / "x.json").exists()


def test_skipped_steps_make_the_verdict_incomplete_not_pass():
    from accel.sparse_attn.gpu_check import Check

    check = Check(budget_s=0.0)
    check.step("never runs", lambda: {"failed": False})
    assert check.steps[0]["status"] == "SKIP" and check.verdict == "INCOMPLETE"
    check = Check(budget_s=100.0)
    check.step("runs", lambda: None)
    assert check.verdict == "PASS"
    check.step("fails", lambda: {"failed": True})
    assert check.verdict == "FAIL"
