"""Method rows named in one command-line token: `--methods "tdc(order=1,threshold=0.5)"`."""

from __future__ import annotations

import pytest

import accel
from accel.bench import variants as V
from accel.cli import main


def test_commas_inside_a_token_s_brackets_do_not_split_rows():
    assert V.split_methods("none, tdc(order=1,threshold=0.5),pisa(density=0.1)+tdc:x") == (
        "none", "tdc(order=1,threshold=0.5)", "pisa(density=0.1)+tdc:x")


@pytest.mark.parametrize("text", ["none,,tdc", "none,tdc,", ",tdc", " , "])
def test_an_empty_entry_is_refused(text):
    with pytest.raises(ValueError, match="empty entry"):
        V.split_methods(text)


def test_a_token_s_options_are_literals_or_bare_strings():
    assert V.parse_entry("pisa(density=0.1, order=none, dense_layers=0)+tdc(order=1):mine") == [
        ("pisa", {"density": 0.1, "order": "none", "dense_layers": 0}), ("tdc", {"order": 1})]
    assert V.parse_entry("adaspa(head_adaptive=False,search='pooled')") == [
        ("adaspa", {"head_adaptive": False, "search": "pooled"})]
    assert V.method_parts("pisa(density=0.1)+tdc") == ["pisa", "tdc"]


def test_the_label_is_the_token_and_reads_back_as_the_same_options():
    options = {"order": 1, "threshold": 0.5, "max_skips": 3}
    label = V.token("tdc", options)
    assert label == "tdc(order=1,threshold=0.5,max_skips=3)"
    assert V.parse_entry(label) == [("tdc", options)]
    odd = {"search": "pooled", "flag": "True", "path": "a b,c"}  # a string that would read as a bool, one with a comma
    assert V.parse_entry(V.token("m", odd)) == [("m", odd)]
    row = V.accel_method(label, 4)
    assert row.label == label and row.options == options


@pytest.mark.parametrize(("entry", "message"), [
    ("tdc(order=1", "opens a bracket it does not close"),
    ("tdc(order=1)(x=2)", "text after the bracket"),
    ("tdc(order=1))", "text after the bracket"),
    ("pisa(density=0.1)x+tdc", "opens a bracket it does not close"),
    ("tdc(order)", "is not KEY=VALUE"),
    ("tdc(order=1,order=0)", "given twice"),
    ("tdc(ordr=1)", "unknown option 'ordr'"),
    ("tdc(order=5)", "order=5 is out of range"),
    ("tdcc(order=1)", "unknown method 'tdcc'"),
])
def test_a_bad_token_is_refused_naming_what_is_wrong(entry, message):
    with pytest.raises(accel.AccelError, match=message):
        V.accel_method(entry, 4)


def test_a_token_s_options_and_an_option_flag_for_the_same_key_clash():
    with pytest.raises(accel.InvalidOptionError, match="already set in the token"):
        V.accel_method("tdc(order=1)", 4, {"order": 0})
    configs = V.entry_configs("pisa(density=0.5)+delta-dit", {"delta-dit.interval": 4})
    assert configs[0].density == 0.5 and configs[1].interval == 4


def test_a_token_row_patches_with_its_configs(tiny):
    pipe = tiny("wan")
    row = V.accel_method("pisa(density=0.5)+tdc(order=1,threshold=0.3)", 4)
    handle = row.enable(pipe)
    try:
        assert [c.method for c in handle.config] == ["pisa", "tdc"]
        assert handle.config[0].density == 0.5 and (handle.config[1].order, handle.config[1].threshold) == (1, 0.3)
    finally:
        row.disable(pipe, handle)
    assert row.options == {"pisa.density": 0.5, "tdc.order": 1, "tdc.threshold": 0.3}


def test_the_bench_command_refuses_a_bad_token_before_any_run(capsys):
    assert main(["bench", "--model", "dit", "--size", "tiny", "--methods", "none,tdc(threshold=-1)"]) == 2
    assert "threshold=-1 is out of range" in capsys.readouterr().err


@pytest.mark.parametrize(("methods", "message"), [
    ("none,pisa+pisa", "appears twice"),
    ("none,tdc+delta-dit", "tdc"),
    ("none,pyramid-drop", "pyramid-drop"),
])
def test_the_bench_command_refuses_a_row_the_model_cannot_take_before_any_run(methods, message, capsys, monkeypatch):
    from accel.bench import runner

    def no_run(*args, **kwargs):
        raise AssertionError("a row ran before the refusal")

    monkeypatch.setattr(runner._Bench, "run_once", no_run)
    assert main(["bench", "--model", "dit", "--size", "tiny", "--methods", methods, "--no-progress"]) == 2
    assert message in capsys.readouterr().err


def test_a_row_given_twice_is_refused_by_name(capsys):
    from accel.cli import main

    with pytest.raises(ValueError, match="names tdc more than once"):
        V.split_methods("tdc,none,tdc")
    with pytest.raises(SystemExit):
        main(["bench", "--methods", "tdc(order=1),tdc(order=1)"])
    assert "names tdc(order=1) more than once" in capsys.readouterr().err
    assert V.split_methods("tdc(order=1),tdc(order=0)") == ("tdc(order=1)", "tdc(order=0)")  # different rows
    with pytest.raises(ValueError, match=r"tdc\(order=1,threshold=0.5\) and tdc\(threshold=0.5,order=1\)"):
        V.split_methods("tdc(order=1,threshold=0.5),tdc(threshold=0.5,order=1)")
    default = V.entry_configs("tdc")[0].order
    with pytest.raises(ValueError, match="the same configuration"):
        V.split_methods(f"tdc,tdc(order={default})")
    assert V.split_methods("pyramid-drop,pyramid-drop:compact") == ("pyramid-drop", "pyramid-drop:compact")
