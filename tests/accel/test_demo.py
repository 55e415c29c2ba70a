"""The Gradio demo: its functions directly, and end to end in headless Chromium driven by Playwright."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

import accel
from accel.demo import DemoSession, Settings
from accel.demo.app import _options
from accel.demo.render import TABLE_HEADERS, render, table
from accel.demo.session import TUNED, Preset, default_steps

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def session():
    return DemoSession()


def test_compare_runs_baseline_and_methods_with_the_same_seed(session):
    s = Settings("pixart-alpha", steps=6, seed=1)
    c = session.compare(s, ["delta-dit", "tdc"], {"delta-dit": {"interval": 2}})
    assert [r.label for r in c.methods] == ["delta-dit", "tdc"]
    assert c.baseline.output.shape == c.methods[0].output.shape and c.baseline.output.dim() == 3
    dd = c.methods[0]
    assert dd.stats["delta-dit"]["blocks_skipped"] > 0 and 0 < dd.psnr < 200 and dd.speedup > 0
    assert c.baseline.stats["cached"] is False
    again = session.compare(s, ["delta-dit"], {"delta-dit": {"interval": 1}})
    assert again.baseline is c.baseline and again.baseline.stats["cached"] is True  # cached per settings
    assert again.methods[0].psnr == float("inf")  # interval 1 is exact


def test_render_gives_images_heatmaps_and_a_table(session, tmp_path):
    c = session.compare(Settings("wan", steps=2, height=32, width=32, frames=5), ["delta-dit"])
    gallery, heat, rows = render(c, tmp_path)
    assert [Path(p).suffix for p, _ in gallery] == [".gif", ".gif"]  # videos as animated clips
    assert Path(heat[0][0]).exists() and len(rows) == 2 and len(rows[0]) == len(TABLE_HEADERS)


def test_trained_models_show_task_accuracy_and_its_change(session):
    c = session.compare(Settings("digits-image", steps=4, accuracy_n=10), ["delta-dit"], {"delta-dit": {"interval": 1}})
    base, exact = c.baseline, c.methods[0]
    assert base.accuracy is not None and 0 <= base.accuracy <= 1
    assert exact.accuracy == base.accuracy and exact.accuracy_delta_pts == 0  # interval 1 is exact
    rows = {r[0]: r for r in table(c)}
    col = TABLE_HEADERS.index("task accuracy")
    assert rows["baseline"][col] == f"{100 * base.accuracy:.1f}%" and rows["delta-dit"][col].endswith("(+0.0)")
    plain = session.compare(Settings("pixart-alpha", steps=2), ["delta-dit"])
    assert plain.methods[0].accuracy is None and table(plain)[1][col] == "-"
    with pytest.raises(accel.InvalidOptionError, match="accuracy_n=-1"):
        Settings("digits-image", accuracy_n=-1)
    for bad, says in (({"steps": 0}, "steps=0"), ({"seed": -1}, "seed=-1"), ({"height": 0}, "height=0"),
                      ({"frames": -3}, "frames=-3")):
        with pytest.raises(accel.InvalidOptionError, match=says):
            Settings("digits-image", **bad)


def test_the_demo_opens_on_a_trained_model_with_what_applies_and_the_tuned_configuration(session):
    s = Settings()
    assert (s.model, s.steps) == ("digits-video", 20) and default_steps("digits-video") == 20
    offered = session.choices("digits-video", "tiny")
    assert {"adaspa", "delta-dit", "pisa", "sixbit", "tdc"} <= set(offered) and f"tuned: {TUNED}" in offered
    assert not {"none", "pyramid-drop", "fastv", "lego-skip", "flashblock"} & set(offered)  # they do not apply
    assert "lego-skip" in session.choices("digits-lego", "tiny")


def test_a_tuned_configuration_runs_as_one_patch_and_gets_task_accuracy(session):
    assert f"tuned: {TUNED}" not in session.choices("digits-image", "tiny")  # measured on digits-video only
    session = DemoSession([Preset.from_token(TUNED)])  # a preset for no particular model: offered on every one
    c = session.compare(Settings("digits-image", steps=6, accuracy_n=10), [f"tuned: {TUNED}"])
    tuned = c.methods[0]
    assert tuned.label == f"tuned: {TUNED}" and tuned.stats["tdc"]["block_calls"] > 0
    assert tuned.accuracy is not None and tuned.accuracy_delta_pts is not None
    assert len(render(c)[2]) == 2  # labels with brackets and commas make valid file names


def test_a_config_from_accel_tune_is_offered_at_its_steps(session, tmp_path):
    import json

    from accel.method import method_class
    from accel.tune.config import SCHEMA, method_dicts

    config = method_class("tdc").Config(order=1, threshold=0.5)
    record = {"schema": SCHEMA, "model": "digits-image", "methods": method_dicts([config]),
              "token": "tdc(order=1,threshold=0.5)", "steps": 10, "base_steps": 20}
    (tmp_path / "tuned.json").write_text(json.dumps(record))
    preset = Preset.from_file(tmp_path)
    assert preset.label == f"tuned ({tmp_path.name}): tdc(order=1,threshold=0.5) at 10 of 20 steps"
    assert preset.method == config and preset.steps(20) == 10 and preset.steps(6) == 3
    own = DemoSession([preset])
    c = own.compare(Settings("digits-image", steps=6, accuracy_n=0), [preset.label])
    assert c.methods[0].stats["steps"]["num_steps"] == 3  # half the steps, as the file was measured
    assert preset.label in own.choices("digits-image", "tiny")
    assert preset.label not in own.choices("digits-video", "tiny")  # tuned on digits-image only
    with pytest.raises(accel.InvalidOptionError, match="tuned on digits-image, not on digits-video"):
        own.compare(Settings("digits-video", steps=2, accuracy_n=0), [preset.label])
    with pytest.raises(accel.InvalidOptionError, match="expected schema"):
        (tmp_path / "bad.json").write_text("{}")
        Preset.from_file(tmp_path / "bad.json")


def test_bad_options_and_models_raise_clear_errors(session):
    with pytest.raises(accel.InvalidOptionError, match="interval=0"):
        session.compare(Settings("dit", steps=2), ["delta-dit"], {"delta-dit": {"interval": 0}})
    with pytest.raises(accel.AccelError, match="at least one method"):
        session.compare(Settings("dit", steps=2), [])
    with pytest.raises(FileNotFoundError):
        session.compare(Settings("/nonexistent/model", steps=2), ["tdc"])


def test_controls_map_back_to_options():
    layout = [("delta-dit", o) for o in accel.methods()[0].options]
    values = [o["default"] for _, o in layout]
    assert _options(values, layout) == {}
    values[0] = 4.0  # Gradio numbers arrive as floats
    assert _options(values, layout) == {"delta-dit": {layout[0][1]["name"]: 4}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.browser
def test_end_to_end_in_headless_chromium(session, tmp_path):
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail("Debian's chromium is not installed; .ci/run installs it")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    pytest.importorskip("gradio")
    from playwright.sync_api import expect, sync_playwright

    from accel.demo.app import build_app

    port = _free_port()
    app = build_app(session)
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=flags)
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
            docs = bool(os.environ.get("ACCEL_DEMO_SCREENSHOT"))  # docs/demo.png: the model's own 20 steps
            page.get_by_label("steps", exact=True).fill("20" if docs else "6")
            page.get_by_label("task-accuracy samples (trained models)").fill("20" if docs else "4")
            page.click("#generate")
            figures = page.locator("#figures")
            expect(figures).to_contain_text("skip_rate", timeout=600_000 if docs else 120_000)
            text = figures.inner_text()
            assert "baseline" in text and "tuned: tdc" in text and "1.00x" in text
            assert "%" in text  # digits-video: the task-accuracy column is filled
            assert page.locator("#outputs img").count() >= 2  # baseline and accelerated, side by side
            assert page.locator("#heat img").count() >= 1
            shot = tmp_path / "demo.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("ACCEL_DEMO_SCREENSHOT"):
                shutil.copy(shot, os.environ["ACCEL_DEMO_SCREENSHOT"])
            browser.close()
    finally:
        app.close()
