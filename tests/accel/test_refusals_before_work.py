"""Bad input to the training and GPU commands is refused with the option, the value and what is allowed,
before any work: `python -m accel.zoo.train` (and `accel.models.train`, which forwards to it) never writes
over the zoo's committed checkpoints and figures without `--overwrite`; `accel gpu-check` and `accel
bench-parallel` refuse what their runs could only fail on. The runs themselves are replaced by functions
that fail the test if reached."""

from __future__ import annotations

import functools
import hashlib
import importlib
from pathlib import Path

import pytest
import torch

from accel.bench import scale_out
from accel.cli import main as accel_main
from accel.models import train as models_train
from accel.zoo import digits_backbones, judges, reference
from accel.zoo import train as zoo_train

REPO = Path(__file__).parents[2]  # docs/ of the repository: where the sample figures are committed
NAMES = ["judge", *reference.TRAINED]


def boom(*args: object, **kwargs: object) -> None:
    raise AssertionError("the run started")


def no_training(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Every way `name` could start training fails the test instead (`reproduce` keeps its signature, which
    says the options it takes)."""
    monkeypatch.setattr(judges, "train_judge", boom)
    if name != "judge":
        module = importlib.import_module(f"accel.zoo.{reference.TRAINED.MODULES[name]}")
        monkeypatch.setattr(module, "reproduce", functools.wraps(module.reproduce)(boom))


def refused(argv: list[str], capsys: pytest.CaptureFixture[str], run=zoo_train.main) -> str:  # noqa: ANN001
    with pytest.raises(SystemExit) as exit_:
        run(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    return err


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", NAMES)
def test_reproducing_a_committed_entry_takes_overwrite(name, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    no_training(monkeypatch, name)
    err = refused([name], capsys)
    folder = judges.CHECKPOINT.parent if name == "judge" else zoo_train.CHECKPOINTS / name
    assert f"{name}: this run would overwrite {next(iter(sorted(folder.glob('*.safetensors'))))}" in err
    assert "pass --overwrite to replace them" in err
    if name in zoo_train.FIGURES:
        assert f"docs/{name}-samples.png" in err


def test_the_models_command_refuses_too_and_names_both_ways_on(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    no_training(monkeypatch, "digits-dico")
    before = digest(digits_backbones.checkpoint("dico"))
    err = refused(["dico", "--steps", "2"], capsys, run=models_train.main)
    assert "checkpoints/digits-dico/transformer.safetensors, docs/digits-dico-samples.png" in err
    assert "pass --overwrite to replace them, or --out DIR to write elsewhere" in err
    assert digest(digits_backbones.checkpoint("dico")) == before


def test_overwrite_reproduces_with_the_options_given(monkeypatch):
    monkeypatch.chdir(REPO)
    calls = []

    def fake(kind: str, seed: int = 0, minutes: float = 1.0, steps: int = 1, threads: int = 1) -> None:
        calls.append((kind, seed, minutes, steps, threads))

    monkeypatch.setattr(digits_backbones, "reproduce", fake)
    models_train.main(["lego", "--steps", "3", "--seed", "5", "--overwrite"])
    assert calls == [("lego", 5, 1.0, 3, 1)]


def test_out_writes_the_checkpoint_and_figure_there_and_leaves_the_zoo_alone(tmp_path, monkeypatch, capsys):
    """A real two-step run of digits-dico under --out: its files there, the zoo's byte-identical."""
    monkeypatch.chdir(REPO)
    committed = {p: digest(p) for p in (digits_backbones.checkpoint("dico"), REPO / "docs/digits-dico-samples.png")}
    models_train.main(["dico", "--steps", "2", "--out", str(tmp_path / "o")])
    weights = tmp_path / "o/digits-dico/transformer.safetensors"
    assert weights.stat().st_size > 1_000_000 and (tmp_path / "o/docs/digits-dico-samples.png").stat().st_size > 0
    assert {p: digest(p) for p in committed} == committed
    no_training(monkeypatch, "digits-dico")  # a second run there would overwrite the first
    err = refused(["digits-dico", "--out", str(tmp_path / "o")], capsys)
    assert f"would overwrite {weights}" in err and "--overwrite" in err


@pytest.mark.parametrize("argv, says", [
    (["digits-image", "--out", "x"], "argument --out: digits-image does not take it (its options: --seed"),
    (["digits-dico", "--out", "pyproject.toml"], "argument --out: 'pyproject.toml' is, or lies under, a file"),
    (["judge", "--steps", "5", "--overwrite"], "argument --steps: judge does not take it (its options: --seed)"),
    (["digits-video", "--steps", "5", "--overwrite"], "argument --steps: digits-video does not take it"),
])
def test_options_an_entry_does_not_take_are_refused_before_training(argv, says, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    no_training(monkeypatch, argv[0])
    assert says in refused(argv, capsys)


@pytest.mark.parametrize("argv, says", [
    (["--steps", "0"], "argument --steps: 0 is below 1"),
    (["--steps", "-3"], "argument --steps: -3 is below 1"),
    (["--threads", "0"], "argument --threads: 0 is below 1"),
    (["--threads", "two"], "argument --threads: 'two' is not an integer"),
    (["--minutes", "0"], "argument --minutes: '0': expected a finite number of minutes > 0"),
    (["--minutes", "-1"], "argument --minutes: '-1': expected a finite number of minutes > 0"),
    (["--minutes", "nan"], "argument --minutes: 'nan': expected a finite number of minutes > 0"),
    (["--minutes=-inf"], "argument --minutes: '-inf': expected a finite number of minutes > 0"),
    (["--minutes", "inf"], "argument --minutes: 'inf': expected a finite number of minutes > 0"),
    (["--minutes", "ten"], "argument --minutes: 'ten' is not a number of minutes"),
    (["--seed", "-1"], "argument --seed: -1 is out of range; expected an integer seed in [0, 2**63)"),
    (["--seed", str(2**64)], "argument --seed: 18446744073709551616 is out of range"),
])
@pytest.mark.parametrize("command", ["zoo", "models"])
def test_bad_training_numbers_are_refused_before_training(command, argv, says, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    no_training(monkeypatch, "digits-dico")
    if command == "zoo":
        err = refused(["digits-dico", *argv, "--overwrite"], capsys)
    else:
        err = refused(["dico", *argv, "--overwrite"], capsys, run=models_train.main)
    assert says in err


def test_a_figure_with_nowhere_to_go_is_refused_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no docs/ here
    no_training(monkeypatch, "digits-dico")
    err = refused(["digits-dico", "--overwrite"], capsys)
    assert "has no docs/ folder: run it from the repository's root, or give --out DIR" in err


# ---- accel gpu-check and accel bench-parallel ------------------------------------------------------------
def test_gpu_check_refuses_a_gpu_index_this_machine_lacks(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr("accel.sparse_attn.gpu_check.run", boom)
    assert accel_main(["gpu-check", "--device", "cuda:2"]) == 2
    assert "--device cuda:2: this machine has 2 CUDA device(s); expected cuda or cuda:N with N < 2" in \
        capsys.readouterr().err


@pytest.mark.parametrize("argv, says", [
    (["--model", "wan", "--ranks", "3"], "--ranks 3: wan (tiny) runs 64 video tokens, which do not split evenly over "
                                         "3 ranks; choose --ranks dividing 64"),
    (["--model", "wan", "--ranks", "3", "--modes", "ring"], "wan (tiny) runs 64 video tokens"),
    (["--model", "flux", "--ranks", "3", "--modes", "ring"], "flux (tiny) runs 256 image tokens"),
    (["--model", "wan", "--ranks", "4"], "--ranks 4: wan (tiny) has 2 attention heads, which --modes ulysses splits "
                                         "over the ranks; choose --ranks dividing 2, or --modes ring"),
    (["--model", "flux", "--ranks", "4", "--modes", "ring,ulysses"], "flux (tiny) has 2 attention heads"),
])
def test_bench_parallel_refuses_ranks_the_model_cannot_split_before_any_rank_starts(argv, says, tmp_path,
                                                                                   monkeypatch, capsys):
    monkeypatch.setattr(scale_out, "run", boom)
    monkeypatch.setattr(scale_out, "launch", boom)
    assert accel_main(["bench-parallel", *argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "accel: error: --ranks " in err and says in err and "Traceback" not in err


@pytest.mark.parametrize("model, ranks, modes", [("wan", 2, ["ulysses", "ring"]), ("flux", 4, ["ring"]),
                                                 ("wan", 4, ["ring"])])
def test_bench_parallel_takes_ranks_the_model_splits(model, ranks, modes):
    scale_out.check_ranks(model, "tiny", ranks, modes)


def test_gpu_check_on_cpu_runs_only_the_small_sizes(monkeypatch, capsys):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr("accel.sparse_attn.gpu_check.run", boom)
    assert accel_main(["gpu-check", "--device", "cpu"]) == 2
    assert "--device cpu runs the small sizes only: add --tiny" in capsys.readouterr().err
