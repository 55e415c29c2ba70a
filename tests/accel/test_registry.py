"""The method registry: entry points found by name, imported only when used; plug-ins from outside."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import accel
from accel.method import _REGISTRY, ENTRY_POINT_GROUP, _entry_points

BUILT_IN = {"none", "delta-dit", "tdc", "pisa", "adaspa"}


def test_built_in_methods_are_entry_points_of_this_distribution():
    eps = _entry_points()
    assert BUILT_IN <= set(eps)
    assert all(eps[name].dist.name == "hf-accel" and eps[name].value.startswith("accel.") for name in BUILT_IN)


def test_patching_with_one_method_imports_that_method_alone():
    """`import accel` loads no method, no zoo, no trainer; patching with PISA imports PISA's module only."""
    code = textwrap.dedent("""
        import sys
        import accel
        heavy = [m for m in sys.modules if m.startswith(("accel.zoo", "accel.caches", "accel.sparse_attn",
                                                         "sklearn", "matplotlib", "gradio"))]
        assert not heavy, heavy
        from accel.zoo import load
        pipe = load("pixart-alpha")
        accel.patch(pipe, method="pisa")
        loaded = {m for m in sys.modules if m.startswith(("accel.caches", "accel.sparse_attn.methods"))}
        assert "accel.sparse_attn.methods.pisa" in loaded, loaded
        assert not any(m.startswith("accel.caches") or m.endswith("adaspa") for m in loaded), loaded
        assert not [m for m in sys.modules if m.startswith(("sklearn", "matplotlib", "gradio"))]
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_an_out_of_tree_method_registers_through_an_entry_point(tmp_path, monkeypatch, tiny):
    """A throwaway distribution (a dist-info folder on sys.path) declares a method; accel finds it by name."""
    (tmp_path / "accel_plugin_demo.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass
        import accel

        @dataclass(frozen=True)
        class DoubleConfig(accel.MethodConfig):
            method = "plugin-double"
            factor: float = accel.option(2.0, "multiplies the denoiser output", low=0.0)

        class Double(accel.Method):
            name = "plugin-double"
            summary = "test plug-in"
            Config = DoubleConfig

            def apply(self, target, journal, tracker):
                def scale(module, args, out):
                    out.sample = out.sample * self.config.factor
                    return out

                for d in target.denoisers:
                    journal.add_torch_hook(d.module.register_forward_hook(scale))
    '''))
    info = tmp_path / "accel_plugin_demo-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: accel-plugin-demo\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nplugin-double = accel_plugin_demo:Double\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert "plugin-double" in {m.name for m in accel.methods()}
        pipe = tiny("dit")
        baseline = accel.zoo.generate(pipe, steps=2, seed=0)
        handle = accel.patch(pipe, method="plugin-double", factor=1.0)
        assert torch.equal(accel.zoo.generate(pipe, steps=2, seed=0), baseline)
        handle.unpatch()
        with pytest.raises(accel.InvalidOptionError, match="factor"):
            accel.patch(pipe, method="plugin-double", factor=-1.0)
    finally:
        _REGISTRY.pop("plugin-double", None)


def _distribution(root, name: str, entry_points: str, module: str = "", source: str = "") -> None:
    """A throwaway installed distribution: a dist-info folder (and a module) on sys.path."""
    if module:
        (root / f"{module}.py").write_text(source)
    info = root / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{entry_points}\n")


def test_a_bad_entry_point_is_refused_by_name_and_left_out_of_the_list(tmp_path, monkeypatch, caplog):
    _distribution(tmp_path, "accel-plugin-bad", "plugin-bad = accel_plugin_bad:NotAMethod\n"
                  "plugin-gone = accel_plugin_gone:Nope", "accel_plugin_bad", "NotAMethod = object\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(accel.UnknownMethodError, match="plugin-bad.*accel-plugin-bad.*Method subclass"):
        accel.method.method_class("plugin-bad")
    with pytest.raises(accel.UnknownMethodError, match="plugin-gone.*could not be imported.*ModuleNotFoundError"):
        accel.method.method_class("plugin-gone")
    with pytest.raises(accel.UnknownMethodError, match="Valid methods: .*pisa"):
        accel.method.method_class("pissa")
    with caplog.at_level("WARNING", logger="accel"):
        listed = {m.name for m in accel.methods()}  # the broken package hides nothing else
    assert BUILT_IN <= listed and not {"plugin-bad", "plugin-gone"} & listed
    assert any("plugin-gone" in r.getMessage() and "left out" in r.getMessage() for r in caplog.records)


def test_a_package_cannot_take_over_a_built_in_name(tmp_path, monkeypatch, caplog):
    _distribution(tmp_path, "accel-plugin-hijack", "pisa = accel_plugin_hijack:Fake", "accel_plugin_hijack",
                  "import accel\nclass Fake(accel.Method):\n    name = 'pisa'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(accel.method, "_warned", set())
    saved = _REGISTRY.pop("pisa", None)
    try:
        with caplog.at_level("WARNING", logger="accel"):
            cls = accel.method.method_class("pisa")
        assert cls.__module__ == "accel.sparse_attn.methods.pisa"
        assert any("accel-plugin-hijack" in r.getMessage() and "'hf-accel'" in r.getMessage() for r in caplog.records)
    finally:
        if saved is not None:
            _REGISTRY["pisa"] = saved
