"""Every benchmark command refuses outputs it could only fail to write, before its run (`report.check_outputs`),
and `accel bench-backbones` keeps a disturbed run's timings out of --doc."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from accel.bench import backbones
from accel.bench.measure import Reading
from accel.bench.report import check_outputs
from accel.cli import main
from accel.errors import InvalidOptionError

FILES = ("results.json", "results.md")


@pytest.mark.parametrize("out, doc, key, says", [
    ("", None, None, "--out='' is empty"),
    (None, "", None, "--doc='' is empty"),
    (" ", None, None, "--out=' ' is empty"),
    ("pyproject.toml", None, None, "--out='pyproject.toml' is, or lies under, a file"),
    ("pyproject.toml/sub", None, None, "--out='pyproject.toml/sub' is, or lies under, a file"),
    (None, "docs", None, "--doc='docs': expected a markdown file"),
    (None, "pyproject.toml/x.md", None, "--doc='pyproject.toml/x.md': expected a markdown file"),
    ("{tmp}/r", "{tmp}/r", None, "is where --out="),
    ("{tmp}/r", "{tmp}/r/results.md", None, "is where --out="),
    ("{tmp}/r/sub", "{tmp}/r", None, "is where --out="),
    (None, "x.md", " ", "--doc-key=' ' is empty"),
    (None, "x.md", "a --> b", "--doc-key='a --> b' holds a line break or '-->'"),
    (None, "x.md", "one\ntwo", "--doc-key='one\\ntwo' holds a line break"),
    (None, None, "k", "--doc-key='k' acts only with --doc"),
])
def test_outputs_that_could_not_be_written_are_refused_and_nothing_is_made(out, doc, key, says, tmp_path, monkeypatch):
    monkeypatch.chdir(Path(__file__).parents[2])  # the repository: pyproject.toml is a file, docs a folder
    out, doc = (None if v is None else v.format(tmp=tmp_path) for v in (out, doc))
    with pytest.raises(InvalidOptionError, match="^bench-x: ") as err:
        check_outputs("bench-x", out, doc, key, FILES)
    assert says in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_outputs_in_folders_still_to_be_made_are_accepted(tmp_path):
    check_outputs("bench-x", str(tmp_path / "a" / "b"), str(tmp_path / "a" / "b" / "table.md"), "key", FILES)
    check_outputs("bench-x", None, str(tmp_path / "new" / "doc.md"))
    assert list(tmp_path.iterdir()) == []


COMMANDS = {  # command -> where its run lives (replaced: a refusal must come before it)
    "bench": "accel.bench.run", "tune": "accel.tune.run", "bench-backbones": "accel.bench.backbones.run",
    "bench-parallel": "accel.bench.scale_out.run", "bench-attn-quality": "accel.bench.attention_quality.run",
    "bench-attn": "sparse_attn.bench.run", "bench-linear": "quant.bench_linear.run",
}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_bench_command_refuses_a_bad_doc_key_before_its_run(command, tmp_path, monkeypatch, capsys):
    def boom(*args, **kwargs):
        raise AssertionError("the run started")

    monkeypatch.setattr(COMMANDS[command], boom)
    extra = ["--model", "digits", "--floor", "psnr=30"] if command == "tune" else []
    assert main([command, *extra, "--doc", str(tmp_path / "b.md"), "--doc-key", "a-->b"]) == 2
    assert f"accel: error: {command}: --doc-key='a-->b' holds a line break" in capsys.readouterr().err
    assert not (tmp_path / "b.md").exists()


class Busy:
    """A machine whose every CPU other processes keep busy: each read is one second later."""

    cpus = 2

    def __init__(self) -> None:
        self.now = 0.0

    def read(self) -> Reading:
        self.now += 1.0
        return Reading(self.now, 0.0, self.cpus * self.now)


def tiny_pair(size: str) -> dict[str, torch.nn.Module]:
    from diffusers import DiTTransformer2DModel

    def dit() -> torch.nn.Module:
        return DiTTransformer2DModel(in_channels=4, out_channels=8, sample_size=32, patch_size=8, num_layers=1,
                                     num_attention_heads=1, attention_head_dim=8, num_embeds_ada_norm=1000).eval()

    return {f"DiT-{size}/2": dit(), f"DiCo-{size}": dit()}


def test_a_disturbed_run_leaves_the_doc_unchanged_unless_told(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(backbones, "MachineProbe", Busy)
    monkeypatch.setattr(backbones, "size_pair", tiny_pair)
    doc = tmp_path / "doc.md"
    doc.write_text("# Benchmarks\n")
    argv = ["bench-backbones", "--sizes", "S", "--batch", "1", "--repeat", "2", "--out", str(tmp_path / "r"),
            "--doc", str(doc)]
    assert main(argv) == 3
    assert doc.read_text() == "# Benchmarks\n"
    assert "unreliable timings; " + str(doc) + " left unchanged" in capsys.readouterr().err
    result = json.loads((tmp_path / "r" / "results.json").read_text())
    assert not result["verdict"]["reliable"] and result["verdict"]["disturbed_runs"] == 4
    assert result["command"] == "accel " + " ".join(argv[:-1]) + " " + str(doc)
    assert main([*argv, "--publish-unreliable"]) == 0
    assert "**UNRELIABLE TIMINGS**: other processes used more than 10% of the CPUs during 4 of 4" in doc.read_text()
