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
from accel.cli import default_doc_key, main
from accel.errors import InvalidOptionError

FILES = ("results.json", "results.md")


@pytest.mark.parametrize("out, doc, key, says", [
    ("", None, None, "--out='' is empty"),
    (None, "", None, "--doc='' is empty"),
    (" ", None, None, "--out=' ' is empty"),
    ("pyproject.toml", None, None, "--out='pyproject.toml' is, or lies under, a file"),
    ("pyproject.toml/sub", None, None, "--out='pyproject.toml/sub' is, or lies under, a file"),
    (None, "docs", None, "--doc='docs': expected a regular file"),
    (None, "pyproject.toml/x.md", None, "--doc='pyproject.toml/x.md': expected a regular file"),
    (None, "/dev/full", None, "--doc='/dev/full': expected a regular file"),  # would be read without end
    ("{tmp}/r", "{tmp}/r/../r/results.md", None, "is where --out="),  # `..` resolved
    ("{tmp}/r", "{tmp}/r", None, "is where --out="),
    ("{tmp}/r", "{tmp}/r/results.md", None, "is where --out="),
    ("{tmp}/r/sub", "{tmp}/r", None, "is where --out="),
    (None, "x.md", " ", "--doc-key=' ' is empty"),
    (None, "x.md", "a --> b", "--doc-key='a --> b' holds a line break, '-->' or '--!>'"),
    (None, "x.md", "a --!> b", "--doc-key='a --!> b' holds a line break, '-->' or '--!>'"),
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


def test_links_non_text_docs_and_clashing_files_are_refused(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere" / "target")
    (tmp_path / "bin.md").write_bytes(b"\x80\x81")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "real" / "results.md").write_text("table")
    (tmp_path / "hard.md").hardlink_to(tmp_path / "real" / "results.md")
    cases = [
        ({"out": str(tmp_path / "real"), "doc": str(tmp_path / "alias" / "results.json")}, "is where --out="),
        ({"out": str(tmp_path / "dangling")}, "--out='" + str(tmp_path / "dangling") + "' cannot be used as a path (a link to nothing"),
        ({"doc": str(tmp_path / "dangling")}, "a link to nothing on the way"),
        ({"doc": str(tmp_path / "bin.md")}, "cannot be read back as UTF-8 text"),
        ({"doc": str(tmp_path / "t.md"), "files": {"--out": str(tmp_path / "t.md")}}, "--out='" + str(tmp_path / "t.md")
         + "' is where --doc="),
        ({"files": {"--json": ""}}, "--json='' is empty"),
        ({"doc": str(tmp_path / "loop" / "x.md")}, "cannot be used as a path"),  # a link loop
        ({"out": str(tmp_path / "dangling" / "sub")}, "cannot be used as a path (a link to nothing on the way)"),
        ({"doc": str(tmp_path / "new" / ("a" * 300))}, "cannot be used as a path (a name over 255 bytes)"),
        ({"doc": str(tmp_path / "o"), "files": {"--out": str(tmp_path / "o" / "x.md")}}, "is where --doc="),
        ({"out": str(tmp_path / "real"), "doc": str(tmp_path / "hard.md")}, "is where --out="),  # a hard link
        ({"doc": str(tmp_path / "d.md"), "default_key": "accel bench --doc a-->b.md"},
         "the section's default key, 'accel bench --doc a-->b.md', holds a line break"),
        ({"files": {"--json": str(tmp_path / "real")}}, "--json='" + str(tmp_path / "real") + "': expected a regular file"),
    ]
    for kwargs, says in cases:
        with pytest.raises(InvalidOptionError) as err:
            check_outputs("bench-x", out_files=FILES, **kwargs)
        assert says in str(err.value), kwargs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alias", "bin.md", "dangling", "hard.md", "loop", "real"]
    assert [p.name for p in (tmp_path / "real").iterdir()] == ["results.md"]


def test_outputs_in_folders_still_to_be_made_are_accepted(tmp_path):
    check_outputs("bench-x", str(tmp_path / "a" / "b"), str(tmp_path / "a" / "b" / "table.md"), "key", FILES)
    check_outputs("bench-x", None, str(tmp_path / "new" / "doc.md"))
    assert list(tmp_path.iterdir()) == []


COMMANDS = {  # command -> where its run lives (replaced: a refusal must come before it)
    "bench": "accel.bench.run", "tune": "accel.tune.run", "bench-backbones": "accel.bench.backbones.run",
    "bench-parallel": "accel.bench.scale_out.run", "bench-attn-quality": "accel.bench.attention_quality.run",
    "bench-attn": "sparse_attn.bench.run", "bench-linear": "quant.bench_linear.run",
}


@pytest.mark.parametrize("argv", [["compile-check", "--out", "{tmp}"], ["compile-check", "--out", "{tmp}/f.md", "--doc",
                                                                        "{tmp}/f.md"],
                                  ["gpu-check", "--device", "cpu", "--tiny", "--json", "{tmp}"],
                                  ["gpu-check", "--device", "cpu", "--tiny", "--doc", "/proc/x.md"]])
def test_the_gpu_scripts_check_their_files_before_running(argv, tmp_path, monkeypatch, capsys):
    pytest.importorskip("triton")

    def boom(*args, **kwargs):
        raise AssertionError("the run started")

    monkeypatch.setattr("sparse_attn.triton_compile.check", boom)
    monkeypatch.setattr("sparse_attn.gpu_check.run", boom)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    assert f"accel: error: {argv[0]}: " in capsys.readouterr().err


@pytest.mark.parametrize("command", COMMANDS)
def test_every_bench_command_refuses_a_bad_doc_key_before_its_run(command, tmp_path, monkeypatch, capsys):
    def boom(*args, **kwargs):
        raise AssertionError("the run started")

    monkeypatch.setattr(COMMANDS[command], boom)
    extra = ["--model", "digits", "--floor", "psnr=30"] if command == "tune" else []
    assert main([command, *extra, "--doc", str(tmp_path / "b.md"), "--doc-key", "a-->b"]) == 2
    assert f"accel: error: {command}: --doc-key='a-->b' holds a line break, '-->'" in capsys.readouterr().err
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
    # the same study into another --out replaces its section: the default key leaves out where results go
    assert main([*argv[:-4], f"--out={tmp_path / 'r2'}", "--publish-unreliable", "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert text.count("<!-- accel-bench:") == 1
    assert "### accel bench-backbones --batch 1 --repeat 2 --sizes S\n" in text  # in the parser's order


def subparser(command: str):
    import argparse

    from accel.cli import build_parser

    return next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[command]


@pytest.mark.parametrize("command, same, other", [
    ("bench", [["--model", "digits image", "--out", "a", "--repeat", "3", "--no-progress"],
               ["--rep=3", "--publish-unreliable", "--doc=d.md", "--mod", "digits image", "--out=b"]],
     ["--model", "digits image", "--repeat", "4"]),
    ("tune", [["--model", "m", "--floor", "psnr=30", "--ou", "a"], ["--floor=psnr=30", "--model=m", "--doc-k", "k"]],
     ["--model", "m", "--floor", "psnr=31"]),
    ("bench-backbones", [["--sizes", "S", "--batch", "1"], ["--batch=1", "--out", "x", "--sizes=S"],
                         ["--sizes", "S", "--batch", "01", "--repeat", "3"], ["--sizes", "S", "--batch", "+1"]],
     ["--sizes", "S", "--batch", "2"]),
    ("bench-attn-quality", [["--model", "digits-image", "--at", "0.5"], ["--at=0.50", "--model", "digits-image",
                                                                         "--density", "0.125", "--out", "o"]],
     ["--model", "digits-image", "--at", "0.5", "--density", "0.5"]),
    ("bench-parallel", [["--model", "wan", "--methods", "none", "--modes", "ulysses"],
                        ["--modes=ulysses", "--methods=none", "--model=wan", "--ranks", "2", "--doc", "d.md"]],
     ["--model", "wan", "--methods", "tdc", "--modes", "ring"]),
])
def test_the_default_doc_key_names_the_study_however_it_is_spelt(command, same, other):
    """Spellings of one study (abbreviations, --x=v, order, 01 for 1, a default given, another --out) share
    one --doc section; another study (any option changed) gets its own."""
    parser = subparser(command)
    for argv in (*same, other):
        parser.parse_args(argv)  # each is a command line argparse accepts
    keys = {default_doc_key(parser, [command, *argv], parser.parse_args(argv)) for argv in same}
    assert len(keys) == 1 and default_doc_key(parser, [command, *other], parser.parse_args(other)) not in keys
    assert not any(o in next(iter(keys)) for o in ("--out", "--doc", "--publish-unreliable"))


def test_every_committed_section_without_a_doc_key_is_where_its_command_writes():
    """A section of docs/benchmarks.md written under the default key must carry the key its own command
    computes now, or a rerun of that command appends a second table instead of replacing this one."""
    import re
    import shlex

    text = (Path(__file__).parents[2] / "docs" / "benchmarks.md").read_text()
    checked = 0
    for key, body in re.findall(r"<!-- accel-bench:(.*?) -->\n(.*?)<!-- /accel-bench:\1 -->", text, re.S):
        command = re.search(r"`(accel [a-z-]+ [^`]*)`", body)
        if command is None or "--doc" not in command.group(1).split() or "--doc-key" in command.group(1):
            continue
        argv = shlex.split(command.group(1))[1:]
        if argv[0] in ("compile-check", "gpu-check"):  # one fixed section each, replaced by every run
            continue
        args = subparser(argv[0]).parse_args(argv[1:])
        assert default_doc_key(subparser(argv[0]), argv, args) == key, command.group(1)
        checked += 1
    assert checked  # the bench-parallel table is one
