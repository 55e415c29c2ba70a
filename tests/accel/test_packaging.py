"""One import name: the wheel installs `accel` and nothing else at the top of site-packages."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import distribution
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOP_LEVEL = {"accel"}


def test_the_installed_distribution_provides_accel_only():
    dist = distribution("hf-accel")
    assert set((dist.read_text("top_level.txt") or "accel").split()) == TOP_LEVEL
    import accel.caches
    import accel.sparse_attn

    assert Path(accel.caches.__file__).parent == ROOT / "caches"  # the design card's folders, kept
    assert Path(accel.sparse_attn.__file__).parent == ROOT / "sparse_attn"


@pytest.mark.slow
def test_the_wheel_holds_accel_and_its_data_and_nothing_else(tmp_path):
    source = tmp_path / "src"  # a copy: building writes build/ and *.egg-info into the source tree
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__",
                                                                "bench-results", "tests"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(source)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    wheel = next(tmp_path.glob("hf_accel-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == TOP_LEVEL, tops
    for needed in ("accel/sparse_attn/csrc/block_sparse_attn.cpp", "accel/caches/tdc.py",
                   "accel/sparse_attn/methods/pisa.py", "accel/zoo/checkpoints/digits-image/transformer.safetensors"):
        assert needed in names, needed
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "[accel.methods]" in entry_points and "pisa = accel.sparse_attn.methods.pisa:PISA" in entry_points
