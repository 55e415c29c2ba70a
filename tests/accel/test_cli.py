"""The `accel` console script."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import accel
from accel.cli import main


def test_methods_lists_the_registry(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    lines = [line.split()[0] for line in out.splitlines() if line and not line.startswith(" ")]
    assert lines == sorted(m.name for m in accel.methods())
    assert "interval = 3" in out  # options with their defaults


def test_methods_json(capsys):
    main(["methods", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert {"name", "summary", "families", "paper", "options"} <= set(rows[0])


def test_info_reports_versions_device_and_attention_paths(capsys):
    main(["info", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert data["torch"] and data["diffusers"] and data["device"].startswith(("cpu", "cuda"))
    assert {"sdpa", "triton (GPU)", "triton interpreter", "flex_attention", "xformers"} <= set(data["attention"])
    assert data["attention"]["sdpa"] == "yes"


def test_console_script_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "accel.cli", "info"], capture_output=True, text=True, check=True)
    assert "attention paths:" in out.stdout


def test_every_command_but_compile_check_works_without_triton():
    """triton is a Linux-only dependency: without it the CLI still works and compile-check says why."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['triton'] = None\n"
            "from accel.cli import main\n"
            "assert main(['methods']) == 0\n"
            "sys.exit(main(['compile-check', '--all']))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "compile-check: needs triton" in done.stderr and "pisa" in done.stdout


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "--steps", "-1"], "argument --steps: -1 is below 1"),
        (["bench", "--repeat", "x"], "argument --repeat: 'x' is not an integer"),
        (["bench-attn", "--seq-lens", "-5"], "argument --seq-lens: '-5': expected comma-separated integers >= 1"),
        (["demo", "--port", "0"], "argument --port: 0 is below 1"),
        (["bench", "--methods", "pisa,nope", "--size", "tiny"], "unknown method 'nope'. Did you mean 'none'?"),
        (["bench", "--model", "no-such-model", "--size", "tiny"], "Cannot load 'no-such-model' from local files"),
        (["bench", "--doc", "/proc/no/such/dir/x.md"], "--doc='/proc/no/such/dir/x.md': expected a regular file"),
        (["bench", "--out", "/proc/x"], "--out='/proc/x' is, or lies under, a file, or cannot be written"),
        (["bench", "--publish-unreliable"], "--publish-unreliable acts only with --doc"),
        (["bench-parallel", "--methods", "none,none"], "argument --methods: 'none,none': expected comma-separated distinct"),
        (["calibrate", "--model", "digits-lego", "--seeds", ""], "argument --seeds: '': expected comma-separated distinct"),
        (["calibrate", "--model", "digits-lego", "--seeds", "0,0"], "argument --seeds: '0,0': expected"),
        (["bench", "--seeds", "-1"], "argument --seeds: '-1': expected comma-separated distinct integer seeds"),
        (["tune", "--model", "digits-image", "--floor", "psnr=30", "--budget-minutes", "inf"],
         "argument --budget-minutes: 'inf': expected a finite number of minutes > 0"),
        (["bench-attn-quality", "--steps", "0"], "argument --steps: 0 is below 1"),
        (["bench-attn-quality", "--threads", "-1"], "argument --threads: -1 is below 0"),
        (["bench-attn-quality", "--density", "0"], "argument --density: '0': every value must be in (0, 1]"),
        (["bench-attn-quality", "--at", "0.5,x"], "argument --at: '0.5,x': expected comma-separated numbers in [0, 1]"),
        (["gpu-check", "--tiny", "--device", "cpu"], "on CPU the kernels run only under TRITON_INTERPRET=1"),
        (["gpu-check", "--device", "foo"], "argument --device: 'foo': expected cpu, cuda or cuda:N (N a GPU index)"),
        (["gpu-check", "--device", "cuda:x"], "argument --device: 'cuda:x': expected cpu, cuda or cuda:N"),
        (["gpu-check", "--budget-s", "nan"], "argument --budget-s: 'nan': expected a finite number of seconds > 0"),
        (["gpu-check", "--budget-s", "-1"], "argument --budget-s: '-1': expected a finite number of seconds > 0"),
        (["gpu-check", "--budget-s", "0"], "argument --budget-s: '0': expected a finite number of seconds > 0"),
        (["gpu-check", "--budget-s", "inf"], "argument --budget-s: 'inf': expected a finite number of seconds > 0"),
        (["gpu-check", "--repeats", "0"], "argument --repeats: 0 is below 1"),
        (["gpu-check", "--repeats", "x"], "argument --repeats: 'x' is not an integer"),
        (["bench-parallel", "--timeout", "-1"], "argument --timeout: '-1': expected a finite number of seconds > 0"),
        (["bench-parallel", "--timeout", "0"], "argument --timeout: '0': expected a finite number of seconds > 0"),
        (["bench-parallel", "--timeout", "nan"], "argument --timeout: 'nan': expected a finite number of seconds > 0"),
        (["bench-parallel", "--timeout", "soon"], "argument --timeout: 'soon' is not a number of seconds"),
        (["bench-parallel", "--ranks", "1"], "argument --ranks: 1 is below 2"),
        (["bench-parallel", "--steps", "0"], "argument --steps: 0 is below 1"),
        (["bench-parallel", "--repeat", "0"], "argument --repeat: 0 is below 1"),
        (["bench-parallel", "--threads", "0"], "argument --threads: 0 is below 1"),
    ],
)
def test_bad_arguments_exit_2_with_the_reason_before_anything_runs(argv, message, capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # gpu-check on CPU: refused without the interpreter
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_version(capsys):
    import accel

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"accel {accel.__version__}"
